"""DeepLabV3 for semantic segmentation, with the original release's state-dict layout.

``DeepLabV3(backbone, head)`` runs ``backbone(x) -> {'out': features}``, the ASPP head, and
upsamples the logits bilinearly to the input resolution: ``(N, 3, H, W) -> (N, classes, H, W)``.

- ``deeplabv3_resnet50``: torchvision's ResNet-50 with dilated stages 3-4 (output stride 8);
- ``deeplabv3_mobilenet``: torchvision's MobileNetV2 features without the last 1x1 conv,
  split into ``low_level_features`` (the first 4 blocks) and ``high_level_features``, with
  the strides past the output stride turned into dilations;
- ``deeplabv3_tiny`` / ``deeplabv3_tiny_s``: a small DeepLab-style network (4 residual
  blocks, output stride 8, narrow ASPP) of this project, for the CPU demo and the tests.

The head is torchvision's ASPP (image pooling + 1x1 + three atrous 3x3 branches, 1x1
projection) followed by a 3x3 conv, BN, ReLU and the 1x1 classifier, all inside
``classifier.classifier`` as in the original (keys ``classifier.classifier.0.convs.0.0...``).
"""
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import mobilenet_v2, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP

from datafree.models.registry import register_model

# Atrous rates of the ASPP for each output stride (as in the DeepLabV3 paper).
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}
PROJECT_DROPOUT = 0.1


class DeepLabHead(nn.Module):
    def __init__(self, in_channels, num_classes, rates, channels=256):
        super().__init__()
        aspp = ASPP(in_channels, rates, out_channels=channels)
        aspp.project[-1].p = PROJECT_DROPOUT
        self.classifier = nn.Sequential(
            aspp,
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features):
        return self.classifier(features["out"])


class DeepLabV3(nn.Module):
    """Backbone -> ASPP head -> logits upsampled to the input size."""

    def __init__(self, backbone, classifier):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x):
        logits = self.classifier(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class MobileNetV2Features(nn.Module):
    """MobileNetV2's inverted-residual features (no final 1x1 conv), dilated past ``output_stride``."""

    LOW_LEVEL_BLOCKS = 4

    def __init__(self, output_stride=8):
        super().__init__()
        features = mobilenet_v2().features[:-1]
        blocks = list(features.children())
        stride, dilation = 1, 1
        for block in blocks:
            conv = _depthwise_or_stem_conv(block)
            s = conv.stride[0]
            if s > 1 and stride * s > output_stride:
                # This block would go past the output stride: keep the resolution, and dilate
                # every later depthwise conv instead (this block keeps the previous dilation).
                conv.stride = (1, 1)
                conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
                dilation *= s
            else:
                stride *= s
                if conv.kernel_size[0] == 3 and conv.groups > 1:
                    conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
        # Slicing keeps the block indices in the keys (high_level_features.4 ... .17), as in the original.
        self.low_level_features = features[:self.LOW_LEVEL_BLOCKS]
        self.high_level_features = features[self.LOW_LEVEL_BLOCKS:]
        self.out_channels = blocks[-1].out_channels

    def forward(self, x):
        return {"out": self.high_level_features(self.low_level_features(x))}


def _depthwise_or_stem_conv(block):
    """The 3x3 conv of a MobileNetV2 block: the stem conv, or the depthwise conv of an inverted residual."""
    if hasattr(block, "conv"):
        return next(m for m in block.conv.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    return block[0]


@register_model('deeplabv3_resnet50', segmentation=True)
def deeplabv3_resnet50(num_classes=21, output_stride=8, pretrained_backbone=False):
    if pretrained_backbone:
        raise NotImplementedError("pretrained backbones are loaded by registry.get_model(pretrained=True)")
    dilate = [False, output_stride == 8, True]
    backbone = IntermediateLayerGetter(resnet50(replace_stride_with_dilation=dilate), {"layer4": "out"})
    return DeepLabV3(backbone, DeepLabHead(2048, num_classes, ASPP_RATES[output_stride]))


@register_model('deeplabv3_mobilenet', segmentation=True)
def deeplabv3_mobilenet(num_classes=21, output_stride=8, pretrained_backbone=False):
    if pretrained_backbone:
        raise NotImplementedError("pretrained backbones are loaded by registry.get_model(pretrained=True)")
    backbone = MobileNetV2Features(output_stride)
    return DeepLabV3(backbone, DeepLabHead(backbone.out_channels, num_classes, ASPP_RATES[output_stride]))


# ----------------------------------------------------------------- the CPU-sized variant
class _Block(nn.Module):
    """Residual 3x3-3x3 block with BN; a 1x1 projection when the shape changes."""

    def __init__(self, c_in, c_out, stride=1, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyBackbone(nn.Module):
    """Stem (stride 2) and four residual blocks: strides 2, 2, then dilations 2 and 4 (output stride 8)."""

    def __init__(self, width=16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.layer1 = _Block(w, 2 * w, stride=2)
        self.layer2 = _Block(2 * w, 4 * w, stride=2)
        self.layer3 = _Block(4 * w, 4 * w, dilation=2)
        self.layer4 = _Block(4 * w, 4 * w, dilation=4)
        self.out_channels = 4 * w

    def forward(self, x):
        return {"out": self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))}


@register_model('deeplabv3_tiny', segmentation=True)
def deeplabv3_tiny(num_classes=21, width=16):
    backbone = TinyBackbone(width)
    head = DeepLabHead(backbone.out_channels, num_classes, rates=(2, 4, 6), channels=4 * width)
    return DeepLabV3(backbone, head)


@register_model('deeplabv3_tiny_s', segmentation=True)
def deeplabv3_tiny_s(num_classes=21):
    """Half the width of ``deeplabv3_tiny`` (about a quarter of its parameters): the demo's student."""
    return deeplabv3_tiny(num_classes, width=8)
