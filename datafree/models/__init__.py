"""Networks: CIFAR/ImageNet classifiers, DeepLabV3 segmentation models and the image generators used for synthesis."""
from . import classifiers, deeplab, generator

__all__ = ["classifiers", "deeplab", "generator"]
