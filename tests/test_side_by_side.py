"""benchmarks/side_by_side.py: both sides' command lines carry the harness's budget, the runner keeps seeds
and variants apart and shares the original's runs, and the table's statistics are right."""
import json
import os
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import datafree_kd
import registry
from conftest import ROOT, load_script

SCRIPT = os.path.join(ROOT, "benchmarks", "side_by_side.py")
sbs = load_script("benchmarks/side_by_side.py")
needs_harness = pytest.mark.skipif(not os.path.isfile(os.path.join(sbs.DEFAULT_HARNESS, "run_upstream.py")),
                                   reason="the upstream_bench harness is not beside the project")


def options(**overrides):
    values = dict(ours_root=ROOT, teacher="wrn16_2", student="wrn16_1", teacher_ckpt="t.pth", ours_args="",
                  original_args="", harness=sbs.DEFAULT_HARNESS, upstream="/up", dataset="digits", data_root=None,
                  variants=True, seeds=[3], parallel=False)
    values.update(overrides)
    return SimpleNamespace(**values)


def flag_values(cmd):
    """{--flag: value} of a command line (the last value of a repeated flag, as argparse takes it)."""
    values = {}
    for i, token in enumerate(cmd):
        if token.startswith("--"):
            following = cmd[i + 1] if i + 1 < len(cmd) else None
            values[token] = None if following is None or following.startswith("--") else following
    return values


@needs_harness
@pytest.mark.parametrize("method", list(sbs.METHODS))
def test_our_command_parses_and_carries_the_harness_budget(method):
    config, fast_k = sbs.harness_config(sbs.DEFAULT_HARNESS, method, epochs=16, warmup=None)
    cmd = sbs.our_command(method, config, options(), "out", 3)
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
    assert args.synthesis_channels is None           # 3 channels, as the original synthesises


@needs_harness
def test_original_command_names_the_same_budget():
    config, fast_k = sbs.harness_config(sbs.DEFAULT_HARNESS, "fast_meta", epochs=12, warmup=2)
    cmd = sbs.original_command("fast_meta", config, fast_k, options(original_args="--hflip 1"), "w", "w/s.json", 3)
    text = shlex.join(cmd)
    for part in ("--methods fast_meta", "--dataset digits", "--batch-size 64", "--epochs 12", "--ep-steps 10",
                 "--warmup 2", "--fast-g-steps 5", "--threads 1", "--seed 3", "--hflip 1"):
        assert part in text
    assert "--g-steps-override" not in text and "--data-root" not in text     # digits: as before


@needs_harness
def test_budget_epochs_and_override():
    config, _ = sbs.harness_config(sbs.DEFAULT_HARNESS, "dafl")
    assert (config["epochs"], config["batch_size"], config["ep_steps"]) == (sbs.BUDGETS["dafl"]["epochs"], 32, 40)
    assert config["kd_steps"] == 5 and config["lr"] == pytest.approx(0.1 * 32 / 256)
    assert sbs.harness_config(sbs.DEFAULT_HARNESS, "dafl", epochs=3)[0]["epochs"] == 3


def test_fashion_mnist_budgets_and_teacher():
    assert set(sbs.BUDGETS_FM) == set(sbs.METHODS)
    for method, budget in sbs.BUDGETS_FM.items():
        assert (budget["batch"], budget["ep_steps"], budget["epochs"]) == (128, 50, 12), method
        assert budget.get("fast_k") == (5 if method.startswith("fast") else None), method
        assert budget["why"], method
    assert sbs.BUDGETS_FM["deepinv"]["g_steps"] == 50 and sbs.BUDGETS_FM["cmi"]["g_steps"] == 20
    assert os.path.isfile(sbs.DEFAULT_TEACHERS["fashion_mnist"])
    # The dataset declares no flips, so neither side's KD batches or pools flip.
    assert registry.DATASET_HFLIP["fashion_mnist"] is False


