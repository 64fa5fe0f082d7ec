"""Networks: CIFAR/ImageNet classifiers, DeepLabV3 segmentation models and the image generators used for synthesis.

Each model family registers its names in datafree.models.registry where it is defined; importing this
package imports them all, so the registry is complete whenever it can be imported.
"""
from . import classifiers, deeplab, generator, registry, torchvision_weights

__all__ = ["classifiers", "deeplab", "generator", "registry", "torchvision_weights"]
