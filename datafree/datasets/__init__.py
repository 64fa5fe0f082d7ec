"""Dataset code that torchvision does not already provide."""
from .digits import DIGITS_MEAN, DIGITS_STD, Digits, digits_split
from .folder import LazyDataset, UnlabeledImageFolder
from .nyuv2 import NYUv2
from .shapes import SHAPES_MEAN, SHAPES_STD, Shapes

__all__ = ["DIGITS_MEAN", "DIGITS_STD", "Digits", "digits_split", "LazyDataset", "UnlabeledImageFolder", "NYUv2",
           "SHAPES_MEAN", "SHAPES_STD", "Shapes"]
