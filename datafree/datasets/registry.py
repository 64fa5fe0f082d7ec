"""The dataset registry: one record per dataset, registered in the module that defines it.

A record holds everything the scripts ask of a dataset: its builder
``builder(data_root, download=False) -> (train_set, val_set)``, class count, normalisation,
task, whether mirrored images keep their class and, optionally, the training split's size.
"""
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from datafree.tasks import build_task
from datafree.utils.registry import FieldView, Registry


@dataclass(frozen=True)
class DatasetEntry:
    builder: Callable
    num_classes: int
    mean: tuple
    std: tuple
    task: str = 'classification'
    task_options: dict = field(default_factory=dict)   # e.g. ignore_index, passed to datafree.tasks
    hflip: bool = True
    train_size: Optional[int] = None
    classes: Optional[tuple] = None   # class names, in label order (label-text embeddings read them)

    def __call__(self, data_root, download=False):
        return self.builder(data_root, download=download)

    @property
    def normalization(self):
        return dict(mean=self.mean, std=self.std)


DATASET_DICT = Registry('dataset')
# Read-only views of one field of every record, for code that reads them by name.
NORMALIZE_DICT = FieldView(DATASET_DICT, lambda entry: entry.normalization)
DATASET_NUM_CLASSES = FieldView(DATASET_DICT, lambda entry: entry.num_classes)
DATASET_TASKS = FieldView(DATASET_DICT, lambda entry: (entry.task, entry.task_options))
DATASET_HFLIP = FieldView(DATASET_DICT, lambda entry: entry.hflip)
DATASET_TRAIN_SIZES = FieldView(DATASET_DICT, lambda entry: entry.train_size)


def register_dataset(name, num_classes, mean, std, task='classification', train_size=None, hflip=True,
                     classes=None, **task_options):
    """Decorator: register ``fn(data_root, download=False) -> (train_set, val_set)``.

    ``task`` names the datafree.tasks task ('classification' or 'segmentation'); extra
    keywords (e.g. ``ignore_index=255``) are passed to it. ``train_size`` (optional) is the
    number of training images, which data-free runs then know without touching the training
    split (SSD-KD's default buffer is a tenth of it). ``hflip`` declares whether a mirrored
    image is still a valid image of its class (natural images: yes; digits and letters: no);
    the training transform of the built-in datasets and every synthesis and KD augmentation
    flip horizontally only where it is true. ``classes`` (optional) names the classes in label
    order; methods that embed class names (NAYER) read them.
    """
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"dataset {name!r}: {len(classes)} class names for {num_classes} classes")
    def add(builder):
        DATASET_DICT.register(name, DatasetEntry(builder, num_classes, tuple(mean), tuple(std), task,
                                                 dict(task_options), bool(hflip), train_size,
                                                 None if classes is None else tuple(classes)))
        return builder
    return add


def class_names(name):
    """The class names of ``name`` in label order, or None where its record has none."""
    return DATASET_DICT.lookup(name).classes


def dataset_names():
    return sorted(DATASET_DICT)


def get_dataset(name, data_root='data', download=False):
    """Return ``(num_classes, train_set, val_set)`` for a registered dataset."""
    entry = DATASET_DICT.lookup(name)
    train_set, val_set = entry(os.path.expanduser(data_root), download=download)
    return entry.num_classes, train_set, val_set


def get_task(dataset):
    """The task object (datafree.tasks) of a registered dataset: losses, metric, synthesis pieces."""
    entry = DATASET_DICT.lookup(dataset)   # an unknown name fails here, listing the valid ones
    return build_task(entry.task, entry.num_classes, hflip=entry.hflip, **entry.task_options)


def flips_valid(dataset):
    """Whether ``dataset`` was registered with ``hflip=True`` (mirrored images keep their class)."""
    return DATASET_DICT.lookup(dataset).hflip


def train_size(name, train_set=None):
    """Images in the training split of ``name``: as registered, else ``len(train_set)``."""
    if name in DATASET_TRAIN_SIZES:
        return DATASET_TRAIN_SIZES[name]
    return None if train_set is None else len(train_set)
