"""A dataset declares whether horizontal flips are valid; every augmentation follows it."""
import pytest
import torch
from torchvision import transforms as T

import registry
from datafree.augment import RandomCropFlip, RandomResizedCropFlip, crop_flip_normalize
from datafree.datasets.transforms import cifar_style
from datafree.synthesis import SYNTHESIZERS
from datafree.synthesis.deepinv import jitter_and_flip
from datafree.tasks import build_task

from test_baselines import make_config

SIZE = 32


def left_bright(n=1):
    """Images whose left half is 1 and right half 0: a flip is the only way to darken the left."""
    x = torch.zeros(n, 3, SIZE, SIZE)
    x[..., :SIZE // 2] = 1.0
    return x


def flipped(views):
    """Per view: whether its right half is brighter than its left (a shift of <= 4 px never does that)."""
    return views[..., SIZE // 2:].mean(dim=(1, 2, 3)) > views[..., :SIZE // 2].mean(dim=(1, 2, 3))


@pytest.mark.parametrize("name,valid", [("digits", False), ("mnist", False), ("fashion_mnist", False), ("svhn", False),
                                        ("cifar10", True),
                                        ("cifar100", True), ("tiny_imagenet", True), ("imagenet", True),
                                        ("nyuv2", True), ("shapes", True)])
def test_builtin_datasets_declare_flips(name, valid):
    assert registry.flips_valid(name) is valid
    assert registry.get_task(name).hflip is valid


def test_custom_dataset_declares_flips_default_valid():
    def data(data_root, download=False):
        x = torch.rand(4, 3, 8, 8)
        return torch.utils.data.TensorDataset(x, torch.zeros(4)), torch.utils.data.TensorDataset(x, torch.zeros(4))

    registry.register_dataset("flip_test_letters", num_classes=2, mean=(0.5,) * 3, std=(0.5,) * 3, hflip=False)(data)
    registry.register_dataset("flip_test_photos", num_classes=2, mean=(0.5,) * 3, std=(0.5,) * 3)(data)
    try:
        assert registry.get_task("flip_test_letters").hflip is False
        assert registry.get_task("flip_test_photos").hflip is True
    finally:
        for name in ("flip_test_letters", "flip_test_photos"):
            del registry.DATASET_DICT[name]


def test_digits_training_transform_does_not_flip():
    _, train_set, _ = registry.get_dataset("digits")
    kinds = [type(t) for t in train_set.transform.transforms]
    assert T.RandomCrop in kinds and T.RandomHorizontalFlip not in kinds


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "tiny_imagenet"])
def test_natural_image_training_transforms_still_flip(name):
    train_tf, _ = cifar_style(name)
    assert T.RandomHorizontalFlip in [type(t) for t in train_tf.transforms]


@pytest.mark.parametrize("hflip", [False, True])
def test_crop_augmentation_flips_only_if_valid(hflip):
    torch.manual_seed(0)
    aug = crop_flip_normalize(SIZE, (0.0,) * 3, (1.0,) * 3, hflip=hflip)
    flips = flipped(aug(left_bright(64)))
    assert flips.any() == hflip
    if hflip:
        assert 10 < flips.sum() < 54      # about half


@pytest.mark.parametrize("task_name", ["classification", "segmentation"])
@pytest.mark.parametrize("hflip", [False, True])
def test_task_augmentation_follows_the_declaration(task_name, hflip):
    torch.manual_seed(0)
    task = build_task(task_name, 10, hflip=hflip)
    views = task.synthesis_augmentation(SIZE, (0.0,) * 3, (1.0,) * 3)(left_bright(64))
    assert flipped(views).any() == hflip


@pytest.mark.parametrize("hflip", [False, True])
def test_deepinversion_jitter_flips_only_if_valid(hflip):
    torch.manual_seed(0)
    flips = torch.cat([flipped(jitter_and_flip(left_bright(), hflip)) for _ in range(40)])
    assert flips.any() == hflip


def flip_modules(module):
    return [m for m in module.modules()
            if isinstance(m, (RandomCropFlip, RandomResizedCropFlip)) and m.hflip]


@pytest.mark.parametrize("method", ["fast", "fast_meta", "deepinv", "cmi", "ssd", "fast_meta_imagenet", "noise", "nayer"])
@pytest.mark.parametrize("hflip", [False, True])
def test_pool_methods_augment_synthesis_and_kd_batches_as_declared(method, hflip):
    torch.manual_seed(0)
    teacher, student = registry.get_model("resnet8", 10).eval(), registry.get_model("resnet8", 10)
    config = make_config(task=build_task("classification", 10, hflip=hflip))
    synth = SYNTHESIZERS[method](teacher, student, config, torch.device("cpu"))
    augmentations = [getattr(synth, name) for name in ("aug", "kd_aug", "local_aug") if hasattr(synth, name)]
    assert all(bool(flip_modules(a)) == hflip for a in augmentations)
    # KD batches drawn from a pool of left-bright images are flipped only if flips are valid.
    images = left_bright(8)
    if getattr(synth, "pool_needs_logits", False):   # admitted with the teacher logits of the inversion loss
        with torch.no_grad():
            synth.add_to_pool(images, teacher(images))
    else:
        getattr(synth, "add_to_pool", synth.pool.add)(images)
    draws = torch.cat([flipped(synth.sample().images) for _ in range(8)])
    assert draws.any() == hflip


@pytest.mark.parametrize("method", ["fast", "fast_meta", "deepinv", "cmi", "ssd", "nayer"])
def test_as_original_flips_synthesis_views_but_not_kd_batches(method):
    """--as_original flips: the original's synthesis augmentation flips whatever the data declares; KD batches
    keep following the declaration (the original's pool transform does too)."""
    torch.manual_seed(0)
    teacher, student = registry.get_model("resnet8", 10).eval(), registry.get_model("resnet8", 10)
    config = make_config(task=build_task("classification", 10, hflip=False), as_original="flips")
    synth = SYNTHESIZERS[method](teacher, student, config, torch.device("cpu"))
    assert flip_modules(synth.synthesis_aug) and not flip_modules(synth.aug)
    if method == "cmi":
        assert flip_modules(synth.local_aug)
    if method == "deepinv":
        assert synth.flip
    views = synth.synthesis_aug(left_bright(64))
    assert flipped(views).any()
    plain = SYNTHESIZERS[method](teacher, student, make_config(task=build_task("classification", 10, hflip=False)),
                                 torch.device("cpu"))
    assert plain.synthesis_aug is plain.aug and not flip_modules(plain.synthesis_aug)
