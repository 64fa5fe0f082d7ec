#!/usr/bin/env python
"""This project against the original release (zju-vipa/Fast-Datafree), side by side, over seeds.

For each method and seed, the two implementations run one after the other (``--parallel``: two
at a time), one thread each, on the same teacher file, the same data and the same budget: the
original through the harness of ``../shared/upstream_bench`` (``run_upstream.py``, which runs
the original's own synthesizers and a copy of its KD loop on the CPU), ours through
``datafree_kd.py``. The budget of each method is the harness's own scaling of the original's
published script (``run_upstream.scale_config``), so both sides get the same numbers; our flags
are derived from it here. Data: ``--dataset digits`` (sklearn's 8x8 digits at 32x32) or
``fashion_mnist`` (the official IDX files, zero-padded to 32x32, 3 channels); flips follow the
dataset's declaration on both sides (``--hflip`` of the harness from our registry).

Where ours differs from the original on purpose (a flip rule, a fixed bug), VARIANTS adds rows
of ours with one flag that brings the original's behaviour back, on the same seeds, against the
same original runs (the original runs once per seed). The result is a Markdown table: per
method and row, best top-1 as mean +- standard error over the seeds, the paired difference to
the original (mean +- SE of the per-seed differences), CPU seconds per epoch and their ratio,
and one PNG of the per-epoch accuracy curves per method next to the table. Seconds per epoch are
the CPU seconds of each side's whole process (``os.wait4``: start-up, synthesis, KD and
evaluation) over its epochs, which the load of a shared machine hardly moves.

    /work/bin/lane python benchmarks/side_by_side.py --upstream /path/to/Fast-Datafree \\
        --dataset fashion_mnist --seeds 0,1,2 --out table.md

A finished run is kept and skipped when the same command runs again (stop it at any time);
``--rerun`` runs the selected methods anew (``--rerun ours``: our side and its variants, e.g.
after a fix). ``--ours_args`` / ``--original_args`` add flags to one side only (a one-change
measurement), ``--ours_root`` runs another checkout of this project; give each such
measurement its own ``--tag``.
"""
import argparse
import contextlib
import io
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_HARNESS = os.path.join(os.path.dirname(ROOT), "shared", "upstream_bench")
DATASETS = ("digits", "fashion_mnist")
DEFAULT_TEACHERS = {name: os.path.join(ROOT, "checkpoints", "pretrained", f"{name}_wrn16_2.pth") for name in DATASETS}
# Where Debian's dataset-fashion-mnist package puts the IDX files; both sides are given the folder explicitly.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

