"""train_scratch.py and vanilla_kd.py end to end on a few steps of the offline digits data."""
import os
import subprocess
import sys

import pytest
import torch

import datafree.engine
import train_scratch
import vanilla_kd
from conftest import ROOT
from datafree.checkpoint import load_checkpoint
from datafree.errors import CheckpointError, UsageError

FAST = ["--dataset", "digits", "--batch-size", "256", "--lr", "0.05", "--gpu", "-1"]


def scratch(*extra):
    return train_scratch.main(["--model", "resnet8", *FAST, *extra])


def test_train_scratch_writes_run_and_teacher(in_tmp_cwd):
    result = scratch("--epochs", "2")
    run = in_tmp_cwd / "checkpoints" / "scratch" / "digits_resnet8"
    assert {"last.pth", "best.pth", "log.txt", "tb"} <= set(os.listdir(run))
    last = load_checkpoint(str(run / "last.pth"))
    assert last["epoch"] == 2 and last["arch"] == "resnet8" and last["num_classes"] == 10
    assert {"optimizer", "scheduler", "best_acc1", "state_dict", "rng"} <= set(last)
    teacher = load_checkpoint(str(in_tmp_cwd / "checkpoints" / "pretrained" / "digits_resnet8.pth"))
    assert teacher["best_acc1"] == pytest.approx(result["best_acc1"]) and "optimizer" not in teacher
    assert result["best_acc1"] > 10.0  # two epochs already beat chance
    log = (run / "log.txt").read_text()
    assert "model: resnet8" in log and "[Eval] epoch=1" in log
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run / "tb"))

    evaluated = scratch("--evaluate_only", "--resume", str(run / "best.pth"))
    assert evaluated["acc1"] == pytest.approx(result["best_acc1"])


def test_existing_run_and_teacher_are_not_overwritten(in_tmp_cwd):
    scratch("--epochs", "1")
    teacher = in_tmp_cwd / "checkpoints" / "pretrained" / "digits_resnet8.pth"
    before = teacher.read_bytes()
    with pytest.raises(UsageError, match="already holds a run; pass --resume"):
        scratch("--epochs", "1")
    with pytest.raises(UsageError, match="already exists and would be replaced"):
        scratch("--epochs", "1", "--output", "elsewhere")
    assert teacher.read_bytes() == before
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        scratch("--epochs", "1", "--output", "empty", "--resume")


def test_killed_run_resumes_to_the_same_result(in_tmp_cwd, monkeypatch):
    """A run killed after its first epoch and resumed ends exactly like an uninterrupted one."""
    scratch("--epochs", "2", "--output", "full", "--save_teacher", "t_full.pth")

    real_save = datafree.engine.save_checkpoint

    def save_then_die(state, run_dir, is_best):
        real_save(state, run_dir, is_best)
        raise KeyboardInterrupt

    monkeypatch.setattr(datafree.engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        scratch("--epochs", "2", "--output", "killed", "--save_teacher", "t_killed.pth")
    monkeypatch.setattr(datafree.engine, "save_checkpoint", real_save)
    assert load_checkpoint("killed/last.pth")["epoch"] == 1

    scratch("--epochs", "2", "--output", "killed", "--save_teacher", "t_killed.pth", "--resume")
    full, resumed = load_checkpoint("full/last.pth"), load_checkpoint("killed/last.pth")
    assert resumed["epoch"] == 2 and resumed["best_acc1"] == full["best_acc1"]
    for k, v in full["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][k].float(), v.float(), atol=1e-6), k
    assert "resumed from killed/last.pth at epoch 1" in open("killed/log.txt").read()


def test_vanilla_kd_with_real_data(in_tmp_cwd):
    scratch("--epochs", "2")
    result = vanilla_kd.main(["--teacher", "resnet8", "--student", "resnet8", *FAST, "--epochs", "1",
                              "--T", "4", "--beta", "0.5"])
    run = in_tmp_cwd / "checkpoints" / "vanilla_kd" / "digits-digits-resnet8-resnet8"
    ckpt = load_checkpoint(str(run / "last.pth"))
    assert ckpt["arch"] == "resnet8" and ckpt["teacher"] == "resnet8" and ckpt["epoch"] == 1
    assert result["best_acc1"] > 10.0


def test_vanilla_kd_on_an_unlabeled_folder(in_tmp_cwd):
    from PIL import Image
    scratch("--epochs", "1")
    folder = in_tmp_cwd / "transfer"
    folder.mkdir()
    for i in range(20):
        Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    with pytest.raises(UsageError, match="needs the task's labels"):
        vanilla_kd.main(["--teacher", "resnet8", "--student", "resnet8", *FAST, "--epochs", "1",
                         "--transfer_set", str(folder), "--beta", "1"])
    vanilla_kd.main(["--teacher", "resnet8", "--student", "resnet8", *FAST, "--epochs", "1",
                     "--transfer_set", str(folder)])


def test_vanilla_kd_teacher_errors(in_tmp_cwd):
    with pytest.raises(CheckpointError, match="train_scratch.py --model wrn16_2 --dataset digits"):
        vanilla_kd.main(["--teacher", "wrn16_2", "--student", "resnet8", *FAST, "--epochs", "1"])
    scratch("--epochs", "1")
    os.rename("checkpoints/pretrained/digits_resnet8.pth", "checkpoints/pretrained/digits_wrn16_2.pth")
    with pytest.raises(CheckpointError, match="does not fit model 'wrn16_2'.*another architecture"):
        vanilla_kd.main(["--teacher", "wrn16_2", "--student", "resnet8", *FAST, "--epochs", "1"])


@pytest.mark.parametrize("script,args,message", [
    ("train_scratch.py", ["--model", "resnet9000"], "invalid choice: 'resnet9000'"),
    ("train_scratch.py", ["--dataset", "nope"], "invalid choice: 'nope'"),
    ("train_scratch.py", ["--model", "resnet8", "--gpu", "0", "--epochs", "1", "--output", "o"],
     "CUDA is not available"),
    ("vanilla_kd.py", ["--teacher", "resnet20", "--gpu", "-1"], "teacher checkpoint"),
    ("datafree_kd.py", ["--method", "nope"], "invalid choice: 'nope'"),
    ("datafree_kd.py", ["--method", "fast", "--cr", "0.5"], "--cr is not used by method 'fast'"),
])
def test_cli_errors_are_one_clear_line(tmp_path, script, args, message):
    if "CUDA" in message and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("script", ["train_scratch.py", "vanilla_kd.py"])
def test_help_lists_models_and_datasets(script):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "wrn40_2" in proc.stdout and "digits" in proc.stdout
