"""A data-free run, assembled from its flags: ``build_run`` is shared by ``datafree_kd.py`` (``datafree-kd``)
and ``datafree.distill``.

``build_run(args, data, device)`` makes the frozen teacher, the student, the ``--method`` synthesizer, the
student's optimiser, schedule and precision, and restores a checkpoint when resuming; it returns a
``DataFreeRun``, whose ``execute`` trains it with the one epoch loop (``datafree.engine.fit`` over a
``DataFreeJob``). ``RunData`` says what the run distils on: a registered ``--dataset`` (``dataset_data``)
or what ``distill`` is given (a shape, a normalisation, a class count, optional evaluation data).
"""
import dataclasses
import os
from typing import Any, Optional

import torch

from datafree import distributed, registry, run_state
from datafree.checkpoint import RUN_CHECKPOINT_ADVICE, load_checkpoint, missing_entries, remove_stale_temporaries
from datafree.engine import DataFreeJob, Progress, RunTotals, fit, restore_training
from datafree.errors import CheckpointError, UsageError
from datafree.interrupt import ResumeHint, describe_progress
from datafree.precision import Precision
from datafree.synthesis import SYNTHESIZERS, SynthesisConfig, require_task_support
from datafree.synthesis.flags import flags_not_read
from datafree.utils.cli import load_teacher, run_summary_info

# Flags a resume must keep: they shape the saved state (models, image size, the SSD-KD buffer) or what its
# counters mean (steps per round and per epoch, NAYER's rounds per epoch). The method is checked first; a
# method flag that the run's method does not use shapes nothing (its default may change between versions).
RESUME_FIXED = ("dataset", "teacher", "student", "img_size", "synthesis_channels", "ssd_buffer_size", "kd_steps",
                "ep_steps", "ssd_kd_passes", "ssd_kd_batch", "ssd_sampling", "g_loops", "gwp_loops", "le_emb_size")


@dataclasses.dataclass
class RunData:
    """What a run distils on: the task, its classes and image shape (C, H, W), the normalisation
    ({'mean', 'std'}), and, where known, the training split's size, the class names and the batches
    the student is evaluated on each epoch."""
    task: Any
    num_classes: int
    image_shape: tuple
    normalization: dict
    train_size: Optional[int] = None
    class_names: Optional[tuple] = None
    val_loader: Any = None


def dataset_data(args, device):
    """RunData of the registered --dataset: its test split evaluates the student (the training split is
    not read: only its registered size is)."""
    num_classes, train_set, val_set = registry.get_dataset(args.dataset, args.data_root, args.download)
    task = registry.get_task(args.dataset)
    require_task_support(args.method, task)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=max(args.batch_size, 256), shuffle=False,
                                             sampler=distributed.eval_sampler(val_set),
                                             num_workers=args.workers, pin_memory=device.type == "cuda",
                                             persistent_workers=args.workers > 0)   # not respawned every epoch
    return RunData(task, num_classes, tuple(val_set[0][0].shape), registry.NORMALIZE_DICT[args.dataset],
                   registry.train_size(args.dataset, train_set), registry.class_names(args.dataset), val_loader)


