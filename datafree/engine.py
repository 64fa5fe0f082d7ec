"""Training and evaluation loops shared by train_scratch.py, vanilla_kd.py and datafree_kd.py.

``train_one_epoch`` and ``evaluate`` know nothing of the command line; ``fit`` is the one
epoch loop of every entry script: a ``TrainingJob`` trains each epoch (``SupervisedJob``: a
pass over a loader; ``DataFreeJob``: rounds of synthesis calls and KD steps, ``distill_steps``), and ``fit``
evaluates, steps the schedule, keeps the best, checkpoints (``last`` every epoch, ``best``
when improved), records summary.json and logs. What is measured comes from the task object (datafree/tasks.py):
top-1/top-5 accuracy for classification, mIoU / pixel accuracy / per-class IoU for
segmentation; ``best_acc1`` in checkpoints holds the task's primary number.
"""
import contextlib
import dataclasses
import os
import resource
import time
from typing import NamedTuple, Optional

import torch
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from datafree import distributed, run_state
from datafree.checkpoint import RUN_CHECKPOINT_ADVICE, load_checkpoint, put_weights, record_epoch, save_checkpoint
from datafree.errors import CheckpointError, NonFiniteError
from datafree.interrupt import NOTHING_SAVED, ResumeHint, finished_epochs
from datafree.precision import Precision
from datafree.tasks import Classification
from datafree.utils.misc import rng_state, set_rng_state


@torch.no_grad()
def evaluate(model, loader, device, task=None, reduce_fn=None):
    """The task's metrics of ``model`` over ``loader`` (default task: classification, giving
    top-1 / top-5 accuracy (%) and mean cross-entropy).

    ``reduce_fn(tensor)`` sums the metric's counts across processes before the numbers are
    computed; by default, under torchrun, over the ranks (each rank saw its shard of the loader).
    """
    task = task or Classification(num_classes=0)
    was_training = model.training
    model.eval()
    metric = task.metric(device)
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        metric.update(model(images), targets)
    metric.reduce(reduce_fn or distributed.all_reduce_tensor)
    model.train(was_training)
    return metric.compute()


def train_one_epoch(model, loader, optimizer, device, loss_fn, epoch=0, logger=None, print_freq=0, stop=None,
                    precision=None):
    """One pass over ``loader``. ``loss_fn(images, targets) -> (loss, logits)``; ``stop()``, if
    given, is asked after every step and ends the pass early when it says yes. ``precision``
    (datafree.precision.Precision, default fp32) runs ``loss_fn`` under its autocast and steps
    through its scaler.

    Returns the mean loss, the top-1 training accuracy (%) against the loader's labels
    (meaningless for unlabeled transfer sets, whose labels are -1) and whether it was stopped.
    """
    model.train()
    precision = precision or Precision(device, "fp32")
    loss_sum = correct = count = samples = 0
    stopped = False
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if distributed.is_main_process() else True)
    for step, (images, targets) in enumerate(bar):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with precision.autocast():
            loss, logits = loss_fn(images, targets)
        optimizer.zero_grad(set_to_none=True)
        if precision.backward(loss):
            precision.step(optimizer)

        n = images.shape[0]
        loss_sum += loss.item() * n
        samples += n
        correct += (logits.argmax(1) == targets).sum().item()
        count += targets.numel()   # samples, or pixels for segmentation
        bar.set_postfix(loss=f"{loss_sum / samples:.4f}")
        if logger is not None and print_freq > 0 and step % print_freq == 0:
            logger.info(f"[Train] epoch={epoch} iter={step}/{len(loader)} loss={loss_sum / samples:.4f}")
        stopped = stop is not None and stop()
        if stopped:
            break
    return {"loss": loss_sum / max(samples, 1), "acc1": 100.0 * correct / max(count, 1), "stopped": stopped}


def resume_training(path, model, arch, optimizer, scheduler, device):
    """Restore model, optimiser, scheduler and random state; return the checkpoint dict."""
    ckpt = load_checkpoint(path, map_location=device, advice=RUN_CHECKPOINT_ADVICE)
    return restore_training(ckpt, path, model, arch, optimizer, scheduler)


def restore_training(ckpt, path, model, arch, optimizer, scheduler):
    """``resume_training`` for a checkpoint dict already read from ``path``."""
    put_weights(model, ckpt, path, arch)
    if "optimizer" not in ckpt or "scheduler" not in ckpt:
        raise CheckpointError(f"{path} holds weights only, not a training state; "
                              f"resume from a run's last.pth")
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])
    return ckpt


