"""Joint image/mask transforms for segmentation: every geometric change hits both alike.

Images are PIL RGB images (bilinear resampling), masks PIL 'L' images of class indices
(nearest resampling, padded with the ignore index). Randomness comes from torch, so
``torch.manual_seed`` (and DataLoader worker seeding) governs it.
"""
import torch
import torchvision.transforms.functional as TF
from PIL import Image


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, mask):
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask


class ResizeShorter:
    """Resize so that the shorter side is ``size`` (aspect ratio kept)."""

    def __init__(self, size):
        self.size = size

    def __call__(self, image, mask):
        w, h = image.size
        scale = self.size / min(w, h)
        return _resize(image, mask, round(w * scale), round(h * scale))


class RandomScale:
    """Resize both sides by a factor drawn uniformly from ``[low, high]``."""

    def __init__(self, low, high):
        self.low, self.high = low, high

    def __call__(self, image, mask):
        s = self.low + (self.high - self.low) * torch.rand(()).item()
        w, h = image.size
        return _resize(image, mask, max(1, round(w * s)), max(1, round(h * s)))


class RandomCrop:
    """A random ``size`` x ``size`` crop; smaller inputs are first padded (image 0, mask ``ignore_index``)."""

    def __init__(self, size, ignore_index=255):
        self.size, self.ignore_index = size, ignore_index

    def __call__(self, image, mask):
        w, h = image.size
        pad_w, pad_h = max(self.size - w, 0), max(self.size - h, 0)
        if pad_w or pad_h:
            padding = [0, 0, pad_w, pad_h]   # left, top, right, bottom
            image = TF.pad(image, padding, fill=0)
            mask = TF.pad(mask, padding, fill=self.ignore_index)
            w, h = image.size
        top = torch.randint(0, h - self.size + 1, ()).item()
        left = torch.randint(0, w - self.size + 1, ()).item()
        return (TF.crop(image, top, left, self.size, self.size),
                TF.crop(mask, top, left, self.size, self.size))


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, mask):
        if torch.rand(()).item() < self.p:
            return TF.hflip(image), TF.hflip(mask)
        return image, mask


class ToTensorNormalize:
    """Image -> normalised float tensor (C, H, W); mask -> int64 tensor (H, W) of class indices."""

    def __init__(self, mean, std):
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image, mask):
        tensor = TF.normalize(TF.to_tensor(image), self.mean, self.std)
        return tensor, TF.pil_to_tensor(mask).squeeze(0).long()


def _resize(image, mask, w, h):
    return image.resize((w, h), Image.BILINEAR), mask.resize((w, h), Image.NEAREST)


def segmentation_transforms(mean, std, crop_size=None, base_size=None, scale=(0.5, 2.0), ignore_index=255):
    """The usual pair: train = [shorter side to base_size] -> random scale -> random crop -> flip;
    val = [shorter side to base_size]. Both end with tensor conversion and normalisation."""
    resize = [ResizeShorter(base_size)] if base_size else []
    finish = ToTensorNormalize(mean, std)
    train = [*resize, RandomScale(*scale)]
    if crop_size:
        train.append(RandomCrop(crop_size, ignore_index))
    train += [RandomHorizontalFlip(), finish]
    return Compose(train), Compose([*resize, finish])
