"""The table runner and collector (datafree/tables.py, datafree/commands/table.py) on fabricated runs."""
import csv
import io
import os
import shutil
import types

import pytest

import datafree_kd
from datafree.checkpoint import record_epoch
from datafree.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from datafree.tables import collect, load_paper, load_spec, markdown, speed_up, write_runner, write_table  # noqa: E402

SPEC = """
name: mini
dataset: digits
paper: cifar10
reference_row: DeepInv-2k
teacher_ckpt: "{root}/teachers/{dataset}_{teacher}.pth"
seeds: [0, 1]
pairs:
  - [wrn40_2, wrn16_1]
  - [wrn40_2, wrn40_1]
rows:
  - name: Teacher
    script: train_scratch.py
    per_teacher: true
    seeds: [0]
    args: {model: "{teacher}", epochs: 2, save_teacher: "{teacher_ckpt}"}
  - name: DeepInv-2k
    config: configs/digits/mini/deepinv.yaml
  - name: Fast-5
    config: configs/digits/mini/fast5.yaml
    args: {epochs: 2}
"""


@pytest.fixture(autouse=True)
def paper_numbers_beside_the_specs(tmp_path):
    """Specs written into tmp_path find the paper's numbers beside them, as in configs/tables/."""
    shutil.copy(os.path.join(REPO, "configs", "tables", "paper_results.yaml"), tmp_path)


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return load_spec(str(path), root=str(tmp_path / "runs"))


def fake_run(folder, accs, synthesis=None, epochs=None, script="datafree_kd"):
    """Write the summary.json a script would write after each of ``accs``' epochs."""
    epochs = epochs or len(accs)
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "last.pth"), "w").close()       # the runner resumes when it exists
    for epoch, acc in enumerate(accs):
        totals = {} if synthesis is None else {"synthesis_seconds": synthesis * (epoch + 1) / len(accs)}
        record_epoch(folder, epoch=epoch, epochs=epochs, acc1=acc, epoch_seconds=10.0, epoch_cpu_seconds=25.0,
                     info={"script": script, "args": {"method": "fast_meta", "epochs": epochs, "ep_steps": 20,
                                                       "kd_steps": 20, "batch_size": 128, "g_steps": 5}}, **totals)


def cell(spec, row, student, seed):
    return next(c for c in spec.cells() if c.row.name == row and c.student == student and c.seed == seed)


def test_cells_and_commands(spec):
    cells = spec.cells()
    # Teacher once per teacher (one seed), the other rows per pair and seed.
    assert [(c.row.name, c.pair, c.seed) for c in cells][:3] == [
        ("Teacher", "wrn40_2-wrn16_1", 0), ("DeepInv-2k", "wrn40_2-wrn16_1", 0), ("DeepInv-2k", "wrn40_2-wrn16_1", 1)]
    assert len(cells) == 1 + 2 * 2 * 2
    teacher = cells[0]
    assert teacher.folder == os.path.join(spec.root, "teacher", "wrn40_2", "seed0")
    cmd = spec.command(teacher, python="py")
    assert cmd[:2] == ["py", "train_scratch.py"] and "--teacher" not in cmd
    assert cmd[cmd.index("--save_teacher") + 1] == os.path.join(spec.root, "teachers", "digits_wrn40_2.pth")
    fast = cell(spec, "Fast-5", "wrn40_1", 1)
    cmd = spec.command(fast, python="py", resume=True)
    assert cmd[1:4] == ["datafree_kd.py", "--config", "configs/digits/mini/fast5.yaml"]
    flags = dict(zip(cmd[4:-1:2], cmd[5:-1:2]))
    assert flags == {"--dataset": "digits", "--seed": "1", "--output": fast.folder, "--teacher": "wrn40_2",
                     "--student": "wrn40_1", "--teacher_ckpt": os.path.join(spec.root, "teachers", "digits_wrn40_2.pth"),
                     "--epochs": "2"}
    assert cmd[-1] == "--resume"


