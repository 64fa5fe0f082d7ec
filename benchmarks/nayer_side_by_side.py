#!/usr/bin/env python
"""NAYER's own code (tmtuan1307/NAYER, CVPR 2024) against ours (``--method nayer``), on one CPU budget.

Both sides get the same data (digits or Fashion-MNIST, through ../shared/upstream_bench), the same
teacher file (a ``train_scratch.py`` checkpoint: NAYER's code reads its ``state_dict``), the same
label embedding (ours, written once to the file NAYER's code reads) and the same budget (read from
one of our presets, ``configs/digits/nayer.yaml`` by default, flags overriding it). They run one
after the other, one thread each; the CPU seconds of each side's whole process (``os.wait4``) over
its epochs are its seconds per epoch.

    python benchmarks/nayer_side_by_side.py --nayer /work/ext/NAYER --workdir runs/nayer_sbs --out sbs.json

``--side ours`` or ``--side original`` runs one side only; each side's result is merged into the seed's
``summary.json``, so two ``--side`` runs may share a workdir at once (two lanes). The original side runs NAYER's own
``datafree_kd.py`` (its ``main``, its synthesizer, its KD loop, its evaluation), imported from the
``--nayer`` checkout, which is only read. What the harness changes around it, in its own process:

- the CPU shim of ../shared/upstream_bench/run_upstream.py (``.cuda()`` is the identity, DataLoaders
  lose ``pin_memory`` and their worker processes), and ``.to(<GPU>)`` kept on the CPU too: NAYER's
  code moves the label embedding and the generator to ``--gpu 0``;
- ``wandb``, which NAYER's code requires, is a stand-in module; its per-epoch ``log`` calls are
  where the accuracy and the CPU seconds of each epoch are read. xlsxwriter, pandas and seaborn,
  which its package imports (absent from its requirements, unused by nayer), are empty stand-ins
  where they are not installed;
- NAYER's parser accepts only ``--method nldf`` while its code builds the generator for ``nayer``
  alone: the harness adds ``nayer`` to the parser's choices;
- its generator is built for cifar10/cifar100/tiny_imagenet/imagenet only: the data is handed to it
  under the name cifar10 (10 classes of 32x32 images), with its normalisation, the teacher at
  checkpoints/pretrained/cifar10_<teacher>.pth and the embedding at label_embedding/cifar10_le.pickle
  of the side's folder. Its own synthesis augmentation (crop and flip) is left as it is.

``--versus configs/fashion_mnist/fast5.yaml`` adds a third side, "versus": our run of another preset (Fast-5)
on the same teacher, seed and data, in fp32 as the NAYER sides, for NAYER against it at the same time. Its
row gives its best top-1 at its own end, its CPU seconds, and its best top-1 among the epochs it finished
within the CPU seconds our NAYER run took (both read from our runs' per-epoch records); ``--versus_epochs``
sets its schedule (a full schedule of about NAYER's time is the fair one).

The summary (stdout, and ``--out``): each side's top-1 after every epoch (NAYER's code evaluates
nothing in its warm-up epochs: 0 there), best top-1, CPU seconds per epoch, the budget and the commands.
"""
import argparse
import importlib.util
import json
import os
import resource
import shlex
import shutil
import sys
import time
import types

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_HARNESS = os.path.join(os.path.dirname(ROOT), "shared", "upstream_bench")
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "digits", "nayer.yaml")
sys.path.insert(0, HERE)
from side_by_side import (fmt_stat, finish_process, mean_se, read_cpu, read_ours, same_arguments,  # noqa: E402
                          start_process)

# The flags of one budget, the same on both sides (kd_steps: KD steps per epoch, NAYER's meaning).
BUDGET = ("epochs", "warmup", "batch_size", "synthesis_batch_size", "kd_steps", "lr", "T", "g_steps", "lr_g", "adv",
          "bn", "oh", "bn_mmt", "g_life", "g_loops", "gwp_loops", "le_emb_size")
ALIAS = "cifar10"    # the name NAYER's code builds a 32x32 generator for
# Modules NAYER's package imports at load time, absent from its requirements.txt and unused by nayer
# (fast_meta.py, tiny_imagenet.py, utils/vis.py): empty stand-ins where they are not installed.
IMPORT_ONLY = ("xlsxwriter", "pandas", "seaborn")
DATASETS = ("digits", "fashion_mnist")
SIDES = ("ours", "original", "versus")


