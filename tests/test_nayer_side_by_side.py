"""benchmarks/nayer_side_by_side.py: both sides get one budget, and a tiny run of NAYER's own code on digits."""
import json
import os
import pickle
import shlex
from types import SimpleNamespace

import pytest
import torch

import datafree_kd
import registry
from conftest import ROOT, load_script
from datafree.checkpoint import atomic_save
from datafree.label_embedding import hash_embeddings

SCRIPT = os.path.join(ROOT, "benchmarks", "nayer_side_by_side.py")
NAYER_CHECKOUT = os.environ.get("NAYER_ROOT", "/work/ext/NAYER")


sbs = load_script("benchmarks/nayer_side_by_side.py")


def options(**overrides):
    values = dict(ours_root=ROOT, dataset="digits", data_root=None, teacher="wrn16_2", student="wrn16_1",
                  teacher_ckpt="t.pth", seed=3, label_embedding="hash", ours_args="", original_args="")
    values.update(overrides)
    return SimpleNamespace(**values)


def flag_values(argv):
    return {token: argv[i + 1] for i, token in enumerate(argv[:-1]) if token.startswith("--")}


def test_the_budget_comes_from_our_preset_and_the_flags_override_it():
    budget = sbs.read_budget(sbs.DEFAULT_CONFIG, {"epochs": 3, "g_steps": None})
    assert budget["epochs"] == 3 and budget["g_steps"] == 10 and budget["kd_steps"] == 20   # the preset's ep_steps
    assert (budget["g_loops"], budget["gwp_loops"], budget["g_life"]) == (2, 10, 10)
    assert budget["synthesis_batch_size"] == 100


def test_both_sides_get_the_same_budget(tmp_path):
    budget = sbs.read_budget(sbs.DEFAULT_CONFIG, {})
    embedding = tmp_path / "emb.pickle"
    embedding.write_bytes(b"")
    ours = sbs.our_command(budget, options(), "out", str(embedding))
    args = datafree_kd.parse_args(ours[2:])           # our parser takes it, no flag refused
    theirs = flag_values(sbs.their_argv(budget, options()))
    for key in sbs.BUDGET:
        ours_value = args.ep_steps if key == "kd_steps" else getattr(args, key)
        assert float(ours_value) == float(theirs[f"--{key}"]) == float(budget[key]), key
    assert args.kd_steps == args.ep_steps            # one round: every synthesis call of the epoch, then its KD steps
    assert args.method == "nayer" and args.precision == "fp32"
    assert args.synthesis_channels is None            # three channels, as their generator makes
    assert args.label_embedding == str(embedding) and args.seed == int(theirs["--seed"]) == 3
    assert (theirs["--method"], theirs["--dataset"], theirs["--workers"]) == ("nayer", sbs.ALIAS, "0")


@pytest.mark.skipif(not os.path.isfile(os.path.join(NAYER_CHECKOUT, "datafree_kd.py"))
                    or not os.path.isfile(os.path.join(sbs.DEFAULT_HARNESS, "run_upstream.py")),
                    reason="NAYER's checkout or the upstream_bench harness is not here")
