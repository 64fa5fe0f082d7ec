"""Paper tables from run folders: table specs, the cells they expand to, and the collector.

The code behind ``datafree-table`` (scripts/reproduce_table.py in a checkout). A spec's relative
paths (presets, teacher files, the paper's numbers) are read from its *project folder*: the folder
above ``configs/tables/`` when the spec lies there (a checkout), else the current folder.

A table spec (YAML, ``configs/tables/*.yaml``) names a dataset, teacher/student pairs, seeds and
rows. Each row is one script with its flags (``config`` preset and/or ``args``); every
(row, pair, seed) is a *cell* with its own run folder ``ROOT/<row>/<teacher>-<student>/seed<k>``.
Flag values may use ``{teacher}``, ``{student}``, ``{dataset}``, ``{seed}``, ``{root}`` and
``{cell}`` (the cell's run folder); ``teacher_ckpt`` in the spec is passed to the rows that
load a teacher.

A cell's state comes from its run folder: ``summary.json`` (written by the scripts after every
epoch) says how far it got, ``runner.json`` (written by the runner) whether its last attempt
failed. The collector turns finished cells into the paper's format: best top-1 accuracy with
synthesis hours in brackets, mean +- std over seeds, the speed-up column, the time to accuracy (the
epoch, wall and CPU seconds at which a run first reaches 90% of the teacher's accuracy), and the
paper's number and our gap beside every cell that has one.
"""
import csv
import io
import json
import os
import re
import statistics
from dataclasses import dataclass, field

import yaml

from datafree.checkpoint import atomic_write_text, read_summary
from datafree.errors import UsageError

# The scripts a row may name, and the command module each one is (run as `python -m` where the project
# folder has no such file, e.g. with the package installed).
SCRIPTS = {"datafree_kd.py": "datafree.commands.kd", "train_scratch.py": "datafree.commands.train",
           "vanilla_kd.py": "datafree.commands.vanilla_kd"}
# Scripts that distil from a teacher and so take --teacher/--student/--teacher_ckpt.
TEACHER_SCRIPTS = ("datafree_kd.py", "vanilla_kd.py")
RUNNER_FILE = "runner.json"
SPEED_UP_OF = ("synthesis", "wall")
# Time to accuracy: when a run first reaches this share of its teacher's accuracy.
REACH_FRACTION = 0.9
PAPER_RESULTS = "paper_results.yaml"     # beside the specs, in configs/tables/


@dataclass
class Row:
    name: str
    script: str = "datafree_kd.py"
    config: str = None
    args: dict = field(default_factory=dict)
    paper_row: str = None
    per_teacher: bool = False     # one run per teacher (a teacher row), shared by its pairs
    seeds: list = None            # overrides the table's seeds
    reference_row: str = None     # overrides the table's reference row for this row's speed-up

    @property
    def slug(self):
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_").lower()


@dataclass
class Cell:
    row: Row
    teacher: str
    student: str
    seed: int
    folder: str

    @property
    def pair(self):
        return f"{self.teacher}-{self.student}"


