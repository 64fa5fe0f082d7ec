"""Data on disk: a flat or nested folder of images without labels (a transfer set, or synthetic
images), a dataset built on first use, and the one-sentence error for data that is not there."""
import os

import torch
from PIL import Image

from datafree.errors import DatasetNotFoundError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ImageArray(torch.utils.data.Dataset):
    """Images held in memory as a uint8 array (N, H, W, C) with integer labels; yields
    (transform(PIL image), label), as torchvision's in-memory datasets (CIFAR, MNIST) do."""

    def __init__(self, images, labels, transform=None):
        self.data = images
        self.targets = [int(v) for v in labels]
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


class UnlabeledImageFolder(torch.utils.data.Dataset):
    """Every image under ``root`` (searched recursively, sorted); yields (image, -1)."""

    def __init__(self, root, transform=None):
        self.root = root
        self.files = sorted(
            os.path.join(dirpath, name)
            for dirpath, _, names in os.walk(root)
            for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with Image.open(self.files[index]) as image:
            image = image.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, -1


def iter_image_batches(root, size, start=0, step=1, batch_size=256):
    """Images start, start + step, ... under ``root`` (sorted), resized to size x size, as float
    tensors (n, 3, size, size) in [0, 1] of at most ``batch_size`` images: a large folder is
    never held in memory at once."""
    from torchvision import transforms as T

    folder = UnlabeledImageFolder(root, transform=T.Compose([T.Resize((size, size)), T.ToTensor()]))
    indices = range(start, len(folder), step)
    for first in range(0, len(indices), batch_size):
        yield torch.stack([folder[i][0] for i in indices[first:first + batch_size]])


class LazyDataset(torch.utils.data.Dataset):
    """A dataset built by ``build()`` on first use (its length or an item): a split that a run
    may never touch (the training split in a data-free run) costs nothing and may be absent."""

    def __init__(self, build):
        self._build = build
        self._dataset = None

    @property
    def dataset(self):
        if self._dataset is None:
            self._dataset = self._build()
        return self._dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]

    def __getattr__(self, name):   # targets, classes, ...: those of the built dataset
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def require_path(path, what, how):
    """Fail with one sentence saying where ``what`` was looked for and ``how`` to get it."""
    if not os.path.exists(path):
        raise DatasetNotFoundError(f"{what} is not at {path}; {how}")
