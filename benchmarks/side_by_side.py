#!/usr/bin/env python
"""This project against the original release (zju-vipa/Fast-Datafree), side by side on digits.

For each method, the two implementations run one after the other (``--parallel``: at the same
time), one thread each, on the same teacher file, the same digits split and the same budget:
the original through the harness of ``../shared/upstream_bench`` (``run_upstream.py``, which
runs the original's own synthesizers and a copy of its KD loop on the CPU), ours through ``datafree_kd.py``. The budget
of each method is the harness's own scaling of the original's published script
(``run_upstream.scale_config``), so both sides get the same numbers; our flags are derived
from it here. The result is a Markdown table (best top-1, the gap, seconds per epoch and their
ratio) and the accuracy of every epoch of both sides. Seconds per epoch are the CPU seconds of
each side's whole process (``os.wait4``: start-up, synthesis, KD and evaluation) over its
epochs, which the load of a shared machine hardly moves, so the ratio holds whatever else runs.

    /work/bin/lane python benchmarks/side_by_side.py --upstream /path/to/Fast-Datafree --out table.md

A finished side is kept and skipped when the same command runs again (stop it at any time);
``--rerun`` runs the selected methods anew (``--rerun ours``: only our side, e.g. after a
fix). ``--ours_args`` / ``--original_args`` add flags to one side only (a one-change
measurement), ``--ours_root`` runs another checkout of this project (e.g. a copy with one
change); give each such variant its own ``--tag``.
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_HARNESS = os.path.join(os.path.dirname(ROOT), "shared", "upstream_bench")

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
GENERATIVE = ("dafl", "zskt", "dfq")
# Our flags taken from the harness's configuration, where the method reads them.
SHARED_FLAGS = ("batch_size", "lr", "epochs", "warmup", "ep_steps", "kd_steps", "T")
METHOD_FLAGS = ("g_steps", "lr_g", "lr_z", "adv", "bn", "oh", "act", "balance", "cr", "cr_T", "bn_mmt",
                "is_maml", "reset_l0", "reset_bn")


def harness_config(harness, method, epochs=None, warmup=None):
    """The original's configuration of ``method`` at its budget (``epochs`` overrides the budget's), as the
    harness scales it."""
    if harness not in sys.path:
        sys.path.insert(0, harness)
    import run_upstream

    budget = BUDGETS[method]
    fast_k = budget.get("fast_k")
    args = SimpleNamespace(batch_size=budget["batch"], epochs=epochs or budget["epochs"], ep_steps=budget["ep_steps"],
                           warmup=warmup, lr_scale="linear", g_steps_override=None, generative_student="teacher")
    config = run_upstream.upstream_configs(fast_k or 2)[method]
    config = run_upstream.scale_config(method, config, args)
    if method in GENERATIVE:
        # The original's KD loop replaces its criterion by KLDiv() for the generator methods, so
        # their KD runs at temperature 1 whatever --T says; ours is given the temperature it ran at.
        config["T"] = 1
    return config, fast_k


def our_command(method, config, a, output):
    """datafree_kd.py's command line for the same budget and loss weights."""
    sys.path.insert(0, a.ours_root)
    from datafree.synthesis import SYNTHESIZERS

    ours = METHODS[method]
    used = SYNTHESIZERS[ours].flags
    cmd = [sys.executable, os.path.join(a.ours_root, "datafree_kd.py"), "--method", ours, "--dataset", "digits",
           "--teacher", a.teacher, "--student", a.student, "--teacher_ckpt", a.teacher_ckpt,
           "--output", output, "--gpu", "-1", "--seed", str(a.seed)]
    for flag in SHARED_FLAGS:
        cmd += [f"--{flag}", str(config[flag])]
    for flag in METHOD_FLAGS:
        if flag in config and flag in used:
            cmd += [f"--{flag}", str(config[flag])]
    return cmd + shlex.split(a.ours_args)


def original_command(method, config, fast_k, a, workdir, out):
    cmd = [sys.executable, os.path.join(a.harness, "run_upstream.py"), a.upstream, "--workdir", workdir,
           "--out", out, "--methods", method, "--teacher", a.teacher, "--student", a.student,
           "--teacher-ckpt", a.teacher_ckpt, "--threads", "1", "--loader-workers", "0", "--seed", str(a.seed),
           "--batch-size", str(config["batch_size"]), "--epochs", str(config["epochs"]),
           "--ep-steps", str(config["ep_steps"]), "--warmup", str(config["warmup"])]
    if fast_k:
        cmd += ["--fast-g-steps", str(fast_k)]
    return cmd + shlex.split(a.original_args)