def test_a_tiny_run_of_nayers_own_code_beside_ours(tmp_path, capsys):
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pth"
    atomic_save({"state_dict": registry.get_model("resnet8", 10).state_dict()}, str(teacher))
    tiny = ["--epochs", "2", "--warmup", "1", "--batch_size", "16", "--synthesis_batch_size", "20", "--kd_steps", "2",
            "--g_steps", "1", "--g_loops", "1", "--gwp_loops", "2", "--le_emb_size", "32"]
    assert sbs.main(["--nayer", NAYER_CHECKOUT, "--teacher", "resnet8", "--student", "resnet8", "--teacher_ckpt",
                     str(teacher), "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "s.json"), *tiny]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("nayer_side_by_side: 1/1 seeds; ours - original = ")
    summary = json.loads((tmp_path / "s.json").read_text())          # one line per seed
    assert "| ours | " in (tmp_path / "s.md").read_text()
    ours, original = summary["ours"], summary["original"]
    assert "error" not in ours and "error" not in original, (ours, original)
    assert len(ours["acc"]) == len(original["acc"]) == 2
    assert original["acc"][0] == 0.0 and original["acc"][1] > 0     # NAYER's code evaluates after its warm-up only
    assert ours["cpu_seconds_per_epoch"] > 0 and original["cpu_seconds_per_epoch"] > 0
    assert len(original["cpu_seconds_each_epoch"]) == 2 and all(s > 0 for s in original["cpu_seconds_each_epoch"])
    assert "--g_loops 1 --gwp_loops 2" in original["argv"] and "--g_loops 1 --gwp_loops 2" in ours["command"]
    folder = tmp_path / "work" / "digits-seed0"
    with open(folder / "original" / "label_embedding" / f"{sbs.ALIAS}_le.pickle", "rb") as f:
        handed = pickle.load(f)                # what NAYER's code read: our embedding of the digits' names
    assert torch.equal(handed, hash_embeddings(10, registry.class_names("digits")))
    assert shlex.split(ours["command"])[shlex.split(ours["command"]).index("--label_embedding") + 1] == \
        str(folder / "label_embedding.pickle")
    # run again: both finished sides are kept, nothing reruns
    mtime = os.path.getmtime(folder / "ours" / "summary.json")
    assert sbs.main(["--nayer", NAYER_CHECKOUT, "--teacher", "resnet8", "--student", "resnet8", "--teacher_ckpt",
                     str(teacher), "--workdir", str(tmp_path / "work"), *tiny]) == 0
    assert os.path.getmtime(folder / "ours" / "summary.json") == mtime


def test_seeds_table_gives_mean_se_and_the_paired_difference():
    def side(acc, cpu):
        return {"acc": acc, "best": max(acc), "cpu_seconds_per_epoch": cpu, "command": "c"}

    summaries = [{"seed": 0, "ours": side([50.0, 60.0], 10.0), "original": side([40.0, 58.0], 12.0)},
                 {"seed": 1, "ours": side([55.0, 62.0], 11.0), "original": side([50.0, 60.0], 13.0)},
                 {"seed": 2, "ours": side([52.0, 64.0], 12.0), "original": side([61.0, 59.0], 14.0)}]
    a = SimpleNamespace(dataset="fashion_mnist", label_embedding="hash")
    table = sbs.markdown(summaries, a, {"epochs": 2})
    # ours: 60, 62, 64 -> 62 ± 2/sqrt(3) = 1.15; original: 58, 60, 61 -> 59.67 ± 0.88; differences 2, 2, 3
    assert "| ours | 62.00 ± 1.15 |" in table and "| original | 59.67 ± 0.88 |" in table
    assert "ours - original: +2.33 ± 0.33" in table and "ours / original: 0.85" in table
    assert sbs.summary_line(summaries) == ("nayer_side_by_side: 3/3 seeds; ours - original = +2.33 (SE 0.33): "
                                           "within one SE or above")
    for summary, best in zip(summaries, (55.0, 57.0, 58.0)):    # differences -3, -3, -3: behind, SE 0
        summary["ours"]["best"] = best
    assert sbs.summary_line(summaries).endswith("= -3.00 (SE 0.00): behind by more than one SE")


def test_versus_rows_compare_at_the_same_cpu_seconds():
    def ours(acc, curve):
        return {"acc": acc, "best": max(acc), "cpu_curve": curve, "cpu_seconds_per_epoch": 1.0, "command": "c"}

    # NAYER ends at 300 s; the versus run finished its first two epochs (40, 70) within them, at 280 s
    summaries = [{"seed": 0, "ours": ours([30.0, 80.0, 85.0], [100.0, 200.0, 300.0]),
                  "versus": dict(ours([40.0, 70.0, 75.0, 90.0], [90.0, 280.0, 310.0, 400.0]), preset="fast5.yaml")},
                 {"seed": 1, "ours": ours([20.0, 70.0, 81.0], [100.0, 200.0, 310.0]),
                  "versus": dict(ours([50.0, 60.0], [200.0, 305.0]), preset="fast5.yaml")}]
    table = sbs.markdown(summaries, SimpleNamespace(dataset="fashion_mnist", label_embedding="hash"), {"epochs": 3})
    assert "against fast5.yaml at the same CPU time" in table
    # seed 0: versus within 300 s -> 70; NAYER within versus's 400 s -> 85
    assert "| 0 | 85.00 | 300 | 70.00 | 90.00 | 400 | 85.00 |" in table
    # seed 1: versus within 310 s -> 60 (305 <= 310); NAYER within 305 s -> 70 (its third epoch ends at 310)
    assert "| 1 | 81.00 | 310 | 60.00 | 60.00 | 305 | 70.00 |" in table
    assert "| mean | 83.00 ± 2.00 | 305.00 ± 5.00 | 65.00 ± 5.00 | 75.00 ± 15.00 |" in table
    assert sbs.within(summaries[0]["versus"], 80.0) is None


def test_a_side_run_at_the_same_time_elsewhere_keeps_its_result(tmp_path, monkeypatch):
    """Two lanes (--side ours and --side original) write the same seed's summary: neither loses the other's."""
    budget = sbs.read_budget(sbs.DEFAULT_CONFIG, {})
    a = options(workdir=str(tmp_path), side="ours", rerun=False, versus=None, nayer="n", harness="h")
    folder = tmp_path / "digits-seed3"
    folder.mkdir()
    original = {"command": "theirs", "acc": [50.0], "best": 50.0, "argv": "x"}

    def run_side(side, cmd, cwd, where, env):
        if side == "ours":    # meanwhile the other lane finished the original side
            with open(folder / "summary.json", "w") as f:
                json.dump({"seed": 3, "budget": budget, "original": original}, f)
        return 0

    monkeypatch.setattr(sbs, "run_side", run_side)
    monkeypatch.setattr(sbs, "side_result", lambda side, *args: {"command": "ours", "acc": [60.0], "best": 60.0})
    summary = sbs.run_seed(a, budget, 3)
    with open(folder / "summary.json") as f:
        written = json.load(f)
    assert summary["ours"]["best"] == written["ours"]["best"] == 60.0
    assert written["original"] == original


def test_a_finished_side_is_kept_when_the_table_runs_from_another_checkout(tmp_path, monkeypatch):
    """The original side's command names this script's path; only its arguments decide whether to rerun."""
    budget = sbs.read_budget(sbs.DEFAULT_CONFIG, {})
    a = options(workdir=str(tmp_path), side="original", rerun=False, versus=None, nayer="n", harness="h")
    folder = tmp_path / "digits-seed3"
    folder.mkdir()
    (folder / "original").mkdir()
    (folder / "original" / "run.log").write_text("kept")
    spec = os.path.join(folder, "original.spec.json")
    elsewhere = ["/other/python", "/other/checkout/benchmarks/nayer_side_by_side.py", "--child", spec]
    kept = {"command": shlex.join(elsewhere), "acc": [50.0], "best": 50.0, "argv": shlex.join(sbs.their_argv(budget, a))}
    with open(folder / "summary.json", "w") as f:
        json.dump({"seed": 3, "budget": budget, "original": kept}, f)
    monkeypatch.setattr(sbs, "run_side", lambda side, *args: 0 if side == "embedding" else pytest.fail(f"{side} rerun"))
    summary = sbs.run_seed(a, budget, 3)
    assert summary["original"] == kept
    assert (folder / "original" / "run.log").read_text() == "kept"
    assert not sbs.finished(kept, elsewhere[:2] + ["--child", spec + ".other"])
    assert not sbs.finished(dict(kept, best=None), elsewhere)