@needs_harness
@pytest.mark.parametrize("method", list(sbs.METHODS))
def test_fashion_mnist_sides_get_the_same_budget_data_teacher_and_no_flips(method):
    config, fast_k = sbs.harness_config(sbs.DEFAULT_HARNESS, method, dataset="fashion_mnist")
    import run_upstream    # on sys.path: harness_config put the harness there
    a = options(dataset="fashion_mnist", data_root="/data/fm", teacher_ckpt="/t/fashion_mnist_wrn16_2.pth")
    ours = datafree_kd.parse_args(sbs.our_command(method, config, a, "out", 1)[2:])
    theirs = flag_values(sbs.original_command(method, config, fast_k, a, "w", "w/s.json", 1))
    assert ours.dataset == theirs["--dataset"] == "fashion_mnist"
    assert ours.data_root == theirs["--data-root"] == "/data/fm"
    assert ours.teacher_ckpt == theirs["--teacher-ckpt"] == "/t/fashion_mnist_wrn16_2.pth"
    assert ours.teacher == theirs["--teacher"] == "wrn16_2" and ours.seed == int(theirs["--seed"]) == 1
    assert theirs["--hflip"] == "0" and not ours.as_original and ours.synthesis_channels is None
    # What the harness makes of its command is what ours was given.
    harness_args = SimpleNamespace(
        batch_size=int(theirs["--batch-size"]), epochs=int(theirs["--epochs"]), ep_steps=int(theirs["--ep-steps"]),
        warmup=int(theirs["--warmup"]), lr_scale="linear", generative_student="teacher",
        g_steps_override=int(theirs["--g-steps-override"]) if "--g-steps-override" in theirs else None)
    scaled = run_upstream.scale_config(method, run_upstream.upstream_configs(fast_k or 2)[method], harness_args)
    assert (ours.batch_size, ours.ep_steps, ours.epochs) == \
        (scaled["batch_size"], scaled["ep_steps"], scaled["epochs"]) == (128, 50, 12)
    for flag in ("lr", "warmup", "kd_steps", "g_steps", "lr_g", "adv", "bn", "oh"):
        assert getattr(ours, flag) == pytest.approx(scaled[flag]), flag
    assert ours.T == (1 if method in sbs.GENERATIVE else scaled["T"])
    assert ours.kd_steps == {"dafl": 5, "zskt": 5, "dfq": 10}.get(method, 50)
    assert ours.g_steps == {"deepinv": 50, "cmi": 20}.get(method, fast_k or 1)
    if method == "deepinv":
        assert ours.lr_g == 1.0


@needs_harness
def test_variant_flags_come_last_and_unknown_ones_are_refused_with_a_reason():
    config, _ = sbs.harness_config(sbs.DEFAULT_HARNESS, "zskt", dataset="fashion_mnist")
    a = options(dataset="fashion_mnist", data_root="/data/fm")
    (_, _, flags), = [row for row in sbs.our_rows("zskt", a) if row[0] != "ours"]
    cmd = sbs.our_command("zskt", config, a, "out", 0, flags)
    assert datafree_kd.parse_args(cmd[2:]).adv == 0           # the variant's --adv 0 beats the budget's --adv 1
    assert sbs.refusal(cmd, a) is None
    assert "unrecognized arguments: --not_a_flag" in sbs.refusal(cmd + ["--not_a_flag", "1"], a)
    refused = sbs.refusal(cmd + ["--as_original", "nope"], a)
    assert refused.startswith("our datafree_kd.py refuses the command") and "--as_original" in refused
    assert sbs.our_rows("zskt", options(variants=False)) == [("ours", "ours", "")]
    assert sbs.variant_key("--as_original flips,deepinv_best") == "ours-as_original-flips-deepinv_best"