@dataclasses.dataclass
class DataFreeRun:
    """Everything a data-free run trains with; ``execute`` runs it from ``totals.epoch`` to ``args.epochs``."""
    args: Any
    data: RunData
    device: torch.device
    teacher: torch.nn.Module
    student: torch.nn.Module
    synthesizer: Any
    precision: Precision
    optimizer: torch.optim.Optimizer
    scheduler: Any
    totals: RunTotals
    kd_student: Any            # the student as the KD steps train it (DDP under torchrun, compiled with --compile)
    kd_teacher: Any
    resume_path: Optional[str] = None
    progress: Optional[Progress] = None
    notes: list = dataclasses.field(default_factory=list)    # what the log says before the first epoch

    def execute(self, logger, argv=(), stop=None):
        """Train every epoch left, log the run's end; returns the totals (a dict). Closes the pool."""
        args = self.args
        try:
            logger.args(args)
            for note in self.notes:
                logger.info(note)
            job = DataFreeJob(self, logger, stop=stop, resume=ResumeHint(list(argv), self.resume_path, self.progress),
                              progress=self.progress)
            fit(job, self.student, self.optimizer, self.scheduler, self.data.val_loader, self.device,
                epochs=args.epochs, run_dir=args.output, logger=logger, start_epoch=self.totals.epoch,
                best_acc1=self.totals.best_acc1, summary_info=self.summary_info(), task=self.data.task, stop=stop)
            log_end(logger, self.data.task, self.totals, args.output)
            if getattr(args, "save_pool", False):
                save_pool(self.synthesizer.pool, args.save_dir, logger)
        finally:
            logger.close()
            if hasattr(self.synthesizer, "pool"):
                self.synthesizer.pool.close()
        return self.totals.state()

    def summary_info(self):
        """The run's static facts for summary.json, with the images per KD step over all processes (a
        method may draw fewer than --batch_size: SSD-KD); every process draws the same share."""
        return {**run_summary_info("datafree_kd", self.args, self.args.student),
                "kd_batch": self.synthesizer.sample_batch_size * distributed.get_world_size()}


def build_run(args, data, device, teacher=None, student=None, resume_path=None):
    """The run of ``args`` on ``data``: the teacher (``teacher``, or --teacher loaded from --teacher_ckpt),
    the student (``student``, or a new --student), the synthesizer, the student's training, and, with
    ``resume_path``, the state of that checkpoint (checked against the flags before anything is built)."""
    if student is None:
        student = registry.get_model(args.student, data.num_classes, task=data.task).to(device)
    ckpt = None
    if resume_path:
        ckpt = load_checkpoint(resume_path, map_location=device, advice=RUN_CHECKPOINT_ADVICE)
        check_resume_settings(args, ckpt, resume_path, data)
    if teacher is None:
        teacher = frozen_teacher(args, data, device)
    config = synthesizer_config(args, data)
    synthesizer = make_synthesizer(args, teacher, student, config, device)
    distributed.seed_per_rank(args.seed)          # models are built alike; now each rank its own stream
    kd_student, kd_teacher = distributed.wrap_ddp(student, device), teacher
    if args.compile:
        kd_student, kd_teacher = torch.compile(kd_student), torch.compile(teacher)
    precision, optimizer, scheduler = student_training(args, student, device)
    run = DataFreeRun(args, data, device, teacher, student, synthesizer, precision, optimizer, scheduler, RunTotals(),
                      kd_student, kd_teacher, resume_path)
    if resume_path:
        restore_training(ckpt, resume_path, student, args.student, optimizer, scheduler)
        resharded = run_state.restore(ckpt, resume_path, synthesizer, args.seed, device)
        with missing_entries(resume_path):
            precision.load_state_dict(ckpt.get("precision"))
            run.totals.restore(ckpt)
        run.progress = Progress.from_state(ckpt.get("progress"))
        run.notes.append(f"resumed from {resume_path} at epoch {run.totals.epoch}{describe_progress(run.progress)} "
                         f"(best {data.task.label} {run.totals.best_acc1:.2f})")
        if resharded:
            run.notes.append(resharded)
    elif getattr(args, "cmi_init", None):
        synthesizer.seed_pool(args.cmi_init)
    if args.start_epoch is not None and args.start_epoch != run.totals.epoch:
        run.totals.epoch, run.progress = args.start_epoch, None
    if args.output and distributed.is_main_process():
        leftovers = remove_leftovers(args.output)
        if leftovers:
            run.notes.insert(0, f"removed temporary files of a killed run: {', '.join(leftovers)}")
    if args.warmup >= args.epochs:
        run.notes.append(f"--warmup {args.warmup} covers all {args.epochs} epoch(s): the run only synthesises, and no "
                         f"KD step trains the student (give more --epochs to distil)")
    if hasattr(synthesizer, "pool") and args.output:
        run.notes.append(f"synthetic pool: {config.pool_storage} storage, shard {synthesizer.pool.path}")
    return run


