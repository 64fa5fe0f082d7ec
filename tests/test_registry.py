"""Registry lookups, custom registration, the offline digits data and missing datasets."""
import numpy as np
import pytest
import torch

import registry
from datafree.datasets.digits import DIGITS_MEAN, DIGITS_STD, Digits, digits_split
from datafree.errors import DatasetNotFoundError, UnknownNameError, UsageError


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        registry.get_model("resnet9000", num_classes=10)
    msg = str(err.value)
    assert "resnet9000" in msg and "wrn16_2" in msg and "resnet50_imagenet" in msg


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        registry.get_dataset("cifar1000")
    assert "cifar1000" in str(err.value) and "digits" in str(err.value) and "cifar100" in str(err.value)


def test_cifar_model_has_no_builtin_pretrained_weights():
    with pytest.raises(UsageError, match="checkpoints/pretrained"):
        registry.get_model("wrn40_2", 10, pretrained=True)


@pytest.mark.parametrize("name,marker", [("cifar10", "--download"), ("cifar100", "--download"),
                                         ("svhn", "--download"), ("mnist", "--download"),
                                         ("tiny_imagenet", "one folder per class"),
                                         ("imagenet", "ImageFolder")])
def test_dataset_missing_from_disk_says_how_to_get_it(tmp_path, name, marker):
    with pytest.raises(DatasetNotFoundError) as err:
        registry.get_dataset(name, data_root=str(tmp_path))
    assert str(tmp_path) in str(err.value) and marker in str(err.value)


def test_register_custom_model_and_dataset():
    @registry.register_model("tiny_test_net")
    def tiny(num_classes):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, num_classes))

    @registry.register_dataset("tiny_test_data", num_classes=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    def tiny_data(data_root, download=False):
        x = torch.rand(6, 3, 4, 4)
        y = torch.arange(6) % 3
        return torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x, y)

    try:
        assert "tiny_test_net" in registry.model_names() and "tiny_test_data" in registry.dataset_names()
        num_classes, train_set, _ = registry.get_dataset("tiny_test_data")
        model = registry.get_model("tiny_test_net", num_classes)
        assert model(train_set[0][0][None]).shape == (1, 3)
        assert registry.NORMALIZE_DICT["tiny_test_data"] == dict(mean=(0.5,) * 3, std=(0.25,) * 3)
        entry = registry.DATASET_DICT["tiny_test_data"]   # one record holds all that was declared
        assert (entry.num_classes, entry.task, entry.hflip, entry.train_size) == (3, "classification", True, None)
        with pytest.raises(TypeError):   # the per-field tables are views of the records, not copies
            registry.NORMALIZE_DICT["tiny_test_data"] = dict(mean=(0.0,) * 3, std=(1.0,) * 3)
        with pytest.raises(ValueError, match="already registered"):
            registry.register_model("tiny_test_net")(tiny)
    finally:
        del registry.MODEL_DICT["tiny_test_net"], registry.DATASET_DICT["tiny_test_data"]
    # A dataset is one record: removing it removes its class count, normalisation, task and flip flag.
    for table in (registry.DATASET_NUM_CLASSES, registry.NORMALIZE_DICT, registry.DATASET_TASKS,
                  registry.DATASET_HFLIP):
        assert "tiny_test_data" not in table


def test_digits_split_is_fixed_stratified_70_30():
    train, test = digits_split(True), digits_split(False)
    assert len(train) == 1257 and len(test) == 540
    assert not set(train) & set(test)
    np.testing.assert_array_equal(train, digits_split(True))
    train_set, test_set = Digits(True), Digits(False)
    train_counts = np.bincount(train_set.targets, minlength=10)
    test_counts = np.bincount(test_set.targets, minlength=10)
    assert train_counts.min() >= 120 and test_counts.min() >= 50
    assert np.allclose(train_counts / (train_counts + test_counts), 0.7, atol=0.02)


def test_digits_images_and_normalisation():
    data = Digits(True).data
    assert data.shape == (1257, 32, 32, 3) and data.dtype == np.uint8
    assert (data[..., 0] == data[..., 1]).all() and (data[..., 1] == data[..., 2]).all()
    pixels = data[..., 0].astype(np.float64) / 255
    assert DIGITS_MEAN == registry.NORMALIZE_DICT["digits"]["mean"]
    assert abs(pixels.mean() - DIGITS_MEAN[0]) < 1e-4 and abs(pixels.std() - DIGITS_STD[0]) < 1e-4


def test_digits_through_registry_is_normalised_and_augmented():
    num_classes, train_set, val_set = registry.get_dataset("digits")
    assert num_classes == 10
    x, y = val_set[0]
    assert x.shape == (3, 32, 32) and isinstance(y, int)
    stack = torch.stack([val_set[i][0] for i in range(len(val_set))])
    assert abs(stack.mean().item()) < 0.1 and abs(stack.std().item() - 1) < 0.1
    torch.manual_seed(1)
    views = {tuple(train_set[3][0].flatten()[:200].tolist()) for _ in range(8)}
    assert len(views) > 1  # random crop (no flip: digits declare flips invalid)
