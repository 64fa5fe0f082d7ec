"""Datasets, each registered (datafree.datasets.registry) in the module that defines it; importing this
package imports them all, so the registry is complete whenever it can be imported."""
from . import fashion_mnist, imagenet, torchvision_sets
from .digits import DIGITS_MEAN, DIGITS_STD, Digits, digits_split
from .folder import LazyDataset, UnlabeledImageFolder
from .nyuv2 import NYUv2
from .shapes import SHAPES_MEAN, SHAPES_STD, Shapes

__all__ = ["DIGITS_MEAN", "DIGITS_STD", "Digits", "digits_split", "LazyDataset", "UnlabeledImageFolder", "NYUv2",
           "SHAPES_MEAN", "SHAPES_STD", "Shapes", "fashion_mnist", "imagenet", "torchvision_sets"]
