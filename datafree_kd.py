"""Data-free knowledge distillation: every method, one command.

Each epoch runs ep_steps // kd_steps rounds of (one synthesis call -> kd_steps KD steps on
synthetic batches), or the rounds a method plans itself (SSD-KD), with no KD during the first --warmup epochs; then the student is
evaluated and checkpointed. The end of the run reports the best top-1 accuracy and the
synthesis cost in hours, as the paper does, beside the total wall time.

    python datafree_kd.py --config configs/digits/fast_meta_5.yaml
    python datafree_kd.py --method fast_meta --dataset cifar10 --teacher wrn40_2 --student wrn16_1 \\
        --batch_size 256 --lr 0.2 --kd_steps 400 --ep_steps 400 --adv 1.1 --bn 10.0 --oh 0.4 --T 20 \\
        --bn_mmt 0.9 --warmup 20 --epochs 220 --g_steps 5 --lr_z 0.01 --lr_g 3e-3 --is_maml 1 --reset_l0 1
    torchrun --nproc_per_node=8 datafree_kd.py --method fast_meta_imagenet ...   # several GPUs, see docs/imagenet-and-torchrun.md
"""
import argparse
import os
import sys
from types import SimpleNamespace

import torch
from torchvision.utils import make_grid, save_image

import registry
from datafree import distributed
from datafree import run_state
from datafree.checkpoint import (RUN_CHECKPOINT_ADVICE, load_checkpoint, missing_entries,
                                 remove_stale_temporaries)
from datafree.engine import EpochResult, TrainingJob, distill_steps, fit, now, restore_training
from datafree.errors import CheckpointError, NonFiniteError, UsageError
from datafree.guard import MODES as GUARD_MODES
from datafree.interrupt import StopSignals, finished_epochs, resume_hint
from datafree.pool import STORAGES as POOL_STORAGES
from datafree.precision import AUTO, MODES as PRECISIONS, Precision, resolve_mode
from datafree.synthesis import SYNTHESIZERS, PoolSynthesizer, SynthesisConfig, require_task_support
from datafree.synthesis.base import check_original_behaviours
from datafree.synthesis.flags import METHOD_FLAGS, SYNTHESIS, TERMS, add_method_flags
from datafree.utils.cli import (add_data_args, add_distillation_args, add_optim_args, add_run_args, evaluate_checkpoint,
                                load_teacher, parse_with_config, prepare_run, run_cli, run_summary_info)