def test_statistics_on_hand_computed_numbers():
    stat = sbs.mean_se([50.0, 60.0, 55.0])     # sample std 5
    assert stat["n"] == 3 and stat["mean"] == pytest.approx(55.0) and stat["se"] == pytest.approx(5 / 3 ** 0.5)
    assert sbs.mean_se([42.0]) == {"n": 1, "mean": 42.0, "se": None} and sbs.mean_se([]) is None
    side = lambda best: {"best": best, "acc": [best]}
    ours = {0: side(50.0), 1: side(60.0), 2: side(55.0), 3: {"error": "failed"}}
    original = {0: side(45.0), 1: side(58.0), 2: side(50.0), 3: side(40.0), 4: side(1.0)}
    diff = sbs.paired_difference(ours, original)          # differences 5, 2, 5 over the seeds both finished
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(4.0) and diff["se"] == pytest.approx(1.0)
    assert sbs.fmt_stat(diff, "+") == "+4.00 ± 1.00" and sbs.fmt_stat(sbs.mean_se([42.0])) == "42.00 ± -"


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
    (tmp_path / "ours.cpu.json").write_text(json.dumps({"cpu_seconds": 15.0, "exit_code": 0}))
    (tmp_path / "original.cpu.json").write_text(json.dumps({"cpu_seconds": 60.0, "exit_code": 0}))
    ours = sbs.with_cpu(sbs.read_ours(str(ours_dir)), str(tmp_path), "ours")
    theirs = sbs.with_cpu(sbs.read_original(str(original), "deepinv"), str(tmp_path), "original")
    assert ours["wall_seconds_per_epoch"] == 10.0 and theirs["wall_seconds_per_epoch"] == 20.0
    assert ours["seconds_per_epoch"] == 5.0 and theirs["seconds_per_epoch"] == 20.0
    row = {"method": "deepinv", "budget": "DeepInv-10", "variants": [],
           "runs": {"ours": {0: ours}, "original": {0: theirs}}}
    a = options(teacher_ckpt="/x/digits_wrn16_2.pth", seeds=[0])
    table = sbs.markdown([row], a, {"deepinv": "t-deepinv.png"})
    assert "| DeepInv-10 | ours | 1 | 40.00 ± - | -10.00 ± - (1) | 30.00 | 5.0 | 0.25 | [curves](t-deepinv.png) |" \
        in table
    assert "|  | original | 1 | 50.00 ± - | - | 45.00 | 20.0 | - |  |" in table
    assert "| deepinv | ours | 40.00 |" in table and "cropped, not flipped," in table
    assert sbs.summary_line([row], a).endswith("behind by more than 1 SE on: deepinv")
    (tmp_path / "ours.cpu.json").unlink()           # a run made before CPU seconds were recorded
    untimed = sbs.with_cpu(sbs.read_ours(str(ours_dir)), str(tmp_path), "ours")
    row["runs"]["ours"][0] = untimed
    assert "| 30.00 | - | - |" in sbs.markdown([row], a)
    assert sbs.read_ours(str(tmp_path / "missing")) is None


# A stand-in for both sides: it burns CPU, writes the summary its side would write with the given best
# top-1, and notes when it ran.
FAKE_SIDE = r"""
import json, os, sys, time
side, method, target, burn, best = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
start = time.time()
while time.process_time() < burn:   # CPU work the runner must count
    pass
if best < 0:
    sys.exit("fake crash")
acc = [10.0, best, best - 5.0, best - 2.0]
os.makedirs(os.path.dirname(target), exist_ok=True)
if side.startswith("ours"):
    summary = {"finished": True, "best_acc1": best, "wall_seconds": 4.0, "history": [{"acc1": a} for a in acc]}
else:
    summary = {"complete": True, "methods": {method: {"student_acc_per_epoch": acc, "student_acc_best": best,
                                                      "total_wall_s": 4.0}}}
with open(target, "w") as f:
    json.dump(summary, f)
with open(os.path.join(os.path.dirname(os.path.dirname(target)), side + ".times"), "a") as f:
    f.write(f"{start} {time.time()}\n")
"""
# Best top-1 of the stand-ins: (method, side, seed) -> value. zskt: ours +4.00 +- 1.00 ahead, its variant
# -6.00 +- 1.00 behind; deepinv: ours -4.00 +- 1.00 behind.
BEST = {("zskt", "ours"): [50.0, 60.0, 55.0], ("zskt", "ours-adv-0"): [40.0, 50.0, 45.0],
        ("zskt", "original"): [45.0, 58.0, 50.0],
        ("deepinv", "ours"): [40.0, 42.0, 41.0], ("deepinv", "original"): [45.0, 44.0, 46.0]}