def frozen_teacher(args, data, device):
    """--teacher with the weights of --teacher_ckpt, in eval mode, its parameters frozen."""
    teacher = load_teacher(registry.get_model(args.teacher, data.num_classes, task=data.task), args.teacher_ckpt,
                           args.dataset, args.teacher, device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def registered_data(args, image_shape, task=None, num_classes=None, train_size=None):
    """RunData of --dataset's record for synthesizers built without its test split (benchmarks, tests)."""
    return RunData(task, num_classes or registry.DATASET_NUM_CLASSES[args.dataset], tuple(image_shape),
                   registry.NORMALIZE_DICT[args.dataset], train_size, registry.class_names(args.dataset))


def synthesizer_config(args, data):
    """The synthesizer's view of the run; batch sizes are this process's share under torchrun.
    The pool's shard is OUTPUT/pool/rank{k}.u8; ``pool_storage`` is resolved from ``auto``."""
    image_shape = data.image_shape
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
        SYNTHESIZERS[args.method], args, num_classes=data.num_classes, nc=image_shape[0], img_size=img_size,
        **data.normalization, task=data.task, train_size=data.train_size, class_names=data.class_names,
        teacher=args.teacher, batch_size=batch_size, synthesis_batch_size=synthesis_batch_size,
        synthesis_channels=args.synthesis_channels, T=args.T, precision=args.precision,
        on_nonfinite=args.on_nonfinite, epochs=args.epochs, warmup=args.warmup, kd_steps=args.kd_steps,
        ep_steps=args.ep_steps, **pool)


def make_synthesizer(args, teacher, student, config, device):
    """The --method synthesizer around a frozen ``teacher`` and ``student`` (channels-last if asked)."""
    if args.channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    synthesizer = SYNTHESIZERS[args.method](teacher, student, config, device)
    if args.channels_last and hasattr(synthesizer, "generator"):
        synthesizer.generator.to(memory_format=torch.channels_last)
    return synthesizer


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
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs - args.warmup), eta_min=2e-4)


def student_training(args, student, device):
    """The KD steps' precision (autocast, scaler, non-finite guard), SGD optimiser and schedule."""
    precision = Precision(device, args.precision, on_nonfinite=args.on_nonfinite)
    optimizer = torch.optim.SGD(student.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                **precision.optimizer_options())
    return precision, optimizer, build_scheduler(args, optimizer)


def check_resume_settings(args, ckpt, path, data):
    """Stop with one sentence if ``ckpt`` (read from ``path``) cannot continue with these flags."""
    if "synthesizer" not in ckpt:
        raise CheckpointError(f"{path} is not a datafree_kd.py run checkpoint; resume from its last.pth")
    if ckpt.get("method") != args.method:
        raise CheckpointError(f"{path} was written by method '{ckpt.get('method')}', not '{args.method}'; resume "
                              f"with --method {ckpt.get('method')}, or start a new run with another --output")
    saved = ckpt.get("args") or {}
    ignored = flags_not_read(SYNTHESIZERS[args.method].flags)
    for flag in RESUME_FIXED:
        if flag not in saved or flag in ignored:      # a checkpoint of an older version; another method's flag
            continue
        before, now_value = saved[flag], getattr(args, flag)
        if flag == "img_size":     # left out: the data's width
            before, now_value = before or data.image_shape[-1], now_value or data.image_shape[-1]
        if before != now_value:
            before, now_value = ("left out" if v is None else v for v in (before, now_value))
            raise CheckpointError(f"{path} was written with --{flag} {before}; resume with the same setting "
                                  f"(it shapes the saved state; this run has {now_value}), or start a new run "
                                  f"with another --output")


def log_end(logger, task, totals, output):
    hours = totals.synthesis_seconds / 3600
    logger.info(f"Best {task.label}: {totals.best_acc1:.2f}  synthesis cost: {hours:.4f} h "
                f"({totals.synthesis_seconds:.1f} s)  KD: {totals.kd_seconds:.1f} s  "
                f"total wall: {totals.wall_seconds:.1f} s  (run folder: {output})")


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