def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {TERMS: parser.add_argument_group(TERMS)}
    groups[TERMS].add_argument("--method", default=None, choices=sorted(SYNTHESIZERS),
                               help="synthesizer (required, here or in --config)")
    add_method_flags(parser, groups)   # each method's flags, as its module declares them
    synth = groups[SYNTHESIS]
    synth.add_argument("--synthesis_channels", default=None, type=int, metavar="C",
                       help="channels to synthesise (default: the data's); 1 for grayscale data stored as identical "
                            "channels (digits, mnist): one channel is made and repeated, so synthetic images are "
                            "gray like the data")
    synth.add_argument("--synthesis_batch_size", default=None, type=int,
                       help="images per synthesis call (default: --batch_size)")
    synth.add_argument("--img_size", default=None, type=int,
                       help="side of the synthetic images (default: the width of the test images; "
                            "set it for segmentation, e.g. 128 for NYUv2)")
    synth.add_argument("--save_dir", default="run/synthesis", help="folder for --save_pool")
    synth.add_argument("--save_pool", action="store_true",
                       help="write the synthetic pool as PNG files into --save_dir at the end (every process its "
                            "share, in parallel)")
    synth.add_argument("--pool_storage", default="auto", choices=("auto", *POOL_STORAGES),
                       help="where each process keeps its synthetic pool: memory (a copy in device memory; "
                            "fastest), disk (only the run folder's pool shard, read batch by batch), or auto "
                            "(memory unless the pool this run makes per process would exceed 2 GiB); either way "
                            "new images are appended to OUTPUT/pool/ and checkpoints only refer to them")

    kd = add_distillation_args(parser, registry.model_names(), teacher="wrn40_2", student="wrn16_1", T=1.0)
    kd.add_argument("--kd_steps", default=400, type=int, help="KD steps after each synthesis call")
    kd.add_argument("--ep_steps", default=400, type=int, help="KD steps per epoch")
    kd.add_argument("--warmup", default=0, type=int, help="epochs of synthesis only, before KD starts")
    add_data_args(parser, registry.dataset_names(), default_dataset="cifar100",
                  purpose="whose test split evaluates the student (its training data is not used)")
    optim = add_optim_args(parser, lr=0.1, epochs=200, batch_size=128, schedule="cosine to 2e-4 over the KD epochs")
    optim.add_argument("--lr_decay_milestones", default="", metavar="E1,E2,...",
                       help="step schedule instead of cosine: lr x 0.1 at these KD epochs (counted after warmup)")

    run = add_run_args(parser, print_freq="log the KD loss every N rounds of synthesis and KD steps "
                                          "(default: 0, once per epoch)")
    run.add_argument("--fp16", action="store_true",
                     help="mixed precision: float16 + gradient scaling on CUDA, bfloat16 on the CPU (= --precision fp16)")
    run.add_argument("--precision", default=None, choices=(*PRECISIONS, AUTO),
                     help="fp32 (default), fp16 (as --fp16), bf16 (bfloat16 autocast on any device, no scaler), or "
                          "auto: bf16 where the device computes bfloat16 natively (a CPU with AVX512-BF16/AMX, a "
                          "recent GPU), else fp32 (the digits presets use auto; --precision fp32 turns it off)")
    run.add_argument("--channels_last", action="store_true", help="channels-last memory format for the networks")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the student and teacher of the KD steps (synthesis stays eager: its "
                          "generator is cloned every call); the first epoch pays the compilation")
    run.add_argument("--on_nonfinite", default="stop", choices=GUARD_MODES,
                     help="a NaN or inf KD or synthesis loss: stop the run at once (exit status 3, last.pth stays the "
                          "last good checkpoint), or skip that step and count it in the log (a run whose steps are "
                          "all skipped for an epoch still stops); see docs/faults-and-recovery.md")
    return parser


def parse_args(argv=None):
    """Parse flags; values from --config become defaults that the command line overrides."""
    parser = build_parser()
    args = parse_with_config(parser, argv)
    check_args(args, parser)
    return args


def check_args(args, parser, normalization=None):
    """Stop with one sentence on an impossible flag combination. ``normalization`` ({'mean', 'std'})
    is the data's, by default --dataset's registered one."""
    if args.method is None:
        raise UsageError(f"--method is required; choose one of: {', '.join(sorted(SYNTHESIZERS))}")
    if args.method not in SYNTHESIZERS:
        raise UsageError(f"unknown method '{args.method}'; choose one of: {', '.join(sorted(SYNTHESIZERS))}")
    used = SYNTHESIZERS[args.method].flags
    for flag in METHOD_FLAGS:
        if flag not in used and getattr(args, flag) != parser.get_default(flag):
            users = sorted(name for name, cls in SYNTHESIZERS.items() if flag in cls.flags)
            where = f"it applies to: {', '.join(users)}" if users else "no registered method uses it yet"
            raise UsageError(f"--{flag} is not used by method '{args.method}' ({where}); drop it")
    SYNTHESIZERS[args.method].check_args(args)
    check_original_behaviours(getattr(args, "as_original", ""), args.method, SYNTHESIZERS[args.method])
    if args.kd_steps <= 0 or args.ep_steps < args.kd_steps:
        raise UsageError(f"--kd_steps ({args.kd_steps}) must be positive and at most --ep_steps ({args.ep_steps})")
    if args.save_pool and not issubclass(SYNTHESIZERS[args.method], PoolSynthesizer):
        raise UsageError(f"--save_pool needs a synthetic pool, but method '{args.method}' samples its generator instead")
    if not 0 <= args.warmup < args.epochs:
        raise UsageError(f"--warmup ({args.warmup}) must be at least 0 and below --epochs ({args.epochs})")
    if args.fp16 and args.precision == AUTO:   # an explicit --fp16 beats a preset's auto
        args.precision = "fp16"
    if args.fp16 and args.precision not in (None, "fp16"):
        raise UsageError(f"--fp16 means --precision fp16, which contradicts --precision {args.precision}; drop one")
    args.precision = args.precision or ("fp16" if args.fp16 else "fp32")
    milestones(args)
    check_synthesis_channels(args, normalization or registry.NORMALIZE_DICT[args.dataset])
    if distributed.launched_by_torchrun() and not SYNTHESIZERS[args.method].distributed_ready:
        ready = sorted(name for name, cls in SYNTHESIZERS.items() if cls.distributed_ready)
        raise UsageError(f"method '{args.method}' cannot run under torchrun yet (its generator would drift apart "
                         f"between the processes); run it in one process, or use one of: {', '.join(ready)}")