# The harness's method names, in the order of the table, and the method of ours each one is.
METHODS = {
    "fast_meta": "fast_meta", "fast_meta_reptile": "fast_meta", "fast": "fast", "deepinv": "deepinv",
    "cmi": "cmi", "dafl": "dafl", "zskt": "zskt", "dfq": "dfq",
}
# One small digits budget per method: batch, KD steps per epoch, epochs and Fast-k's k, each pair
# within about 10 CPU minutes. The generator methods (dafl, zskt, dfq) keep upstream's 5 (dfq 10)
# KD steps per generator step, so they get 4x the KD steps (at half the batch) to train their generator.
BUDGETS = {
    "fast_meta": dict(batch=64, ep_steps=10, epochs=16, fast_k=5),
    "fast_meta_reptile": dict(batch=64, ep_steps=10, epochs=16, fast_k=5),
    "fast": dict(batch=64, ep_steps=10, epochs=16, fast_k=5),
    "deepinv": dict(batch=64, ep_steps=10, epochs=16),
    "cmi": dict(batch=64, ep_steps=10, epochs=16),
    "dafl": dict(batch=32, ep_steps=40, epochs=12),
    "zskt": dict(batch=32, ep_steps=40, epochs=12),
    "dfq": dict(batch=32, ep_steps=40, epochs=12),
}
# Fashion-MNIST: one budget for every method (batch 128 and 50 KD steps per epoch as our presets, 12 epochs where
# they take 40, since every run here has one thread). DeepInversion and CMI take the synthesis steps of our
# Fashion-MNIST presets (the harness's --g-steps-override); deepinv's lr_g is the harness's, the original's
# tuned-fast 1.0, as in our preset. "why" is printed in the table; the measured part is filled in after a run.
FM_SHARED = dict(batch=128, ep_steps=50, epochs=12)
BUDGETS_FM = {
    "fast_meta": dict(FM_SHARED, fast_k=5, why="Fast-5 as our preset, on the shared budget; it learns on both sides "
                                                    "(seeds 0-2, docs/side_by_side.md)"),
    "fast_meta_reptile": dict(FM_SHARED, fast_k=5, why="as fast_meta, Reptile instead of MAML; it learns on both "
                                                            "sides (seeds 0-2, docs/side_by_side.md)"),
    "fast": dict(FM_SHARED, fast_k=5, why="as fast_meta, no meta-learning; it learns on both sides (seeds 0-2, "
                                          "docs/side_by_side.md)"),
    "deepinv": dict(FM_SHARED, g_steps=50,
                    why="our preset's 50 steps at lr_g 1.0 (fewer leave the images far from the teacher's BN "
                        "statistics); it learns on both sides (seeds 0-2, docs/side_by_side.md)"),
    "cmi": dict(FM_SHARED, g_steps=20, why="our preset's 20 steps; it learns on both sides, 63-64% at 12 epochs "
                                           "(docs/side_by_side.md)"),
    "dafl": dict(FM_SHARED, why="the shared budget: 120 generator steps (the published 5 KD steps each). Near chance "
                                "on both sides (seeds 0-2, docs/side_by_side.md); at 40 epochs both reach only 23-28% "
                                "(seeds 0 and 1): DAFL's pace with 3 channels at T 1, where our preset (gray "
                                "synthesis, T 20) leaves chance after about 8 epochs"),
    "zskt": dict(FM_SHARED, why="the shared budget: 120 generator steps (the published 5 KD steps each). Ours leaves "
                                "chance on seeds 0 and 2; the original's generator gets no signal (its adversarial "
                                "term is zero, its gradient rounding noise), so it stays near chance (seeds 0-2, "
                                "docs/side_by_side.md)"),
    "dfq": dict(FM_SHARED, why="the shared budget: 60 generator steps (the published 10 KD steps each); it learns on "
                               "both sides (seeds 0-2, docs/side_by_side.md)"),
}
DATASET_BUDGETS = {"digits": BUDGETS, "fashion_mnist": BUDGETS_FM}
GENERATIVE = ("dafl", "zskt", "dfq")
# Deliberate differences of ours from the original: per method, (row name, our flags that bring the original's
# behaviour back). Each is run on the same seeds as ours and compared with the same original runs.
FLIPS = ("original's synthesis flips", "--as_original flips")
VARIANTS = {
    "fast_meta": [FLIPS],
    "fast_meta_reptile": [FLIPS],
    "fast": [FLIPS],
    "deepinv": [FLIPS, ("original's aliased best batch (last iterate)", "--as_original deepinv_best"),
                ("both: the original's flips and aliased best batch", "--as_original flips,deepinv_best")],
    "cmi": [FLIPS],
    # The original passes the teacher as the student of its generator methods: their adversarial term is zero
    # (dafl's adv is 0 anyway).
    "zskt": [("original's zero adversarial term", "--adv 0")],
    "dfq": [("original's zero adversarial term", "--adv 0")],
}
# Our flags taken from the harness's configuration, where the method reads them.
SHARED_FLAGS = ("batch_size", "lr", "epochs", "warmup", "ep_steps", "kd_steps", "T")
METHOD_FLAGS = ("g_steps", "lr_g", "lr_z", "adv", "bn", "oh", "act", "balance", "cr", "cr_T", "bn_mmt",
                "is_maml", "reset_l0", "reset_bn")
COLOURS = {"ours": "tab:blue", "original": "tab:red"}
VARIANT_COLOURS = ("tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink")


