"""Fashion-MNIST: the IDX reader, where the files are looked for, the record, and the real files where installed."""
import gzip
import os

import numpy as np
import pytest
import torch

import registry
from datafree.datasets import fashion_mnist as fm
from datafree.errors import DatasetNotFoundError

INSTALLED = os.path.isdir(fm.DEBIAN_FOLDER)


def write_idx(path, array, compress):
    """An unsigned-byte IDX file of ``array`` (magic 0x0000 08 ndim, big-endian sizes, the bytes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path + (".gz" if compress else ""), "wb") as f:
        f.write(data)


def fake_split(folder, n_train=6, n_test=4, compress=True):
    """Four IDX files of tiny random splits in ``folder``; returns the arrays written."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for train, n in ((True, n_train), (False, n_test)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        image_file, label_file = fm.IDX_FILES[train]
        write_idx(os.path.join(folder, image_file), images, compress)
        write_idx(os.path.join(folder, label_file), labels, compress)
        arrays[train] = (images, labels)
    return arrays


@pytest.fixture(autouse=True)
def fresh_cache():
    fm.load_split.cache_clear()
    yield
    fm.load_split.cache_clear()


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_are_read_padded_to_32_and_repeated_to_3_channels(tmp_path, compress):
    arrays = fake_split(str(tmp_path), compress=compress)
    images, labels = fm.load_split(str(tmp_path), True)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8 and labels.tolist() == arrays[True][1].tolist()
    assert np.array_equal(images[:, 2:30, 2:30, 1], arrays[True][0])          # the 28x28 image in the middle
    assert images[:, :2].max() == 0 and images[:, 30:].max() == 0 and images[:, :, :2].max() == 0   # zero border
    assert np.array_equal(images[..., 0], images[..., 2])


def test_the_folders_are_searched_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_FOLDER", str(tmp_path / "debian"))
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist.*--download"):
        fm.find_folder(str(root))
    fake_split(str(tmp_path / "debian"))
    assert fm.find_folder(str(root)) == str(tmp_path / "debian")
    fake_split(str(root / "torchdata" / "FashionMNIST" / "raw"), compress=False)
    assert fm.find_folder(str(root)) == str(root / "torchdata" / "FashionMNIST" / "raw")
    fake_split(str(root / "FashionMNIST" / "raw"))
    assert fm.find_folder(str(root)) == str(root / "FashionMNIST" / "raw")
    fake_split(str(root))
    assert fm.find_folder(str(root)) == str(root)


def test_missing_dataset_is_one_sentence_from_the_registry(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_FOLDER", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as err:
        registry.get_dataset("fashion_mnist", str(tmp_path))
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message and message.count(".") <= 2


def test_corrupt_or_truncated_files_are_refused(tmp_path):
    fake_split(str(tmp_path), compress=False)
    path = os.path.join(str(tmp_path), fm.IDX_FILES[True][0])
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(DatasetNotFoundError, match="truncated"):
        fm.load_split(str(tmp_path), True)
    with open(path, "wb") as f:
        f.write(b"not an idx file at all")
    with pytest.raises(DatasetNotFoundError, match="not an unsigned-byte IDX file"):
        fm.read_idx(path)


def test_the_record_declares_no_flips_and_names_its_classes():
    entry = registry.DATASET_DICT["fashion_mnist"]
    assert (entry.num_classes, entry.train_size, entry.hflip) == (10, 60000, False)
    assert entry.classes[0] == "T-shirt/top" and entry.classes[9] == "Ankle boot" and len(entry.classes) == 10
    assert registry.class_names("fashion_mnist") == entry.classes
    assert registry.train_size("fashion_mnist") == 60000


def test_the_dataset_yields_normalised_tensors_and_no_flip(tmp_path):
    arrays = fake_split(str(tmp_path))
    num_classes, train_set, val_set = registry.get_dataset("fashion_mnist", str(tmp_path))
    assert (num_classes, len(train_set), len(val_set)) == (10, 6, 4)
    image, label = val_set[1]
    mean, std = fm.FASHION_MNIST_MEAN[0], fm.FASHION_MNIST_STD[0]
    expected = (torch.from_numpy(arrays[False][0][1].astype(np.float32)) / 255 - mean) / std
    assert image.shape == (3, 32, 32) and label == arrays[False][1][1]
    assert torch.allclose(image[0, 2:30, 2:30], expected, atol=1e-5)
    assert "RandomHorizontalFlip" not in repr(train_set.transform)


@pytest.mark.skipif(not INSTALLED, reason="apt-get install dataset-fashion-mnist")
def test_the_official_files_give_the_official_split_and_the_recorded_normalisation():
    folder = fm.find_folder("unused")
    train, labels = fm.load_split(folder, True)
    test, test_labels = fm.load_split(folder, False)
    assert train.shape == (60000, 32, 32, 3) and test.shape == (10000, 32, 32, 3)
    assert np.bincount(labels).tolist() == [6000] * 10 and np.bincount(test_labels).tolist() == [1000] * 10
    pixels = train[..., 0].astype(np.float32) / 255
    # equal in float32, the precision every normaliser uses (the harness's recipe: float32 pixels, float64 sums)
    assert np.float32(pixels.mean(dtype=np.float64)) == np.float32(fm.FASHION_MNIST_MEAN[0])
    assert np.float32(pixels.std(dtype=np.float64)) == np.float32(fm.FASHION_MNIST_STD[0])


@pytest.mark.skipif(not INSTALLED, reason="apt-get install dataset-fashion-mnist")
def test_every_shoe_faces_the_same_way_which_is_why_flips_are_off():
    images, labels = fm.load_split(fm.find_folder("unused"), True)
    columns = np.arange(32)
    for shoe in (5, 7, 9):     # sandal, sneaker, ankle boot
        mass = images[labels == shoe][..., 0].astype(np.float64).sum(axis=1)      # (n, 32) column mass
        centre = (mass * columns).sum(axis=1) / mass.sum(axis=1)
        assert (centre > 15.5).mean() > 0.9, fm.CLASSES[shoe]                     # heel (the mass) on the right


@pytest.mark.skipif(not INSTALLED, reason="apt-get install dataset-fashion-mnist")
def test_the_committed_teacher_scores_at_least_93_on_the_test_images(in_tmp_cwd):
    import train_scratch
    from conftest import ROOT

    teacher = os.path.join(ROOT, "checkpoints", "pretrained", "fashion_mnist_wrn16_2.pth")
    stats = train_scratch.main(["--model", "wrn16_2", "--dataset", "fashion_mnist", "--evaluate_only",
                                "--resume", teacher, "--gpu", "-1"])
    assert stats["acc1"] >= 93.0 and round(stats["acc1"], 2) == 94.25
