"""Wide residual networks (pre-activation), as used by ZSKT and the original release.

The state-dict layout (``block{1,2,3}.layer.{i}``, ``convShortcut``) is kept so that the
original pretrained teachers load unchanged.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from datafree.models.registry import register_model


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv with an identity or 1x1 projection shortcut."""

    def __init__(self, in_planes, out_planes, stride, dropout_rate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout_rate)
        self.equal_in_out = in_planes == out_planes
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        # With a projection the shortcut also sees the pre-activated input.
        shortcut = x if self.equal_in_out else self.convShortcut(pre)
        out = F.relu(self.bn2(self.conv1(pre)))
        out = self.conv2(self.dropout(out))
        return shortcut + out


class WideStage(nn.Module):
    def __init__(self, num_blocks, in_planes, out_planes, stride, dropout_rate=0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                           stride if i == 0 else 1, dropout_rate)
            for i in range(num_blocks)
        ])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth, num_classes, widen_factor=1, dropout_rate=0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(n, widths[0], widths[1], 1, dropout_rate)
        self.block2 = WideStage(n, widths[1], widths[2], 2, dropout_rate)
        self.block3 = WideStage(n, widths[2], widths[3], 2, dropout_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self.feature_dim = widths[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x, return_features=False):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        features = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        logits = self.fc(features)
        return (logits, features) if return_features else logits


@register_model('wrn16_1')
def wrn_16_1(num_classes, dropout_rate=0.0):
    return WideResNet(16, num_classes, widen_factor=1, dropout_rate=dropout_rate)


@register_model('wrn16_2')
def wrn_16_2(num_classes, dropout_rate=0.0):
    return WideResNet(16, num_classes, widen_factor=2, dropout_rate=dropout_rate)


@register_model('wrn40_1')
def wrn_40_1(num_classes, dropout_rate=0.0):
    return WideResNet(40, num_classes, widen_factor=1, dropout_rate=dropout_rate)


@register_model('wrn40_2')
def wrn_40_2(num_classes, dropout_rate=0.0):
    return WideResNet(40, num_classes, widen_factor=2, dropout_rate=dropout_rate)