def test_speed_up_is_mean_of_per_pair_ratios():
    # The paper's Fast-2 CIFAR-10 column: 655.0x from DeepInv-2k's and Fast-2's hours.
    paper, printed = load_paper("cifar10", os.path.join(REPO, "configs", "tables", "paper_results.yaml"))
    pairs = paper["Fast-2"].keys()
    deepinv = {p: paper["DeepInv-2k"][p][1] for p in pairs}
    fast2 = {p: paper["Fast-2"][p][1] for p in pairs}
    assert speed_up(deepinv, fast2) == pytest.approx(655.0, abs=0.05)
    assert printed["Fast-2"] == 655.0
    cmi = {p: paper["CMI-500"][p][1] for p in pairs}
    assert round(speed_up(deepinv, cmi), 1) == 1.6
    assert speed_up({"a": 10.0, "b": 4.0}, {"a": 2.0, "b": 1.0, "c": 3.0}) == pytest.approx((5 + 4) / 2)
    assert speed_up({"a": 10.0}, {"b": 1.0}) is None


def test_collector_means_gaps_and_failed_runs(spec):
    fake_run(cell(spec, "Teacher", "wrn16_1", 0).folder, [90.0, 95.0], script="scratch")
    for seed, (acc, syn) in enumerate([(80.0, 3600.0), (84.0, 7200.0)]):
        fake_run(cell(spec, "DeepInv-2k", "wrn16_1", seed).folder, [50.0, acc], synthesis=syn)
        fake_run(cell(spec, "Fast-5", "wrn16_1", seed).folder, [60.0, 82.0 + 2 * seed], synthesis=36.0)
    fake_run(cell(spec, "DeepInv-2k", "wrn40_1", 0).folder, [70.0, 71.0], synthesis=1800.0)
    fake_run(cell(spec, "DeepInv-2k", "wrn40_1", 1).folder, [70.0], synthesis=900.0, epochs=2)    # still running
    failed = cell(spec, "Fast-5", "wrn40_1", 0).folder
    fake_run(failed, [10.0], synthesis=5.0, epochs=2)
    write_runner(failed, status="failed", returncode=1, command=[])

    results, speed = collect(spec)
    by = {(r["row"], r["pair"]): r for r in results}
    teacher = by[("Teacher", "wrn40_2-wrn40_1")]        # one teacher run serves both pairs
    assert teacher["acc1"] == 95.0 and teacher["status"] == "done" and teacher["paper_acc1"] == 94.87
    assert teacher["gap"] == pytest.approx(95.0 - 94.87)
    deepinv = by[("DeepInv-2k", "wrn40_2-wrn16_1")]
    assert deepinv["acc1"] == pytest.approx(82.0) and deepinv["acc1_std"] == pytest.approx(2.8284271, rel=1e-6)
    assert deepinv["synthesis_hours"] == pytest.approx(1.5) and deepinv["wall_hours"] == pytest.approx(20 / 3600)
    assert deepinv["paper_acc1"] == 83.04 and deepinv["paper_hours"] == 16.9
    assert deepinv["gap"] == pytest.approx(82.0 - 83.04)
    partial = by[("DeepInv-2k", "wrn40_2-wrn40_1")]     # one seed finished, one not: never averaged in
    assert partial["acc1"] == 71.0 and partial["finished"] == 1 and partial["status"] == "partial"
    broken = by[("Fast-5", "wrn40_2-wrn40_1")]
    assert broken["acc1"] is None and broken["status"] == "failed/missing"   # seed 1 never ran
    # Speed-up over the pairs where both rows have hours: only wrn16_1 for Fast-5 (0.01 h).
    assert speed["Fast-5"][0] == pytest.approx(1.5 / 0.01)
    assert speed["Fast-5"][1] == 247.1 and speed["DeepInv-2k"][0] == pytest.approx(1.0)
    assert speed["Teacher"][0] is None

    text = markdown(spec, results, speed)
    line = next(l for l in text.splitlines() if l.startswith("| Fast-5 "))
    assert "failed" in line and "| 0.00" not in line and "150.0x" in line
    assert ("83.00 +- 1.41 (0.010h; wall 0.006h)<br>to 90% of teacher: not reached<br>paper 88.90 (0.08h), "
            "gap -5.90") in line     # the teacher's 95.0 puts the mark at 85.5


