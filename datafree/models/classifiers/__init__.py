"""Classifiers of the original model zoo.

Every model maps images to logits; ``model(x, return_features=True)`` returns
``(logits, features)`` where ``features`` are the pooled penultimate activations
that feed the final linear layer.
"""
from . import mobilenetv2, resnet, resnet_in, resnet_tiny, shufflenetv2, vgg, wresnet

__all__ = ["mobilenetv2", "resnet", "resnet_in", "resnet_tiny", "shufflenetv2", "vgg", "wresnet"]
