"""Thin CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4) as in RepDistiller.

Three stages at 32x32, 16x16 and 8x8, a fixed 8x8 average pool, then the classifier. The
residual blocks are the same as the ImageNet ResNets' (resnet_in.py).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from datafree.models.registry import register_model

from .resnet_in import BasicBlock, Bottleneck, make_stage


class ResNet(nn.Module):
    def __init__(self, depth, num_filters, block_name="basicblock", num_classes=10):
        super().__init__()
        if block_name.lower() == "basicblock":
            if (depth - 2) % 6:
                raise ValueError(f"basic-block ResNet depth must be 6n+2, got {depth}")
            n, block = (depth - 2) // 6, BasicBlock
        elif block_name.lower() == "bottleneck":
            if (depth - 2) % 9:
                raise ValueError(f"bottleneck ResNet depth must be 9n+2, got {depth}")
            n, block = (depth - 2) // 9, Bottleneck
        else:
            raise ValueError(f"block_name must be 'basicblock' or 'bottleneck', got {block_name!r}")

        self.conv1 = nn.Conv2d(3, num_filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1, planes = make_stage(block, num_filters[0], num_filters[1], n)
        self.layer2, planes = make_stage(block, planes, num_filters[2], n, stride=2)
        self.layer3, _ = make_stage(block, planes, num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x, return_features=False):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        features = torch.flatten(self.avgpool(x), 1)
        logits = self.fc(features)
        return (logits, features) if return_features else logits


@register_model('resnet8')
def resnet8(num_classes):
    return ResNet(8, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model('resnet20')
def resnet20(num_classes):
    return ResNet(20, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model('resnet32')
def resnet32(num_classes):
    return ResNet(32, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model('resnet56')
def resnet56(num_classes):
    return ResNet(56, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model('resnet110')
def resnet110(num_classes):
    return ResNet(110, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model('resnet8x4')
def resnet8x4(num_classes):
    return ResNet(8, [32, 64, 128, 256], "basicblock", num_classes=num_classes)


@register_model('resnet32x4')
def resnet32x4(num_classes):
    return ResNet(32, [32, 64, 128, 256], "basicblock", num_classes=num_classes)