@dataclass
class TableSpec:
    name: str
    dataset: str
    pairs: list
    rows: list
    seeds: list = field(default_factory=lambda: [0])
    paper: str = None             # key of configs/tables/paper_results.yaml
    reference_row: str = None     # the speed-up baseline (DeepInversion in the paper)
    speed_up_of: str = "synthesis"  # the hours the speed-up compares: synthesis (the paper's) or wall (total)
    teacher_ckpt: str = None
    teacher_row: str = "Teacher"  # the row whose accuracy is the teacher's (else teacher_ckpt's best_acc1)
    root: str = None
    description: str = ""
    project: str = "."            # the folder the spec's relative paths are read from (set by load_spec)
    paper_results: str = None     # the file of the paper's numbers (set by load_spec)

    def cells(self):
        """Every cell of the table, rows in spec order; a per-teacher row once per teacher."""
        out, seen = [], set()
        for row in self.rows:
            for teacher, student in self.pairs:
                for seed in row.seeds or self.seeds:
                    who = teacher if row.per_teacher else f"{teacher}-{student}"
                    folder = os.path.join(self.root, row.slug, who, f"seed{seed}")
                    if folder not in seen:
                        seen.add(folder)
                        out.append(Cell(row, teacher, student, seed, folder))
        return out

    def rows_named(self, names):
        """The names of the rows that ``names`` pick: a row's name or its folder (slug), any case."""
        lookup = {}
        for row in self.rows:
            lookup[row.name.lower()] = row.name
            lookup[row.slug] = row.name
        unknown = [n for n in names if n.lower() not in lookup]
        if unknown:
            raise UsageError(f"unknown rows {', '.join(unknown)}; give a row's name or its folder: "
                             + ", ".join(f"{r.name} ({r.slug})" for r in self.rows))
        return {lookup[n.lower()] for n in names}

    def cells_of(self, row, teacher, student):
        """The cells that give the value of (row, pair): a per-teacher row shares its runs."""
        return [c for c in self.cells() if c.row is row and c.teacher == teacher
                and (row.per_teacher or c.student == student)]

    def fill(self, value, cell):
        if not isinstance(value, str):
            return value
        names = {"teacher": cell.teacher, "student": cell.student, "dataset": self.dataset,
                 "seed": cell.seed, "root": self.root, "cell": cell.folder}
        if self.teacher_ckpt:
            names["teacher_ckpt"] = self.teacher_ckpt.format(**names)
        try:
            return value.format(**names)
        except KeyError as err:
            raise UsageError(f"table {self.name}: unknown placeholder {err} in '{value}'; "
                             f"use {', '.join('{' + n + '}' for n in names)}") from err

    def command(self, cell, python="python", resume=False):
        """The command line (a list) that runs ``cell`` from the project folder: its script where the folder
        has it (a checkout), else its command module."""
        row = cell.row
        script = os.path.isfile(os.path.join(self.project, row.script))
        cmd = [python, row.script] if script else [python, "-m", SCRIPTS[row.script]]
        if row.config:
            cmd += ["--config", self.fill(row.config, cell)]
        flags = {"dataset": self.dataset, "seed": cell.seed, "output": cell.folder}
        if row.script in TEACHER_SCRIPTS:
            flags.update(teacher=cell.teacher, student=cell.student)
            if self.teacher_ckpt:
                flags["teacher_ckpt"] = self.fill(self.teacher_ckpt, cell)
        flags.update({k: self.fill(v, cell) for k, v in row.args.items()})
        for key, value in flags.items():
            if isinstance(value, bool):
                cmd += [f"--{key}"] if value else []
            else:
                cmd += [f"--{key}", str(value)]
        return cmd + (["--resume"] if resume else [])


def load_spec(path, root=None):
    """Read a table spec; ``root`` (default ``runs/tables/<name>``) holds the cells' run folders."""
    if not os.path.isfile(path):
        raise UsageError(f"table spec {path} does not exist; see configs/tables/ for the presets")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    known = set(TableSpec.__dataclass_fields__) - {"project", "paper_results"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"{path}: unknown keys {', '.join(unknown)}; a table spec has {', '.join(sorted(known))}")
    for key in ("name", "dataset", "pairs", "rows"):
        if key not in raw:
            raise UsageError(f"{path}: '{key}' is missing")
    rows = []
    for entry in raw["rows"]:
        bad = sorted(set(entry) - set(Row.__dataclass_fields__))
        if bad or "name" not in entry:
            raise UsageError(f"{path}: row {entry.get('name', '?')} has unknown keys {', '.join(bad)} or no name")
        row = Row(**entry)
        if row.script not in SCRIPTS:
            raise UsageError(f"{path}: row {row.name}: script must be one of {', '.join(SCRIPTS)}")
        if row.config and row.script != "datafree_kd.py":
            raise UsageError(f"{path}: row {row.name}: only datafree_kd.py rows take a config preset; use args")
        rows.append(row)
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise UsageError(f"{path}: row names must be unique")
    spec = TableSpec(**{**raw, "rows": rows, "pairs": [tuple(p) for p in raw["pairs"]]})
    if spec.speed_up_of not in SPEED_UP_OF:
        raise UsageError(f"{path}: speed_up_of must be one of {', '.join(SPEED_UP_OF)}, not '{spec.speed_up_of}'")
    for reference in [spec.reference_row, *(r.reference_row for r in rows)]:
        if reference and reference not in names:
            raise UsageError(f"{path}: reference_row '{reference}' is not a row of the table")
    spec.project = project_folder(path)
    spec.paper_results = os.path.join(os.path.dirname(os.path.abspath(path)), PAPER_RESULTS)
    spec.root = root or spec.root or os.path.join("runs", "tables", spec.name)
    return spec


