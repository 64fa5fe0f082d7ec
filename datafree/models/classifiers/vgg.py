"""CIFAR VGG with batch norm and no hidden FC layers (vgg8/11/13), as in RepDistiller.

Five conv blocks; the fourth max-pool is applied only to 64x64 inputs, so a 32x32
image reaches the last block at 2x2 before global average pooling.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from datafree.models.registry import register_model

STAGE_WIDTHS = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "S": [[64], [128], [256], [512], [512]],
}


def _make_stage(widths, in_channels, batch_norm):
    layers = []
    for width in widths:
        layers.append(nn.Conv2d(in_channels, width, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        in_channels = width
    # The stage ends before its last ReLU; forward applies it.
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, cfg, batch_norm=False, num_classes=1000):
        super().__init__()
        in_channels = [3] + [stage[-1] for stage in cfg[:-1]]
        for i, (widths, c_in) in enumerate(zip(cfg, in_channels)):
            setattr(self, f"block{i}", _make_stage(widths, c_in, batch_norm))
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x, return_features=False):
        large_input = x.shape[2] == 64
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if large_input:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        features = torch.flatten(self.pool4(x), 1)
        logits = self.classifier(features)
        return (logits, features) if return_features else logits


@register_model('vgg8')
def vgg8_bn(num_classes=10):
    return VGG(STAGE_WIDTHS["S"], batch_norm=True, num_classes=num_classes)


@register_model('vgg11')
def vgg11_bn(num_classes=10):
    return VGG(STAGE_WIDTHS["A"], batch_norm=True, num_classes=num_classes)


@register_model('vgg13')
def vgg13_bn(num_classes=10):
    return VGG(STAGE_WIDTHS["B"], batch_norm=True, num_classes=num_classes)
