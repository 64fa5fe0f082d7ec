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
datafree_kd.py, and appear in their ``--help``. Segmentation works the same way:
``register_model(name, segmentation=True)`` for a model whose logits are (N, classes, H, W),
``register_dataset(..., task='segmentation', ignore_index=255)`` for data yielding
(normalised image, int64 mask).
"""
import os

from torchvision import datasets
from torchvision import transforms as T

from datafree.datasets import DIGITS_MEAN, DIGITS_STD, NYUv2, SHAPES_MEAN, SHAPES_STD, Digits, LazyDataset, Shapes
from datafree.datasets.seg_transforms import segmentation_transforms
from datafree.errors import DatasetNotFoundError, UsageError
from datafree.models.registry import (IMAGENET_MODEL_DICT, MODEL_DICT, SEGMENTATION_MODEL_DICT,  # noqa: F401
                                      get_model, model_names, model_task, register_model)
from datafree.models.torchvision_weights import SEGMENTATION_BACKBONES, TORCHVISION_WEIGHTS  # noqa: F401
from datafree.tasks import build_task
from datafree.utils.registry import Registry

NORMALIZE_DICT = {
    'mnist': dict(mean=(0.1307,) * 3, std=(0.3081,) * 3),
    'cifar10': dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010)),
    'cifar100': dict(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761)),
    'svhn': dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    'tiny_imagenet': dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    'imagenet': dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    'digits': dict(mean=DIGITS_MEAN, std=DIGITS_STD),
    'nyuv2': dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    'shapes': dict(mean=SHAPES_MEAN, std=SHAPES_STD),
}

# Datasets: DATASET_DICT[name](data_root, download) -> (train_set, val_set).
DATASET_DICT = Registry('dataset')
DATASET_NUM_CLASSES = {}
DATASET_TASKS = {}   # name -> (task name, task options), see datafree/tasks.py
DATASET_HFLIP = {}   # name -> whether a horizontal flip keeps an image's class (augmentations follow it)
DATASET_TRAIN_SIZES = {}   # name -> images in the training split, where declared (no need to read it)

def register_dataset(name, num_classes, mean, std, task='classification', train_size=None, hflip=True,
                     **task_options):
    """Decorator: register ``fn(data_root, download=False) -> (train_set, val_set)``.

    ``task`` names the datafree.tasks task ('classification' or 'segmentation'); extra
    keywords (e.g. ``ignore_index=255``) are passed to it. ``train_size`` (optional) is the
    number of training images, which data-free runs then know without touching the training
    split (SSD-KD's default buffer is a tenth of it). ``hflip`` declares whether a mirrored
    image is still a valid image of its class (natural images: yes; digits and letters: no);
    the training transform of the built-in datasets and every synthesis and KD augmentation
    flip horizontally only where it is true.
    """
    def add(builder):
        DATASET_DICT.register(name, builder)
        DATASET_NUM_CLASSES[name] = num_classes
        if train_size is not None:
            DATASET_TRAIN_SIZES[name] = train_size
        DATASET_TASKS[name] = (task, task_options)
        DATASET_HFLIP[name] = bool(hflip)
        NORMALIZE_DICT[name] = dict(mean=tuple(mean), std=tuple(std))
        return builder
    return add


def get_task(dataset):
    """The task object (datafree.tasks) of a registered dataset: losses, metric, synthesis pieces."""
    DATASET_DICT.lookup(dataset)   # an unknown name fails here, listing the valid ones
    task, options = DATASET_TASKS.get(dataset, ('classification', {}))
    return build_task(task, DATASET_NUM_CLASSES[dataset], hflip=flips_valid(dataset), **options)


def flips_valid(dataset):
    """Whether ``dataset`` was registered with ``hflip=True`` (mirrored images keep their class)."""
    DATASET_DICT.lookup(dataset)
    return DATASET_HFLIP.get(dataset, True)


def train_size(name, train_set=None):
    """Images in the training split of ``name``: as registered, else ``len(train_set)``."""
    if name in DATASET_TRAIN_SIZES:
        return DATASET_TRAIN_SIZES[name]
    return None if train_set is None else len(train_set)


def dataset_names():
    return sorted(DATASET_DICT)


def get_dataset(name, data_root='data', download=False):
    """Return ``(num_classes, train_set, val_set)`` for a registered dataset."""
    builder = DATASET_DICT.lookup(name)
    train_set, val_set = builder(os.path.expanduser(data_root), download=download)
    return DATASET_NUM_CLASSES[name], train_set, val_set


# ------------------------------------------------------------------------- datasets
def _transforms(name, train_ops=(), val_ops=()):
    normalize = [T.ToTensor(), T.Normalize(**NORMALIZE_DICT[name])]
    return T.Compose([*train_ops, *normalize]), T.Compose([*val_ops, *normalize])


def _cifar_style(name, size=32, padding=4):
    flip = [T.RandomHorizontalFlip()] if flips_valid(name) else []
    return _transforms(name, train_ops=[T.RandomCrop(size, padding=padding), *flip])


def _require(path, what, how):
    if not os.path.exists(path):
        raise DatasetNotFoundError(f"{what} is not at {path}; {how}")


def _torchvision_set(cls, name, root, download, marker, **split_kwargs):
    """Build a torchvision dataset under ``root``, or say how to get it."""
    if not download:
        _require(os.path.join(root, marker), name, f"add --download to fetch it into {root}, "
                 f"or put the torchvision copy there")
    return cls(root, download=download, **split_kwargs)


# Digits are not mirror-symmetric (a mirrored 2, 3 or 7 is no digit), hence hflip=False.
@register_dataset('digits', num_classes=10, mean=DIGITS_MEAN, std=DIGITS_STD, hflip=False)
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


register_dataset('cifar10', num_classes=10, train_size=50000, **NORMALIZE_DICT['cifar10'])(
    _cifar(datasets.CIFAR10, 'cifar10', 'CIFAR-10', 'cifar-10-batches-py'))
register_dataset('cifar100', num_classes=100, train_size=50000, **NORMALIZE_DICT['cifar100'])(
    _cifar(datasets.CIFAR100, 'cifar100', 'CIFAR-100', 'cifar-100-python'))


@register_dataset('svhn', num_classes=10, train_size=73257, hflip=False,   # house numbers: digits too
                  **NORMALIZE_DICT['svhn'])
def _svhn(data_root, download=False):
    root = os.path.join(data_root, 'torchdata')
    tf, _ = _transforms('svhn')
    return (_torchvision_set(datasets.SVHN, 'SVHN (train)', root, download, 'train_32x32.mat',
                             split='train', transform=tf),
            _torchvision_set(datasets.SVHN, 'SVHN (test)', root, download, 'test_32x32.mat',
                             split='test', transform=tf))


@register_dataset('mnist', num_classes=10, train_size=60000, hflip=False, **NORMALIZE_DICT['mnist'])
def _mnist(data_root, download=False):
    # 32x32 and 3 identical channels, so every classifier of the zoo accepts it.
    root = os.path.join(data_root, 'torchdata')
    ops = [T.Resize((32, 32)), T.Grayscale(num_output_channels=3)]
    tf, _ = _transforms('mnist', train_ops=ops)
    make = lambda train: _torchvision_set(datasets.MNIST, 'MNIST', root, download, 'MNIST/raw',
                                          train=train, transform=tf)
    return make(True), make(False)


def _image_folders(name, root, train_tf, val_tf, layout_hint):
    """(train, val) ImageFolders; the training folder is only looked for, and scanned, when first
    used, so that data-free runs need nothing but val/ (scanning ImageNet's train/ takes minutes)."""
    _require(os.path.join(root, 'val'), f"{name} (val)", layout_hint)

    def train_folder():
        _require(os.path.join(root, 'train'), f"{name} (train)", layout_hint)
        return datasets.ImageFolder(os.path.join(root, 'train'), transform=train_tf)

    return LazyDataset(train_folder), datasets.ImageFolder(os.path.join(root, 'val'), transform=val_tf)


@register_dataset('tiny_imagenet', num_classes=200, train_size=100000, **NORMALIZE_DICT['tiny_imagenet'])
def _tiny_imagenet(data_root, download=False):
    root = os.path.join(data_root, 'tiny-imagenet-200')
    train_tf, val_tf = _cifar_style('tiny_imagenet', size=64, padding=4)
    return _image_folders('Tiny-ImageNet', root, train_tf, val_tf,
                          "download tiny-imagenet-200 and arrange train/ and val/ as one folder per class")


@register_dataset('imagenet', num_classes=1000, train_size=1281167, **NORMALIZE_DICT['imagenet'])
def _imagenet(data_root, download=False):
    root = os.path.join(data_root, 'ILSVRC2012')
    train_tf, val_tf = _transforms('imagenet',
                                   train_ops=[T.RandomResizedCrop(224), T.RandomHorizontalFlip()],
                                   val_ops=[T.Resize(256), T.CenterCrop(224)])
    return _image_folders('ImageNet', root, train_tf, val_tf,
                          "put ILSVRC2012 there as train/ and val/ with one folder per class (ImageFolder layout)")


# ------------------------------------------------------------------ segmentation datasets
# As the original release: images resized to a shorter side of 256 and 128x128 training
# crops; ours also draws a random scale in [0.5, 2] before the crop. Test images are the
# whole resized image (256 x 341).
NYUV2_BASE_SIZE, NYUV2_CROP_SIZE, NYUV2_SCALE = 256, 128, (0.5, 2.0)


@register_dataset('nyuv2', num_classes=13, task='segmentation', ignore_index=255, **NORMALIZE_DICT['nyuv2'])
def _nyuv2(data_root, download=False):
    if download:
        raise UsageError("NYUv2 cannot be downloaded by this project; put it in place as docs/segmentation.md says "
                         "and drop --download")
    root = os.path.join(data_root, 'NYUv2')
    train_tf, val_tf = segmentation_transforms(**NORMALIZE_DICT['nyuv2'], crop_size=NYUV2_CROP_SIZE,
                                               base_size=NYUV2_BASE_SIZE, scale=NYUV2_SCALE)
    return NYUv2(root, 'train', transforms=train_tf), NYUv2(root, 'test', transforms=val_tf)


@register_dataset('shapes', num_classes=Shapes.num_classes, task='segmentation', ignore_index=255,
                  mean=SHAPES_MEAN, std=SHAPES_STD)
def _shapes(data_root, download=False):
    # 64x64 generated images: random scale in [0.75, 1.25], 64x64 crop (padded with the ignore index), flip.
    train_tf, val_tf = segmentation_transforms(SHAPES_MEAN, SHAPES_STD, crop_size=64, scale=(0.75, 1.25))
    return Shapes('train', transforms=train_tf), Shapes('test', transforms=val_tf)
