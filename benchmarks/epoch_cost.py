"""What one epoch of datafree_kd.py costs, per phase, against the floor of its network passes.

For each setting (precision, channels-last, torch.compile), a fresh process runs the real
loop (datafree_kd.main) for a few epochs with no warm-up epochs, reads the seconds of each
phase from the run's log (synthesis, kd, eval, output) and of each epoch from its
summary.json, then times the network-pass floor of one epoch: the generator, teacher and
student forward/backward passes with the same shapes and the same setting, but no optimiser,
hooks, augmentation or pool. The first epoch (cuDNN autotuning, compilation) is reported
apart; s/epoch is the mean of the later ones. Floor share = floor / s/epoch of the setting.

Presets (the flags after ``--`` override them):

- ``digits`` (default): configs/digits/fast_meta_5.yaml, Fast-5 wrn16_2 -> wrn16_1, batch 128,
  20 KD steps per epoch; the teacher is checkpoints/pretrained/digits_wrn16_2.pth when it
  exists (random weights otherwise: the cost is the same);
- ``cifar``: the published CIFAR-10 Fast-5 setting (configs/table1/cifar10/fast5-wrn40_2-wrn16_1.yaml:
  batch 256, 400 KD steps per epoch, 220 epochs of which 20 warm-up) on random CIFAR-shaped data
  (3x32x32, 10 classes, a 10,000-image test set) with a random wrn40_2 teacher.

The projected hours are for the preset's schedule: warm-up epochs cost synthesis + output,
the others a whole epoch; synthesis hours count synthesis alone, as the paper's figures do.

    python benchmarks/epoch_cost.py                                   # digits, the CPU settings
    python benchmarks/epoch_cost.py --preset cifar --epochs 2         # on the GPU if there is one
    python benchmarks/epoch_cost.py --settings fp32,bf16+cl+compile -- --kd_steps 10
"""
import argparse
import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datafree.commands import kd as datafree_kd  # noqa: E402
from datafree import registry  # noqa: E402
from datafree import distributed, engine  # noqa: E402
from datafree.checkpoint import atomic_save, read_summary  # noqa: E402
from datafree.datasets.transforms import cifar_style  # noqa: E402
from datafree.engine import Clock  # noqa: E402
from datafree.precision import Precision, native_bfloat16  # noqa: E402
from datafree.synthesis import SYNTHESIZERS, PoolSynthesizer  # noqa: E402
from datafree.run import registered_data, synthesizer_config  # noqa: E402

RANDOM_DATASET = "random_cifar10"
PRESETS = {
    "digits": {"flags": ["--config", os.path.join(ROOT, "configs", "digits", "fast_meta_5.yaml")],
               "teacher": os.path.join(ROOT, "checkpoints", "pretrained", "digits_wrn16_2.pth"),
               "paper_hours": None},
    "cifar": {"flags": ["--config", os.path.join(ROOT, "configs", "table1", "cifar10", "fast5-wrn40_2-wrn16_1.yaml"),
                        "--dataset", RANDOM_DATASET, "--log_tag", ""],
              "teacher": None,
              # Table 1, CIFAR-10, Fast-5 W40-2 -> W16-1: GPU hours of synthesis for the whole run
              "paper_hours": 0.08},
}
PHASES = ("synthesis", "kd", "eval", "output")
SETTING_PARTS = {"cl": ["--channels_last"], "compile": ["--compile"]}


class RandomImages(torch.utils.data.Dataset):
    """Random uint8 RGB images with random labels, read through a transform like torchvision's CIFAR."""

    def __init__(self, n, transform, seed):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        self.targets = rng.integers(0, 10, size=n).tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def register_random_dataset(test_size):
    """``random_cifar10``: CIFAR-10's shapes and statistics, random pixels (a 512-image train split)."""
    if RANDOM_DATASET in registry.dataset_names():
        return

    @registry.register_dataset(RANDOM_DATASET, num_classes=10, **registry.NORMALIZE_DICT["cifar10"])
    def build(data_root, download=False):
        train_tf, val_tf = cifar_style("cifar10")
        return RandomImages(512, train_tf, seed=0), RandomImages(test_size, val_tf, seed=1)