def best_of(method, side, seed):
    values = BEST.get((method, side), [])
    return str(values[seed] if seed < len(values) else 0.0)


def fake_sides(monkeypatch, tmp_path, burn=(0.0, 0.0)):
    script = tmp_path / "fake_side.py"
    script.write_text(FAKE_SIDE)
    monkeypatch.setattr(sbs, "harness_config", lambda *args, **kw: ({"epochs": 4}, None))
    monkeypatch.setattr(sbs, "budget_text", lambda m, *args: f"budget of {m}")
    monkeypatch.setattr(sbs, "VARIANTS", {"zskt": [("original's zero adversarial term", "--adv 0")],
                                          "deepinv": [("not in our parser yet", "--as_original nope")]})
    monkeypatch.setattr(sbs, "refusal", lambda cmd, a: "our datafree_kd.py refuses the command: unrecognized "
                        "arguments: --as_original nope" if "--as_original nope" in shlex.join(cmd) else None)

    def ours(method, config, a, output, seed, extra=""):
        side = os.path.basename(output)
        return [sys.executable, str(script), side, method, os.path.join(output, "summary.json"), str(burn[0]),
                best_of(method, side, seed)] + shlex.split(extra)

    def original(method, config, fast_k, a, workdir, out, seed):
        return [sys.executable, str(script), "original", method, out, str(burn[1]), best_of(method, "original", seed)]

    monkeypatch.setattr(sbs, "our_command", ours)
    monkeypatch.setattr(sbs, "original_command", original)


def runner_options(tmp_path, **overrides):
    values = dict(workdir=str(tmp_path / "work"), tag="t", original_tag=None, epochs=None, warmup=None, harness="h",
                  rerun="none", ours_only=False, parallel=False, ours_root=str(tmp_path), upstream=str(tmp_path),
                  dataset="digits", variants=True, report_only=False, teacher_ckpt=str(tmp_path / "fake_side.py"))
    values.update(overrides)
    return SimpleNamespace(**values)


def times(tmp_path, side, method="deepinv", seed=0, tag="t"):
    path = tmp_path / "work" / tag / f"{method}-seed{seed}" / f"{side}.times"
    if not path.exists():
        return []
    return [tuple(map(float, line.split())) for line in path.read_text().split("\n") if line]


def test_sides_run_one_after_the_other_and_count_cpu_seconds(monkeypatch, tmp_path):
    fake_sides(monkeypatch, tmp_path, burn=(0.3, 0.6))
    results, commands = sbs.run_seed("deepinv", 0, {}, None, runner_options(tmp_path, variants=False))
    (ours_start, ours_end), = times(tmp_path, "ours")
    (original_start, _), = times(tmp_path, "original")
    assert original_start >= ours_end                  # never both at once
    # CPU seconds of each process (its burn plus the interpreter's start) over its 4 epochs.
    assert 0.3 / 4 <= results["ours"]["seconds_per_epoch"] < 0.3 / 4 + 0.5
    assert 0.6 / 4 <= results["original"]["seconds_per_epoch"] < 0.6 / 4 + 0.5
    assert results["ours"]["best"] == 40.0 and results["original"]["best"] == 45.0
    assert set(commands) == {"ours", "original"}

    # Finished sides are kept; --rerun ours runs our side alone again.
    sbs.run_seed("deepinv", 0, {}, None, runner_options(tmp_path, variants=False))
    assert len(times(tmp_path, "ours")) == len(times(tmp_path, "original")) == 1
    sbs.run_seed("deepinv", 0, {}, None, runner_options(tmp_path, variants=False, rerun="ours"))
    assert len(times(tmp_path, "ours")) == 2 and len(times(tmp_path, "original")) == 1