class EpochResult(NamedTuple):
    """What a job's ``train_epoch`` reports to ``fit``.

    ``loss``: the epoch's mean training loss, logged as the job's ``loss_name`` (None when no step was
    taken, a data-free warm-up epoch: logged as ``none``, never as a number); ``phase``:
    seconds per part of the epoch (``train``, or ``synthesis`` and ``kd``); ``resumed_seconds``:
    what the epoch had run before a resume mid-epoch; ``scalars``: more TensorBoard scalars by
    prefix (``{"synthesis/": {...}}``); ``measured``: more figures for summary.json's history
    entry; ``log``: more text for the epoch's log line."""
    loss: Optional[float]
    phase: dict
    resumed_seconds: float = 0.0
    scalars: dict = {}
    measured: dict = {}
    log: str = ""


class TrainingJob:
    """What ``fit`` trains: one entry script's epoch, and what its checkpoints hold.

    Subclasses give ``train_epoch`` and ``checkpoint``; the rest has defaults for a supervised
    run (every epoch trains the model and steps the schedule; rank 0 writes last/best.pth)."""

    loss_name = "train_loss"

    def train_epoch(self, epoch):
        """Train ``epoch``; return an EpochResult. On a stop signal mid-epoch, raise Interrupted."""
        raise NotImplementedError

    def trains(self, epoch):
        """Whether ``epoch`` changes the evaluated model and steps the schedule (data-free warm-up
        epochs only synthesise: their evaluation is reused and the schedule waits)."""
        return True

    def end_epoch(self, epoch, best, epoch_seconds):
        """Called after the evaluation of ``epoch``, before its checkpoint (running totals)."""

    def checkpoint(self, epochs_done, best):
        """The state ``last.pth`` holds after ``epochs_done`` epochs."""
        raise NotImplementedError

    def persist(self, state, is_best):
        """Write ``state`` as last.pth (and best.pth when ``is_best``); every rank calls it."""
        if distributed.is_main_process():
            save_checkpoint(state, self.run_dir, is_best)

    def totals(self):
        """Running totals for summary.json (every rank calls it: a total may need a collective)."""
        return {}

    def saved(self):
        """What last.pth holds now, for a stop message."""
        return "no checkpoint was written yet"

    def interrupted(self, stop, saved):
        """The Interrupted to raise on a stop signal, ``saved`` saying what last.pth holds."""
        return stop.interrupted(saved)


def fit(job, model, optimizer, scheduler, val_loader, device, *, epochs, run_dir, logger, start_epoch=0,
        best_acc1=0.0, summary_info=None, task=None, stop=None):
    """The epoch loop of every entry script: from ``start_epoch`` to ``epochs``, the job trains an
    epoch (``job.train_epoch``), then the loop evaluates ``model``, steps the schedule, keeps the
    best, checkpoints (``job.checkpoint`` / ``job.persist``), records summary.json and logs.

    ``stop`` (datafree.interrupt.StopSignals) is asked before the first epoch and after each
    epoch (the job asks it inside its epoch): on SIGINT or SIGTERM the run raises Interrupted
    with last.pth holding its finished epochs. Returns the best value of the task's primary
    metric (top-1 accuracy or mIoU, %).
    """
    task = task or Classification(num_classes=0)
    if stop is not None and stop.requested():
        raise job.interrupted(stop, f"it came before training started, so nothing new was written and {job.saved()}")
    stats = None
    clock = Clock(device)
    for epoch in range(start_epoch, epochs):
        tic, cpu_tic = clock.now(), process_cpu_seconds()
        result = job.train_epoch(epoch)
        phase = dict(result.phase)
        mark = clock.now()
        if stats is None or job.trains(epoch):
            stats = evaluate(model, val_loader, device, task)
        phase["eval"] = clock.now() - mark
        lr = optimizer.param_groups[0]["lr"]
        if job.trains(epoch):
            scheduler.step()

        mark = clock.now()
        score = stats[task.primary]
        is_best = score > best_acc1
        best_acc1 = max(best_acc1, score)
        logger.scalars(task.scalars(stats), epoch, "val/")
        measured_loss = {} if result.loss is None else {job.loss_name: result.loss}
        logger.scalars({**measured_loss, "lr": lr, **{f"{k}_seconds": v for k, v in phase.items()}}, epoch, "train/")
        for prefix, values in result.scalars.items():
            logger.scalars(values, epoch, prefix)
        epoch_seconds = clock.now() - tic + result.resumed_seconds
        job.end_epoch(epoch, best_acc1, epoch_seconds)
        phase["output"] = clock.now() - mark

        mark = clock.now()
        job.persist(job.checkpoint(epoch + 1, best_acc1), is_best)
        phase["persist"] = clock.now() - mark
        totals = job.totals()
        if distributed.is_main_process():
            record_epoch(run_dir, epoch=epoch, epochs=epochs, acc1=score, epoch_seconds=epoch_seconds,
                         epoch_cpu_seconds=process_cpu_seconds() - cpu_tic,
                         info=summary_info, measured={job.loss_name: result.loss, **result.measured,
                                                      "persist_seconds": phase["persist"],
                                                      "peak_rss_mb": peak_rss_mb()}, **totals)
        logger.info(f"[Eval] epoch={epoch} {task.describe(stats)} best={best_acc1:.2f} lr={lr:.4g} "
                    f"{job.loss_name}={'none' if result.loss is None else f'{result.loss:.4f}'}{result.log} | seconds: "
                    + " ".join(f"{k}={v:.2f}" for k, v in phase.items()))
        if stop is not None and epoch + 1 < epochs and stop.requested():
            raise job.interrupted(stop, f"the run saved its {finished_epochs(epoch + 1)} in last.pth")
    return best_acc1


