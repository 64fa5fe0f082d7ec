"""Device-side augmentation and normalisation for synthetic batches: the one crop/resize/flip path of
every task (classification's padded crop, the random resized crops of segmentation, of CMI's local view
and of the ImageNet variant).

Every random parameter is drawn on the images' device and the crops are one gather or one sampling
grid per batch, so a step never waits for the host. kornia's augmentations, which the original release
uses, draw their parameters into host lists: a host sync per call on a GPU (counted with kornia 0.9.0 on
2026-12-07: its RandomResizedCrop calls ``.tolist()`` once per call, its RandomCrop ``.tolist()`` twice
and ``.cpu()`` once).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Normalizer(nn.Module):
    """(x - mean) / std per channel; ``denormalize`` inverts it."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std

    def denormalize(self, x):
        return x * self.std + self.mean


def repeat_channels(images, channels):
    """(N, 1, H, W) -> (N, channels, H, W) by repeating the one channel; (N, channels, H, W) passes unchanged.

    Grayscale data stored as identical channels (digits, MNIST) is synthesised in one channel
    (``--synthesis_channels 1``) and shown to the networks in the data's channel count.
    """
    if images.shape[1] == channels:
        return images
    return images.expand(-1, channels, -1, -1)


class RandomCropFlip(nn.Module):
    """A random ``size`` crop of the images zero-padded by ``padding`` on each side, mirrored left-right
    with probability 1/2 if ``hflip`` (the dataset's declaration that flips keep the class):
    torchvision's / kornia's RandomCrop(size, padding) [+ RandomHorizontalFlip].

    Every draw is made on the images' device and the crop is one gather. Differentiable: gradients
    reach the uncropped pixels.
    """

    def __init__(self, size, padding=4, hflip=True):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding = padding
        self.hflip = hflip

    def draw(self, n, height, width, device):
        """Per image: top and left corner of the crop in the padded image, and whether to flip."""
        rows, cols = height + 2 * self.padding - self.size[0], width + 2 * self.padding - self.size[1]
        if rows < 0 or cols < 0:
            raise ValueError(f"a {self.size} crop does not fit {height}x{width} images padded by {self.padding}")
        top = torch.randint(0, rows + 1, (n,), device=device)
        left = torch.randint(0, cols + 1, (n,), device=device)
        flip = torch.rand(n, device=device) < 0.5
        return top, left, flip & self.hflip

    def crop(self, images, top, left, flip):
        """The crops at ``top``/``left`` of the padded images, flipped where ``flip``."""
        n, c, _, _ = images.shape
        p, (h, w), device = self.padding, self.size, images.device
        padded = F.pad(images, (p, p, p, p))
        width = padded.shape[-1]
        rows = top.view(n, 1, 1) + torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        cols = left.view(n, 1, 1) + torch.where(flip.view(n, 1, 1), w - 1 - cols, cols)
        index = (rows * width + cols).view(n, 1, h * w).expand(n, c, h * w)
        return padded.flatten(2).gather(2, index).view(n, c, h, w)

    def forward(self, images):
        return self.crop(images, *self.draw(images.shape[0], *images.shape[-2:], images.device))


class RandomResizedCropFlip(nn.Module):
    """A random crop covering a share ``scale`` of the image's area with aspect ratio in ``ratio``
    (log-uniform), resized to ``size`` (bilinear), mirrored left-right with probability 1/2 if ``hflip``:
    torchvision's / kornia's RandomResizedCrop [+ RandomHorizontalFlip].

    Where a draw does not fit the image, its sides are cut to the image's (torchvision retries ten draws,
    then takes a centre crop: a host loop). All draws are made on the images' device and the whole batch
    is one affine sampling grid. Differentiable: gradients reach the source pixels.
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=True):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.log_ratio, self.hflip = scale, (math.log(ratio[0]), math.log(ratio[1])), hflip

    def draw(self, n, height, width, device):
        """Per image: the crop's centre and sides as shares of the image's width and height, and whether to flip."""
        area = torch.empty(n, device=device).uniform_(*self.scale)
        aspect = torch.empty(n, device=device).uniform_(*self.log_ratio).exp()       # width / height of the crop
        w = (area * aspect * height / width).sqrt().clamp(max=1.0)
        h = (area / aspect * width / height).sqrt().clamp(max=1.0)
        cx = w / 2 + torch.rand(n, device=device) * (1 - w)
        cy = h / 2 + torch.rand(n, device=device) * (1 - h)
        flip = torch.rand(n, device=device) < 0.5
        return cx, cy, w, h, flip & self.hflip

    def crop(self, images, cx, cy, w, h, flip):
        n = images.shape[0]
        theta = torch.zeros(n, 2, 3, device=images.device, dtype=torch.float32)
        theta[:, 0, 0] = torch.where(flip, -w, w)     # a mirrored crop samples its columns right to left
        theta[:, 0, 2] = 2 * cx - 1
        theta[:, 1, 1] = h
        theta[:, 1, 2] = 2 * cy - 1
        grid = F.affine_grid(theta, (n, images.shape[1], *self.size), align_corners=False)
        return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)

    def forward(self, images):
        return self.crop(images, *self.draw(images.shape[0], *images.shape[-2:], images.device))


def resized_crop_flip_normalize(size, scale, mean, std, hflip=True):
    """A random resized crop (share ``scale`` of the area) and a horizontal flip if ``hflip``, then normalisation."""
    return nn.Sequential(RandomResizedCropFlip(size, scale, hflip=hflip), Normalizer(mean, std))


def crop_flip_normalize(img_size, mean, std, padding=4, hflip=True):
    """Random crop with zero padding, a horizontal flip if ``hflip`` (the dataset's declaration),
    then normalisation: images in [0, 1] -> model input."""
    return nn.Sequential(RandomCropFlip(img_size, padding, hflip), Normalizer(mean, std))