def test_parallel_sides_overlap(monkeypatch, tmp_path):
    fake_sides(monkeypatch, tmp_path, burn=(0.3, 0.3))
    sbs.run_seed("deepinv", 0, {}, None, runner_options(tmp_path, parallel=True, variants=False))
    (ours_start, ours_end), = times(tmp_path, "ours")
    (original_start, original_end), = times(tmp_path, "original")
    assert original_start < ours_end and ours_start < original_end


def test_a_crashed_side_is_reported_and_run_again(monkeypatch, tmp_path):
    fake_sides(monkeypatch, tmp_path)
    monkeypatch.setitem(BEST, ("deepinv", "ours"), [-1.0])
    results, _ = sbs.run_seed("deepinv", 0, {}, None, runner_options(tmp_path, variants=False))
    assert results["ours"]["error"] == "exit 1: fake crash" and results["original"]["best"] == 45.0
    monkeypatch.setitem(BEST, ("deepinv", "ours"), [40.0])
    results, _ = sbs.run_seed("deepinv", 0, {}, None, runner_options(tmp_path, variants=False))
    assert results["ours"]["best"] == 40.0 and len(times(tmp_path, "original")) == 1


def test_the_original_is_never_run_without_the_teacher_file(monkeypatch, tmp_path):
    fake_sides(monkeypatch, tmp_path)
    with pytest.raises(SystemExit, match="teacher file .* is missing"):
        sbs.run_seed("deepinv", 0, {}, None, runner_options(tmp_path, teacher_ckpt=str(tmp_path / "none.pth")))
    assert times(tmp_path, "original") == []


def fake_setup(tmp_path):
    """An upstream folder, a harness folder and a teacher file that exist, for main()'s checks."""
    (tmp_path / "harness").mkdir(exist_ok=True)
    (tmp_path / "harness" / "run_upstream.py").write_text("")
    (tmp_path / "teacher.pth").write_text("")
    return ["--upstream", str(tmp_path), "--harness", str(tmp_path / "harness"), "--teacher_ckpt",
            str(tmp_path / "teacher.pth"), "--workdir", str(tmp_path / "work"), "--tag", "t"]