def read_budget(config, overrides):
    """The budget of our preset ``config`` (a YAML file), with ``overrides`` (None: keep) applied;
    kd_steps is the KD steps of an epoch (the preset's ep_steps)."""
    with open(config) as f:
        preset = yaml.safe_load(f)
    values = dict(preset, kd_steps=preset.get("ep_steps", preset.get("kd_steps")))
    budget = {key: values.get(key) for key in BUDGET}
    budget.update({k: v for k, v in overrides.items() if v is not None})
    missing = [key for key, value in budget.items() if value is None]
    if missing:
        raise SystemExit(f"the budget lacks {', '.join(missing)}: set it in {config} or give it as a flag")
    return budget


def embedding_command(a, path):
    """Our exporter: the label embedding both sides read, as the pickle NAYER's code loads."""
    return [sys.executable, "-m", "datafree.label_embedding", "--dataset", a.dataset, "--source", a.label_embedding,
            "--out", path]


def our_command(budget, a, output, embedding):
    """datafree_kd.py on the budget: one round of synthesis calls, then the epoch's KD steps, as NAYER."""
    cmd = [sys.executable, os.path.join(a.ours_root, "datafree_kd.py"), "--method", "nayer", "--dataset", a.dataset,
           "--teacher", a.teacher, "--student", a.student, "--teacher_ckpt", a.teacher_ckpt, "--output", output,
           "--gpu", "-1", "--seed", str(a.seed), "--label_embedding", embedding, "--precision", "fp32",
           "--ep_steps", str(budget["kd_steps"])]
    if a.data_root:
        cmd += ["--data_root", a.data_root]
    for key in BUDGET:
        cmd += [f"--{key}", str(budget[key])]
    return cmd + shlex.split(a.ours_args)


def versus_command(a, output):
    """datafree_kd.py on the --versus preset, with this comparison's teacher, seed, data and fp32."""
    cmd = [sys.executable, os.path.join(a.ours_root, "datafree_kd.py"), "--config", a.versus, "--teacher", a.teacher,
           "--student", a.student, "--teacher_ckpt", a.teacher_ckpt, "--output", output, "--gpu", "-1",
           "--seed", str(a.seed), "--precision", "fp32"]
    if a.data_root:
        cmd += ["--data_root", a.data_root]
    if a.versus_epochs:
        cmd += ["--epochs", str(a.versus_epochs)]
    return cmd


def their_argv(budget, a):
    """The arguments of NAYER's datafree_kd.py for the budget (its own flag names)."""
    argv = ["--method", "nayer", "--dataset", ALIAS, "--teacher", a.teacher, "--student", a.student,
            "--seed", str(a.seed), "--workers", "0", "--save_dir", "run/", "--log_tag", "harness",
            "--ep_steps", str(budget["kd_steps"])]
    for key in BUDGET:
        argv += [f"--{key}", str(budget[key])]
    return argv + shlex.split(a.original_args)


def original_command(spec_path):
    return [sys.executable, os.path.abspath(__file__), "--child", spec_path]


# ------------------------------------------------------------------ the original side (a child process)
def keep_on_cpu():
    """``Tensor.to`` / ``Module.to`` with a GPU device (an int, 'cuda...', a cuda device) go to the CPU."""
    import torch

    def cpu(device):
        if isinstance(device, int) and not isinstance(device, bool):
            return "cpu"
        if isinstance(device, str) and device.startswith("cuda"):
            return "cpu"
        if isinstance(device, torch.device) and device.type == "cuda":
            return torch.device("cpu")
        return device

    def wrap(method):
        def to(self, *args, **kwargs):
            args = [cpu(x) for x in args]
            if "device" in kwargs:
                kwargs["device"] = cpu(kwargs["device"])
            return method(self, *args, **kwargs)
        return to

    torch.Tensor.to = wrap(torch.Tensor.to)
    torch.nn.Module.to = wrap(torch.nn.Module.to)


class WandbStandIn(types.ModuleType):
    """What NAYER's code calls of wandb (init, log); every log call (one per epoch) is kept with
    the process's CPU seconds at that moment."""

    def __init__(self):
        super().__init__("wandb")
        self.logs = []

    def init(self, *args, **kwargs):
        return None

    def log(self, values, *args, **kwargs):
        self.logs.append({"values": {k: float(getattr(v, "detach", lambda: v)()) for k, v in values.items()},
                          "cpu": cpu_seconds(),
                          "wall": time.perf_counter()})


