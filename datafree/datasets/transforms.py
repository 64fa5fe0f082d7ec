"""Training and test transforms of the registered classification datasets (normalisation and
flips as the dataset was registered)."""
from torchvision import transforms as T

from .registry import DATASET_DICT


def normalized(name, train_ops=(), val_ops=()):
    """(train, val) transforms: the given ops, then to tensor and the dataset's normalisation."""
    normalize = [T.ToTensor(), T.Normalize(**DATASET_DICT.lookup(name).normalization)]
    return T.Compose([*train_ops, *normalize]), T.Compose([*val_ops, *normalize])


def cifar_style(name, size=32, padding=4):
    """Random padded crop, plus a horizontal flip where the dataset declares flips valid."""
    flip = [T.RandomHorizontalFlip()] if DATASET_DICT.lookup(name).hflip else []
    return normalized(name, train_ops=[T.RandomCrop(size, padding=padding), *flip])