def check_synthesis_channels(args, stats):
    """--synthesis_channels is the data's channel count (that of ``stats['mean']``), or 1 where every
    channel has the same statistics."""
    if args.synthesis_channels is None:
        return
    data_channels = len(stats["mean"])
    if args.synthesis_channels not in (1, data_channels):
        raise UsageError(f"--synthesis_channels {args.synthesis_channels} must be 1 (grayscale synthesis) or the "
                         f"channel count of {args.dataset} ({data_channels})")
    if args.synthesis_channels == 1 and (len(set(stats["mean"])) > 1 or len(set(stats["std"])) > 1):
        raise UsageError(f"--synthesis_channels 1 is for grayscale data whose channels share one mean and std, "
                         f"but {args.dataset}'s differ (mean {stats['mean']}); drop the flag to synthesise "
                         f"all {data_channels} channels")
    if args.synthesis_channels == data_channels:
        args.synthesis_channels = None     # one spelling of the default, so a resume compares like with like


def milestones(args):
    """The epochs of --lr_decay_milestones as a list of ints ([] for the cosine schedule)."""
    try:
        values = [int(m) for m in str(args.lr_decay_milestones).split(",") if m.strip()]
    except ValueError:
        raise UsageError(f"--lr_decay_milestones '{args.lr_decay_milestones}' must be comma-separated "
                         f"epochs, e.g. 120,150,180") from None
    if values != sorted(values) or any(v <= 0 for v in values):
        raise UsageError(f"--lr_decay_milestones '{args.lr_decay_milestones}' must be increasing positive epochs")
    return values


def build_scheduler(args, optimizer):
    """Cosine over the KD epochs down to 2e-4, or x0.1 steps at --lr_decay_milestones."""
    steps = milestones(args)
    if steps:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=0.1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs - args.warmup, eta_min=2e-4)


def synthesizer_config(args, num_classes, image_shape, train_size=None, task=None, normalization=None,
                       class_names=None):
    """The synthesizer's view of the run; batch sizes are this process's share under torchrun.
    The pool's shard is OUTPUT/pool/rank{k}.u8; ``pool_storage`` is resolved from ``auto``.
    ``normalization`` ({'mean', 'std'}): the data's, by default --dataset's registered one;
    ``class_names``: the classes' names in label order, where known."""
    img_size = args.img_size or image_shape[-1]
    batch_size = distributed.per_process(args.batch_size)
    synthesis_batch_size = distributed.per_process(args.synthesis_batch_size, "--synthesis_batch_size")
    projected = run_state.projected_pool_bytes(args.epochs, args.ep_steps // args.kd_steps,
                                               synthesis_batch_size or batch_size, (image_shape[0], img_size, img_size))
    if args.output:
        pool = {"pool_storage": run_state.choose_pool_storage(args.pool_storage, projected),
                "pool_root": args.output, "pool_file": run_state.pool_file(distributed.get_rank())}
    else:   # library use without a run folder: the pool stays in memory and is not persisted
        pool = {"pool_storage": "memory", "pool_root": None, "pool_file": None}
    return SynthesisConfig.for_method(
        SYNTHESIZERS[args.method], args, num_classes=num_classes, nc=image_shape[0], img_size=img_size,
        **(normalization or registry.NORMALIZE_DICT[args.dataset]), task=task, train_size=train_size,
        class_names=class_names,
        teacher=args.teacher, batch_size=batch_size, synthesis_batch_size=synthesis_batch_size,
        synthesis_channels=args.synthesis_channels, T=args.T, precision=args.precision,
        on_nonfinite=args.on_nonfinite, epochs=args.epochs, warmup=args.warmup, kd_steps=args.kd_steps,
        ep_steps=args.ep_steps, **pool)


