"""Offline 'digits': scikit-learn's bundled 8x8 handwritten digits as 32x32 RGB images.

1,797 images of 10 classes ship inside scikit-learn, so this is real data that needs no
download. Each image is scaled from [0, 16] to [0, 1], upsampled bilinearly to 32x32,
copied to 3 identical channels and stored as uint8 (like a PNG). The split is stratified,
70% train / 30% test, with a fixed seed, so every machine sees the same split.
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F

from .folder import ImageArray
from .registry import register_dataset
from .transforms import cifar_style

SPLIT_SEED = 0
TEST_FRACTION = 0.3
IMAGE_SIZE = 32

# Per-channel mean/std of the train split in [0, 1]; tests/test_datasets.py recomputes them.
DIGITS_MEAN = (0.3055, 0.3055, 0.3055)
DIGITS_STD = (0.3237, 0.3237, 0.3237)
# Class names in label order (NAYER embeds them); MNIST and SVHN share them.
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@functools.lru_cache(maxsize=1)
def _load_all():
    """(images uint8 (N, 32, 32, 3), labels int64 (N,)) for all 1,797 digits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    big = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    big = (big.clamp(0, 1) * 255).round().to(torch.uint8)
    images = big.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).contiguous().numpy()
    return images, bunch.target.astype(np.int64)


def digits_split(train):
    """Indices of the fixed stratified train (``train=True``) or test split."""
    from sklearn.model_selection import train_test_split

    _, labels = _load_all()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)
    return np.sort(train_idx if train else test_idx)


class Digits(ImageArray):
    """The train or test split of the offline digits; yields (transform(PIL image), label)."""

    num_classes = 10

    def __init__(self, train=True, transform=None):
        images, labels = _load_all()
        idx = digits_split(train)
        super().__init__(images[idx], labels[idx], transform)


# Digits are not mirror-symmetric (a mirrored 2, 3 or 7 is no digit), hence hflip=False.
@register_dataset('digits', num_classes=10, mean=DIGITS_MEAN, std=DIGITS_STD, hflip=False, classes=DIGIT_NAMES)
def build_digits(data_root, download=False):
    train_tf, val_tf = cifar_style('digits')
    return Digits(train=True, transform=train_tf), Digits(train=False, transform=val_tf)