def project_folder(spec_path):
    """The folder above configs/tables/ when the spec lies there, else the current folder."""
    folder = os.path.dirname(os.path.abspath(spec_path))
    if os.path.basename(folder) == "tables" and os.path.basename(os.path.dirname(folder)) == "configs":
        return os.path.dirname(os.path.dirname(folder))
    return os.getcwd()


# ---- cell state -------------------------------------------------------------------------------

def cell_status(cell):
    """``(status, summary)``: status is done, failed, partial (can resume) or missing."""
    summary = read_summary(cell.folder)
    runner = read_runner(cell.folder)
    if summary and summary.get("finished"):
        return "done", summary
    if runner.get("status") == "failed":
        return "failed", summary
    if summary or os.path.isfile(os.path.join(cell.folder, "last.pth")):
        return "partial", summary
    return "missing", summary


def read_runner(folder):
    path = os.path.join(folder, RUNNER_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_runner(folder, **record):
    atomic_write_text(json.dumps(record, indent=1), os.path.join(folder, RUNNER_FILE))


# ---- collecting ----------------------------------------------------------------------------------

def load_paper(key, path):
    """The paper's table ``key``: {row: {pair: (acc, hours or None)}} and {row: speed-up}."""
    if key is None:
        return {}, {}
    if not os.path.isfile(path):
        raise UsageError(f"the spec names the paper's table '{key}', but {path} is missing: keep the spec beside "
                         f"paper_results.yaml (configs/tables/), or drop its 'paper' key")
    with open(path) as f:
        tables = yaml.safe_load(f)
    if key not in tables:
        raise UsageError(f"no paper table '{key}' in {path}; known: {', '.join(sorted(tables))}")
    table = tables[key]
    cells = {}
    for row, values in table["rows"].items():
        cells[row] = {}
        for pair, value in zip(table["pairs"], values):
            if value is None:
                continue
            acc, hours = (value, None) if not isinstance(value, list) else (value[0], value[1])
            cells[row][pair] = (float(acc), None if hours is None else float(hours))
    return cells, table.get("speed_up", {})


def speed_up(reference_hours, row_hours):
    """The paper's speed-up: the mean over pairs of (reference hours / row hours), over the
    pairs where both are known and positive; None when there is none."""
    ratios = [reference_hours[p] / row_hours[p] for p in row_hours
              if p in reference_hours and reference_hours[p] and row_hours[p]]
    return sum(ratios) / len(ratios) if ratios else None


def mean_std(values):
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def budget_of(summary):
    """One line saying what a run cost in steps, from the flags in its summary."""
    a = summary.get("args", {})
    if summary.get("script") == "datafree_kd":
        stored = f"; {summary['synthetic_images']:,} images kept" if "synthetic_images" in summary else ""
        if "kd_steps" in summary:      # what the run did (a method may plan its own epochs and batches: SSD-KD)
            batch = summary.get("kd_batch", a["batch_size"])
            return (f"{a['method']}: {a['epochs']} ep, {summary['kd_steps']:,} KD steps of {batch}; "
                    f"{summary['synthesis_calls']:,} synthesis calls x {a.get('g_steps')} steps{stored}")
        calls = a["ep_steps"] // a["kd_steps"]
        return (f"{a['method']}: {a['epochs']} ep x {a['ep_steps']} KD steps of {a['batch_size']}; "
                f"{calls} synthesis call(s)/ep x {a.get('g_steps')} steps{stored}")
    return f"{summary.get('script')}: {a.get('epochs')} ep on real data, batch {a.get('batch_size')}"


def teacher_accuracy(spec, results, teacher, student):
    """The teacher's top-1 for a pair: the mean of the spec's teacher row when it has finished cells,
    else the ``best_acc1`` stored in the teacher file; None when neither is known."""
    row = next((r for r in results if r["row"] == spec.teacher_row and r["pair"] == f"{teacher}-{student}"), None)
    if row is not None and row["acc1"] is not None:
        return row["acc1"]
    if spec.teacher_ckpt:
        dummy = Cell(Row(spec.teacher_row), teacher, student, 0, "")
        path = spec.fill(spec.teacher_ckpt, dummy)
        if os.path.isfile(path):
            from datafree.checkpoint import load_checkpoint
            acc = load_checkpoint(path).get("best_acc1")
            return None if acc is None else float(acc)
    return None


def time_to_accuracy(history, target):
    """(epochs, wall seconds, CPU seconds) at the end of the first epoch whose accuracy reaches
    ``target``, or None when no epoch does. CPU seconds are None for runs that did not record them."""
    for entry in history:
        if entry["acc1"] >= target:
            return entry["epoch"] + 1, entry["wall_seconds"], entry.get("cpu_seconds")
    return None


def reach_of(histories, target):
    """Time to ``target`` over a cell's seeds: {"reached": k, "of": n, "epochs", "wall_seconds",
    "cpu_seconds"} (means over the seeds that reached it), or None without a target or runs."""
    if target is None or not histories:
        return None
    times = [t for t in (time_to_accuracy(h, target) for _, h in histories) if t is not None]
    reach = {"reached": len(times), "of": len(histories), "target": target}
    if times:
        cpu = [t[2] for t in times if t[2] is not None]
        reach.update(epochs=statistics.fmean(t[0] for t in times), wall_seconds=statistics.fmean(t[1] for t in times),
                     cpu_seconds=statistics.fmean(cpu) if len(cpu) == len(times) else None)
    return reach


def collect(spec):
    """Every (row, pair) of the table with our figures, the paper's, and the gap.

    Returns a list of dicts, one per (row, pair), plus {row: (our speed-up, paper speed-up)}.
    Accuracies of unfinished cells are never averaged in: a failed run shows as failed.
    """
    paper, paper_speed = load_paper(spec.paper, spec.paper_results)
    results = []
    for row in spec.rows:
        for teacher, student in spec.pairs:
            pair = f"{teacher}-{student}"
            cells = spec.cells_of(row, teacher, student)
            states = [cell_status(c) for c in cells]
            done = [s for status, s in states if status == "done"]
            statuses = sorted({status for status, _ in states})
            acc, acc_std = mean_std([s["best_acc1"] for s in done])
            syn = [s["synthesis_seconds"] / 3600 for s in done if "synthesis_seconds" in s]
            wall = [s["wall_seconds"] / 3600 for s in done]
            p_acc, p_hours = paper.get(row.paper_row or row.name, {}).get(pair, (None, None))
            results.append({
                "row": row.name, "pair": pair, "seeds": len(cells), "finished": len(done),
                "status": "done" if len(done) == len(cells) else "/".join(s for s in statuses if s != "done"),
                "acc1": acc, "acc1_std": acc_std,
                "synthesis_hours": statistics.fmean(syn) if syn else None,
                "wall_hours": statistics.fmean(wall) if wall else None,
                "paper_acc1": p_acc, "paper_hours": p_hours,
                "gap": None if acc is None or p_acc is None else acc - p_acc,
                "budget": budget_of(done[0]) if done else "",
                "histories": [(c.seed, s["history"]) for c, (st, s) in zip(cells, states) if s],
                "done_histories": [(c.seed, s["history"]) for c, (st, s) in zip(cells, states) if st == "done"],
            })
    for r in results:
        teacher, student = r["pair"].split("-", 1)
        acc = teacher_accuracy(spec, results, teacher, student)
        r["teacher_acc1"] = acc
        r["reach"] = (None if r["row"] == spec.teacher_row or acc is None
                      else reach_of(r["done_histories"], REACH_FRACTION * acc))
    speed, hours = {}, f"{spec.speed_up_of}_hours"
    for row in spec.rows:
        ours = {r["pair"]: r[hours] for r in results if r["row"] == row.name and r[hours]}
        reference = row.reference_row or spec.reference_row
        ref = {r["pair"]: r[hours] for r in results if r["row"] == reference} if reference else {}
        speed[row.name] = (speed_up(ref, ours) if ours else None, paper_speed.get(row.paper_row or row.name))
    return results, speed


def _hours(h):
    return f"{h:.3f}h" if h < 1 else f"{h:.2f}h"


def format_reach(reach):
    """'ep 4.0, 61 s wall, 118 s CPU' (means over the seeds that reached), or 'not reached'."""
    if reach is None:
        return ""
    if not reach["reached"]:
        return "not reached"
    text = f"ep {reach['epochs']:.1f}, {reach['wall_seconds']:.0f} s wall"
    if reach["cpu_seconds"] is not None:
        text += f", {reach['cpu_seconds']:.0f} s CPU"
    if reach["reached"] < reach["of"]:
        text += f" ({reach['reached']}/{reach['of']} seeds; not reached by the others)"
    return text


def format_cell(r):
    if r["acc1"] is None:
        text = r["status"] if r["status"] != "missing" else "-"    # no seed finished
    else:
        text = f"{r['acc1']:.2f}" + (f" +- {r['acc1_std']:.2f}" if r["seeds"] > 1 else "")
        if r["synthesis_hours"] is not None:
            text += f" ({_hours(r['synthesis_hours'])}; wall {_hours(r['wall_hours'])})"
        else:
            text += f" (wall {_hours(r['wall_hours'])})"
        if r["status"] != "done":
            text += f" [{r['finished']}/{r['seeds']} seeds; {r['status']}]"
        if r.get("reach") is not None:
            text += f"<br>to {100 * REACH_FRACTION:.0f}% of teacher: {format_reach(r['reach'])}"
    if r["paper_acc1"] is not None:
        paper = f"{r['paper_acc1']:.2f}" + (f" ({r['paper_hours']:g}h)" if r["paper_hours"] is not None else "")
        gap = f", gap {r['gap']:+.2f}" if r["gap"] is not None else ""
        text += f"<br>paper {paper}{gap}"
    return text


def markdown(spec, results, speed):
    pairs = [f"{t}-{s}" for t, s in spec.pairs]
    head = ["Method", *[f"{t} -> {s}" for t, s in spec.pairs], "Speed-up", "Budget"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {(r["row"], r["pair"]): r for r in results}
    for row in spec.rows:
        cells = [format_cell(by_key[(row.name, p)]) for p in pairs]
        ours, paper = speed[row.name]
        sp = "-" if ours is None else f"{ours:.1f}x"
        if paper is not None:
            sp += f"<br>paper {paper:g}x"
        budget = next((by_key[(row.name, p)]["budget"] for p in pairs if by_key[(row.name, p)]["budget"]), "")
        lines.append("| " + " | ".join([row.name, *cells, sp, budget]) + " |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("row", "pair", "seeds", "finished", "status", "acc1", "acc1_std", "synthesis_hours", "wall_hours",
              "paper_acc1", "paper_hours", "gap", "speed_up", "paper_speed_up", "teacher_acc1", "reach_target",
              "reach_seeds", "reach_epochs", "reach_wall_seconds", "reach_cpu_seconds", "budget")


def to_csv(results, speed):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in results:
        ours, paper = speed[r["row"]]
        reach = r.get("reach") or {}
        reached = {"reach_target": reach.get("target"), "reach_epochs": reach.get("epochs"),
                   "reach_wall_seconds": reach.get("wall_seconds"), "reach_cpu_seconds": reach.get("cpu_seconds"),
                   "reach_seeds": f"{reach['reached']}/{reach['of']}" if reach else None}
        writer.writerow({**{k: ("" if v is None else v) for k, v in {**r, **reached}.items()},
                         "speed_up": "" if ours is None else ours, "paper_speed_up": "" if paper is None else paper})
    return buf.getvalue()


def plot(spec, results, folder):
    """accuracy_vs_hours.png (ours filled, the paper's hollow, log hours), and each run's accuracy
    per epoch (accuracy_per_epoch.png) and against its wall time (accuracy_vs_wall.png)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row.name for row in spec.rows]
    colors = {name: plt.cm.tab20(i % 20) for i, name in enumerate(rows)}
    paths = []
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in results:
        if r["acc1"] is not None and r["synthesis_hours"]:
            ax.scatter(r["synthesis_hours"], r["acc1"], color=colors[r["row"]], label=r["row"])
        if r["paper_acc1"] is not None and r["paper_hours"]:
            ax.scatter(r["paper_hours"], r["paper_acc1"], facecolors="none", edgecolors=colors[r["row"]],
                       label=f"{r['row']} (paper)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.set_xscale("log")
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    ax.set_xlabel("synthesis hours (log scale)")
    ax.set_ylabel("student top-1 (%)")
    ax.set_title(f"{spec.name}: accuracy against synthesis time (filled: ours, hollow: paper)")
    paths.append(os.path.join(folder, "accuracy_vs_hours.png"))
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    for x_key, x_label, name in (("epoch", "epoch", "accuracy_per_epoch.png"),
                                 ("wall_seconds", "total wall seconds", "accuracy_vs_wall.png")):
        fig, ax = plt.subplots(figsize=(7, 5))
        for r in results:
            for seed, history in r["histories"]:
                label = f"{r['row']} {r['pair']}" + (f" s{seed}" if r["seeds"] > 1 else "")
                xs = [h[x_key] + (1 if x_key == "epoch" else 0) for h in history]
                ax.plot(xs, [h["acc1"] for h in history], color=colors[r["row"]], label=label, marker=".")
        if ax.lines:
            ax.legend(fontsize=6, loc="best")
        ax.set_xlabel(x_label)
        ax.set_ylabel("student test top-1 (%)")
        ax.set_title(f"{spec.name}: accuracy per run against {x_label}")
        paths.append(os.path.join(folder, name))
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return paths


def reference_note(spec):
    if not spec.reference_row:
        return ""
    own = [f"{r.name}: {r.reference_row}" for r in spec.rows if r.reference_row]
    return f" (reference: {spec.reference_row}" + (f"; {', '.join(own)}" if own else "") + ")"


def write_table(spec, folder=None):
    """Collect the spec's cells and write table.md, table.csv and the two plots into ``folder``
    (default: the spec's root). Returns (markdown text, list of written paths)."""
    folder = folder or spec.root
    results, speed = collect(spec)
    text = markdown(spec, results, speed)
    header = f"# {spec.name}\n\n{spec.description.strip()}\n\n" if spec.description else f"# {spec.name}\n\n"
    notes = ("Cells: best top-1 (%) of the student, (synthesis hours; total wall hours); mean +- std over seeds "
             f"when there are several; then the time to accuracy: the epoch, wall and CPU seconds at which a run first "
             f"reached {100 * REACH_FRACTION:.0f}% of the teacher's accuracy (mean over the seeds that reached it), or "
             f"'not reached'. Speed-up: mean over pairs of the reference row's {spec.speed_up_of} hours over "
             f"this row's{reference_note(spec)}.\n\n")
    paths = [os.path.join(folder, "table.md"), os.path.join(folder, "table.csv")]
    atomic_write_text(header + notes + text, paths[0])
    atomic_write_text(to_csv(results, speed), paths[1])
    paths += plot(spec, results, folder)
    return header + notes + text, paths

