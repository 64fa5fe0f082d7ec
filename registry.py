"""The one place to plug models and datasets into every entry script.

Add your own in a few lines, here or in any module imported from here::

    from registry import register_model, register_dataset

    @register_model('mynet')
    def mynet(num_classes):
        return MyNet(num_classes)

    @register_dataset('mydata', num_classes=5, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    def mydata(data_root, download=False):
        return train_set, val_set      # torch Datasets yielding (normalised image, label)

``--model mynet`` / ``--dataset mydata`` then work in train_scratch.py, vanilla_kd.py and
datafree_kd.py, and appear in their ``--help``.
"""
import os

import torch.nn as nn
from torchvision import datasets
from torchvision import transforms as T

from datafree.datasets import DIGITS_MEAN, DIGITS_STD, Digits
from datafree.models import classifiers
from datafree.errors import DatasetNotFoundError, UnknownNameError, UsageError
from datafree.utils.registry import Registry

NORMALIZE_DICT = {
    'mnist': dict(mean=(0.1307,) * 3, std=(0.3081,) * 3),
    'cifar10': dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010)),
    'cifar100': dict(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761)),
    'svhn': dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    'tiny_imagenet': dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    'imagenet': dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    'digits': dict(mean=DIGITS_MEAN, std=DIGITS_STD),
}

# CIFAR-sized classifiers, built as MODEL_DICT[name](num_classes=N).
MODEL_DICT = Registry('model')
# ImageNet classifiers, built as IMAGENET_MODEL_DICT[name]() with 1000 classes.
IMAGENET_MODEL_DICT = Registry('ImageNet model')
# Datasets: DATASET_DICT[name](data_root, download) -> (train_set, val_set).
DATASET_DICT = Registry('dataset')
DATASET_NUM_CLASSES = {}

# torchvision's ImageNet weights for the ImageNet models (same state-dict layout as ours).
TORCHVISION_WEIGHTS = {
    'resnet18_imagenet': ('resnet18', 'ResNet18_Weights'),
    'resnet50_imagenet': ('resnet50', 'ResNet50_Weights'),
    'mobilenetv2_imagenet': ('mobilenet_v2', 'MobileNet_V2_Weights'),
}


def register_model(name, imagenet=False):
    """Decorator: register ``fn(num_classes)`` (or ``fn()`` with 1000 classes if ``imagenet``)."""
    return (IMAGENET_MODEL_DICT if imagenet else MODEL_DICT).register(name)


def register_dataset(name, num_classes, mean, std):
    """Decorator: register ``fn(data_root, download=False) -> (train_set, val_set)``."""
    def add(builder):
        DATASET_DICT.register(name, builder)
        DATASET_NUM_CLASSES[name] = num_classes
        NORMALIZE_DICT[name] = dict(mean=tuple(mean), std=tuple(std))
        return builder
    return add


def model_names():
    return sorted(MODEL_DICT) + sorted(IMAGENET_MODEL_DICT)


def dataset_names():
    return sorted(DATASET_DICT)


def get_model(name, num_classes, pretrained=False):
    """Build a registered classifier with ``num_classes`` outputs.

    ``pretrained`` only applies to ImageNet models (torchvision's weights, downloaded on
    first use); CIFAR teachers are loaded from checkpoints by the entry scripts.
    """
    if name in IMAGENET_MODEL_DICT:
        model = IMAGENET_MODEL_DICT[name]()
        if pretrained:
            model.load_state_dict(_torchvision_state_dict(name))
        if num_classes != 1000:
            _replace_classifier(model, num_classes)
        return model
    if name not in MODEL_DICT:
        raise UnknownNameError(f"unknown model '{name}'; choose one of: {', '.join(model_names())}")
    if pretrained:
        raise UsageError(f"there are no built-in pretrained weights for '{name}'; "
                         f"load a checkpoint instead (checkpoints/pretrained/<dataset>_{name}.pth)")
    return MODEL_DICT[name](num_classes=num_classes)


def get_dataset(name, data_root='data', download=False):
    """Return ``(num_classes, train_set, val_set)`` for a registered dataset."""
    builder = DATASET_DICT.lookup(name)
    train_set, val_set = builder(os.path.expanduser(data_root), download=download)
    return DATASET_NUM_CLASSES[name], train_set, val_set


def _torchvision_state_dict(name):
    import torchvision.models

    arch, weights_enum = TORCHVISION_WEIGHTS[name]
    weights = getattr(torchvision.models, weights_enum).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except OSError as err:
        raise UsageError(
            f"could not download torchvision's {arch} weights ({err}); without internet, "
            f"download {weights.url} elsewhere and pass it with --teacher_ckpt") from err


def _replace_classifier(model, num_classes):
    if isinstance(getattr(model, 'fc', None), nn.Linear):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)


# --------------------------------------------------------------------------- models
for _name, _fn in {
    # Wide ResNets of ZSKT
    'wrn16_1': classifiers.wresnet.wrn_16_1,
    'wrn16_2': classifiers.wresnet.wrn_16_2,
    'wrn40_1': classifiers.wresnet.wrn_40_1,
    'wrn40_2': classifiers.wresnet.wrn_40_2,
    # RepDistiller's CIFAR models
    'resnet8': classifiers.resnet_tiny.resnet8,
    'resnet20': classifiers.resnet_tiny.resnet20,
    'resnet32': classifiers.resnet_tiny.resnet32,
    'resnet56': classifiers.resnet_tiny.resnet56,
    'resnet110': classifiers.resnet_tiny.resnet110,
    'resnet8x4': classifiers.resnet_tiny.resnet8x4,
    'resnet32x4': classifiers.resnet_tiny.resnet32x4,
    'vgg8': classifiers.vgg.vgg8_bn,
    'vgg11': classifiers.vgg.vgg11_bn,
    'vgg13': classifiers.vgg.vgg13_bn,
    'shufflenetv2': classifiers.shufflenetv2.shuffle_v2,
    'mobilenetv2': classifiers.mobilenetv2.mobilenet_v2,
    # DAFL's CIFAR ResNets
    'resnet18': classifiers.resnet.resnet18,
    'resnet34': classifiers.resnet.resnet34,
    'resnet50': classifiers.resnet.resnet50,
}.items():
    register_model(_name)(_fn)