def cpu_seconds():
    """CPU seconds of this process and its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_original(spec):
    """NAYER's datafree_kd.main on the budget, in this process (its cwd: the side's folder)."""
    sys.path.insert(0, spec["harness"])
    import run_upstream
    import torch

    data = run_upstream.DATASETS[spec["dataset"]]
    split = data.load_split(seed=0) if spec["dataset"] == "digits" else data.load_split(root=spec["data_root"])
    run_upstream.LoaderStats.workers_override = 0
    run_upstream.install_cpu_shim()
    keep_on_cpu()
    wandb = WandbStandIn()
    sys.modules["wandb"] = wandb
    for name in IMPORT_ONLY:
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
    torch.set_num_threads(1)
    sys.path.insert(0, spec["nayer"])
    import registry   # NAYER's, from the --nayer checkout

    train_set = types.SimpleNamespace(transform=data.pil_train_transform(split["mean"], split["std"], hflip=False))
    val_set = data.tensor_dataset(split["x_test"], split["y_test"], split["mean"], split["std"], train=False)
    registry.get_dataset = lambda name, data_root="data", **kwargs: (data.NUM_CLASSES, train_set, val_set)
    registry.NORMALIZE_DICT[ALIAS] = dict(mean=split["mean"], std=split["std"])
    script = load_module("nayer_datafree_kd", os.path.join(spec["nayer"], "datafree_kd.py"))
    method = next(a for a in script.parser._actions if a.dest == "method")
    method.choices = [*method.choices, "nayer"]   # its parser knows 'nldf', its code builds 'nayer'
    sys.argv = ["datafree_kd.py", *spec["argv"]]
    start_cpu, start_wall = cpu_seconds(), time.perf_counter()
    script.main()
    cpu_marks = [start_cpu] + [entry["cpu"] for entry in wandb.logs]
    wall_marks = [start_wall] + [entry["wall"] for entry in wandb.logs]
    acc = [entry["values"]["Acc1"] for entry in wandb.logs]
    result = {"acc": acc, "best": max(acc) if acc else None,
              "cpu_seconds_each_epoch": [b - a for a, b in zip(cpu_marks, cpu_marks[1:])],
              "wall_seconds_each_epoch": [b - a for a, b in zip(wall_marks, wall_marks[1:])]}
    with open(spec["out"], "w") as f:
        json.dump(result, f)


# ------------------------------------------------------------------ the driver
def prepare_original(a, folder, embedding):
    """The original side's folder: the teacher and the embedding where NAYER's code looks for them."""
    os.makedirs(os.path.join(folder, "checkpoints", "pretrained"), exist_ok=True)
    os.makedirs(os.path.join(folder, "label_embedding"), exist_ok=True)
    os.symlink(a.teacher_ckpt, os.path.join(folder, "checkpoints", "pretrained", f"{ALIAS}_{a.teacher}.pth"))
    shutil.copyfile(embedding, os.path.join(folder, "label_embedding", f"{ALIAS}_le.pickle"))


def run_side(side, cmd, cwd, folder, env):
    """Run one side anew, to its end; returns its exit status (its CPU seconds: FOLDER/SIDE.cpu.json)."""
    for name in (f"{side}.json", f"{side}.cpu.json"):
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    print(f"[nayer] {side}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    return finish_process(start_process(side, cmd, cwd, folder, env), side, folder)


def side_result(side, folder, epochs, cmd):
    """One finished side: its accuracy per epoch, best, and its whole process's CPU seconds per epoch
    (``epochs``; None: the epochs it ran)."""
    record = read_cpu(folder, side)
    cpu = None if record is None else record["cpu_seconds"]
    result = {"command": shlex.join(cmd)}
    if side in ("ours", "versus"):
        ours = read_ours(os.path.join(folder, side))
        if ours is not None:
            result.update(acc=ours["acc"], best=ours["best"], cpu_curve=ours["cpu_curve"])
    else:
        path = os.path.join(folder, "original.json")
        if os.path.isfile(path):
            with open(path) as f:
                result.update(json.load(f))
    if "acc" not in result:
        result["error"] = f"no result: see {os.path.join(folder, side + '.log')}"
    result["cpu_seconds_per_epoch"] = None if cpu is None or not (epochs or result.get("acc")) else \
        cpu / (epochs or len(result["acc"]))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nayer", default=os.environ.get("NAYER_ROOT"),
                   help="a checkout of tmtuan1307/NAYER, only read (or $NAYER_ROOT); needed for the original side")
    p.add_argument("--harness", default=DEFAULT_HARNESS,
                   help="folder of run_upstream.py, digits.py, fashion_mnist.py (default: %(default)s)")
    p.add_argument("--side", default="both", choices=SIDES + ("both",),
                   help="the side to run (default: both, and versus when --versus is given)")
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data_root", default=None, help="fashion_mnist: the folder of its IDX files (default: the "
                                                     "Debian package's)")
    p.add_argument("--teacher", default="wrn16_2")
    p.add_argument("--student", default="wrn16_1")
    p.add_argument("--teacher_ckpt", default=os.path.join(ROOT, "checkpoints", "pretrained", "digits_wrn16_2.pth"),
                   help="teacher file both sides load, written by train_scratch.py (default: %(default)s)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="our preset the budget is read from (default: %(default)s)")
    for key in BUDGET:
        p.add_argument(f"--{key}", type=int if key in ("epochs", "warmup", "batch_size", "synthesis_batch_size",
                                                        "kd_steps", "g_steps", "g_life", "g_loops", "gwp_loops",
                                                        "le_emb_size") else float, default=None,
                       help="budget override" + (" (KD steps per epoch)" if key == "kd_steps" else ""))
    p.add_argument("--label_embedding", default="hash", metavar="clip|hash|FILE",
                   help="the embedding both sides read (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, metavar="S1,S2,...", help="several seeds, each its own folder; the table "
                                                                     "gives mean ± SE over them (overrides --seed)")
    p.add_argument("--rerun", action="store_true", help="run a seed's sides again even if finished")
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "nayer_side_by_side"))
    p.add_argument("--ours_root", default=ROOT, help="the checkout of this project to run (default: this one)")
    p.add_argument("--ours_args", default="", help="extra flags for our datafree_kd.py")
    p.add_argument("--original_args", default="", help="extra flags for NAYER's datafree_kd.py")
    p.add_argument("--versus", default=None, metavar="CONFIG",
                   help="another preset of ours (e.g. configs/fashion_mnist/fast5.yaml) run on the same seed, teacher and "
                        "data, in fp32, for NAYER against it at the same CPU time")
    p.add_argument("--versus_epochs", type=int, default=None, help="the versus run's epochs (default: its preset's)")
    p.add_argument("--out", default=None, help="write the JSON summary here too")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        with open(a.child) as f:
            return run_original(json.load(f))
    if a.side == "versus" and not a.versus:
        p.error("--side versus needs --versus CONFIG, the preset to run")
    if a.versus:
        if not os.path.isfile(a.versus):
            p.error(f"the --versus preset is not at {a.versus}")
        with open(a.versus) as f:
            versus_dataset = (yaml.safe_load(f) or {}).get("dataset")
        if versus_dataset != a.dataset:
            p.error(f"--versus {a.versus} is a {versus_dataset} preset; give one for --dataset {a.dataset}")
        a.versus = os.path.abspath(a.versus)
    if a.side in ("both", "original") and not (a.nayer and os.path.isfile(os.path.join(a.nayer, "datafree_kd.py"))):
        p.error("the original side needs --nayer, a checkout of tmtuan1307/NAYER")
    for path, what in ((a.teacher_ckpt, "teacher file"), (os.path.join(a.harness, "run_upstream.py"), "harness")):
        if not os.path.exists(path):
            p.error(f"the {what} is not at {path}")
    a.teacher_ckpt, a.workdir, a.ours_root = (os.path.abspath(x) for x in (a.teacher_ckpt, a.workdir, a.ours_root))
    budget = read_budget(a.config, {key: getattr(a, key) for key in BUDGET})
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else [a.seed]
    summaries = [run_seed(a, budget, seed) for seed in seeds]
    table = markdown(summaries, a, budget)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(json.dumps(s) for s in summaries) + "\n")
        with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
            f.write(table)
    print(table)
    print(summary_line(summaries))
    return 0


def run_seed(a, budget, seed):
    """Both sides (or ``--side``) of one seed; a side already finished with the same command is kept."""
    folder = os.path.join(a.workdir, f"{a.dataset}-seed{seed}")
    os.makedirs(folder, exist_ok=True)
    a.seed = seed
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=a.ours_root)
    embedding = os.path.join(folder, "label_embedding.pickle")
    if run_side("embedding", embedding_command(a, embedding), a.ours_root, folder, env) != 0:
        raise SystemExit(f"the label embedding could not be written: see {os.path.join(folder, 'embedding.log')}")
    previous = {}
    path = os.path.join(folder, "summary.json")
    if os.path.isfile(path) and not a.rerun:
        with open(path) as f:
            previous = json.load(f)
    summary = {"dataset": a.dataset, "teacher": a.teacher, "teacher_ckpt": a.teacher_ckpt, "student": a.student,
               "seed": seed, "budget": budget, "label_embedding": a.label_embedding}
    if a.side in ("both", "ours"):
        cmd = our_command(budget, a, os.path.join(folder, "ours"), embedding)
        if finished(previous.get("ours"), cmd):
            summary["ours"] = previous["ours"]
        else:
            shutil.rmtree(os.path.join(folder, "ours"), ignore_errors=True)
            run_side("ours", cmd, a.ours_root, folder, env)
            summary["ours"] = side_result("ours", folder, budget["epochs"], cmd)
    if a.side in ("both", "original"):
        where = os.path.join(folder, "original")
        spec = {"nayer": os.path.abspath(a.nayer), "harness": os.path.abspath(a.harness), "dataset": a.dataset,
                "data_root": a.data_root, "argv": their_argv(budget, a), "out": os.path.join(folder, "original.json")}
        cmd = original_command(os.path.join(folder, "original.spec.json"))
        if finished(previous.get("original"), cmd) and previous["original"].get("argv") == shlex.join(spec["argv"]):
            summary["original"] = previous["original"]
        else:
            shutil.rmtree(where, ignore_errors=True)   # NAYER's pool folder is never emptied by its code
            prepare_original(a, where, embedding)
            with open(os.path.join(folder, "original.spec.json"), "w") as f:
                json.dump(spec, f)
            run_side("original", cmd, where, folder, dict(env, PYTHONPATH=""))
            summary["original"] = side_result("original", folder, budget["epochs"], cmd)
            summary["original"]["argv"] = shlex.join(spec["argv"])
    if a.versus and a.side in ("both", "versus"):
        cmd = versus_command(a, os.path.join(folder, "versus"))
        if finished(previous.get("versus"), cmd):
            summary["versus"] = previous["versus"]
        else:
            shutil.rmtree(os.path.join(folder, "versus"), ignore_errors=True)
            run_side("versus", cmd, a.ours_root, folder, env)
            summary["versus"] = side_result("versus", folder, None, cmd)
            summary["versus"]["preset"] = os.path.relpath(a.versus, a.ours_root)
    if os.path.isfile(path):   # a side run at the same time in another process keeps its result
        with open(path) as f:
            latest = json.load(f)
        for side in SIDES:
            if side not in summary and latest.get(side) and latest.get("budget") == budget:
                summary[side] = latest[side]
    for side in ("ours", "versus"):   # summaries written before the CPU curve was kept
        if summary.get(side) and "cpu_curve" not in summary[side]:
            summary[side]["cpu_curve"] = (read_ours(os.path.join(folder, side)) or {}).get("cpu_curve")
    with open(path, "w") as f:
        json.dump(summary, f)
    return summary


def finished(side, cmd):
    """A kept side with a result, run with ``cmd``'s arguments (from whichever checkout)."""
    return bool(side) and side.get("best") is not None and same_arguments(side.get("command"), cmd)