def harness_config(harness, method, epochs=None, warmup=None, dataset="digits"):
    """The original's configuration of ``method`` at its budget for ``dataset`` (``epochs`` overrides the
    budget's), as the harness scales it."""
    if harness not in sys.path:
        sys.path.insert(0, harness)
    import run_upstream

    budget = DATASET_BUDGETS[dataset][method]
    fast_k = budget.get("fast_k")
    args = SimpleNamespace(batch_size=budget["batch"], epochs=epochs or budget["epochs"], ep_steps=budget["ep_steps"],
                           warmup=warmup, lr_scale="linear", g_steps_override=budget.get("g_steps"),
                           generative_student="teacher")
    config = run_upstream.upstream_configs(fast_k or 2)[method]
    config = run_upstream.scale_config(method, config, args)
    if budget.get("g_steps") is not None:
        config["g_steps_override"] = budget["g_steps"]
    if method in GENERATIVE:
        # The original's KD loop replaces its criterion by KLDiv() for the generator methods, so
        # their KD runs at temperature 1 whatever --T says; ours is given the temperature it ran at.
        config["T"] = 1
    return config, fast_k


def dataset_flips(a):
    """Whether our registry declares flips valid for the dataset (the harness gets the same rule)."""
    if a.ours_root not in sys.path:
        sys.path.insert(0, a.ours_root)
    from datafree.datasets.registry import DATASET_DICT

    return DATASET_DICT.lookup(a.dataset).hflip


def our_command(method, config, a, output, seed, extra=""):
    """datafree_kd.py's command line for the same budget and loss weights; ``extra``: a variant's flags."""
    if a.ours_root not in sys.path:
        sys.path.insert(0, a.ours_root)
    from datafree.synthesis import SYNTHESIZERS

    ours = METHODS[method]
    used = SYNTHESIZERS[ours].flags
    cmd = [sys.executable, os.path.join(a.ours_root, "datafree_kd.py"), "--method", ours, "--dataset", a.dataset,
           "--teacher", a.teacher, "--student", a.student, "--teacher_ckpt", a.teacher_ckpt,
           "--output", output, "--gpu", "-1", "--seed", str(seed)]
    if a.data_root:
        cmd += ["--data_root", a.data_root]
    for flag in SHARED_FLAGS:
        cmd += [f"--{flag}", str(config[flag])]
    for flag in METHOD_FLAGS:
        if flag in config and flag in used:
            cmd += [f"--{flag}", str(config[flag])]
    return cmd + shlex.split(a.ours_args) + shlex.split(extra)


def original_command(method, config, fast_k, a, workdir, out, seed):
    cmd = [sys.executable, os.path.join(a.harness, "run_upstream.py"), a.upstream, "--workdir", workdir,
           "--out", out, "--methods", method, "--dataset", a.dataset, "--hflip", str(int(dataset_flips(a))),
           "--teacher", a.teacher, "--student", a.student, "--teacher-ckpt", a.teacher_ckpt,
           "--threads", "1", "--loader-workers", "0", "--seed", str(seed),
           "--batch-size", str(config["batch_size"]), "--epochs", str(config["epochs"]),
           "--ep-steps", str(config["ep_steps"]), "--warmup", str(config["warmup"])]
    if a.data_root:
        cmd += ["--data-root", a.data_root]
    if fast_k:
        cmd += ["--fast-g-steps", str(fast_k)]
    if config.get("g_steps_override") is not None:
        cmd += ["--g-steps-override", str(config["g_steps_override"])]
    return cmd + shlex.split(a.original_args)


def variant_key(flags):
    """A variant's folder and side name, from its flags (other flags: another folder, never a stale run)."""
    return "ours-" + re.sub(r"[^A-Za-z0-9_.]+", "-", flags).strip("-")


def our_rows(method, a):
    """(side name, label, extra flags) of ours and of each variant of ``method`` that this run measures."""
    rows = [("ours", "ours", "")]
    if a.variants:
        rows += [(variant_key(flags), f"ours, {name} (`{flags}`)", flags) for name, flags in VARIANTS.get(method, [])]
    return rows


_OUR_SCRIPTS = {}


