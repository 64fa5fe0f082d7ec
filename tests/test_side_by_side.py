"""benchmarks/side_by_side.py: our command lines carry the harness's budget, and the table reads both sides."""
import importlib.util
import json
import os
import shlex
import sys
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
    budget = sbs.BUDGETS[method]
    assert (args.batch_size, args.ep_steps) == (budget["batch"], budget["ep_steps"])
    if method.startswith("fast"):
        assert args.g_steps == budget["fast_k"] and args.warmup == round(20 / 220 * 16)
    if method == "fast_meta_reptile":
        assert args.is_maml == 0
    # The original's KD loop runs the generator methods at temperature 1 whatever --T says.
    assert args.T == (1 if method in sbs.GENERATIVE else 20)


@needs_harness
def test_original_command_names_the_same_budget():
    config, fast_k = sbs.harness_config(sbs.DEFAULT_HARNESS, "fast_meta", epochs=12, warmup=2)
    cmd = sbs.original_command("fast_meta", config, fast_k, options(original_args="--hflip 1"), "w", "w/s.json")
    text = shlex.join(cmd)
    for part in ("--methods fast_meta", "--batch-size 64", "--epochs 12", "--ep-steps 10", "--warmup 2",
                 "--fast-g-steps 5", "--threads 1", "--seed 3", "--hflip 1"):
        assert part in text


@needs_harness
def test_budget_epochs_and_override():
    config, _ = sbs.harness_config(sbs.DEFAULT_HARNESS, "dafl")
    assert (config["epochs"], config["batch_size"], config["ep_steps"]) == (sbs.BUDGETS["dafl"]["epochs"], 32, 40)
    assert config["kd_steps"] == 5 and config["lr"] == pytest.approx(0.1 * 32 / 256)
    assert sbs.harness_config(sbs.DEFAULT_HARNESS, "dafl", epochs=3)[0]["epochs"] == 3


FAKE_SIDE = r"""
import json, os, sys, time
side, target, burn = sys.argv[1], sys.argv[2], float(sys.argv[3])
start = time.time()
while time.process_time() < burn:   # CPU work the runner must count
    pass
acc = [10.0, 30.0, 20.0, 25.0]
os.makedirs(os.path.dirname(target), exist_ok=True)
if side == "ours":
    summary = {"finished": True, "best_acc1": 30.0, "wall_seconds": 4.0,
               "history": [{"acc1": a} for a in acc]}
else:
    summary = {"complete": True, "methods": {"deepinv": {"student_acc_per_epoch": acc, "student_acc_best": 30.0,
                                                          "total_wall_s": 4.0}}}
with open(target, "w") as f:
    json.dump(summary, f)
with open(os.path.join(os.path.dirname(os.path.dirname(target)), side + ".times"), "a") as f:
    f.write(f"{start} {time.time()}\n")
"""


def fake_sides(monkeypatch, tmp_path):
    script = tmp_path / "fake_side.py"
    script.write_text(FAKE_SIDE)
    monkeypatch.setattr(sbs, "harness_config", lambda *a: ({"epochs": 4}, None))
    monkeypatch.setattr(sbs, "budget_text", lambda *a: "budget")
    monkeypatch.setattr(sbs, "our_command", lambda m, c, a, out: [sys.executable, str(script), "ours",
                                                                   os.path.join(out, "summary.json"), "0.3"])
    monkeypatch.setattr(sbs, "original_command", lambda m, c, k, a, w, out: [sys.executable, str(script), "original",
                                                                             out, "0.6"])


def runner_options(tmp_path, **overrides):
    values = dict(workdir=str(tmp_path / "work"), tag="t", original_tag=None, seed=0, epochs=None, warmup=None,
                  harness="h", rerun="none", ours_only=False, parallel=False, ours_root=str(tmp_path),
                  upstream=str(tmp_path))
    values.update(overrides)
    return SimpleNamespace(**values)


def times(tmp_path, side):
    lines = (tmp_path / "work" / "t" / "deepinv-seed0" / f"{side}.times").read_text().split("\n")
    return [tuple(map(float, line.split())) for line in lines if line]


def test_sides_run_one_after_the_other_and_count_cpu_seconds(monkeypatch, tmp_path):
    fake_sides(monkeypatch, tmp_path)
    row = sbs.run_pair("deepinv", runner_options(tmp_path))
    (ours_start, ours_end), = times(tmp_path, "ours")
    (original_start, _), = times(tmp_path, "original")
    assert original_start >= ours_end                  # never both at once
    # CPU seconds of each process (its burn plus the interpreter's start) over its 4 epochs.
    assert 0.3 / 4 <= row["ours"]["seconds_per_epoch"] < 0.3 / 4 + 0.5
    assert 0.6 / 4 <= row["original"]["seconds_per_epoch"] < 0.6 / 4 + 0.5
    assert row["ours"]["best"] == row["original"]["best"] == 30.0
    table = sbs.markdown([row], runner_options(tmp_path, teacher_ckpt="t.pth", teacher="a", student="b"))
    assert "one after the other" in table and "| budget | 30.00 | 30.00 | +0.00 | 25.00 / 25.00 |" in table

    # Finished sides are kept; --rerun ours runs our side alone again.
    sbs.run_pair("deepinv", runner_options(tmp_path))
    assert len(times(tmp_path, "ours")) == len(times(tmp_path, "original")) == 1
    sbs.run_pair("deepinv", runner_options(tmp_path, rerun="ours"))
    assert len(times(tmp_path, "ours")) == 2 and len(times(tmp_path, "original")) == 1


def test_parallel_sides_overlap(monkeypatch, tmp_path):
    fake_sides(monkeypatch, tmp_path)
    sbs.run_pair("deepinv", runner_options(tmp_path, parallel=True))
    (ours_start, ours_end), = times(tmp_path, "ours")
    (original_start, original_end), = times(tmp_path, "original")
    assert original_start < ours_end and ours_start < original_end


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
    (tmp_path / "ours.cpu.json").write_text(json.dumps({"cpu_seconds": 15.0}))
    (tmp_path / "original.cpu.json").write_text(json.dumps({"cpu_seconds": 60.0}))
    ours = sbs.with_cpu(sbs.read_ours(str(ours_dir)), str(tmp_path), "ours")
    theirs = sbs.with_cpu(sbs.read_original(str(original), "deepinv"), str(tmp_path), "original")
    assert ours["wall_seconds_per_epoch"] == 10.0 and theirs["wall_seconds_per_epoch"] == 20.0
    assert ours["seconds_per_epoch"] == 5.0 and theirs["seconds_per_epoch"] == 20.0
    row = {"method": "deepinv", "budget": "DeepInv-10", "ours": ours, "original": theirs}
    table = sbs.markdown([row], options(teacher_ckpt="/x/digits_wrn16_2.pth", parallel=False))
    assert "| DeepInv-10 | 40.00 | 50.00 | -10.00 | 30.00 / 45.00 | 5.0 | 20.0 | 0.25 |" in table
    assert "| deepinv | ours | 20.0 40.0 30.0 |" in table
    (tmp_path / "ours.cpu.json").unlink()           # a run made before CPU seconds were recorded
    untimed = sbs.with_cpu(sbs.read_ours(str(ours_dir)), str(tmp_path), "ours")
    assert "| - | 20.0 | - |" in sbs.markdown([dict(row, ours=untimed)], options(teacher_ckpt="t", parallel=False))
    assert sbs.read_ours(str(tmp_path / "missing")) is None