def markdown(summaries, a, budget):
    """Best top-1 per side as mean ± SE over the seeds, the paired difference, CPU seconds per epoch."""
    def stat(side, key="best"):
        values = [s[side]["acc"][-1] if key == "last" else s[side].get(key) for s in summaries
                  if s.get(side) and s[side].get("acc")]
        return mean_se(v for v in values if v is not None)

    diff = mean_se(s["ours"]["best"] - s["original"]["best"] for s in summaries
                   if s.get("ours", {}).get("best") is not None and s.get("original", {}).get("best") is not None)
    cpu = {side: stat(side, "cpu_seconds_per_epoch") for side in ("ours", "original")}
    ratio = (cpu["ours"]["mean"] / cpu["original"]["mean"]) if cpu["ours"] and cpu["original"] else None
    lines = [f"NAYER on {a.dataset}, seeds {','.join(str(s['seed']) for s in summaries)}: ours (--method nayer) "
             f"against NAYER's own code, the same teacher, data, label embedding ({a.label_embedding}) and budget "
             f"({', '.join(f'{k} {v}' for k, v in budget.items())}); best top-1 as mean ± SE over the seeds.", "",
             "| side | best top-1 | last epoch | CPU s/epoch |", "|---|---|---|---|"]
    for side in ("ours", "original"):
        seconds = "-" if cpu[side] is None else f"{cpu[side]['mean']:.1f}"
        lines.append(f"| {side} | {fmt_stat(stat(side))} | {fmt_stat(stat(side, 'last'))} | {seconds} |")
    lines += ["", f"ours - original: {fmt_stat(diff, '+')} (paired over seeds); CPU seconds per epoch, ours / "
                  f"original: {'-' if ratio is None else f'{ratio:.2f}'}", "", "Per seed:", "",
              "| seed | ours | original | ours per epoch | original per epoch |", "|---|---|---|---|---|"]
    for s in summaries:
        row = [str(s["seed"])]
        for side in ("ours", "original"):
            row.append("-" if not s.get(side) or s[side].get("best") is None else f"{s[side]['best']:.2f}")
        for side in ("ours", "original"):
            row.append("-" if not s.get(side) or not s[side].get("acc") else " ".join(f"{v:.1f}" for v in s[side]["acc"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines + versus_lines(summaries)) + "\n"


def within(side, seconds):
    """The best top-1 of one of our sides over the epochs it finished within ``seconds`` of CPU (None: none)."""
    reached = [acc for acc, cpu in zip(side["acc"], side["cpu_curve"]) if cpu <= seconds]
    return max(reached) if reached else None


def versus_lines(summaries):
    """NAYER (ours) against the --versus run at the same CPU time, per seed and as mean ± SE."""
    rows = [s for s in summaries if s.get("versus", {}).get("cpu_curve") and s.get("ours", {}).get("cpu_curve")]
    if not rows:
        return []
    preset = rows[0]["versus"].get("preset", "versus")
    table = [(s["seed"], s["ours"]["best"], s["ours"]["cpu_curve"][-1], within(s["versus"], s["ours"]["cpu_curve"][-1]),
              s["versus"]["best"], s["versus"]["cpu_curve"][-1], within(s["ours"], s["versus"]["cpu_curve"][-1]))
             for s in rows]
    lines = ["", f"NAYER (ours) against {preset} at the same CPU time (in-process CPU seconds of our runs, fp32); "
                 "'within' is the best top-1 of the epochs finished in the other run's CPU seconds:", "",
             "| seed | NAYER best | NAYER CPU s | versus within NAYER's CPU s | versus best | versus CPU s "
             "| NAYER within versus's CPU s |", "|---|---|---|---|---|---|---|"]
    cell = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for seed, nb, nc, vw, vb, vc, nw in table:
        lines.append(f"| {seed} | {nb:.2f} | {nc:.0f} | {cell(vw, '.2f')} | {vb:.2f} | {vc:.0f} | {cell(nw, '.2f')} |")
    stats = [mean_se(v for v in column if v is not None) for column in zip(*table)]
    lines.append("| mean | " + " | ".join(fmt_stat(st) for st in stats[1:]) + " |")
    return lines


def summary_line(summaries):
    pairs = [(s["ours"]["best"], s["original"]["best"]) for s in summaries
             if s.get("ours", {}).get("best") is not None and s.get("original", {}).get("best") is not None]
    diff = mean_se(o - u for o, u in pairs)
    if diff is None:
        return f"nayer_side_by_side: {len(pairs)}/{len(summaries)} seeds finished on both sides"
    se = diff["se"] or 0.0
    verdict = "within one SE or above" if diff["mean"] >= -se else "behind by more than one SE"
    return (f"nayer_side_by_side: {len(pairs)}/{len(summaries)} seeds; ours - original = {diff['mean']:+.2f} "
            f"(SE {se:.2f}): {verdict}")


if __name__ == "__main__":
    sys.exit(main())
