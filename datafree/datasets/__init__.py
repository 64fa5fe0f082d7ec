"""Dataset code that torchvision does not already provide."""
from .digits import DIGITS_MEAN, DIGITS_STD, Digits, digits_split
from .folder import UnlabeledImageFolder

__all__ = ["DIGITS_MEAN", "DIGITS_STD", "Digits", "digits_split", "UnlabeledImageFolder"]
