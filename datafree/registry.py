"""The one place to plug models and datasets into every entry script and command.

Add your own in a few lines, in any module imported before the run starts::

    from datafree.registry import register_model, register_dataset

    @register_model('mynet')
    def mynet(num_classes):
        return MyNet(num_classes)

    @register_dataset('mydata', num_classes=5, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    def mydata(data_root, download=False):
        return train_set, val_set      # torch Datasets yielding (normalised image, label)

``--model mynet`` / ``--dataset mydata`` then work in train_scratch.py, vanilla_kd.py and
datafree_kd.py (``datafree-train``, ``datafree-vanilla-kd``, ``datafree-kd``), and appear in their ``--help``. Segmentation works the same way:
``register_model(name, segmentation=True)`` for a model whose logits are (N, classes, H, W),
``register_dataset(..., task='segmentation', ignore_index=255)`` for data yielding
(normalised image, int64 mask).

The built-in models register themselves where they are defined (datafree/models/classifiers/,
datafree/models/deeplab.py; registries in datafree/models/registry.py), the built-in datasets
likewise (datafree/datasets/; one record per dataset in datafree/datasets/registry.py). This
module imports both packages, so every built-in name is registered, and re-exports their API
(``registry.py`` at the repository's root is the same module, for ``import registry`` in a checkout).
"""
from datafree.datasets.nyuv2 import NYUV2_BASE_SIZE, NYUV2_CROP_SIZE, NYUV2_SCALE
from datafree.datasets.registry import (DATASET_DICT, DATASET_HFLIP, DATASET_NUM_CLASSES, DATASET_TASKS,
                                        DATASET_TRAIN_SIZES, NORMALIZE_DICT, DatasetEntry, class_names,
                                        dataset_names, flips_valid, get_dataset, get_task, register_dataset,
                                        train_size)
from datafree.models.registry import (IMAGENET_MODEL_DICT, MODEL_DICT, SEGMENTATION_MODEL_DICT, get_model,
                                      model_names, model_task, register_model)
from datafree.models.torchvision_weights import SEGMENTATION_BACKBONES, TORCHVISION_WEIGHTS

__all__ = ["register_model", "register_dataset", "get_model", "get_dataset", "get_task", "model_names",
           "dataset_names", "class_names", "model_task", "flips_valid", "train_size", "MODEL_DICT", "IMAGENET_MODEL_DICT",
           "SEGMENTATION_MODEL_DICT", "DATASET_DICT", "DatasetEntry", "NORMALIZE_DICT", "DATASET_NUM_CLASSES",
           "DATASET_TASKS", "DATASET_HFLIP", "DATASET_TRAIN_SIZES", "TORCHVISION_WEIGHTS", "SEGMENTATION_BACKBONES",
           "NYUV2_BASE_SIZE", "NYUV2_CROP_SIZE", "NYUV2_SCALE"]