def test_time_to_accuracy_from_the_teacher_row(spec):
    fake_run(cell(spec, "Teacher", "wrn16_1", 0).folder, [85.0, 90.0], script="scratch")    # mark: 81.0
    fake_run(cell(spec, "Fast-5", "wrn16_1", 0).folder, [60.0, 82.0], synthesis=36.0)      # epoch 2: 20 s, 50 s CPU
    fake_run(cell(spec, "Fast-5", "wrn16_1", 1).folder, [81.0, 86.0], synthesis=36.0)      # epoch 1: 10 s, 25 s CPU
    fake_run(cell(spec, "DeepInv-2k", "wrn16_1", 0).folder, [50.0, 80.0], synthesis=3600.0)
    fake_run(cell(spec, "DeepInv-2k", "wrn16_1", 1).folder, [70.0, 81.5], synthesis=3600.0)
    results, _ = collect(spec)
    by = {(r["row"], r["pair"]): r for r in results}
    fast = by[("Fast-5", "wrn40_2-wrn16_1")]
    assert fast["teacher_acc1"] == 90.0 and fast["reach"]["target"] == pytest.approx(81.0)
    assert fast["reach"]["reached"] == 2 and fast["reach"]["epochs"] == 1.5
    assert fast["reach"]["wall_seconds"] == 15.0 and fast["reach"]["cpu_seconds"] == 37.5
    deepinv = by[("DeepInv-2k", "wrn40_2-wrn16_1")]
    assert (deepinv["reach"]["reached"], deepinv["reach"]["epochs"], deepinv["reach"]["wall_seconds"]) == (1, 2, 20.0)
    text = markdown(spec, *collect(spec))
    assert "to 90% of teacher: ep 1.5, 15 s wall, 38 s CPU" in text
    assert "to 90% of teacher: ep 2.0, 20 s wall, 50 s CPU (1/2 seeds; not reached by the others)" in text
    assert by[("Teacher", "wrn40_2-wrn16_1")]["reach"] is None


def test_time_to_accuracy_from_the_teacher_file_without_a_teacher_row(spec):
    import torch
    folder = os.path.join(spec.root, "teachers")
    os.makedirs(folder)
    torch.save({"state_dict": {}, "best_acc1": 70.0}, os.path.join(folder, "digits_wrn40_2.pth"))   # mark: 63.0
    fake_run(cell(spec, "Fast-5", "wrn40_1", 0).folder, [62.0, 63.0], synthesis=36.0)
    fake_run(cell(spec, "Fast-5", "wrn40_1", 1).folder, [50.0, 60.0], synthesis=36.0)
    fast = next(r for r in collect(spec)[0] if r["row"] == "Fast-5" and r["pair"] == "wrn40_2-wrn40_1")
    assert fast["teacher_acc1"] == 70.0 and fast["reach"]["target"] == pytest.approx(63.0)
    assert (fast["reach"]["reached"], fast["reach"]["of"], fast["reach"]["epochs"]) == (1, 2, 2)