def load_data(args):
    """The task, class count and image shape of --dataset, with its test split (the training split
    is not read: only its registered size is)."""
    num_classes, train_set, val_set = registry.get_dataset(args.dataset, args.data_root, args.download)
    task = registry.get_task(args.dataset)
    require_task_support(args.method, task)
    return SimpleNamespace(task=task, num_classes=num_classes, val_set=val_set, image_shape=tuple(val_set[0][0].shape),
                           train_size=registry.train_size(args.dataset, train_set))


def build_synthesizer(args, data, student, device):
    """The frozen teacher, the --method synthesizer around it and the student, and its config."""
    teacher = load_teacher(registry.get_model(args.teacher, data.num_classes, task=data.task), args.teacher_ckpt,
                           args.dataset, args.teacher, device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    config = synthesizer_config(args, data.num_classes, data.image_shape, train_size=data.train_size, task=data.task,
                                class_names=registry.class_names(args.dataset))
    return teacher, make_synthesizer(args, teacher, student, config, device), config


def make_synthesizer(args, teacher, student, config, device):
    """The --method synthesizer around a frozen ``teacher`` and ``student`` (channels-last if asked)."""
    if args.channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    synthesizer = SYNTHESIZERS[args.method](teacher, student, config, device)
    if args.channels_last and hasattr(synthesizer, "generator"):
        synthesizer.generator.to(memory_format=torch.channels_last)
    return synthesizer


def student_training(args, student, device):
    """The KD steps' precision (autocast, scaler, non-finite guard), SGD optimiser and schedule."""
    precision = Precision(device, args.precision, on_nonfinite=args.on_nonfinite)
    optimizer = torch.optim.SGD(student.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                **precision.optimizer_options())
    return precision, optimizer, build_scheduler(args, optimizer)


def new_run_totals():
    """The running totals a data-free run checkpoints and reports."""
    return {"epoch": 0, "best_acc1": 0.0, "synthesis_seconds": 0.0, "kd_seconds": 0.0, "wall_seconds": 0.0,
            "synthesis_calls": 0, "kd_steps": 0}


def log_end(logger, task, run, output):
    hours = run["synthesis_seconds"] / 3600
    logger.info(f"Best {task.label}: {run['best_acc1']:.2f}  synthesis cost: {hours:.4f} h "
                f"({run['synthesis_seconds']:.1f} s)  KD: {run['kd_seconds']:.1f} s  "
                f"total wall: {run['wall_seconds']:.1f} s  (run folder: {output})")


# Flags a resume must keep: they shape the saved state (models, image size, the SSD-KD buffer)
# or what its counters mean (steps per round and per epoch, NAYER's rounds per epoch). The method is checked first.
RESUME_FIXED = ("dataset", "teacher", "student", "img_size", "synthesis_channels", "ssd_buffer_size", "kd_steps",
                "ep_steps", "ssd_kd_passes", "ssd_kd_batch", "ssd_sampling", "g_loops", "gwp_loops", "le_emb_size")
# Run totals that checkpoints of older versions lack (resumed as 0).
RUN_COUNTERS = ("synthesis_calls", "kd_steps")


def check_resume_settings(args, ckpt, path, data):
    """Stop with one sentence if ``ckpt`` (read from ``path``) cannot continue with these flags."""
    if "synthesizer" not in ckpt:
        raise CheckpointError(f"{path} is not a datafree_kd.py run checkpoint; resume from its last.pth")
    if ckpt.get("method") != args.method:
        raise CheckpointError(f"{path} was written by method '{ckpt.get('method')}', not '{args.method}'; resume "
                              f"with --method {ckpt.get('method')}, or start a new run with another --output")
    saved = ckpt.get("args") or {}
    for flag in RESUME_FIXED:
        if flag not in saved:      # a checkpoint of an older version
            continue
        before, now_value = saved[flag], getattr(args, flag)
        if flag == "img_size":     # left out: the data's width
            before, now_value = before or data.image_shape[-1], now_value or data.image_shape[-1]
        if before != now_value:
            before, now_value = ("left out" if v is None else v for v in (before, now_value))
            raise CheckpointError(f"{path} was written with --{flag} {before}; resume with the same setting "
                                  f"(it shapes the saved state; this run has {now_value}), or start a new run "
                                  f"with another --output")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with StopSignals() as stop:
        return run_datafree(args, argv, stop)


def run_datafree(args, argv, stop):
    """The run of ``main``; ``stop`` (StopSignals) tells it when SIGINT or SIGTERM asked it to end."""
    device, resume_path = prepare_run(args, f"datafree-{args.method}", f"{args.dataset}-{args.teacher}-{args.student}")
    args.precision = resolve_mode(args.precision, device, SYNTHESIZERS[args.method].bf16_in_auto)

    data = load_data(args)
    task, num_classes = data.task, data.num_classes
    val_loader = torch.utils.data.DataLoader(data.val_set, batch_size=max(args.batch_size, 256), shuffle=False,
                                             sampler=distributed.eval_sampler(data.val_set),
                                             num_workers=args.workers, pin_memory=device.type == "cuda",
                                             persistent_workers=args.workers > 0)   # not respawned every epoch
    student = registry.get_model(args.student, num_classes, task=task).to(device)
    if args.evaluate_only:
        return evaluate_checkpoint(student, resume_path, args.student, val_loader, device, task)
    ckpt = None
    if resume_path:    # read and checked before any model is built
        ckpt = load_checkpoint(resume_path, map_location=device, advice=RUN_CHECKPOINT_ADVICE)
        check_resume_settings(args, ckpt, resume_path, data)
    teacher, synthesizer, config = build_synthesizer(args, data, student, device)
    distributed.seed_per_rank(args.seed)          # models are built alike; now each rank its own stream
    kd_student, kd_teacher = distributed.wrap_ddp(student, device), teacher
    if args.compile:
        kd_student, kd_teacher = torch.compile(kd_student), torch.compile(teacher)
    precision, optimizer, scheduler = student_training(args, student, device)

    run = new_run_totals()
    resharded = progress = None
    if resume_path:
        restore_training(ckpt, resume_path, student, args.student, optimizer, scheduler)
        resharded = run_state.restore(ckpt, resume_path, synthesizer, args.seed, device)
        with missing_entries(resume_path):
            precision.load_state_dict(ckpt.get("precision"))
            run.update({k: ckpt.get(k, 0) if k in RUN_COUNTERS else ckpt[k] for k in run})
        progress = ckpt.get("progress")
    elif args.cmi_init:
        synthesizer.seed_pool(args.cmi_init)
    if args.start_epoch is not None and args.start_epoch != run["epoch"]:
        run["epoch"], progress = args.start_epoch, None
    leftovers = remove_leftovers(args.output) if distributed.is_main_process() else []

    logger = distributed.make_logger(args.output, f"datafree-{args.method}")
    try:
        logger.args(args)
        if leftovers:
            logger.info(f"removed temporary files of a killed run: {', '.join(leftovers)}")
        if resume_path:
            logger.info(f"resumed from {resume_path} at epoch {run['epoch']}{describe_progress(progress)} "
                        f"(best {task.label} {run['best_acc1']:.2f})")
            if resharded:
                logger.info(resharded)
        if hasattr(synthesizer, "pool"):
            logger.info(f"synthetic pool: {config.pool_storage} storage, shard {synthesizer.pool.path}")
        train(args, run, synthesizer, student, kd_teacher, optimizer, scheduler, precision, val_loader, device, logger,
              kd_student, stop=stop, resume=ResumeHint(argv, resume_path, progress), progress=progress)
        log_end(logger, task, run, args.output)
        if args.save_pool:
            save_pool(synthesizer.pool, args.save_dir, logger)
    finally:
        logger.close()
        if hasattr(synthesizer, "pool"):
            synthesizer.pool.close()
    return dict(run)


def remove_leftovers(run_dir):
    """The temporary files a killed process left in the run folder, removed (rank 0, at the start)."""
    return [os.path.join(sub, name) if sub else name for sub in ("", run_state.RANK_DIR)
            for name in remove_stale_temporaries(os.path.join(run_dir, sub))]


def save_pool(pool, folder, logger):
    """Write the pool as PNG files: every process its own images, in parallel, numbered after
    the images of the lower ranks."""
    sizes = distributed.all_gather_ints(len(pool))
    pool.save_png(folder, start=sum(sizes[:distributed.get_rank()]))
    distributed.barrier()
    logger.info(f"wrote {sum(sizes)} pool images to {folder}")


def new_progress():
    """Where the loop is inside an epoch: its plan (set when it starts), the round, whether the
    round's synthesis calls are done (and how many), its KD steps done, their summed loss, and the
    seconds and losses of the epoch so far. A save made mid-epoch (a stop signal) stores it, and
    the resumed run continues from it."""
    return {"plan": None, "round": 0, "synthesized": False, "calls_done": 0, "kd_done": 0, "kd_loss_sum": 0.0,
            "kd_taken": 0, "kd_loss": float("nan"), "seconds": 0.0, "phase": {"synthesis": 0.0, "kd": 0.0}, "losses": {}, "skipped": {}}


def describe_progress(progress):
    if not progress:
        return ""
    done = "its synthesis call and " if progress["synthesized"] else ""
    return f", round {progress['round'] + 1}, after {done}{progress['kd_done']} KD steps of it"


NOTHING_SAVED = "no checkpoint was written yet"


class ResumeHint:
    """What a stopped run tells the user: how to resume it, and which checkpoint is the last good one."""

    def __init__(self, argv, resume_path, progress):
        self.argv = argv
        self.saved = (f"the last good checkpoint is {resume_path} (as resumed{describe_progress(progress)})"
                      if resume_path else NOTHING_SAVED)

    def command(self):
        """The command that continues the run (the same one when nothing was saved yet)."""
        script = sys.argv[0] if os.path.basename(sys.argv[0]) == "datafree_kd.py" else "datafree_kd.py"
        return resume_hint(self.argv, script, resume=self.saved != NOTHING_SAVED)

    def saved_at(self, path, epochs_done, progress=None):
        point = f"epoch {epochs_done}{describe_progress(progress)}" if progress else finished_epochs(epochs_done)
        self.saved = f"the last good checkpoint is {path} ({point})"


class DataFreeJob(TrainingJob):
    """The epoch of a data-free run, for the one epoch loop (``datafree.engine.fit``).
    ``kd_student`` is the student as trained (DistributedDataParallel under torchrun, compiled
    with --compile), ``teacher`` the teacher of the KD steps. Each epoch runs the synthesizer's
    ``epoch_plan``: rounds of synthesis calls, then KD steps (none during warmup); Fast's
    ``ep_steps // kd_steps`` rounds of one call and ``kd_steps`` steps unless the method plans
    otherwise. ``progress`` is where a run resumed mid-epoch continues its first epoch.

    ``stop`` (StopSignals) is asked after every synthesis call and KD step: on a signal the job
    writes last.pth at that point (with the epoch's progress) and raises Interrupted. A
    non-finite loss (NonFiniteError) is completed with where it happened and what was saved.
    """

    loss_name = "kd_loss"

    def __init__(self, args, run, synthesizer, student, teacher, optimizer, scheduler, precision, device, logger,
                 kd_student=None, stop=None, resume=None, progress=None):
        self.args, self.run_totals, self.synthesizer = args, run, synthesizer
        self.student, self.teacher = student, teacher
        self.kd_student = student if kd_student is None else kd_student   # not `or`: a compiled module has no truth value
        self.optimizer, self.scheduler, self.precision = optimizer, scheduler, precision
        self.device, self.logger = device, logger
        self.stop, self.resume = stop, resume or ResumeHint([], None, None)
        self.guards = {"kd": precision.guard, "synthesis": synthesizer.precision.guard}
        self.progress, self.at, self.images = progress, None, None

    def _stop_signal(self):
        return self.stop.requested() if self.stop is not None else 0

    def trains(self, epoch):
        return epoch >= self.args.warmup

    def saved(self):
        return self.resume.saved

    def interrupted(self, stop, saved):
        return stop.interrupted(saved, resume=self.resume.command())

    def train_epoch(self, epoch):
        at = self.progress or new_progress()
        self.progress, self.at = None, at
        epoch_start = now(self.device) - at["seconds"]
        for guard in self.guards.values():
            guard.new_epoch()
        try:
            self.images = self.rounds_of(epoch, at, epoch_start)
            at["skipped"] = {name: at["skipped"].get(name, 0) + guard.end_epoch()
                             for name, guard in self.guards.items()}
        except NonFiniteError as err:
            err.context = self.nonfinite_context(epoch, at)
            raise
        losses = at["losses"]
        skipped = ({f"skipped_{name}_steps": n for name, n in at["skipped"].items()}
                   if self.args.on_nonfinite == "skip" else {})
        return EpochResult(at["kd_loss"], dict(at["phase"]), resumed_seconds=at["seconds"],
                           scalars={"train/": skipped, "synthesis/": losses}, measured=losses,
                           log="".join(f" {k}={v:.3f}" for k, v in losses.items())
                               + "".join(f" {k}={v}" for k, v in skipped.items()))

    def rounds_of(self, epoch, at, epoch_start):
        """The rounds of ``epoch`` from ``at`` on; returns the images of the last synthesis call
        (None if this process made none in the epoch). The epoch's plan (the synthesizer's
        ``epoch_plan``: a list of rounds of synthesis calls, then KD steps) is fixed when the epoch
        starts and kept in ``at``, so that a run resumed mid-epoch follows the same plan."""
        args, phase, images = self.args, at["phase"], None
        stop_check = (lambda: self._stop_signal() != 0) if self.stop is not None else None
        if at["plan"] is None:
            at["plan"] = [list(r) for r in self.synthesizer.epoch_plan(epoch)]
        plan = at["plan"]
        while at["round"] < len(plan):
            number, (calls, steps) = at["round"] + 1, plan[at["round"]]
            if not at["synthesized"] and at["calls_done"] == 0:
                at.update(kd_loss_sum=0.0, kd_taken=0)
            while not at["synthesized"] and at["calls_done"] < calls:
                tic = now(self.device)
                syn_out = self.synthesizer.synthesize()
                phase["synthesis"] += now(self.device) - tic
                images = syn_out["images"]
                self.run_totals["synthesis_calls"] += 1
                at.update(calls_done=at["calls_done"] + 1,
                          losses={k: float(v) for k, v in syn_out.items() if k.startswith("loss")})
                at["synthesized"] = at["calls_done"] == calls
                call = "the synthesis call" if calls == 1 else f"synthesis call {at['calls_done']} of {calls}"
                self.maybe_stop(epoch, at, epoch_start, f"{call} of round {number}")
            at["synthesized"] = True
            if epoch >= args.warmup and at["kd_done"] < steps:
                tic = now(self.device)
                kd = distill_steps(self.synthesizer, self.kd_student, self.teacher, self.optimizer, self.precision,
                                   steps - at["kd_done"], stop=stop_check)
                kd_seconds = now(self.device) - tic
                moved = kd.sample_seconds if self.synthesizer.sampling_is_synthesis else 0.0
                phase["synthesis"] += moved
                phase["kd"] += kd_seconds - moved
                self.run_totals["kd_steps"] += kd.done
                at.update(kd_done=at["kd_done"] + kd.done, kd_loss_sum=at["kd_loss_sum"] + kd.loss_sum,
                          kd_taken=at["kd_taken"] + kd.taken)
                at["kd_loss"] = at["kd_loss_sum"] / at["kd_taken"] if at["kd_taken"] else float("nan")
                if at["kd_done"] < steps:
                    self.maybe_stop(epoch, at, epoch_start, f"KD step {at['kd_done']} of round {number}")
                elif args.print_freq > 0 and number % args.print_freq == 0:
                    self.logger.info(f"[Train] epoch={epoch} round={number}/{len(plan)} kd_loss={at['kd_loss']:.4f}")
            at.update(round=number, synthesized=False, calls_done=0, kd_done=0)
            if at["round"] < len(plan):    # after the last round the epoch's end comes first
                self.maybe_stop(epoch, at, epoch_start, f"round {number} of {len(plan)}")
        return images

    def maybe_stop(self, epoch, at, epoch_start, point):
        """If a stop signal came: save this point of ``epoch`` in last.pth and raise Interrupted."""
        if not self._stop_signal():
            return
        at["seconds"] = now(self.device) - epoch_start
        at["skipped"] = {name: at["skipped"].get(name, 0) + guard.skipped for name, guard in self.guards.items()}
        tag = f"round{at['round']}-{'s' if at['synthesized'] else ''}kd{at['kd_done']}"
        self.persist(self.state(progress=at), is_best=False, progress=at, tag=tag)
        raise self.interrupted(self.stop, f"the run saved epoch {epoch} up to {point} in last.pth")

    def end_epoch(self, epoch, best, epoch_seconds):
        run, phase = self.run_totals, self.at["phase"]
        run["best_acc1"] = best
        run["synthesis_seconds"] += phase["synthesis"]
        run["kd_seconds"] += phase["kd"]
        run["epoch"] = epoch + 1
        run["wall_seconds"] += epoch_seconds
        if distributed.is_main_process() and self.images is not None:
            grid = make_grid(self.images[:64].float().cpu(), nrow=8)
            save_image(grid, os.path.join(self.args.output, "synthetic.png"))
            self.logger.writer.add_image("synthetic", grid, epoch)

    def checkpoint(self, epochs_done, best):
        return self.state()

    def state(self, progress=None):
        """The run's state for last.pth (``progress``: where in the next epoch, for a save mid-epoch)."""
        args, run = self.args, self.run_totals
        state = {"state_dict": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "precision": self.precision.state_dict(),
                 "arch": args.student, "num_classes": self.synthesizer.config.num_classes, "dataset": args.dataset,
                 "teacher": args.teacher, "method": args.method, "args": dict(vars(args)), **run}
        if progress is not None:
            state["progress"] = progress
        return state

    def persist(self, state, is_best, progress=None, tag=None):
        best = {k: state[k] for k in ("state_dict", "arch", "num_classes", "dataset", "teacher", "method", "epoch",
                                      "best_acc1", "args")} if is_best else None
        run_state.persist(self.synthesizer, self.args.output, self.run_totals["epoch"], state, is_best, best, tag)
        self.resume.saved_at(os.path.join(self.args.output, "last.pth"), self.run_totals["epoch"], progress)

    def totals(self):
        run = self.run_totals
        pool = getattr(self.synthesizer, "pool", None)
        stored = {} if pool is None else {"synthetic_images": sum(distributed.all_gather_ints(len(pool)))}
        return {"synthesis_seconds": run["synthesis_seconds"], "kd_seconds": run["kd_seconds"],
                "synthesis_calls": run["synthesis_calls"], "kd_steps": run["kd_steps"], **stored}

    def nonfinite_context(self, epoch, at):
        advice = "" if self.args.on_nonfinite == "skip" else ", or rerun it with --on_nonfinite skip to skip such steps"
        again = "start it again with" if self.resume.saved == NOTHING_SAVED else "resume from it with"
        rounds = len(at["plan"] or [None])    # the plan is made when the epoch's first round starts
        return (f" (epoch {epoch}, round {min(at['round'] + 1, rounds)} of {rounds}); the run stopped before it "
                f"reached a weight, the pool or a checkpoint, and {self.resume.saved}: {again} {self.resume.command()} "
                f"(lower learning rates or another --seed may avoid it){advice}")


def train(args, run, synthesizer, student, teacher, optimizer, scheduler, precision, val_loader, device, logger,
          kd_student=None, stop=None, resume=None, progress=None):
    """The data-free run from ``run['epoch']`` to ``args.epochs``: DataFreeJob in the one epoch
    loop. ``run`` (new_run_totals) is updated in place; returns the best of the task's metric."""
    job = DataFreeJob(args, run, synthesizer, student, teacher, optimizer, scheduler, precision, device, logger,
                      kd_student=kd_student, stop=stop, resume=resume, progress=progress)
    return fit(job, student, optimizer, scheduler, val_loader, device, epochs=args.epochs, run_dir=args.output,
               logger=logger, start_epoch=run["epoch"], best_acc1=run["best_acc1"],
               summary_info=run_summary_info("datafree_kd", args, args.student), task=synthesizer.task, stop=stop)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