def read_cpu(folder, side):
    """CPU seconds of one side's process, recorded when it ran (None for runs made before they were)."""
    path = os.path.join(folder, f"{side}.cpu.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["cpu_seconds"]


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
            "wall_seconds_per_epoch": summary["wall_seconds"] / len(history)}


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
        cpu = read_cpu(folder, name)
        side["seconds_per_epoch"] = None if cpu is None else cpu / len(side["acc"])
    return side


def start_process(side, cmd, cwd, folder, env):
    with open(os.path.join(folder, f"{side}.log"), "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def finish_process(proc, side, folder):
    """Waits for one side; records the CPU seconds of its process and of its waited-for children."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(os.path.join(folder, f"{side}.cpu.json"), "w") as f:
        json.dump({"cpu_seconds": usage.ru_utime + usage.ru_stime, "exit_code": proc.returncode}, f)
    return proc.returncode


def run_pair(method, a):
    """Run (or reuse) both sides of one method (ours alone with ``--ours_only``); returns the row's data."""
    config, fast_k = harness_config(a.harness, method, a.epochs, a.warmup)
    folder = os.path.join(a.workdir, a.tag, f"{method}-seed{a.seed}")
    original_folder = os.path.join(a.workdir, a.original_tag or a.tag, f"{method}-seed{a.seed}")
    ours_dir = os.path.join(folder, "ours")
    original_dir = os.path.join(original_folder, "original")
    original_out = os.path.join(original_dir, "summary.json")
    ours_cmd = our_command(method, config, a, ours_dir)
    original_cmd = original_command(method, config, fast_k, a, original_dir, original_out)
    ours, original = read_ours(ours_dir), read_original(original_out, method)
    jobs = []
    if a.rerun in ("ours", "both") or ours is None:
        shutil.rmtree(ours_dir, ignore_errors=True)
        jobs.append(("ours", ours_cmd, a.ours_root, folder))
    if not a.ours_only and (a.rerun in ("original", "both") or original is None):
        shutil.rmtree(original_dir, ignore_errors=True)
        jobs.append(("original", original_cmd, a.upstream, original_folder))
    if jobs:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        tic = time.perf_counter()
        codes, running = [], []
        for side, cmd, cwd, where in jobs:
            os.makedirs(where, exist_ok=True)
            print(f"[{method}] {side}: {shlex.join(cmd)}", flush=True)
            running.append((start_process(side, cmd, cwd, where, env), side, where))
            if not a.parallel:     # one after the other: the two never compete for a core
                codes.append(finish_process(*running.pop()))
        codes += [finish_process(*job) for job in running]
        print(f"[{method}] done in {time.perf_counter() - tic:.0f} s (exit codes {codes})", flush=True)
        ours, original = read_ours(ours_dir), read_original(original_out, method)
    return {"method": method, "budget": budget_text(method, config, fast_k),
            "ours": with_cpu(ours, folder, "ours"), "original": with_cpu(original, original_folder, "original"),
            "ours_command": shlex.join(ours_cmd), "original_command": shlex.join(original_cmd)}


def budget_text(method, c, fast_k):
    name = {"fast_meta": f"Fast-{fast_k} MAML", "fast_meta_reptile": f"Fast-{fast_k} Reptile",
            "fast": f"Fast-{fast_k} (no meta)", "deepinv": f"DeepInv-{c['g_steps']}", "cmi": f"CMI-{c['g_steps']}",
            "dafl": "DAFL", "zskt": "ZSKT", "dfq": "DFQ"}[method]
    rounds = c["ep_steps"] // c["kd_steps"]
    text = (f"{name}: {c['epochs']} ep x {c['ep_steps']} KD steps of {c['batch_size']}, lr {c['lr']:g}, "
            f"{rounds} synthesis call(s)/ep x {c['g_steps']} steps")
    if c.get("warmup"):
        text += f", warmup {c['warmup']}"
    if method in GENERATIVE:
        text += f", KD at T {c['T']:g}"
    return text


def fmt(side, key="best"):
    if side is None:
        return "not run"
    if "error" in side:
        return "failed"
    return f"{side[key]:.2f}"


def markdown(rows, a):
    order = "one after the other" if not a.parallel else "at the same time"
    lines = [f"Side by side on digits: teacher `{os.path.basename(a.teacher_ckpt)}` ({a.teacher}), student "
             f"{a.student}, seed {a.seed}, the two sides of each pair run {order} with one thread each; "
             "seconds are the CPU seconds of each side's process per epoch.", "",
             "| method, budget | ours best top-1 | original best top-1 | ours - original | last epoch ours / original | "
             "CPU s/epoch ours | CPU s/epoch original | time ratio ours/original |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, u = r["ours"], r["original"]
        ok = o is not None and u is not None and "error" not in u
        gap = f"{o['best'] - u['best']:+.2f}" if ok else "-"
        timed = ok and o.get("seconds_per_epoch") and u.get("seconds_per_epoch")
        ratio = f"{o['seconds_per_epoch'] / u['seconds_per_epoch']:.2f}" if timed else "-"
        sec = lambda s: "-" if s is None or "error" in s or not s.get("seconds_per_epoch") else \
            f"{s['seconds_per_epoch']:.1f}"
        last = f"{o['acc'][-1]:.2f} / {u['acc'][-1]:.2f}" if ok else "-"
        lines.append(f"| {r['budget']} | {fmt(o)} | {fmt(u)} | {gap} | {last} | {sec(o)} | {sec(u)} | {ratio} |")
    lines += ["", "Top-1 (%) after each epoch:", "", "| method | side | accuracy per epoch |", "|---|---|---|"]
    for r in rows:
        for name in ("ours", "original"):
            side = r[name]
            acc = "not run" if side is None else side.get("error") or " ".join(f"{v:.1f}" for v in side["acc"])
            lines.append(f"| {r['method']} | {name} | {acc} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True, help="a checkout of zju-vipa/Fast-Datafree (only read)")
    p.add_argument("--harness", default=DEFAULT_HARNESS, help="folder of run_upstream.py (default: %(default)s)")
    p.add_argument("--teacher_ckpt", default=os.path.join(ROOT, "checkpoints", "pretrained", "digits_wrn16_2.pth"),
                   help="teacher file both sides load (default: %(default)s)")
    p.add_argument("--teacher", default="wrn16_2")
    p.add_argument("--student", default="wrn16_1")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list from: " + ", ".join(METHODS))
    p.add_argument("--epochs", type=int, default=None, help="KD epochs of every method (default: each method's budget)")
    p.add_argument("--warmup", type=int, default=None,
                   help="Fast warmup epochs (default: the harness's round(20/220 x epochs))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "side_by_side"))
    p.add_argument("--tag", default="default", help="name of this variant's folder under --workdir")
    p.add_argument("--ours_root", default=ROOT, help="the checkout of this project to run (default: this one)")
    p.add_argument("--ours_args", default="", help="extra flags for datafree_kd.py (one-change measurements)")
    p.add_argument("--original_args", default="", help="extra flags for run_upstream.py, e.g. '--hflip 1'")
    p.add_argument("--rerun", nargs="?", const="both", default="none", choices=["none", "ours", "original", "both"],
                   help="run the selected methods again even if finished (default when given: both sides)")
    p.add_argument("--parallel", action="store_true",
                   help="run the two sides at the same time (default: one after the other, in one CPU lane)")
    p.add_argument("--ours_only", action="store_true",
                   help="run ours alone (an accuracy measurement of a variant: the original is deterministic for a "
                        "seed, so its figure is read from --original_tag's folder)")
    p.add_argument("--original_tag", default=None, help="read (and write) the original's runs under this tag "
                                                         "(default: --tag)")
    p.add_argument("--out", default=None, help="write the Markdown table here (default: print it only)")
    a = p.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    for path, what in ((a.upstream, "--upstream checkout"), (os.path.join(a.harness, "run_upstream.py"), "harness"),
                       (a.teacher_ckpt, "teacher file")):
        if not os.path.exists(path):
            p.error(f"the {what} is not at {path}")
    a.upstream, a.harness = os.path.abspath(a.upstream), os.path.abspath(a.harness)
    a.teacher_ckpt, a.workdir = os.path.abspath(a.teacher_ckpt), os.path.abspath(a.workdir)
    a.ours_root = os.path.abspath(a.ours_root)

    rows = [run_pair(m, a) for m in methods]
    table = markdown(rows, a)
    os.makedirs(os.path.join(a.workdir, a.tag), exist_ok=True)
    with open(os.path.join(a.workdir, a.tag, f"results-seed{a.seed}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)
    print(table)
    done = [r for r in rows if r["ours"] and r["original"] and "error" not in r["original"]]
    behind = [r["method"] for r in done if r["ours"]["best"] < r["original"]["best"] - 1.0]
    print(f"summary: {len(done)}/{len(rows)} pairs finished; ours more than 1 point behind on: "
          f"{', '.join(behind) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