def test_write_table_outputs(spec):
    fake_run(cell(spec, "DeepInv-2k", "wrn16_1", 0).folder, [50.0, 80.0], synthesis=3600.0)
    fake_run(cell(spec, "Fast-5", "wrn16_1", 0).folder, [60.0, 82.0], synthesis=36.0)
    text, paths = write_table(spec)
    assert [os.path.basename(p) for p in paths] == ["table.md", "table.csv", "accuracy_vs_hours.png",
                                                    "accuracy_per_epoch.png", "accuracy_vs_wall.png"]
    assert all(os.path.getsize(p) > 0 for p in paths)
    rows = list(csv.DictReader(io.StringIO(open(paths[1]).read())))
    fast = next(r for r in rows if r["row"] == "Fast-5" and r["pair"] == "wrn40_2-wrn16_1")
    assert float(fast["acc1"]) == 82.0 and float(fast["speed_up"]) == pytest.approx(100.0)
    assert fast["status"] == "missing"           # seed 1 never ran
    missing = next(r for r in rows if r["row"] == "Teacher")
    assert missing["acc1"] == "" and missing["status"] == "missing"


@pytest.mark.parametrize("spec_path, epochs", [("configs/tables/digits_mini.yaml", 12),
                                                ("configs/tables/digits_long.yaml", 100),
                                                ("configs/tables/fashion_mnist.yaml", 40)])
def test_digits_data_free_rows_share_one_budget(spec_path, epochs, monkeypatch):
    """The acceptance of the baselines compares methods on one budget: only synthesis may differ.

    Checked on the flags each cell's command line resolves to (preset, then the row's overrides)."""
    monkeypatch.chdir(REPO)
    spec = load_spec(spec_path, root="unused")
    cells = [c for c in spec.cells() if c.row.script == "datafree_kd.py"]
    args = {c.row.name: datafree_kd.parse_args(spec.command(c)[2:]) for c in cells}
    assert len(args) == 11
    shared = ("dataset", "teacher", "student", "batch_size", "epochs", "ep_steps", "lr", "T", "seed",
              "synthesis_channels")
    budgets = {name: tuple(getattr(a, k) for k in shared) for name, a in args.items()}
    assert len(set(budgets.values())) == 1, budgets
    assert next(iter(budgets.values()))[shared.index("epochs")] == epochs
    # every row but NAYER starts KD at once; NAYER keeps its own warm-up (a sixth of the epochs, as 20 of 120)
    assert {a.warmup for name, a in args.items() if name != "NAYER"} == {0}
    assert args["NAYER"].warmup == round(epochs / 6)
    assert all(a.ep_steps % a.kd_steps == 0 for a in args.values())
    assert sorted(a.method for a in args.values()) == [
        "cmi", "dafl", "deepinv", "dfad", "dfq", "fast_meta", "fast_meta", "fast_meta", "nayer", "ssd", "zskt"]


@pytest.mark.parametrize("variant, differs_in", [("configs/tables/fashion_mnist_fp32.yaml", {"precision"}),
                                                  ("configs/tables/fashion_mnist_dfad.yaml", {"epochs", "adv", "lr_g_schedule"})])
def test_fashion_mnist_variant_tables_change_only_what_they_name(variant, differs_in, monkeypatch):
    """A variant table's row resolves to the main table's row of the same preset, but for the keys it names."""
    monkeypatch.chdir(REPO)
    main = load_spec("configs/tables/fashion_mnist.yaml", root="unused")
    spec = load_spec(variant, root="unused")
    table = {c.row.config: vars(datafree_kd.parse_args(main.command(c)[2:]))
             for c in main.cells() if c.row.config and c.seed == 0}
    changed = set()
    for cell in (c for c in spec.cells() if c.seed == 0):
        args = vars(datafree_kd.parse_args(spec.command(cell)[2:]))
        differ = {k for k in args if k != "output" and args[k] != table[cell.row.config][k]}
        assert differ == set(cell.row.args), (cell.row.name, differ)
        changed |= differ
    assert changed == differs_in


