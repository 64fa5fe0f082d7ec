"""Image generators for model inversion.

``Generator`` maps a latent vector to a 32x32-style image in [0, 1] (sigmoid output);
``DeepGenerator`` maps a spatial latent (nz x H/16 x W/16) to a 224x224-style image.
"""
import copy

import torch
import torch.nn as nn

from datafree.augment import repeat_channels


# The original release's generator size for every 32x32 method (DAFL alone uses nz 512).
DEFAULT_NZ = 256
DEFAULT_NGF = 64


def reset_bn_affine(generator):
    """Re-initialise every BatchNorm's affine parameters: weight N(1, 0.02), bias 0."""
    for m in generator.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def reinitialize(generator):
    """DCGAN-style re-initialisation of a whole generator: weights N(0, 0.02), zero biases, BN N(1, 0.02)."""
    for m in generator.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    reset_bn_affine(generator)


class Float32Sigmoid(nn.Module):
    """The generators' output sigmoid, in float32 even under autocast: a bfloat16 sigmoid returns
    exactly 1, with zero gradient, for every input above about 6."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return torch.sigmoid(x.float())


class Generator(nn.Module):
    """Linear projection to (2*ngf, s/4, s/4), then two upsampling conv blocks.

    z: (N, nz) -> image: (N, out_channels, img_size, img_size); the last conv makes ``nc`` channels,
    repeated to ``out_channels`` (default nc) when it is 1 (grayscale synthesis).
    """

    def __init__(self, nz=100, ngf=64, img_size=32, nc=3, out_channels=None):
        super().__init__()
        self.nz, self.ngf, self.img_size, self.nc = nz, ngf, img_size, nc
        self.out_channels = out_channels or nc
        self.init_size = img_size // 4
        self.l1 = nn.Sequential(nn.Linear(nz, ngf * 2 * self.init_size ** 2))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(ngf * 2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ngf * 2, ngf * 2, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ngf * 2, ngf, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, nc, 3, stride=1, padding=1),
            Float32Sigmoid(),
        )

    @property
    def latent_shape(self):
        """Shape of one latent code z (without the batch dimension)."""
        return (self.nz,)

    def first_layers(self):
        """The first weight layer and the first BatchNorm (what ``reset_l0`` re-initialises)."""
        return self.l1[0], self.conv_blocks[0]

    def forward(self, z):
        out = self.l1(z).view(z.shape[0], -1, self.init_size, self.init_size)
        return repeat_channels(self.conv_blocks(out), self.out_channels)

    def clone(self):
        """An independent copy on the same device (the fast generator G' of Fast DFKD)."""
        return copy.deepcopy(self)


class DeepGenerator(nn.Module):
    """Fully convolutional generator for 224x224 images from a spatial latent.

    z: (N, nz, img_size/16, img_size/16) -> four 2x upsamplings -> image: (N, out_channels, img_size, img_size)
    (``nc`` channels made, repeated to ``out_channels`` as in Generator).
    """

    def __init__(self, nz=100, ngf=64, img_size=224, nc=3, out_channels=None):
        super().__init__()
        self.nz, self.ngf, self.img_size, self.nc = nz, ngf, img_size, nc
        self.out_channels = out_channels or nc
        self.init_size = img_size // 16

        def up_block(c_in, c_out):
            return [nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]

        self.conv_blocks = nn.Sequential(
            nn.Conv2d(nz, 2 * ngf, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * ngf), nn.LeakyReLU(0.2, inplace=True),
            *up_block(2 * ngf, 2 * ngf),
            *up_block(2 * ngf, ngf),
            *up_block(ngf, ngf),
            *up_block(ngf, ngf),
            nn.Conv2d(ngf, nc, 3, 1, 1),
            Float32Sigmoid(),
        )

    @property
    def latent_shape(self):
        return (self.nz, self.init_size, self.init_size)

    def first_layers(self):
        return self.conv_blocks[0], self.conv_blocks[1]

    def forward(self, z):
        return repeat_channels(self.conv_blocks(z), self.out_channels)

    def clone(self):
        return copy.deepcopy(self)