register_model('resnet18_imagenet', imagenet=True)(classifiers.resnet_in.resnet18)
register_model('resnet50_imagenet', imagenet=True)(classifiers.resnet_in.resnet50)
register_model('mobilenetv2_imagenet', imagenet=True)(classifiers.mobilenetv2.mobilenet_v2)


# ------------------------------------------------------------------------- datasets
def _transforms(name, train_ops=(), val_ops=()):
    normalize = [T.ToTensor(), T.Normalize(**NORMALIZE_DICT[name])]
    return T.Compose([*train_ops, *normalize]), T.Compose([*val_ops, *normalize])


def _cifar_style(name, size=32, padding=4):
    return _transforms(name, train_ops=[T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip()])


def _require(path, what, how):
    if not os.path.exists(path):
        raise DatasetNotFoundError(f"{what} is not at {path}; {how}")


def _torchvision_set(cls, name, root, download, marker, **split_kwargs):
    """Build a torchvision dataset under ``root``, or say how to get it."""
    if not download:
        _require(os.path.join(root, marker), name, f"add --download to fetch it into {root}, "
                 f"or put the torchvision copy there")
    return cls(root, download=download, **split_kwargs)


@register_dataset('digits', num_classes=10, mean=DIGITS_MEAN, std=DIGITS_STD)
def _digits(data_root, download=False):
    train_tf, val_tf = _cifar_style('digits')
    return Digits(train=True, transform=train_tf), Digits(train=False, transform=val_tf)


def _cifar(cls, name, what, marker):
    def build(data_root, download=False):
        root = os.path.join(data_root, 'torchdata')
        train_tf, val_tf = _cifar_style(name)
        return tuple(_torchvision_set(cls, what, root, download, marker, train=train, transform=tf)
                     for train, tf in ((True, train_tf), (False, val_tf)))
    return build


register_dataset('cifar10', num_classes=10, **NORMALIZE_DICT['cifar10'])(
    _cifar(datasets.CIFAR10, 'cifar10', 'CIFAR-10', 'cifar-10-batches-py'))
register_dataset('cifar100', num_classes=100, **NORMALIZE_DICT['cifar100'])(
    _cifar(datasets.CIFAR100, 'cifar100', 'CIFAR-100', 'cifar-100-python'))


@register_dataset('svhn', num_classes=10, **NORMALIZE_DICT['svhn'])
def _svhn(data_root, download=False):
    root = os.path.join(data_root, 'torchdata')
    tf, _ = _transforms('svhn')
    return (_torchvision_set(datasets.SVHN, 'SVHN (train)', root, download, 'train_32x32.mat',
                             split='train', transform=tf),
            _torchvision_set(datasets.SVHN, 'SVHN (test)', root, download, 'test_32x32.mat',
                             split='test', transform=tf))


@register_dataset('mnist', num_classes=10, **NORMALIZE_DICT['mnist'])
def _mnist(data_root, download=False):
    # 32x32 and 3 identical channels, so every classifier of the zoo accepts it.
    root = os.path.join(data_root, 'torchdata')
    ops = [T.Resize((32, 32)), T.Grayscale(num_output_channels=3)]
    tf, _ = _transforms('mnist', train_ops=ops)
    make = lambda train: _torchvision_set(datasets.MNIST, 'MNIST', root, download, 'MNIST/raw',
                                          train=train, transform=tf)
    return make(True), make(False)


def _image_folders(name, root, train_tf, val_tf, layout_hint):
    for split in ('train', 'val'):
        _require(os.path.join(root, split), f"{name} ({split})", layout_hint)
    return (datasets.ImageFolder(os.path.join(root, 'train'), transform=train_tf),
            datasets.ImageFolder(os.path.join(root, 'val'), transform=val_tf))


@register_dataset('tiny_imagenet', num_classes=200, **NORMALIZE_DICT['tiny_imagenet'])
def _tiny_imagenet(data_root, download=False):
    root = os.path.join(data_root, 'tiny-imagenet-200')
    train_tf, val_tf = _cifar_style('tiny_imagenet', size=64, padding=4)
    return _image_folders('Tiny-ImageNet', root, train_tf, val_tf,
                          "download tiny-imagenet-200 and arrange train/ and val/ as one folder per class")


@register_dataset('imagenet', num_classes=1000, **NORMALIZE_DICT['imagenet'])
def _imagenet(data_root, download=False):
    root = os.path.join(data_root, 'ILSVRC2012')
    train_tf, val_tf = _transforms('imagenet',
                                   train_ops=[T.RandomResizedCrop(224), T.RandomHorizontalFlip()],
                                   val_ops=[T.Resize(256), T.CenterCrop(224)])
    return _image_folders('ImageNet', root, train_tf, val_tf,
                          "put ILSVRC2012 there as train/ and val/ with one folder per class (ImageFolder layout)")
