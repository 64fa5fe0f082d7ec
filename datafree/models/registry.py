"""The model registries: each model family registers itself in the module that defines it.

``MODEL_DICT[name](num_classes=N)`` builds a CIFAR-sized classifier, ``IMAGENET_MODEL_DICT[name]()``
an ImageNet one (1000 classes), ``SEGMENTATION_MODEL_DICT[name](num_classes=N)`` a segmentation
model (logits N x classes x H x W). ``get_model`` builds any of them, with torchvision's weights
where asked (datafree/models/torchvision_weights.py).
"""
from datafree.errors import UnknownNameError, UsageError
from datafree.models import torchvision_weights
from datafree.utils.registry import Registry

MODEL_DICT = Registry('model')
IMAGENET_MODEL_DICT = Registry('ImageNet model')
SEGMENTATION_MODEL_DICT = Registry('segmentation model')


def register_model(name, imagenet=False, segmentation=False):
    """Decorator: register ``fn(num_classes)`` (or ``fn()`` with 1000 classes if ``imagenet``;
    a segmentation model if ``segmentation``)."""
    if segmentation:
        return SEGMENTATION_MODEL_DICT.register(name)
    return (IMAGENET_MODEL_DICT if imagenet else MODEL_DICT).register(name)


def model_names():
    return sorted(MODEL_DICT) + sorted(IMAGENET_MODEL_DICT) + sorted(SEGMENTATION_MODEL_DICT)


def model_task(name):
    """The task a registered model solves: 'segmentation' or 'classification'."""
    return 'segmentation' if name in SEGMENTATION_MODEL_DICT else 'classification'


def get_model(name, num_classes, pretrained=False, task=None):
    """Build a registered model with ``num_classes`` outputs.

    ``pretrained`` only applies to ImageNet models (torchvision's weights, downloaded on
    first use) and to the DeepLab models of the original release (their backbone gets the
    ImageNet weights); CIFAR teachers are loaded from checkpoints by the entry scripts. With a
    ``task`` (datafree.tasks), a model made for another task is refused.
    """
    if task is not None and name in set(model_names()) and model_task(name) != task.name:
        fitting = [n for n in model_names() if model_task(n) == task.name]
        raise UsageError(f"model '{name}' is made for {model_task(name)}, but the dataset is a {task.name} "
                         f"task; choose one of: {', '.join(fitting)}")
    if name in SEGMENTATION_MODEL_DICT:
        model = SEGMENTATION_MODEL_DICT[name](num_classes=num_classes)
        if pretrained:
            torchvision_weights.load_pretrained_backbone(model, name)
        return model
    if name in IMAGENET_MODEL_DICT:
        model = IMAGENET_MODEL_DICT[name]()
        if pretrained:
            model.load_state_dict(torchvision_weights.torchvision_state_dict(name))
        if num_classes != 1000:
            torchvision_weights.replace_classifier(model, num_classes)
        return model
    if name not in MODEL_DICT:
        raise UnknownNameError(f"unknown model '{name}'; choose one of: {', '.join(model_names())}")
    if pretrained:
        raise UsageError(f"there are no built-in pretrained weights for '{name}'; "
                         f"load a checkpoint instead (checkpoints/pretrained/<dataset>_{name}.pth)")
    return MODEL_DICT[name](num_classes=num_classes)
