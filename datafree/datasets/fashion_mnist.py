"""Fashion-MNIST: 60,000 training and 10,000 test images of clothing in 10 classes (Zalando Research),
28x28 gray, zero-padded to 32x32 and copied to 3 channels so that every CIFAR model of the zoo applies.

The four official IDX files (gzip-compressed or not) are read from the first folder that holds them:
``--data_root`` itself, ``<data_root>/FashionMNIST/raw`` or ``<data_root>/torchdata/FashionMNIST/raw``
(torchvision's layout; ``--download`` fetches them there), or ``/usr/share/datasets/fashion-mnist``,
where Debian's ``dataset-fashion-mnist`` package installs them.
"""
import functools
import gzip
import os

import numpy as np

from datafree.errors import DatasetNotFoundError

from .folder import ImageArray
from .registry import register_dataset
from .transforms import cifar_style

DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
PAD = 2   # 28 + 2 * 2 = 32

# Per-channel mean/std of the padded training split in [0, 1] (float32 pixels, float64 sums), unrounded: the values
# the original's side-by-side harness computes, so that both sides normalise with the same float32 numbers and a
# seed gives both the same run (docs/side_by_side.md, DAFL). tests/test_fashion_mnist.py recomputes them.
FASHION_MNIST_MEAN = (0.21899983605474424,) * 3
FASHION_MNIST_STD = (0.33181137790057275,) * 3


def _idx_path(folder, name):
    for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(path):
            return path
    return None


def candidate_folders(data_root):
    return [data_root, os.path.join(data_root, "FashionMNIST", "raw"),
            os.path.join(data_root, "torchdata", "FashionMNIST", "raw"), DEBIAN_FOLDER]


def find_folder(data_root):
    """The first candidate folder holding all four IDX files, or a DatasetNotFoundError naming both ways to get them."""
    names = [name for pair in IDX_FILES.values() for name in pair]
    for folder in candidate_folders(data_root):
        if all(_idx_path(folder, name) for name in names):
            return folder
    raise DatasetNotFoundError(
        f"Fashion-MNIST was not found under {data_root} or {DEBIAN_FOLDER}; install it with "
        f"`apt-get install dataset-fashion-mnist`, or add --download to fetch it into {data_root}/torchdata")


def read_idx(path):
    """An unsigned-byte IDX file (optionally gzip-compressed) as a numpy array of its declared shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetNotFoundError(f"{path} is not an unsigned-byte IDX file; delete it and get the dataset again")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(data) != expected:
        raise DatasetNotFoundError(f"{path} holds {len(data)} bytes where its header promises {expected} "
                                   f"(truncated?); delete it and get the dataset again")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=4)
def load_split(folder, train):
    """(images uint8 (N, 32, 32, 3), labels int64 (N,)) of the official train or test split in ``folder``."""
    image_file, label_file = IDX_FILES[train]
    images = read_idx(_idx_path(folder, image_file))
    labels = read_idx(_idx_path(folder, label_file)).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise DatasetNotFoundError(f"the Fashion-MNIST files in {folder} do not match (images {images.shape}, "
                                   f"labels {labels.shape}); delete them and get the dataset again")
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)))
    return np.repeat(padded[..., None], 3, axis=3), labels


class FashionMNIST(ImageArray):
    """The train or test split; yields (transform(PIL image of 32x32x3), label)."""

    num_classes = 10
    classes = CLASSES

    def __init__(self, folder, train=True, transform=None):
        super().__init__(*load_split(folder, train), transform)


# Every shoe faces the same way: the heel (the mass of the image) lies right of the centre in 100% of the
# 6,000 training ankle boots, 99.5% of the sneakers and 94% of the sandals, so a mirrored shoe is an image
# the data never holds; flips are off, as for digits.
@register_dataset("fashion_mnist", num_classes=10, train_size=60000, hflip=False,
                  mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, classes=CLASSES)
def build_fashion_mnist(data_root, download=False):
    if download:
        try:
            find_folder(data_root)
        except DatasetNotFoundError:
            from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST
            for train in (True, False):
                TorchvisionFashionMNIST(os.path.join(data_root, "torchdata"), train=train, download=True)
    folder = find_folder(data_root)
    train_tf, val_tf = cifar_style("fashion_mnist")
    return FashionMNIST(folder, train=True, transform=train_tf), FashionMNIST(folder, train=False, transform=val_tf)