class SupervisedJob(TrainingJob):
    """The epoch of train_scratch.py and vanilla_kd.py: one pass over ``train_loader`` with
    ``loss_fn(images, targets) -> (loss, logits)`` under ``precision`` (default fp32). Checkpoints hold the
    model, optimiser, schedule, scaler, random state, epoch and best, plus ``extra`` (arch, num_classes, args, ...)."""

    def __init__(self, model, train_loader, optimizer, scheduler, loss_fn, device, run_dir, logger, *, extra=None,
                 print_freq=0, stop=None, start_epoch=0, precision=None):
        self.model, self.train_loader, self.optimizer, self.scheduler = model, train_loader, optimizer, scheduler
        self.precision = precision or Precision(device, "fp32")
        self.loss_fn, self.device, self.run_dir, self.logger = loss_fn, device, run_dir, logger
        self.extra, self.print_freq, self.stop = extra or {}, print_freq, stop
        self.epochs_saved = start_epoch

    def train_epoch(self, epoch):
        clock = Clock(self.device)
        tic = clock.now()
        if hasattr(self.train_loader.sampler, "set_epoch"):  # DistributedSampler: a new shuffle each epoch
            self.train_loader.sampler.set_epoch(epoch)
        stop = self.stop
        stats = train_one_epoch(self.model, self.train_loader, self.optimizer, self.device, self.loss_fn, epoch,
                                self.logger, self.print_freq, stop=(lambda: stop.requested() != 0) if stop else None,
                                precision=self.precision)
        if stats["stopped"]:
            raise self.interrupted(stop, f"the run stopped in epoch {epoch}, whose steps are done again on resume; "
                                         f"last.pth holds {finished_epochs(self.epochs_saved)}")
        return EpochResult(stats["loss"], {"train": clock.now() - tic})

    def checkpoint(self, epochs_done, best):
        self.epochs_saved = epochs_done
        return {"state_dict": self.model.state_dict(), "epoch": epochs_done, "best_acc1": float(best),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "precision": self.precision.state_dict(), "rng": rng_state(), **self.extra}

    def saved(self):
        return f"last.pth holds {finished_epochs(self.epochs_saved)}" if self.epochs_saved else super().saved()