def test_wall_speed_up_and_budget_from_what_the_run_did(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("reference_row: DeepInv-2k", "reference_row: DeepInv-2k\nspeed_up_of: wall")
                    .replace("seeds: [0, 1]", "seeds: [0]"))
    spec = load_spec(str(path), root=str(tmp_path / "runs"))
    fake_run(cell(spec, "DeepInv-2k", "wrn16_1", 0).folder, [50.0, 80.0], synthesis=3600.0)   # 2 x 10 s wall
    folder = cell(spec, "Fast-5", "wrn16_1", 0).folder
    os.makedirs(folder)
    for epoch in range(2):
        record_epoch(folder, epoch=epoch, epochs=2, acc1=60.0, epoch_seconds=4.0, synthesis_seconds=1.0,
                     kd_steps=3 * (epoch + 1), synthesis_calls=epoch + 2, synthetic_images=126,
                     info={"script": "datafree_kd", "kd_batch": 32,    # a static fact of the run, as summary_info
                           "args": {"method": "ssd", "epochs": 2, "ep_steps": 20, "kd_steps": 20, "batch_size": 128,
                                    "g_steps": 5}})
    results, speed = collect(spec)
    assert speed["Fast-5"][0] == pytest.approx(20.0 / 8.0)      # wall hours, not synthesis hours
    fast = next(r for r in results if r["row"] == "Fast-5" and r["pair"] == "wrn40_2-wrn16_1")
    # the batch the run drew (SSD-KD: a quarter of --batch_size), not --batch_size
    assert fast["budget"] == "ssd: 2 ep, 6 KD steps of 32; 3 synthesis calls x 5 steps; 126 images kept"
    path.write_text(SPEC.replace("reference_row: DeepInv-2k", "reference_row: DeepInv-2k\nspeed_up_of: kd"))
    with pytest.raises(UsageError, match="speed_up_of must be one of synthesis, wall"):
        load_spec(str(path))


def test_spec_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("reference_row: DeepInv-2k", "reference_row: Nope"))
    with pytest.raises(UsageError, match="reference_row 'Nope'"):
        load_spec(str(bad))
    bad.write_text(SPEC.replace("script: train_scratch.py", "script: train.py"))
    with pytest.raises(UsageError, match="script must be one of"):
        load_spec(str(bad))
    with pytest.raises(UsageError, match="does not exist"):
        load_spec(str(tmp_path / "none.yaml"))


def load_runner():
    from datafree.commands import table
    return table


def test_runner_skips_finished_cells_and_resumes_interrupted_ones(tmp_path, monkeypatch):
    """A stop in the middle of the table: the restart runs only what is unfinished, resuming."""
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("seeds: [0, 1]", "seeds: [0]"))
    runner = load_runner()
    calls, interrupt = [], {"at": 3}

    def fake_subprocess_run(cmd, cwd, stdout, stderr):
        calls.append(cmd)
        output = cmd[cmd.index("--output") + 1]
        if len(calls) == interrupt["at"]:      # the runner is killed during this cell's first epoch
            fake_run(output, [40.0], synthesis=1.0, epochs=2)
            raise KeyboardInterrupt
        if "--resume" in cmd:                  # the epoch left to do
            record_epoch(output, epoch=1, epochs=2, acc1=70.0, epoch_seconds=10.0, synthesis_seconds=2.0)
        else:
            fake_run(output, [50.0, 70.0], synthesis=2.0)
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(runner.subprocess, "run", fake_subprocess_run)
    argv = [str(path), "--root", str(tmp_path / "runs")]
    with pytest.raises(KeyboardInterrupt):
        runner.main(argv)
    assert len(calls) == 3
    first_pass = list(calls)
    assert runner.main(argv) == 0
    second = calls[len(first_pass):]
    # The two finished cells are not run again; the interrupted one resumes; the rest start fresh.
    assert second[0][:-1] == first_pass[2] and second[0][-1] == "--resume"
    assert all("--resume" not in c for c in second[1:])
    assert len(second) == 3                   # 5 cells: 2 finished before the stop
    assert os.path.isfile(tmp_path / "runs" / "table.md")


