"""The datasets torchvision downloads: CIFAR-10, CIFAR-100, SVHN and MNIST, under DATA_ROOT/torchdata."""
import os

from torchvision import datasets
from torchvision import transforms as T

from .digits import DIGIT_NAMES
from .folder import require_path
from .registry import register_dataset
from .transforms import cifar_style, normalized

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
SVHN_MEAN = SVHN_STD = (0.5, 0.5, 0.5)
MNIST_MEAN, MNIST_STD = (0.1307,) * 3, (0.3081,) * 3
# Class names in label order (torchvision's), for methods that embed them (NAYER).
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
CIFAR100_CLASSES = ('apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle', 'bottle',
                    'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle', 'caterpillar', 'cattle',
                    'chair', 'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch', 'crab', 'crocodile', 'cup',
                    'dinosaur', 'dolphin', 'elephant', 'flatfish', 'forest', 'fox', 'girl', 'hamster', 'house',
                    'kangaroo', 'keyboard', 'lamp', 'lawn_mower', 'leopard', 'lion', 'lizard', 'lobster', 'man',
                    'maple_tree', 'motorcycle', 'mountain', 'mouse', 'mushroom', 'oak_tree', 'orange', 'orchid',
                    'otter', 'palm_tree', 'pear', 'pickup_truck', 'pine_tree', 'plain', 'plate', 'poppy', 'porcupine',
                    'possum', 'rabbit', 'raccoon', 'ray', 'road', 'rocket', 'rose', 'sea', 'seal', 'shark', 'shrew',
                    'skunk', 'skyscraper', 'snail', 'snake', 'spider', 'squirrel', 'streetcar', 'sunflower',
                    'sweet_pepper', 'table', 'tank', 'telephone', 'television', 'tiger', 'tractor', 'train', 'trout',
                    'tulip', 'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf', 'woman', 'worm')


def torchvision_set(cls, name, root, download, marker, **split_kwargs):
    """Build a torchvision dataset under ``root``, or say how to get it."""
    if not download:
        require_path(os.path.join(root, marker), name, f"add --download to fetch it into {root}, "
                     f"or put the torchvision copy there")
    return cls(root, download=download, **split_kwargs)


def _cifar(cls, name, what, marker):
    def build(data_root, download=False):
        root = os.path.join(data_root, 'torchdata')
        train_tf, val_tf = cifar_style(name)
        return tuple(torchvision_set(cls, what, root, download, marker, train=train, transform=tf)
                     for train, tf in ((True, train_tf), (False, val_tf)))
    return build


register_dataset('cifar10', num_classes=10, train_size=50000, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                 classes=CIFAR10_CLASSES)(
    _cifar(datasets.CIFAR10, 'cifar10', 'CIFAR-10', 'cifar-10-batches-py'))
register_dataset('cifar100', num_classes=100, train_size=50000, mean=CIFAR100_MEAN, std=CIFAR100_STD,
                 classes=CIFAR100_CLASSES)(
    _cifar(datasets.CIFAR100, 'cifar100', 'CIFAR-100', 'cifar-100-python'))


@register_dataset('svhn', num_classes=10, train_size=73257, hflip=False,   # house numbers: digits too
                  mean=SVHN_MEAN, std=SVHN_STD, classes=DIGIT_NAMES)
def build_svhn(data_root, download=False):
    root = os.path.join(data_root, 'torchdata')
    tf, _ = normalized('svhn')
    return (torchvision_set(datasets.SVHN, 'SVHN (train)', root, download, 'train_32x32.mat',
                            split='train', transform=tf),
            torchvision_set(datasets.SVHN, 'SVHN (test)', root, download, 'test_32x32.mat',
                            split='test', transform=tf))


@register_dataset('mnist', num_classes=10, train_size=60000, hflip=False, mean=MNIST_MEAN, std=MNIST_STD,
                  classes=DIGIT_NAMES)
def build_mnist(data_root, download=False):
    # 32x32 and 3 identical channels, so every classifier of the zoo accepts it.
    root = os.path.join(data_root, 'torchdata')
    ops = [T.Resize((32, 32)), T.Grayscale(num_output_channels=3)]
    tf, _ = normalized('mnist', train_ops=ops)
    make = lambda train: torchvision_set(datasets.MNIST, 'MNIST', root, download, 'MNIST/raw',  # noqa: E731
                                         train=train, transform=tf)
    return make(True), make(False)