def peak_rss_mb():
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_cpu_seconds():
    """CPU seconds used so far by this process (all its threads) and its finished child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Clock:
    """The loops' one clock, for ``device``.

    ``now()`` reads the wall clock once the device's queued work is done (on a GPU a sync: the loops
    read it per epoch, per synthesis call and per round of KD steps, never per step). ``measure()``
    times repeated blocks without a sync per block, ``seconds()`` gives their total: on a GPU each
    block is bracketed by two CUDA events on the current stream and the total is read once (the
    events measure the stream's time between the two points, so asynchronous kernels are counted
    where they run); on the CPU it is the wall clock.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self._events = []
        self._seconds = 0.0

    def now(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def measure(self):
        if self.device.type != "cuda":
            tic = time.perf_counter()
            yield
            self._seconds += time.perf_counter() - tic
            return
        stream = torch.cuda.current_stream(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        yield
        end.record(stream)
        self._events.append((start, end))

    def seconds(self):
        """The total of the measured blocks so far (waits for the last block's work on a GPU)."""
        if self._events:
            self._events[-1][1].synchronize()
            self._seconds += sum(start.elapsed_time(end) for start, end in self._events) / 1000.0
            self._events = []
        return self._seconds


class KDSteps(NamedTuple):
    """What ``distill_steps`` did: the summed loss of the steps taken, how many were taken, how
    many were run (taken or skipped as non-finite), and the seconds spent in ``sample()``."""
    loss_sum: float
    taken: int
    done: int
    sample_seconds: float


def distill_steps(synthesizer, student, teacher, optimizer, precision, steps, stop=None):
    """Up to ``steps`` KD steps on batches from ``synthesizer.sample()`` with ``synthesizer.kd_loss``.

    ``stop()``, if given, is asked after every step; the loop ends early when it says yes.
    Returns a KDSteps; the caller decides whether sampling counts as synthesis time (it does
    for the generative methods, as in the original). After each step that was taken (not skipped
    as non-finite), ``synthesizer.after_step`` sees its batch and outputs (SSD-KD updates its
    buffer there). The loop itself never waits for the device: the loss is summed on it and read
    once at the end, where ``precision``'s non-finite guard also reports a non-finite loss it only
    recorded on the device (datafree/guard.py).
    """
    student.train()
    teacher.eval()
    device = next(student.parameters()).device
    loss_sum = torch.zeros((), device=device)
    sampling = Clock(device)
    taken = done = 0
    while done < steps:
        with sampling.measure():
            batch = synthesizer.sample()
        with precision.autocast():
            with torch.no_grad():
                teacher_logits = teacher(batch.images)
            student_logits = student(batch.images)
        loss = synthesizer.kd_loss(batch, student_logits, teacher_logits)
        optimizer.zero_grad(set_to_none=True)
        if precision.backward(loss):
            precision.step(optimizer)
            synthesizer.after_step(batch, student_logits.detach(), teacher_logits)
            loss_sum += loss.detach().float()
            taken += 1
        done += 1
        if stop is not None and stop():
            break
    precision.guard.flush()
    return KDSteps(loss_sum.item(), taken, done, sampling.seconds())


@dataclasses.dataclass
class Progress:
    """Where a data-free epoch is: its plan (the synthesizer's rounds, fixed when the epoch starts), the
    round, whether the round's synthesis calls are done (and how many), its KD steps done, their summed
    loss, and the seconds and losses of the epoch so far. A save made mid-epoch (a stop signal) stores it,
    and the resumed run continues from it."""
    plan: Optional[list] = None
    round: int = 0
    synthesized: bool = False
    calls_done: int = 0
    kd_done: int = 0
    kd_loss_sum: float = 0.0
    kd_taken: int = 0
    kd_loss: Optional[float] = None     # None until a KD step of the round was taken
    seconds: float = 0.0
    phase: dict = dataclasses.field(default_factory=lambda: {"synthesis": 0.0, "kd": 0.0})
    losses: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)

    def state(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state):
        return None if state is None else cls(**state)


@dataclasses.dataclass
class RunTotals:
    """The running totals a data-free run checkpoints (at the top level of last.pth) and reports."""
    epoch: int = 0
    best_acc1: float = 0.0
    synthesis_seconds: float = 0.0
    kd_seconds: float = 0.0
    wall_seconds: float = 0.0
    synthesis_calls: int = 0
    kd_steps: int = 0

    # Totals that checkpoints of older versions lack (resumed as 0).
    COUNTERS = ("synthesis_calls", "kd_steps")

    def state(self):
        return dataclasses.asdict(self)

    def restore(self, ckpt):
        for field in dataclasses.fields(self):
            setattr(self, field.name, ckpt.get(field.name, 0) if field.name in self.COUNTERS else ckpt[field.name])


class DataFreeJob(TrainingJob):
    """The epoch of a data-free run, for the one epoch loop (``fit``). ``run`` is the DataFreeRun
    (datafree/run.py: the models, synthesizer, optimiser, precision and totals); its ``kd_student``
    is the student as trained (DistributedDataParallel under torchrun, compiled with --compile).
    Each epoch runs the synthesizer's ``epoch_plan``: rounds of synthesis calls, then KD steps (none
    during warmup); Fast's ``ep_steps // kd_steps`` rounds of one call and ``kd_steps`` steps unless
    the method plans otherwise. ``progress`` is where a run resumed mid-epoch continues its first epoch.

    ``stop`` (StopSignals) is asked after every synthesis call and KD step: on a signal the job
    writes last.pth at that point (with the epoch's progress) and raises Interrupted. A
    non-finite loss (NonFiniteError) is completed with where it happened and what was saved.
    """

    loss_name = "kd_loss"

    def __init__(self, run, logger, stop=None, resume=None, progress=None):
        self.run, self.args, self.totals_ = run, run.args, run.totals
        self.synthesizer, self.logger = run.synthesizer, logger
        self.stop, self.resume = stop, resume or ResumeHint([], None, None)
        self.guards = {"kd": run.precision.guard, "synthesis": run.synthesizer.precision.guard}
        self.progress, self.at, self.images = progress, None, None
        self.clock = Clock(run.device)

    def _stop_signal(self):
        return self.stop.requested() if self.stop is not None else 0

    def trains(self, epoch):
        return epoch >= self.args.warmup

    def saved(self):
        return self.resume.saved

    def interrupted(self, stop, saved):
        return stop.interrupted(saved, resume=self.resume.command())

    def train_epoch(self, epoch):
        at = self.progress or Progress()
        self.progress, self.at = None, at
        epoch_start = self.clock.now() - at.seconds
        group = self.run.optimizer.param_groups[0]     # its scheduler set initial_lr when the run was built
        self.synthesizer.follow_student_lr(group["lr"] / group["initial_lr"])
        for guard in self.guards.values():
            guard.new_epoch()
        try:
            self.images = self.rounds_of(epoch, at, epoch_start)
            at.skipped = {name: at.skipped.get(name, 0) + guard.end_epoch() for name, guard in self.guards.items()}
        except NonFiniteError as err:
            err.context = self.nonfinite_context(epoch, at)
            raise
        losses = at.losses
        skipped = ({f"skipped_{name}_steps": n for name, n in at.skipped.items()}
                   if self.args.on_nonfinite == "skip" else {})
        return EpochResult(at.kd_loss, dict(at.phase), resumed_seconds=at.seconds,
                           scalars={"train/": skipped, "synthesis/": losses}, measured=losses,
                           log="".join(f" {k}={v:.3f}" for k, v in losses.items())
                               + "".join(f" {k}={v}" for k, v in skipped.items()))

    def rounds_of(self, epoch, at, epoch_start):
        """The rounds of ``epoch`` from ``at`` on; returns the images of the last synthesis call
        (None if this process made none in the epoch). The epoch's plan is fixed when the epoch
        starts and kept in ``at``, so that a run resumed mid-epoch follows the same plan."""
        run, args, phase, images = self.run, self.args, at.phase, None
        stop_check = (lambda: self._stop_signal() != 0) if self.stop is not None else None
        if at.plan is None:
            at.plan = [list(r) for r in self.synthesizer.epoch_plan(epoch)]
        plan = at.plan
        while at.round < len(plan):
            number, (calls, steps) = at.round + 1, plan[at.round]
            if not at.synthesized and at.calls_done == 0:
                at.kd_loss_sum, at.kd_taken = 0.0, 0
            while not at.synthesized and at.calls_done < calls:
                tic = self.clock.now()
                syn_out = self.synthesizer.synthesize()
                phase["synthesis"] += self.clock.now() - tic
                images = syn_out["images"]
                self.totals_.synthesis_calls += 1
                at.calls_done += 1
                at.losses = {k: float(v) for k, v in syn_out.items() if k.startswith("loss")}
                at.synthesized = at.calls_done == calls
                call = "the synthesis call" if calls == 1 else f"synthesis call {at.calls_done} of {calls}"
                self.maybe_stop(epoch, at, epoch_start, f"{call} of round {number}")
            at.synthesized = True
            if epoch >= args.warmup and at.kd_done < steps:
                tic = self.clock.now()
                kd = distill_steps(self.synthesizer, run.kd_student, run.kd_teacher, run.optimizer, run.precision,
                                   steps - at.kd_done, stop=stop_check)
                kd_seconds = self.clock.now() - tic
                moved = kd.sample_seconds if self.synthesizer.sampling_is_synthesis else 0.0
                phase["synthesis"] += moved
                phase["kd"] += kd_seconds - moved
                self.totals_.kd_steps += kd.done
                at.kd_done += kd.done
                at.kd_loss_sum += kd.loss_sum
                at.kd_taken += kd.taken
                at.kd_loss = at.kd_loss_sum / at.kd_taken if at.kd_taken else None
                if at.kd_done < steps:
                    self.maybe_stop(epoch, at, epoch_start, f"KD step {at.kd_done} of round {number}")
                elif args.print_freq > 0 and number % args.print_freq == 0:
                    loss = "none" if at.kd_loss is None else f"{at.kd_loss:.4f}"
                    self.logger.info(f"[Train] epoch={epoch} round={number}/{len(plan)} kd_loss={loss}")
            at.round, at.synthesized, at.calls_done, at.kd_done = number, False, 0, 0
            if at.round < len(plan):    # after the last round the epoch's end comes first
                self.maybe_stop(epoch, at, epoch_start, f"round {number} of {len(plan)}")
        return images

    def maybe_stop(self, epoch, at, epoch_start, point):
        """If a stop signal came: save this point of ``epoch`` in last.pth and raise Interrupted."""
        if not self._stop_signal():
            return
        at.seconds = self.clock.now() - epoch_start
        at.skipped = {name: at.skipped.get(name, 0) + guard.skipped for name, guard in self.guards.items()}
        tag = f"round{at.round}-{'s' if at.synthesized else ''}kd{at.kd_done}"
        self.persist(self.state(progress=at), is_best=False, progress=at, tag=tag)
        raise self.interrupted(self.stop, f"the run saved epoch {epoch} up to {point} in last.pth")

    def end_epoch(self, epoch, best, epoch_seconds):
        totals, phase = self.totals_, self.at.phase
        totals.best_acc1 = best
        totals.synthesis_seconds += phase["synthesis"]
        totals.kd_seconds += phase["kd"]
        totals.epoch = epoch + 1
        totals.wall_seconds += epoch_seconds
        if distributed.is_main_process() and self.images is not None:
            grid = make_grid(self.images[:64].float().cpu(), nrow=8)
            save_image(grid, os.path.join(self.args.output, "synthetic.png"))
            self.logger.writer.add_image("synthetic", grid, epoch)

    def checkpoint(self, epochs_done, best):
        return self.state()

    def state(self, progress=None):
        """The run's state for last.pth (``progress``: where in the next epoch, for a save mid-epoch)."""
        run, args = self.run, self.args
        state = {"state_dict": run.student.state_dict(), "optimizer": run.optimizer.state_dict(),
                 "scheduler": run.scheduler.state_dict(), "precision": run.precision.state_dict(),
                 "arch": args.student, "num_classes": self.synthesizer.config.num_classes, "dataset": args.dataset,
                 "teacher": args.teacher, "method": args.method, "args": dict(vars(args)), **self.totals_.state()}
        if progress is not None:
            state["progress"] = progress.state()
        return state

    def persist(self, state, is_best, progress=None, tag=None):
        best = {k: state[k] for k in ("state_dict", "arch", "num_classes", "dataset", "teacher", "method", "epoch",
                                      "best_acc1", "args")} if is_best else None
        run_state.persist(self.synthesizer, self.args.output, self.totals_.epoch, state, is_best, best, tag)
        self.resume.saved_at(os.path.join(self.args.output, "last.pth"), self.totals_.epoch, progress)

    def totals(self):
        totals = self.totals_
        pool = getattr(self.synthesizer, "pool", None)
        stored = {} if pool is None else {"synthetic_images": sum(distributed.all_gather_ints(len(pool)))}
        return {"synthesis_seconds": totals.synthesis_seconds, "kd_seconds": totals.kd_seconds,
                "synthesis_calls": totals.synthesis_calls, "kd_steps": totals.kd_steps, **stored}

    def nonfinite_context(self, epoch, at):
        advice = "" if self.args.on_nonfinite == "skip" else ", or rerun it with --on_nonfinite skip to skip such steps"
        again = "start it again with" if self.resume.saved == NOTHING_SAVED else "resume from it with"
        rounds = len(at.plan or [None])    # the plan is made when the epoch's first round starts
        return (f" (epoch {epoch}, round {min(at.round + 1, rounds)} of {rounds}); the run stopped before it "
                f"reached a weight, the pool or a checkpoint, and {self.resume.saved}: {again} {self.resume.command()} "
                f"(lower learning rates or another --seed may avoid it){advice}")