def test_runner_marks_a_failing_cell_and_goes_on(tmp_path, monkeypatch, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("seeds: [0, 1]", "seeds: [0]"))
    runner = load_runner()

    def fake_subprocess_run(cmd, cwd, stdout, stderr):
        if "deepinv" in " ".join(cmd):
            return types.SimpleNamespace(returncode=2)
        fake_run(cmd[cmd.index("--output") + 1], [50.0, 70.0], synthesis=2.0)
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(runner.subprocess, "run", fake_subprocess_run)
    assert runner.main([str(path), "--root", str(tmp_path / "runs")]) == 1
    table = (tmp_path / "runs" / "table.md").read_text()
    line = next(l for l in table.splitlines() if l.startswith("| DeepInv-2k "))
    assert line.count("failed") == 2
    assert "2 cell(s) failed" in capsys.readouterr().err


def test_rows_are_picked_by_name_or_folder_in_any_case(tmp_path, monkeypatch):
    """--rows takes what the user sees: the spec's row name or the row's folder under the root."""
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("seeds: [0, 1]", "seeds: [0]"))
    runner = load_runner()
    outputs = []

    def fake_subprocess_run(cmd, cwd, stdout, stderr):
        outputs.append(cmd[cmd.index("--output") + 1])
        fake_run(outputs[-1], [50.0, 70.0], synthesis=2.0)
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(runner.subprocess, "run", fake_subprocess_run)
    root = str(tmp_path / "runs")
    assert runner.main([str(path), "--root", root, "--rows", "deepinv-2k", "FAST-5"]) == 0
    assert sorted(os.path.relpath(o, root).split(os.sep)[0] for o in outputs) == ["deepinv-2k", "deepinv-2k",
                                                                                     "fast-5", "fast-5"]
    with pytest.raises(UsageError, match=r"unknown rows fast5; give a row's name or its folder: .*Fast-5 \(fast-5\)"):
        runner.main([str(path), "--root", root, "--rows", "fast5"])


def test_ssd_ablation_rows_differ_only_in_what_they_ablate(monkeypatch):
    """configs/tables/digits_ssd_ablation.yaml: Fast-2 and the SSD-KD rows share the budget that makes
    them comparable (40 epochs, models, rates, teacher file); each ablation row changes one SSD flag."""
    monkeypatch.chdir(REPO)
    spec = load_spec("configs/tables/digits_ssd_ablation.yaml", root="unused")
    assert spec.reference_row == "Fast-2" and spec.speed_up_of == "wall"
    args = {c.row.name: datafree_kd.parse_args(spec.command(c)[2:]) for c in spec.cells()}
    shared = ("dataset", "teacher", "student", "epochs", "lr", "T", "seed", "warmup", "teacher_ckpt",
              "lr_g", "lr_z", "adv", "bn", "oh", "bn_mmt", "is_maml")
    assert len({tuple(getattr(a, k) for k in shared) for a in args.values()}) == 1
    # synthesis calls make Fast-2's batches; SSD-KD's KD batches are smaller (docs/ssd_kd.md)
    synthesis_batch = {a.synthesis_batch_size or a.batch_size for a in args.values()}
    assert synthesis_batch == {args["Fast-2"].batch_size}
    assert args["Fast-2"].method == "fast_meta" and args["Fast-2"].epochs == 40 and args["Fast-2"].g_steps == 2
    full = vars(args["SSD-KD"])
    assert full["method"] == "ssd" and full["ssd_buffer_size"] == 126 and full["ssd_sampling"] == "policy"
    ablated = {"SSD-KD w/o phi": {"ssd_phi": 0}, "SSD-KD uniform sampling": {"ssd_sampling": "uniform"},
               "SSD-KD w/o learned policy": {"ssd_sampling": "priority"}}
    for name, change in ablated.items():
        differ = {k: v for k, v in vars(args[name]).items() if full[k] != v and k != "output"}
        assert differ == change, name
