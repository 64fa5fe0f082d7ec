"""ImageNet (ILSVRC2012) and Tiny-ImageNet as ImageFolder layouts: DATA_ROOT/<name>/{train,val}/<class>/."""
import os

from torchvision import datasets
from torchvision import transforms as T

from .folder import LazyDataset, require_path
from .registry import register_dataset
from .transforms import cifar_style, normalized

TINY_IMAGENET_MEAN = TINY_IMAGENET_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def image_folders(name, root, train_tf, val_tf, layout_hint):
    """(train, val) ImageFolders; the training folder is only looked for, and scanned, when first
    used, so that data-free runs need nothing but val/ (scanning ImageNet's train/ takes minutes)."""
    require_path(os.path.join(root, 'val'), f"{name} (val)", layout_hint)

    def train_folder():
        require_path(os.path.join(root, 'train'), f"{name} (train)", layout_hint)
        return datasets.ImageFolder(os.path.join(root, 'train'), transform=train_tf)

    return LazyDataset(train_folder), datasets.ImageFolder(os.path.join(root, 'val'), transform=val_tf)


@register_dataset('tiny_imagenet', num_classes=200, train_size=100000, mean=TINY_IMAGENET_MEAN,
                  std=TINY_IMAGENET_STD)
def build_tiny_imagenet(data_root, download=False):
    root = os.path.join(data_root, 'tiny-imagenet-200')
    train_tf, val_tf = cifar_style('tiny_imagenet', size=64, padding=4)
    return image_folders('Tiny-ImageNet', root, train_tf, val_tf,
                         "download tiny-imagenet-200 and arrange train/ and val/ as one folder per class")


@register_dataset('imagenet', num_classes=1000, train_size=1281167, mean=IMAGENET_MEAN, std=IMAGENET_STD)
def build_imagenet(data_root, download=False):
    root = os.path.join(data_root, 'ILSVRC2012')
    train_tf, val_tf = normalized('imagenet', train_ops=[T.RandomResizedCrop(224), T.RandomHorizontalFlip()],
                                  val_ops=[T.Resize(256), T.CenterCrop(224)])
    return image_folders('ImageNet', root, train_tf, val_tf,
                         "put ILSVRC2012 there as train/ and val/ with one folder per class (ImageFolder layout)")
