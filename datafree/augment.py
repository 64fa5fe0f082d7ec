"""Device-side augmentation and normalisation for synthetic batches (kornia)."""
import torch
import torch.nn as nn
from kornia import augmentation as K


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


def horizontal_flip(hflip=True):
    """A random horizontal flip (p = 0.5) where flips keep the class (``hflip``), else the identity."""
    return K.RandomHorizontalFlip() if hflip else nn.Identity()


def crop_flip_normalize(img_size, mean, std, padding=4, hflip=True):
    """Random crop with zero padding, a horizontal flip if ``hflip`` (the dataset's declaration),
    then normalisation: images in [0, 1] -> model input."""
    return nn.Sequential(
        K.RandomCrop(size=(img_size, img_size), padding=padding),
        horizontal_flip(hflip),
        Normalizer(mean, std),
    )