def parse_setting(text):
    """'bf16+cl+compile' -> datafree_kd.py flags; a clear error for an unknown part."""
    precision, *parts = text.split("+")
    if precision not in ("fp32", "fp16", "bf16"):
        raise SystemExit(f"epoch_cost.py: setting '{text}' must start with fp32, fp16 or bf16")
    flags = ["--precision", precision]
    for part in parts:
        if part not in SETTING_PARTS:
            raise SystemExit(f"epoch_cost.py: unknown part '{part}' in setting '{text}'; "
                             f"use {', '.join(SETTING_PARTS)}")
        flags += SETTING_PARTS[part]
    return flags


def default_settings(device):
    if device.type == "cuda":
        # the likeliest winners first, so that a --budget cuts the least informative rows
        return ["fp32", "bf16+cl", "fp16+cl", "bf16+cl+compile", "fp16", "bf16", "fp32+cl", "fp16+cl+compile",
                "fp32+compile"]
    settings = ["fp32", "fp32+cl"]
    if native_bfloat16(device):   # emulated bfloat16 is slower than float32: not worth a row
        settings += ["bf16", "bf16+cl"]
    return settings


def kd_flags(opts, workdir, setting):
    """The datafree_kd.py command line of one setting."""
    preset = PRESETS[opts.preset]
    teacher = opts.teacher_ckpt or preset["teacher"]
    if not teacher or not os.path.isfile(teacher):
        teacher = os.path.join(workdir, "random_teacher.pth")
    gpu = "-1" if opts.device == "cpu" else opts.device.split(":")[-1] if ":" in opts.device else "0"
    return [*preset["flags"], *opts.kd_args, *parse_setting(setting), "--teacher_ckpt", teacher,
            "--epochs", str(opts.epochs), "--warmup", "0", "--gpu", gpu,
            "--output", run_folder(workdir, setting)]


def run_folder(workdir, setting):
    return os.path.join(workdir, "run-" + setting.replace("+", "-"))


def ensure_random_teacher(args, path):
    """A random teacher of the run's architecture at ``path`` (when no trained one is given)."""
    if os.path.isfile(path):
        return
    torch.manual_seed(0)
    num_classes = registry.DATASET_NUM_CLASSES[args.dataset]
    model = registry.get_model(args.teacher, num_classes, task=registry.get_task(args.dataset))
    atomic_save({"state_dict": model.state_dict(), "arch": args.teacher}, path)


def phase_seconds(log_text):
    """Per epoch, the ``| seconds: synthesis=.. kd=.. eval=.. output=..`` of the run's log."""
    epochs = []
    for line in log_text.splitlines():
        match = re.search(r"\| seconds: (.*)$", line)
        if match:
            epochs.append({k: float(v) for k, v in re.findall(r"(\w+)=([\d.eE+-]+)", match.group(1))})
    return epochs


def epoch_seconds(run_dir, phases):
    """Wall seconds of each epoch from summary.json (the phases' sum where it is missing)."""
    summary = read_summary(run_dir)
    if not summary:
        return [sum(p.values()) for p in phases]
    walls = [h["wall_seconds"] for h in summary["history"]]
    return [b - a for a, b in zip([0.0] + walls[:-1], walls)]


class SyncCounter:
    """Counts the host-device syncs of code run inside ``count()`` (CUDA's sync debug mode)."""

    def __init__(self):
        self.syncs = []

    def mean(self):
        return sum(self.syncs) / len(self.syncs) if self.syncs else None

    def count(self, fn):
        def counted(*args, **kwargs):
            if not torch.cuda.is_available():
                return fn(*args, **kwargs)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    return fn(*args, **kwargs)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
                    self.syncs.append(sum("synchroniz" in str(w.message) for w in caught))
        return counted


def count_last_round(args, epochs, kd_syncs, synthesis_syncs):
    """Count the syncs of the run's last synthesis call and last KD round (patches this process only)."""
    rounds = args.ep_steps // args.kd_steps
    last = epochs * rounds
    real_distill = datafree_kd.distill_steps
    method = SYNTHESIZERS[args.method]
    real_synthesize = method.synthesize

    def distill_steps(synthesizer, *rest, **options):
        fn = kd_syncs.count(real_distill) if synthesizer.calls == last else real_distill
        return fn(synthesizer, *rest, **options)

    def synthesize(self):
        fn = synthesis_syncs.count(real_synthesize) if self.calls == last - 1 else real_synthesize
        return fn(self)

    datafree_kd.distill_steps = distill_steps
    method.synthesize = synthesize


