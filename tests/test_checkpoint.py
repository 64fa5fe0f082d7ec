"""Checkpoint round trips and the one-sentence errors for bad checkpoint files."""
import os

import pytest
import torch

import registry
from datafree.checkpoint import atomic_save, load_checkpoint, load_weights, save_checkpoint
from datafree.errors import CheckpointError
from datafree.utils.misc import rng_state, set_rng_state


def test_round_trip_with_training_state(tmp_path):
    model = registry.get_model("resnet8", 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    state = {"state_dict": model.state_dict(), "epoch": 3, "best_acc1": 42.5, "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "arch": "resnet8", "rng": rng_state(),
             "args": {"lr": 0.1, "model": "resnet8", "resume": ""}}
    save_checkpoint(state, str(tmp_path), is_best=True)
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "last.pth"]
    loaded = load_checkpoint(str(tmp_path / "last.pth"))
    assert loaded["epoch"] == 3 and loaded["best_acc1"] == 42.5 and loaded["arch"] == "resnet8"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["state_dict"][k], v)
    opt2 = torch.optim.SGD(registry.get_model("resnet8", 10).parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(loaded["optimizer"])
    set_rng_state(loaded["rng"])
    first = torch.rand(4)
    set_rng_state(loaded["rng"])
    assert torch.equal(first, torch.rand(4))


def test_best_is_only_rewritten_when_improved(tmp_path):
    save_checkpoint({"epoch": 1}, str(tmp_path), is_best=True)
    save_checkpoint({"epoch": 2}, str(tmp_path), is_best=False)
    assert load_checkpoint(str(tmp_path / "best.pth"))["epoch"] == 1
    assert load_checkpoint(str(tmp_path / "last.pth"))["epoch"] == 2
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("payload", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_corrupt_checkpoint(tmp_path, payload):
    path = tmp_path / "bad.pth"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(str(path))


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "cut.pth"
    atomic_save({"state_dict": registry.get_model("resnet8", 10).state_dict()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(str(path))


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "teacher.pth"
    atomic_save({"state_dict": registry.get_model("resnet20", 10).state_dict(), "arch": "resnet20"}, str(path))
    with pytest.raises(CheckpointError) as err:
        load_weights(registry.get_model("wrn16_2", 10), str(path), "wrn16_2")
    msg = str(err.value)
    assert "does not fit model 'wrn16_2'" in msg and "another architecture" in msg and "resnet20" in msg


def test_checkpoint_with_another_class_count(tmp_path):
    path = tmp_path / "teacher.pth"
    atomic_save({"state_dict": registry.get_model("wrn16_1", 100).state_dict()}, str(path))
    with pytest.raises(CheckpointError, match="100-class classifier but the model has 10 classes"):
        load_weights(registry.get_model("wrn16_1", 10), str(path), "wrn16_1")


def test_original_teacher_format_and_dataparallel_prefix(tmp_path):
    source = registry.get_model("vgg8", 10).eval()
    path = tmp_path / "cifar10_vgg8.pth"
    # The original release saves {'state_dict': ...}; DataParallel runs add 'module.'.
    atomic_save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, str(path))
    target = registry.get_model("vgg8", 10).eval()
    load_weights(target, str(path), "vgg8")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))