def refusal(cmd, a):
    """Why our datafree_kd.py refuses ``cmd`` (e.g. a flag this checkout does not have yet), or None. Parsed in
    this process, so that a refused variant costs no run and says why in the table."""
    script = cmd[1]
    if os.path.basename(script) != "datafree_kd.py":
        return None
    errors = io.StringIO()
    try:
        if script not in _OUR_SCRIPTS:
            if a.ours_root not in sys.path:
                sys.path.insert(0, a.ours_root)
            spec = importlib.util.spec_from_file_location("side_by_side_ours_kd", script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _OUR_SCRIPTS[script] = module
        with contextlib.redirect_stderr(errors):
            _OUR_SCRIPTS[script].parse_args(cmd[2:])
    except SystemExit:
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        # argparse names the program after this script's argv[0]; keep its message only
        message = re.sub(r"^.*?error: ", "", lines[-1]) if lines else "argument error"
        return f"our datafree_kd.py refuses the command: {message}"
    except Exception as err:    # a UsageError of our flag checks, or a checkout that does not import
        return f"our datafree_kd.py refuses the command: {type(err).__name__}: {err}"
    return None


def read_cpu(folder, side):
    """The ``{side}.cpu.json`` record of one finished process (None for runs made before they were kept)."""
    path = os.path.join(folder, f"{side}.cpu.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_ours(output):
    path = os.path.join(output, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    if not summary.get("finished"):
        return None
    history = summary["history"]
    return {"acc": [h["acc1"] for h in history], "best": summary["best_acc1"],
            "wall_seconds_per_epoch": summary["wall_seconds"] / len(history),
            # in-process CPU seconds at each epoch's end (None for runs that did not record them)
            "cpu_curve": [h["cpu_seconds"] for h in history] if all("cpu_seconds" in h for h in history) else None}


def read_original(out, method):
    if not os.path.isfile(out):
        return None
    with open(out) as f:
        summary = json.load(f)
    result = summary.get("methods", {}).get(method)
    if not summary.get("complete") or result is None:
        return None
    if result.get("error"):
        return {"error": result["error"]}
    acc = result["student_acc_per_epoch"]
    return {"acc": acc, "best": result["student_acc_best"], "wall_seconds_per_epoch": result["total_wall_s"] / len(acc)}


def with_cpu(side, folder, name):
    """Adds the process's CPU seconds per epoch to a finished side's figures."""
    if side is not None and "error" not in side:
        record = read_cpu(folder, name)
        side["seconds_per_epoch"] = None if record is None else record["cpu_seconds"] / len(side["acc"])
    return side


def failed_process(folder, name):
    """An error for a side whose process exited non-zero without a result (its log's last line), else None."""
    record = read_cpu(folder, name)
    if record is None or not record.get("exit_code"):
        return None
    log = os.path.join(folder, f"{name}.log")
    last = ""
    if os.path.isfile(log):
        with open(log, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        last = lines[-1] if lines else ""
    return {"error": f"exit {record['exit_code']}: {last}", "process_failed": True}


def side_result(reader, folder, name):
    """A side's result: its figures when finished, an error when it failed, None when it has not run."""
    result = reader()
    if result is None:
        return failed_process(folder, name)
    return with_cpu(result, folder, name)


def done(side):
    return side is not None and "error" not in side


def start_process(side, cmd, cwd, folder, env):
    with open(os.path.join(folder, f"{side}.command"), "w") as f:
        f.write(shlex.join(cmd) + "\n")
    with open(os.path.join(folder, f"{side}.log"), "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def finish_process(proc, side, folder):
    """Waits for one side; records the CPU seconds of its process and of its waited-for children."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(os.path.join(folder, f"{side}.cpu.json"), "w") as f:
        json.dump({"cpu_seconds": usage.ru_utime + usage.ru_stime, "exit_code": proc.returncode}, f)
    return proc.returncode


def same_arguments(recorded, cmd):
    """Whether a recorded command line (``shlex.join``-ed) gave ``cmd``'s arguments; the interpreter and the
    script's path (which checkout ran it) are not compared."""
    return shlex.split(recorded or "")[2:] == list(cmd[2:])


def warn_if_other_command(label, side, folder, cmd):
    path = os.path.join(folder, f"{side}.command")
    if os.path.isfile(path):
        with open(path) as f:
            if not same_arguments(f.read(), cmd):
                print(f"[{label}] {side}: kept a finished run made with another command (--rerun to run it anew)",
                      flush=True)


def run_jobs(jobs, a, label):
    """Runs ``jobs`` (side, command, cwd, folder), one at a time, or two at a time with ``--parallel``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    tic = time.perf_counter()
    codes, running = [], []
    for side, cmd, cwd, where in jobs:
        if len(running) == (2 if a.parallel else 1):   # one at a time: two sides never compete for a core
            codes.append(finish_process(*running.pop(0)))
        os.makedirs(where, exist_ok=True)
        print(f"[{label}] {side}: {shlex.join(cmd)}", flush=True)
        running.append((start_process(side, cmd, cwd, where, env), side, where))
    codes += [finish_process(*job) for job in running]
    print(f"[{label}] done in {time.perf_counter() - tic:.0f} s (exit codes {codes})", flush=True)


def pair_folders(a, method, seed):
    """The folder of our runs and of the original's run for one method and seed."""
    name = f"{method}-seed{seed}" if a.dataset == "digits" else f"{a.dataset}-{method}-seed{seed}"
    return os.path.join(a.workdir, a.tag, name), os.path.join(a.workdir, a.original_tag or a.tag, name)


def run_seed(method, seed, config, fast_k, a):
    """Run (or reuse) ours, its variants and the original (not with ``--ours_only``) for one method and seed;
    returns {side: result} and {side: command}."""
    label = f"{method} seed {seed}"
    folder, original_folder = pair_folders(a, method, seed)
    results, commands, ours_jobs, variant_jobs = {}, {}, [], []
    for side, _, extra in our_rows(method, a):
        output = os.path.join(folder, side)
        cmd = our_command(method, config, a, output, seed, extra)
        commands[side] = shlex.join(cmd)
        result = side_result(lambda: read_ours(output), folder, side)
        rerun = a.rerun in ("ours", "both") or (a.rerun == "variants" and side != "ours")
        if a.report_only or (done(result) and not rerun):
            if done(result):
                warn_if_other_command(label, side, folder, cmd)
            results[side] = result
            continue
        why = refusal(cmd, a)
        if why:
            print(f"[{label}] {side}: not run: {why}", flush=True)
            results[side] = {"error": why}
            continue
        shutil.rmtree(output, ignore_errors=True)
        (ours_jobs if side == "ours" else variant_jobs).append((side, cmd, a.ours_root, folder))
    original_dir = os.path.join(original_folder, "original")
    original_out = os.path.join(original_dir, "summary.json")
    cmd = original_command(method, config, fast_k, a, original_dir, original_out, seed)
    commands["original"] = shlex.join(cmd)
    original = side_result(lambda: read_original(original_out, method), original_folder, "original")
    original_jobs = []
    if not a.ours_only and not a.report_only:
        if original is None or original.get("process_failed") or a.rerun in ("original", "both"):
            if not os.path.isfile(a.teacher_ckpt):     # the harness would train a teacher of its own
                raise SystemExit(f"the teacher file {a.teacher_ckpt} is missing; the original is not run without it")
            shutil.rmtree(original_dir, ignore_errors=True)
            original_jobs.append(("original", cmd, a.upstream, original_folder))
        else:
            warn_if_other_command(label, "original", original_folder, cmd)
    jobs = ours_jobs + original_jobs + variant_jobs
    if jobs:
        run_jobs(jobs, a, label)
        for side, _, _, where in jobs:
            if side == "original":
                original = side_result(lambda: read_original(original_out, method), original_folder, "original")
            else:
                results[side] = side_result(lambda: read_ours(os.path.join(where, side)), where, side)
    results["original"] = original
    return results, commands


def budget_text(method, c, fast_k, why=None):
    name = {"fast_meta": f"Fast-{fast_k} MAML", "fast_meta_reptile": f"Fast-{fast_k} Reptile",
            "fast": f"Fast-{fast_k} (no meta)", "deepinv": f"DeepInv-{c['g_steps']}", "cmi": f"CMI-{c['g_steps']}",
            "dafl": "DAFL", "zskt": "ZSKT", "dfq": "DFQ"}[method]
    rounds = c["ep_steps"] // c["kd_steps"]
    text = (f"{name}: {c['epochs']} ep x {c['ep_steps']} KD steps of {c['batch_size']}, lr {c['lr']:g}, "
            f"{rounds} synthesis call(s)/ep x {c['g_steps']} steps")
    if method in ("deepinv", "cmi"):
        text += f", lr_g {c['lr_g']:g}"
    if c.get("warmup"):
        text += f", warmup {c['warmup']}"
    if method in GENERATIVE:
        text += f", KD at T {c['T']:g}"
    if why:
        text += f". Why: {why}"
    return text


def mean_se(values):
    """{'n', 'mean', 'se'} of ``values``; se = sample standard deviation / sqrt(n), None below two values."""
    values = list(values)
    if not values:
        return None
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"n": len(values), "mean": statistics.fmean(values), "se": se}


def paired_difference(runs, reference):
    """Mean +- SE of the per-seed differences of best top-1, over the seeds where both finished."""
    seeds = [s for s in runs if done(runs[s]) and done(reference.get(s))]
    return mean_se(runs[s]["best"] - reference[s]["best"] for s in seeds)


def mean_of(runs, key):
    values = [r[key] for r in runs.values() if done(r) and r.get(key) is not None]
    return statistics.fmean(values) if values else None


def fmt_stat(stat, sign=""):
    if stat is None:
        return "-"
    se = "-" if stat["se"] is None else f"{stat['se']:.2f}"
    return f"{stat['mean']:{sign}.2f} ± {se}"


def fmt_seed(side):
    if side is None:
        return "not run"
    if "error" in side:
        return "failed"
    return f"{side['best']:.2f}"


def method_lines(row):
    """(side, label) of a method's rows in the table: ours, its variants, the original."""
    return [("ours", "ours"), *[(v["side"], v["label"]) for v in row["variants"]], ("original", "original")]


def draw_curves(row, path, a):
    """One figure per method: every seed a thin line, the mean over seeds a thick one, one colour per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = dict(COLOURS)
    colours.update({v["side"]: VARIANT_COLOURS[i % len(VARIANT_COLOURS)] for i, v in enumerate(row["variants"])})
    for side, label in method_lines(row):
        curves = [r["acc"] for r in row["runs"][side].values() if done(r)]
        for curve in curves:
            ax.plot(range(1, len(curve) + 1), curve, color=colours[side], linewidth=0.8, alpha=0.45)
        if curves:
            length = min(len(c) for c in curves)
            mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
            ax.plot(range(1, length + 1), mean, color=colours[side], linewidth=2.5,
                    label=f"{label.replace('`', '')}: mean of {len(curves)}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{row['method']} on {a.dataset}, seeds {','.join(map(str, a.seeds))}", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(rows, a, figures=None):
    """The table (``figures``: {method: link to its curves}), per-seed best top-1 and the failed runs."""
    figures = figures or {}
    order = "one after the other" if not a.parallel else "two at a time"
    seeds = ",".join(map(str, a.seeds))
    flips = " and flipped" if dataset_flips(a) else ", not flipped,"
    lines = [f"Side by side on {a.dataset}: teacher `{os.path.basename(a.teacher_ckpt)}` ({a.teacher}), student "
             f"{a.student}, seeds {seeds}; the runs of each method and seed run {order}, with one thread each. "
             f"Data: {a.data_root or a.dataset}; KD batches and pools are cropped{flips} on both sides (the "
             "dataset's declaration); both synthesise 3 channels. "
             "Best top-1 (%) as mean ± standard error over the seeds (SE = sample std / sqrt(n)); "
             "\"row - original\" is the mean ± SE of the per-seed differences to the original's run of the same seed; "
             "CPU seconds are each process's own (start-up, data, synthesis, KD, evaluation) per epoch, averaged "
             "over the seeds.", "",
             "| method, budget | row | n | best top-1 | row - original, paired (n) | last epoch | CPU s/epoch | "
             "CPU ratio to original | curves |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        original = r["runs"].get("original", {})
        original_seconds = mean_of(original, "seconds_per_epoch")
        for i, (side, label) in enumerate(method_lines(r)):
            runs = r["runs"].get(side, {})
            best = mean_se(s["best"] for s in runs.values() if done(s))
            last = mean_of({k: {"last": v["acc"][-1]} for k, v in runs.items() if done(v)}, "last")
            seconds = mean_of(runs, "seconds_per_epoch")
            if side == "original":
                gap, ratio = "-", "-"
            else:
                diff = paired_difference(runs, original)
                gap = f"{fmt_stat(diff, '+')} ({diff['n']})" if diff else "-"
                ratio = f"{seconds / original_seconds:.2f}" if seconds and original_seconds else "-"
            head = r["budget"] if i == 0 else ""
            curves = f"[curves]({figures[r['method']]})" if i == 0 and r["method"] in figures else ""
            lines.append(f"| {head} | {label} | {best['n'] if best else 0} | {fmt_stat(best)} | {gap} | "
                         f"{'-' if last is None else f'{last:.2f}'} | "
                         f"{'-' if seconds is None else f'{seconds:.1f}'} | {ratio} | {curves} |")
    lines += ["", "Best top-1 (%) of every seed:", "",
              "| method | row | " + " | ".join(f"seed {s}" for s in a.seeds) + " |",
              "|---|---|" + "---|" * len(a.seeds)]
    failures = []
    for r in rows:
        for side, label in method_lines(r):
            runs = r["runs"].get(side, {})
            lines.append(f"| {r['method']} | {label} | " + " | ".join(fmt_seed(runs.get(s)) for s in a.seeds) + " |")
            failures += [f"- {r['method']}, {label}, seed {s}: {runs[s]['error']}"
                         for s in a.seeds if runs.get(s) and "error" in runs[s]]
    if failures:
        lines += ["", "Failed runs:", "", *failures]
    return "\n".join(lines) + "\n"


def summary_line(rows, a):
    """The one-line verdict: methods finished on every seed, and where ours stands against the original."""
    seeds = ",".join(map(str, a.seeds))
    finished = [r for r in rows
                if all(done(r["runs"].get(side, {}).get(s)) for side in ("ours", "original") for s in a.seeds)]
    level, behind = [], []
    for r in finished:
        diff = paired_difference(r["runs"]["ours"], r["runs"]["original"])
        margin = diff["se"] or 0.0     # one seed: no SE, the sign decides
        (behind if diff["mean"] < -margin else level).append(r["method"])
    variants = [(r, v) for r in rows for v in r["variants"]]
    variants_done = [1 for r, v in variants if all(done(r["runs"].get(v["side"], {}).get(s)) for s in a.seeds)]
    unfinished = [r["method"] for r in rows if r not in finished]
    text = (f"summary: {len(finished)}/{len(rows)} methods finished over seeds {seeds}; ours within 1 SE of the "
            f"original or above on: {', '.join(level) or 'none'}; behind by more than 1 SE on: "
            f"{', '.join(behind) or 'none'}")
    if unfinished:
        text += f"; unfinished: {', '.join(unfinished)}"
    if variants:
        text += f"; variant rows finished: {len(variants_done)}/{len(variants)}"
    return text


def parse_seeds(text):
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a comma list of integers, not {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs distinct seeds, got {text!r}")
    return seeds


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True, help="a checkout of zju-vipa/Fast-Datafree (only read)")
    p.add_argument("--harness", default=DEFAULT_HARNESS, help="folder of run_upstream.py (default: %(default)s)")
    p.add_argument("--dataset", default="digits", choices=DATASETS,
                   help="digits (sklearn's, offline) or fashion_mnist (the official IDX files) (default: %(default)s)")
    p.add_argument("--data_root", default=None,
                   help="folder of the dataset's files, given to both sides (ours: --data_root, the harness: "
                        f"--data-root; default: {FASHION_MNIST_ROOT} for fashion_mnist, nothing for digits)")
    p.add_argument("--teacher_ckpt", default=None,
                   help="teacher file both sides load (default: checkpoints/pretrained/<dataset>_wrn16_2.pth); the "
                        "original is never run without it (its harness would train a teacher)")
    p.add_argument("--teacher", default="wrn16_2")
    p.add_argument("--student", default="wrn16_1")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list from: " + ", ".join(METHODS))
    p.add_argument("--epochs", type=int, default=None, help="KD epochs of every method (default: each method's budget)")
    p.add_argument("--warmup", type=int, default=None,
                   help="Fast warmup epochs (default: the harness's round(20/220 x epochs))")
    p.add_argument("--seeds", type=parse_seeds, default=None, help="comma list of seeds, e.g. 0,1,2 (default: 0)")
    p.add_argument("--seed", type=int, default=None, help="one seed: the same as --seeds N")
    p.add_argument("--no_variants", dest="variants", action="store_false",
                   help="skip the variant rows (ours with one of the original's behaviours, see VARIANTS)")
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "side_by_side"))
    p.add_argument("--tag", default="default", help="name of this measurement's folder under --workdir")
    p.add_argument("--ours_root", default=ROOT, help="the checkout of this project to run (default: this one)")
    p.add_argument("--ours_args", default="", help="extra flags for every run of datafree_kd.py (one-change "
                                                   "measurements; variants add theirs after these)")
    p.add_argument("--original_args", default="", help="extra flags for run_upstream.py, e.g. '--hflip 1'")
    p.add_argument("--rerun", nargs="?", const="both", default="none",
                   choices=["none", "ours", "variants", "original", "both"],
                   help="run the selected methods again even if finished: ours (with its variants), the variants "
                        "only, the original, or both sides (the default when given without a value)")
    p.add_argument("--parallel", action="store_true",
                   help="run two processes at a time (ours beside the original, then the variants two by two; "
                        "default: one after the other, in one CPU lane)")
    p.add_argument("--ours_only", action="store_true",
                   help="run ours (and its variants) alone (the original is deterministic for a seed, so its "
                        "figures are read from --original_tag's folder)")
    p.add_argument("--report_only", action="store_true",
                   help="run nothing: write the table of the runs finished so far (e.g. while a long measurement "
                        "runs in another process)")
    p.add_argument("--original_tag", default=None, help="read (and write) the original's runs under this tag "
                                                         "(default: --tag)")
    p.add_argument("--out", default=None, help="write the Markdown table here, and its figures beside it "
                                               "(default: print it; figures go to the tag's folder)")
    return p


def parse_options(argv=None):
    """The options, with the per-dataset defaults filled in and every input checked to exist."""
    p = build_parser()
    a = p.parse_args(argv)
    if a.seeds is not None and a.seed is not None:
        p.error("give --seeds or --seed, not both")
    a.seeds = a.seeds or [0 if a.seed is None else a.seed]
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    a.teacher_ckpt = a.teacher_ckpt or DEFAULT_TEACHERS[a.dataset]
    if a.data_root is None and a.dataset == "fashion_mnist":
        a.data_root = FASHION_MNIST_ROOT
    for path, what in ((a.upstream, "--upstream checkout"), (os.path.join(a.harness, "run_upstream.py"), "harness"),
                       (a.teacher_ckpt, "teacher file"), (a.data_root, "--data_root folder")):
        if path is not None and not os.path.exists(path):
            p.error(f"the {what} is not at {path}")
    a.upstream, a.harness = os.path.abspath(a.upstream), os.path.abspath(a.harness)
    a.teacher_ckpt, a.workdir = os.path.abspath(a.teacher_ckpt), os.path.abspath(a.workdir)
    a.ours_root = os.path.abspath(a.ours_root)
    a.data_root = a.data_root and os.path.abspath(a.data_root)
    a.methods = methods
    return a


def main(argv=None):
    a = parse_options(argv)
    methods = a.methods
    budgets = DATASET_BUDGETS[a.dataset]
    setups = {m: harness_config(a.harness, m, a.epochs, a.warmup, a.dataset) for m in methods}
    rows = [{"method": m, "budget": budget_text(m, *setups[m], budgets[m].get("why")),
             "variants": [{"side": side, "label": label, "flags": extra} for side, label, extra in our_rows(m, a)[1:]],
             "runs": {}, "commands": {}} for m in methods]
    for seed in a.seeds:
        for row in rows:
            results, commands = run_seed(row["method"], seed, *setups[row["method"]], a)
            for side, result in results.items():
                row["runs"].setdefault(side, {})[seed] = result
            row["commands"][seed] = commands

    folder = os.path.join(a.workdir, a.tag)
    os.makedirs(folder, exist_ok=True)
    seeds = ",".join(map(str, a.seeds))
    # Named by methods and seeds, so that runs of other methods into the same workdir keep theirs.
    with open(os.path.join(folder, f"results-{a.dataset}-{','.join(methods)}-seeds{seeds}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    where = os.path.dirname(os.path.abspath(a.out)) if a.out else folder
    stem = os.path.splitext(os.path.basename(a.out))[0] if a.out else f"side_by_side-{a.dataset}"
    os.makedirs(where, exist_ok=True)
    figures = {}
    for row in rows:
        path = os.path.join(where, f"{stem}-{row['method']}.png")
        draw_curves(row, path, a)
        figures[row["method"]] = os.path.basename(path) if a.out else path
    table = markdown(rows, a, figures)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)
    print(table)
    print(summary_line(rows, a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
