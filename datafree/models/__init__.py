"""Networks: CIFAR/ImageNet classifiers and the image generators used for synthesis."""
from . import classifiers, generator

__all__ = ["classifiers", "generator"]
