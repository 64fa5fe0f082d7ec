"""benchmarks/side_by_side.py: our command lines carry the harness's budget, and the table reads both sides."""
import importlib.util
import json
import os
import shlex
from types import SimpleNamespace

import pytest

import datafree_kd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "side_by_side.py")


def load_script():
    spec = importlib.util.spec_from_file_location("side_by_side", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sbs = load_script()
needs_harness = pytest.mark.skipif(not os.path.isfile(os.path.join(sbs.DEFAULT_HARNESS, "run_upstream.py")),
                                   reason="the upstream_bench harness is not beside the project")


def options(**overrides):
    values = dict(ours_root=ROOT, teacher="wrn16_2", student="wrn16_1", teacher_ckpt="t.pth", seed=3, ours_args="",
                  original_args="", harness=sbs.DEFAULT_HARNESS, upstream="/up")
    values.update(overrides)
    return SimpleNamespace(**values)


@needs_harness
@pytest.mark.parametrize("method", list(sbs.METHODS))
def test_our_command_parses_and_carries_the_harness_budget(method):
    config, fast_k = sbs.harness_config(sbs.DEFAULT_HARNESS, method, epochs=16, warmup=None)
    cmd = sbs.our_command(method, config, options(), "out")
    args = datafree_kd.parse_args(cmd[2:])          # our parser accepts every flag (no refused method flag)
    assert args.method == sbs.METHODS[method] and args.dataset == "digits" and args.seed == 3
    for flag in ("batch_size", "lr", "epochs", "warmup", "ep_steps", "kd_steps", "g_steps", "lr_g", "adv", "bn", "oh"):
        assert getattr(args, flag) == pytest.approx(config[flag]), flag
    batch, ep_steps, k = sbs.BUDGETS[method]
    assert (args.batch_size, args.ep_steps) == (batch, ep_steps)
    if method.startswith("fast"):
        assert args.g_steps == k and args.warmup == round(20 / 220 * 16)
    if method == "fast_meta_reptile":
        assert args.is_maml == 0


@needs_harness
def test_original_command_names_the_same_budget():
    config, fast_k = sbs.harness_config(sbs.DEFAULT_HARNESS, "fast_meta", epochs=12, warmup=2)
    cmd = sbs.original_command("fast_meta", config, fast_k, options(original_args="--hflip 1"), "w", "w/s.json")
    text = shlex.join(cmd)
    for part in ("--methods fast_meta", "--batch-size 128", "--epochs 12", "--ep-steps 20", "--warmup 2",
                 "--fast-g-steps 5", "--threads 1", "--seed 3", "--hflip 1"):
        assert part in text


def test_table_reads_both_sides(tmp_path):
    ours_dir = tmp_path / "ours"
    ours_dir.mkdir()
    history = [{"epoch": i, "acc1": acc, "wall_seconds": 10.0 * (i + 1)} for i, acc in enumerate([20.0, 40.0, 30.0])]
    (ours_dir / "summary.json").write_text(json.dumps({"finished": True, "best_acc1": 40.0, "wall_seconds": 30.0,
                                                       "history": history}))
    original = tmp_path / "original.json"
    original.write_text(json.dumps({"complete": True, "methods": {"deepinv": {
        "student_acc_per_epoch": [10.0, 50.0, 45.0], "student_acc_best": 50.0, "total_wall_s": 60.0,
        "cpu": {"contended": False}}}}))
    ours, theirs = sbs.read_ours(str(ours_dir)), sbs.read_original(str(original), "deepinv")
    assert ours["seconds_per_epoch"] == 10.0 and theirs["seconds_per_epoch"] == 20.0
    row = {"method": "deepinv", "budget": "DeepInv-10", "ours": ours, "original": theirs, "paired": True}
    table = sbs.markdown([row], options(teacher_ckpt="/x/digits_wrn16_2.pth"))
    assert "| DeepInv-10 | 40.00 | 50.00 | -10.00 | 30.00 / 45.00 | 10.0 | 20.0 | 0.50 |" in table
    assert "| deepinv | ours | 20.0 40.0 30.0 |" in table
    unpaired = sbs.markdown([dict(row, paired=False)], options())
    assert "| 10.0 | 20.0 | - |" in unpaired       # seconds of runs made apart are not compared
    assert sbs.read_ours(str(tmp_path / "missing")) is None