def profile_last_epoch(args, epochs):
    """A torch.profiler that starts with the last epoch's first synthesis call (patches this process only)."""
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else []))
    first_of_last = (epochs - 1) * (args.ep_steps // args.kd_steps)
    method = SYNTHESIZERS[args.method]
    real_synthesize = method.synthesize

    def synthesize(self):
        if self.calls == first_of_last:
            profiler.start()
        return real_synthesize(self)

    method.synthesize = synthesize
    return profiler


def write_profile(profiler, path, setting, rows=25):
    averages = profiler.key_averages()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    text = averages.table(sort_by=sort, row_limit=rows, max_name_column_width=45)
    with open(path, "w") as f:
        f.write(f"torch.profiler, one epoch, setting {setting}, top {rows} ops by {sort}\n{text}\n")


def process_clock(device):
    """Seconds of CPU time this process has used: a clock that other processes' load hardly moves
    (for the CPU; the same call signature as ``wall_clock``)."""
    return time.process_time()


def wall_clock(device, read=Clock.now):
    """The loops' clock: the wall clock once the device's queued work is done (datafree.engine.Clock's own
    ``now``, kept here before ``child`` may replace it)."""
    return read(Clock(device))


def network_floor(args, device, val_size, image_shape, clock=wall_clock, repeats=1):
    """Seconds of one epoch's network passes in the run's setting (see the module's docstring)."""
    task = registry.get_task(args.dataset)
    num_classes = registry.DATASET_NUM_CLASSES[args.dataset]
    method = SYNTHESIZERS[args.method]
    if not issubclass(method, PoolSynthesizer):
        return None   # generative methods sample their generator in the KD steps: no floor modelled
    nc = image_shape[0]
    img_size = args.img_size or image_shape[-1]
    teacher = registry.get_model(args.teacher, num_classes, task=task).to(device).eval()
    student = registry.get_model(args.student, num_classes, task=task).to(device)
    config = synthesizer_config(args, registered_data(args, (nc, img_size, img_size), task=task))
    generator = getattr(method(registry.get_model(args.teacher, num_classes, task=task).to(device),
                               student, config, device), "generator", None)
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    for model in (teacher, student, generator):
        if model is not None:
            model.to(memory_format=memory)
    for p in teacher.parameters():
        p.requires_grad_(False)
    kd_teacher, kd_student = (torch.compile(teacher), torch.compile(student)) if args.compile else (teacher, student)
    precision = Precision(device, args.precision)
    batch, synthesis_batch = config.batch_size, config.synthesis_batch_size or config.batch_size
    images = torch.randn(batch, nc, img_size, img_size, device=device).contiguous(memory_format=memory)
    rounds = args.ep_steps // args.kd_steps

    def synthesis_pass():
        if generator is not None:
            z = torch.randn(synthesis_batch, *generator.latent_shape, device=device, requires_grad=True)
            leaves = [z, *generator.parameters()]
        else:
            z = torch.randn(synthesis_batch, nc, img_size, img_size, device=device, requires_grad=True)
            leaves = [z]
        student.eval()
        with precision.autocast():
            x = generator(z) if generator is not None else z
            loss = teacher(x).float().mean()
            if getattr(args, "adv", 0) > 0:
                loss = loss + student(x).float().mean()
        precision.backward(loss, inputs=leaves)

    def kd_pass():
        student.train()
        with precision.autocast():
            with torch.no_grad():
                t = kd_teacher(images)
            loss = (kd_student(images).float() - t.float()).pow(2).mean()
        precision.backward(loss)

    @torch.no_grad()
    def eval_passes():
        student.eval()
        step = max(args.batch_size, 256)
        for start in range(0, val_size, step):
            student(torch.randn(min(step, val_size - start), nc, img_size, img_size, device=device))

    def epoch(fraction=1.0):
        seconds = dict.fromkeys(("synthesis", "kd", "eval"), 0.0)
        for _ in range(rounds if fraction == 1.0 else 1):
            tic = clock(device)
            for _ in range(args.g_steps):
                synthesis_pass()
            seconds["synthesis"] += clock(device) - tic
            tic = clock(device)
            for _ in range(max(1, int(args.kd_steps * fraction))):
                kd_pass()
            seconds["kd"] += clock(device) - tic
        tic = clock(device)
        eval_passes()
        seconds["eval"] = clock(device) - tic
        return seconds

    epoch(fraction=0.1)   # warm-up: autotuning, compilation
    runs = [epoch() for _ in range(repeats)]
    return {k: min(r[k] for r in runs) for k in runs[0]}


def child(opts):
    """One setting in this process: the real loop, then the floor; the result as JSON in ``opts.result``."""
    register_random_dataset(opts.test_size)
    if opts.compile_backend:
        torch.compile = functools.partial(torch.compile, backend=opts.compile_backend)
    clock = process_clock if opts.clock == "process" else wall_clock
    engine.Clock.now = lambda self: clock(self.device)    # the loop's phase and epoch seconds, in this process only
    workdir = os.path.dirname(opts.result)
    argv = kd_flags(opts, workdir, opts.child)
    args = datafree_kd.parse_args(argv)
    ensure_random_teacher(args, argv[argv.index("--teacher_ckpt") + 1])
    kd_syncs, synthesis_syncs = SyncCounter(), SyncCounter()
    if opts.count_syncs and torch.cuda.is_available():
        count_last_round(args, opts.epochs, kd_syncs, synthesis_syncs)
    profiler = profile_last_epoch(args, opts.epochs) if opts.profile else None
    result = {"setting": opts.child, "argv": argv}
    run = datafree_kd.main(argv)
    if profiler is not None:
        profiler.stop()
        write_profile(profiler, f"{opts.profile}-{opts.child.replace('+', '-')}.txt", opts.child)
    rank = distributed.get_rank()
    distributed.cleanup()
    if rank > 0:   # under torchrun, rank 0 reports
        return
    output = run_folder(workdir, opts.child)
    phases = phase_seconds(open(os.path.join(output, "log.txt")).read())
    result.update(phases=phases, epoch_seconds=epoch_seconds(output, phases), best_acc1=run["best_acc1"],
                  syncs_per_kd_round=kd_syncs.mean(), syncs_per_synthesis=synthesis_syncs.mean(),
                  precision=args.precision, device=str(torch.device(opts.device)))
    if not opts.no_floor:
        _, _, val_set = registry.get_dataset(args.dataset, args.data_root)
        result["floor"] = network_floor(args, torch.device(opts.device), len(val_set), tuple(val_set[0][0].shape),
                                        clock)
    with open(opts.result, "w") as f:
        json.dump(result, f)


def summarise(result, schedule):
    """Table values of one setting's result."""
    later = result["epoch_seconds"][1:] or result["epoch_seconds"]
    later_phases = result["phases"][1:] or result["phases"]
    mean = sum(later) / len(later)
    phases = {k: sum(p.get(k, 0.0) for p in later_phases) / len(later_phases) for k in PHASES}
    epochs, warmup = schedule
    hours = (warmup * (phases["synthesis"] + phases["output"]) + (epochs - warmup) * mean) / 3600
    floor = result.get("floor")
    floor_total = sum(floor.values()) if floor else None
    return {"first": result["epoch_seconds"][0], "epoch": mean, **phases,
            "floor": floor_total, "floor_share": floor_total / mean if floor_total else None,
            "hours": hours, "synthesis_hours": epochs * phases["synthesis"] / 3600,
            "syncs": result.get("syncs_per_kd_round"), "synthesis_syncs": result.get("syncs_per_synthesis")}


def fmt(value, spec):
    """``format(value, spec)``, or '-' as wide for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        width = re.match(r"\d*", spec).group()
        return "-".rjust(int(width) if width else 1)
    return format(value, spec)


def table(rows, schedule, paper_hours):
    epochs, warmup = schedule
    head = (f"{'setting':<18} {'first s':>8} {'s/epoch':>8} {'synth':>7} {'kd':>7} {'eval':>6} {'output':>6} "
            f"{'floor s':>7} {'floor':>6} {'speed-up':>8} {f'{epochs}-ep h':>8} {'synth h':>8} {'syncs k/s':>9}  status")
    lines = [head, "-" * len(head)]
    base = next((r["summary"]["epoch"] for r in rows if r["setting"] == "fp32" and r.get("summary")), None)
    for r in rows:
        s = r.get("summary")
        if not s:
            lines.append(f"{r['setting']:<18} {'':>8} {'':>8} {'':>7} {'':>7} {'':>6} {'':>6} {'':>7} {'':>6} "
                         f"{'':>8} {'':>8} {'':>8} {'':>9}  {r['status']}")
            continue
        speed = base / s["epoch"] if base else None
        syncs = f"{fmt(s['syncs'], '.0f')}/{fmt(s['synthesis_syncs'], '.0f')}"
        lines.append(f"{r['setting']:<18} {s['first']:8.2f} {s['epoch']:8.2f} {s['synthesis']:7.2f} {s['kd']:7.2f} "
                     f"{s['eval']:6.2f} {s['output']:6.2f} {fmt(s['floor'], '7.2f')} {fmt(s['floor_share'], '6.2f')} "
                     f"{fmt(speed, '7.2f') + 'x' if speed else '-':>8} {s['hours']:8.3f} {s['synthesis_hours']:8.3f} "
                     f"{syncs:>9}  {r['status']}")
    paper = f"; the paper's synthesis cost for this run: {paper_hours} h" if paper_hours else ""
    lines.append(f"(hours projected for {epochs} epochs of which {warmup} warm-up{paper}; syncs k/s: host-device "
                 f"syncs in the last KD round / synthesis call, CUDA with --count_syncs)")
    return lines


def closing_line(rows):
    done = [r for r in rows if r.get("summary")]
    if not done:
        return "epoch_cost: no setting finished"
    best = min(done, key=lambda r: r["summary"]["epoch"])
    fp32 = next((r for r in done if r["setting"] == "fp32"), None)
    base = fp32["summary"]["epoch"] if fp32 else None
    speed = f"{base / best['summary']['epoch']:.2f}x" if base else "-"
    return (f"epoch_cost: best={best['setting']} {best['summary']['epoch']:.2f}s/epoch, "
            f"fp32 {fmt(base, '.2f')}s/epoch, speed-up {speed}, floor share {fmt(best['summary']['floor_share'], '.2f')}")


def child_command(opts, setting, result):
    launcher = [sys.executable]
    if opts.nproc:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={opts.nproc}"]
    cmd = [*launcher, os.path.abspath(__file__), "--child", setting, "--result", result,
           "--preset", opts.preset, "--device", opts.device, "--epochs", str(opts.epochs),
           "--test_size", str(opts.test_size)]
    if opts.teacher_ckpt:
        cmd += ["--teacher_ckpt", opts.teacher_ckpt]
    if opts.compile_backend:
        cmd += ["--compile_backend", opts.compile_backend]
    cmd += ["--clock", opts.clock]
    if opts.no_floor:
        cmd.append("--no_floor")
    if opts.count_syncs:
        cmd.append("--count_syncs")
    if opts.profile:
        cmd += ["--profile", os.path.abspath(opts.profile)]
    return cmd + ["--", *opts.kd_args]


def run_setting(opts, setting, workdir, left, schedule):
    """One setting in a child process; its table row."""
    limits = [x for x in (opts.setting_timeout, left) if x]
    timeout = min(limits) if limits else None
    result = os.path.join(workdir, f"{setting}.json")
    if os.path.exists(result):
        os.remove(result)
    shutil.rmtree(run_folder(workdir, setting), ignore_errors=True)   # an earlier --repeat's run
    output = ""
    try:
        proc = subprocess.run(child_command(opts, setting, result), capture_output=True, text=True,
                              timeout=timeout, cwd=workdir)
        output = proc.stdout[-3000:] + proc.stderr[-3000:]
        status = "ok" if proc.returncode == 0 and os.path.isfile(result) else \
            "failed: " + (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1][:150]
    except subprocess.TimeoutExpired:
        status = f"failed: timed out after {timeout:.0f} s"
    row = {"setting": setting, "status": status}
    if status == "ok":
        with open(result) as f:
            row["result"] = json.load(f)
        row["summary"] = summarise(row["result"], schedule)
        if row["result"]["precision"] != setting.split("+")[0]:
            row["status"] = f"ok (ran as {row['result']['precision']})"
    elif opts.verbose:
        print(output, file=sys.stderr)
    return row


def run_settings(opts):
    register_random_dataset(opts.test_size)
    preset_args = datafree_kd.parse_args([*PRESETS[opts.preset]["flags"], *opts.kd_args])
    schedule = (preset_args.epochs, preset_args.warmup)
    device = torch.device(opts.device)
    settings = opts.settings.split(",") if opts.settings else default_settings(device)
    for setting in settings:
        parse_setting(setting)
    deadline = time.monotonic() + opts.budget if opts.budget else None
    launch = f", torchrun x{opts.nproc}" if opts.nproc else ""
    print(f"epoch_cost: preset {opts.preset}, device {device}{launch}, {opts.epochs} epochs per setting, "
          f"threads {torch.get_num_threads()}, {opts.clock} clock, settings {', '.join(settings)}", flush=True)
    best, last_cost = {}, 0.0
    with tempfile.TemporaryDirectory(prefix="epoch_cost-") as workdir:
        for attempt in range(opts.repeat):     # interleaved, so that a change of load hits every setting
            for setting in settings:
                left = deadline - time.monotonic() if deadline else None
                if left is not None and left < max(last_cost, 10.0):
                    best.setdefault(setting, {"setting": setting, "status": "skipped: --budget spent"})
                    continue
                tic = time.monotonic()
                row = run_setting(opts, setting, workdir, left, schedule)
                last_cost = time.monotonic() - tic
                print(f"  {setting}: {row['status']} ({last_cost:.0f} s)", flush=True)
                kept = best.get(setting)
                if kept is None or not kept.get("summary") or (
                        row.get("summary") and row["summary"]["epoch"] < kept["summary"]["epoch"]):
                    best[setting] = row
    rows = [best[setting] for setting in settings]
    if opts.repeat > 1:
        for row in rows:
            if row.get("summary"):
                row["status"] += f" (fastest of {opts.repeat})"
    lines = table(rows, schedule, PRESETS[opts.preset]["paper_hours"])
    print("\n".join(lines))
    closing = closing_line(rows)
    if opts.table:
        os.makedirs(os.path.dirname(os.path.abspath(opts.table)), exist_ok=True)
        with open(opts.table, "w") as f:
            f.write("\n".join(lines + [closing]) + "\n")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(closing)
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0   # skipped for --budget is no failure


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    kd_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="%(prog)s [options] [-- datafree_kd.py flags]")
    parser.add_argument("--preset", default="digits", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:K (default: cuda when there is a GPU)")
    parser.add_argument("--settings", default=None,
                        help="comma-separated: fp32|fp16|bf16 with +cl (channels last) and +compile, e.g. "
                             "fp32,bf16+cl,bf16+cl+compile (default: every setting worth a row on the device)")
    parser.add_argument("--epochs", default=3, type=int, help="epochs per setting; the first is reported apart")
    parser.add_argument("--nproc", default=0, type=int,
                        help="run each setting under torchrun with this many processes (one per GPU; gloo on the "
                             "CPU); 0: one plain process")
    parser.add_argument("--repeat", default=1, type=int,
                        help="run the settings this many times, interleaved, and keep each one's fastest run "
                             "(a noisy machine)")
    parser.add_argument("--teacher_ckpt", default=None, help="teacher weights (default: the preset's, else random)")
    parser.add_argument("--test_size", default=10000, type=int, help="test images of the random CIFAR-shaped data")
    parser.add_argument("--no_floor", action="store_true", help="skip the network-pass floor")
    parser.add_argument("--count_syncs", action="store_true",
                        help="CUDA: count host-device syncs per KD round (sync debug mode) in the last epoch")
    parser.add_argument("--budget", default=None, type=float, metavar="SECONDS",
                        help="stop starting settings after this many seconds (the rest are reported as skipped)")
    parser.add_argument("--setting_timeout", default=None, type=float, metavar="SECONDS",
                        help="a setting running longer is stopped and reported as failed")
    parser.add_argument("--clock", default="wall", choices=["wall", "process"],
                        help="wall: elapsed seconds; process: the CPU seconds of the run's process, which other "
                             "processes' load hardly moves (a shared CPU; only with one thread per run, "
                             "OMP_NUM_THREADS=1)")
    parser.add_argument("--compile_backend", default=None,
                        help="torch.compile backend of the +compile settings (default: inductor; 'aot_eager' "
                             "checks the tracing in seconds, without generating code)")
    parser.add_argument("--profile", default=None, metavar="PREFIX",
                        help="write a torch.profiler table of each setting's last epoch to PREFIX-<setting>.txt")
    parser.add_argument("--table", default=None, help="also write the table and summary line to this file")
    parser.add_argument("--json", default=None, help="also write every result as JSON to this file")
    parser.add_argument("--verbose", action="store_true", help="print a failed setting's output")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    opts.kd_args = kd_args
    if opts.epochs < 1 or opts.repeat < 1:
        parser.error("--epochs and --repeat must be at least 1")
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {opts.device} but CUDA is not available; use --device cpu")
    if opts.clock == "process" and (torch.get_num_threads() > 1 or opts.device != "cpu"):
        parser.error("--clock process counts CPU seconds: it needs the CPU and one thread (OMP_NUM_THREADS=1)")
    if opts.child:
        child(opts)
        return 0
    return run_settings(opts)


if __name__ == "__main__":
    sys.exit(main())