def test_seeds_variants_table_figures_and_summary(monkeypatch, tmp_path, capsys):
    fake_sides(monkeypatch, tmp_path)
    out = tmp_path / "tables" / "table.md"
    argv = fake_setup(tmp_path) + ["--methods", "zskt,deepinv", "--seeds", "0,1,2", "--out", str(out)]
    assert sbs.main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == ("summary: 2/2 methods finished over seeds 0,1,2; ours within 1 SE of the original or "
                           "above on: zskt; behind by more than 1 SE on: deepinv; variant rows finished: 1/2")
    for seed in (0, 1, 2):
        folder = tmp_path / "work" / "t" / f"zskt-seed{seed}"
        assert (folder / "ours" / "summary.json").exists() and (folder / "original" / "summary.json").exists()
        # The variant's own folder and run, with its flag; one original run per seed, shared by both rows.
        assert (folder / "ours-adv-0" / "summary.json").exists()
        assert (folder / "ours-adv-0.command").read_text().strip().endswith("--adv 0")
        assert "--adv" not in (folder / "ours.command").read_text()
        assert len(times(tmp_path, "original", "zskt", seed)) == 1
        assert not (tmp_path / "work" / "t" / f"deepinv-seed{seed}" / "ours-as_original-nope").exists()
    table = out.read_text()
    ours_row, = [line for line in table.splitlines() if line.startswith("| budget of zskt | ours |")]
    assert ours_row.startswith("| budget of zskt | ours | 3 | 55.00 ± 2.89 | +4.00 ± 1.00 (3) | 53.00 | ")
    assert ours_row.endswith(" | [curves](table-zskt.png) |")
    assert "| ours, original's zero adversarial term (`--adv 0`) | 3 | 45.00 ± 2.89 | -6.00 ± 1.00 (3) | 43.00 |" \
        in table
    assert "| original | 3 | 51.00 ± 3.79 | - | 49.00 |" in table
    assert "| deepinv | ours | 40.00 | 42.00 | 41.00 |" in table
    assert "| deepinv | ours, not in our parser yet (`--as_original nope`) | failed | failed | failed |" in table
    assert "- deepinv, ours, not in our parser yet (`--as_original nope`), seed 1: our datafree_kd.py refuses the " \
           "command: unrecognized arguments: --as_original nope" in table
    for method in ("zskt", "deepinv"):
        assert (out.parent / f"table-{method}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "work" / "t" / "results-digits-zskt,deepinv-seeds0,1,2.json").read_text())
    assert [r["method"] for r in saved] == ["zskt", "deepinv"]

    # Everything finished is kept; --rerun variants runs the variant rows alone again.
    sbs.main(argv)
    assert len(times(tmp_path, "ours", "zskt", 0)) == len(times(tmp_path, "ours-adv-0", "zskt", 0)) == 1
    sbs.main(argv + ["--rerun", "variants"])
    assert len(times(tmp_path, "ours-adv-0", "zskt", 2)) == 2
    assert len(times(tmp_path, "ours", "zskt", 2)) == len(times(tmp_path, "original", "zskt", 2)) == 1

    # --report_only runs nothing, and reports a seed not run yet as such.
    sbs.main(argv[:-3] + ["0,1,2,3", "--out", str(out), "--report_only"])
    assert not (tmp_path / "work" / "t" / "zskt-seed3").exists()
    assert "| zskt | ours | 50.00 | 60.00 | 55.00 | not run |" in out.read_text()
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(
        "summary: 0/2 methods finished over seeds 0,1,2,3; ours within 1 SE of the original or above on: none; "
        "behind by more than 1 SE on: none; unfinished: zskt, deepinv")

    # --ours_only under another tag reads the original's runs of the first tag.
    sbs.main(fake_setup(tmp_path) + ["--methods", "zskt", "--seeds", "0,1", "--tag", "v", "--ours_only",
                                     "--original_tag", "t"])
    assert len(times(tmp_path, "ours", "zskt", 1, tag="v")) == 1
    assert times(tmp_path, "original", "zskt", 1, tag="v") == []
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("summary: 1/1 methods finished over seeds 0,1;")


def test_options_seeds_and_per_dataset_defaults(tmp_path, monkeypatch):
    base = fake_setup(tmp_path)
    assert sbs.parse_options(base).seeds == [0]
    assert sbs.parse_options(base + ["--seed", "4"]).seeds == [4]
    assert sbs.parse_options(base + ["--seeds", "0,1,2"]).seeds == [0, 1, 2]
    for bad in (["--seed", "1", "--seeds", "0,1"], ["--seeds", "0,0"], ["--seeds", "a"]):
        with pytest.raises(SystemExit):
            sbs.parse_options(base + bad)
    without_teacher = [t for t in base if t not in ("--teacher_ckpt", str(tmp_path / "teacher.pth"))]
    a = sbs.parse_options(without_teacher + ["--dataset", "fashion_mnist", "--data_root", str(tmp_path)])
    assert a.teacher_ckpt == sbs.DEFAULT_TEACHERS["fashion_mnist"] and a.data_root == str(tmp_path)
    monkeypatch.setitem(sbs.DEFAULT_TEACHERS, "digits", str(tmp_path / "teacher.pth"))
    assert sbs.parse_options(without_teacher).teacher_ckpt == str(tmp_path / "teacher.pth")
    if os.path.isdir(sbs.FASHION_MNIST_ROOT):
        assert sbs.parse_options(without_teacher + ["--dataset", "fashion_mnist"]).data_root == sbs.FASHION_MNIST_ROOT
    with pytest.raises(SystemExit):     # a missing teacher file: refused before anything runs
        sbs.parse_options(without_teacher + ["--teacher_ckpt", str(tmp_path / "none.pth")])


def test_a_kept_run_warns_only_when_its_arguments_differ(tmp_path, capsys):
    """The interpreter and the script's path (which checkout ran it) do not count as another command."""
    cmd = [sys.executable, os.path.join(ROOT, "datafree_kd.py"), "--method", "fast_meta", "--seed", "0"]
    (tmp_path / "ours.command").write_text(shlex.join(["/other/python", "/other/datafree_kd.py", *cmd[2:]]) + "\n")
    sbs.warn_if_other_command("fast_meta seed 0", "ours", str(tmp_path), cmd)
    assert capsys.readouterr().out == ""
    sbs.warn_if_other_command("fast_meta seed 0", "ours", str(tmp_path), cmd[:-1] + ["1"])
    assert "kept a finished run made with another command" in capsys.readouterr().out


probe = load_script("benchmarks/generative_probe.py")


@needs_harness
@pytest.mark.parametrize("method", sbs.GENERATIVE)
def test_generative_probe_gives_ours_the_budget_and_the_originals_zero_adversarial_term(method):
    config, _ = sbs.harness_config(sbs.DEFAULT_HARNESS, method, dataset="fashion_mnist")
    flags = probe.our_flags(method, config, options(dataset="fashion_mnist", seed=1000))
    args = datafree_kd.parse_args(flags)
    for flag in ("batch_size", "lr", "kd_steps", "ep_steps", "g_steps", "lr_g", "bn", "oh", "act", "balance"):
        assert getattr(args, flag) == pytest.approx(config[flag]), flag
    assert args.T == 1 and args.precision == "fp32"
    # dafl's adversarial weight is zero in the original's script; zskt and dfq get the variant row's --adv 0.
    assert args.adv == 0 and config["adv"] == (0.0 if method == "dafl" else 1.0)


def test_generative_probe_refuses_other_methods_and_a_missing_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        probe.main(["--upstream", str(tmp_path), "--methods", "cmi"])
    assert "compares dafl, zskt, dfq only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe.main(["--upstream", str(tmp_path), "--methods", "dafl"])
    assert "is not a Fast-Datafree checkout" in capsys.readouterr().err


needs_upstream = pytest.mark.skipif(
    not os.path.isfile(os.path.join(os.environ.get("FAST_DATAFREE_UPSTREAM", "-"), "registry.py")),
    reason="FAST_DATAFREE_UPSTREAM does not name a checkout of zju-vipa/Fast-Datafree")


def run_probe(*flags):
    """The probe's printed lines, run against $FAST_DATAFREE_UPSTREAM."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "generative_probe.py"), "--upstream",
                           os.environ["FAST_DATAFREE_UPSTREAM"], *flags], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


@needs_harness
@needs_upstream
def test_generative_probe_finds_dafl_bit_identical_to_the_original():
    lines = run_probe("--methods", "dafl", "--calls", "2")
    assert lines[-1] == "generative_probe: dafl bit-identical after 2 calls (generator 0.0e+00, student 0.0e+00)"


@needs_harness
@needs_upstream
def test_generative_probe_evaluates_both_students_alike_after_an_epoch_of_dafl():
    lines = run_probe("--methods", "dafl", "--epochs", "1")
    row = lines[-2].strip("| ").split(" | ")
    # epoch 1: bit-identical students, both schedules at the same lr, the same accuracy from each side's evaluation
    assert row[2] == "1" and row[3] == row[5] == "0.00e+00"
    assert row[8] == row[9] and row[10] == row[11]
    assert "dafl bit-identical after 10 calls" in lines[-1]


@pytest.mark.parametrize("as_run", [None, 2])
def test_generative_probe_gives_both_sides_the_same_numbers(as_run):
    torch.manual_seed(123)
    streams = probe.Streams(SimpleNamespace(as_run=as_run))
    draws = {}
    for part in range(2):
        for side in ("ours", "original"):
            with streams.side(side, 1000 + part):
                draws.setdefault(side, []).append(torch.rand(3))
    assert all(torch.equal(a, b) for a, b in zip(draws["ours"], draws["original"]))
    # carried streams go on from where each side stopped; reseeded ones start again for each part
    assert not torch.equal(draws["ours"][0], draws["ours"][1])
    if as_run is None:
        torch.manual_seed(1001)
        assert torch.equal(draws["ours"][1], torch.rand(3))
