"""Training and evaluation loops shared by train_scratch.py, vanilla_kd.py and datafree_kd.py.

``train_one_epoch`` and ``evaluate`` know nothing of the command line; ``fit`` runs the
epoch loop with evaluation, checkpointing (``last`` every epoch, ``best`` when improved),
resume and logging. What is measured comes from the task object (datafree/tasks.py):
top-1/top-5 accuracy for classification, mIoU / pixel accuracy / per-class IoU for
segmentation; ``best_acc1`` in checkpoints holds the task's primary number.
"""
import contextlib
import time
from typing import NamedTuple

import torch
from tqdm import tqdm

from datafree import distributed
from datafree.checkpoint import RUN_CHECKPOINT_ADVICE, load_checkpoint, put_weights, record_epoch, save_checkpoint
from datafree.errors import CheckpointError
from datafree.interrupt import finished_epochs
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


def train_one_epoch(model, loader, optimizer, device, loss_fn, epoch=0, logger=None, print_freq=0, stop=None):
    """One pass over ``loader``. ``loss_fn(images, targets) -> (loss, logits)``; ``stop()``, if
    given, is asked after every step and ends the pass early when it says yes.

    Returns the mean loss, the top-1 training accuracy (%) against the loader's labels
    (meaningless for unlabeled transfer sets, whose labels are -1) and whether it was stopped.
    """
    model.train()
    loss_sum = correct = count = samples = 0
    stopped = False
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if distributed.is_main_process() else True)
    for step, (images, targets) in enumerate(bar):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss, logits = loss_fn(images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

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


def fit(model, train_loader, val_loader, optimizer, scheduler, loss_fn, device, *, epochs, run_dir,
        logger, start_epoch=0, best_acc1=0.0, checkpoint_extra=None, print_freq=0, summary_info=None, task=None,
        stop=None):
    """Train from ``start_epoch`` to ``epochs``; evaluate, log and checkpoint after each epoch.

    ``checkpoint_extra`` is merged into every checkpoint (arch, num_classes, args, ...);
    ``summary_info`` into the run's summary.json. ``stop`` (datafree.interrupt.StopSignals) is
    asked after every step and every epoch: on SIGINT or SIGTERM the run raises Interrupted, with
    last.pth holding its finished epochs (a supervised epoch is not saved half-way: its steps are
    done again on resume).
    Returns the best value of the task's primary metric (top-1 accuracy or mIoU, %).
    """
    task = task or Classification(num_classes=0)
    for epoch in range(start_epoch, epochs):
        tic = time.perf_counter()
        if hasattr(train_loader.sampler, "set_epoch"):  # DistributedSampler: a new shuffle each epoch
            train_loader.sampler.set_epoch(epoch)
        train_stats = train_one_epoch(model, train_loader, optimizer, device, loss_fn, epoch,
                                      logger, print_freq, stop=(lambda: stop.requested() != 0) if stop else None)
        if train_stats["stopped"]:
            raise stop.interrupted(f"the run stopped in epoch {epoch}, whose steps are done again on resume; "
                                   f"last.pth holds {finished_epochs(epoch)}")
        val_stats = evaluate(model, val_loader, device, task)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        score = val_stats[task.primary]
        is_best = score > best_acc1
        best_acc1 = max(best_acc1, score)
        seconds = time.perf_counter() - tic
        logger.info(f"[Eval] epoch={epoch} {task.describe(val_stats)} train_loss={train_stats['loss']:.4f} "
                    f"lr={lr:.4g} best={best_acc1:.2f} time={seconds:.1f}s")
        logger.scalars(task.scalars(val_stats), epoch, prefix="val/")
        logger.scalars({"loss": train_stats["loss"], "lr": lr, "epoch_seconds": seconds}, epoch, prefix="train/")
        state = {
            "state_dict": model.state_dict(),
            "epoch": epoch + 1,
            "best_acc1": float(best_acc1),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            **(checkpoint_extra or {}),
        }
        if distributed.is_main_process():
            save_checkpoint(state, run_dir, is_best)
            record_epoch(run_dir, epoch=epoch, epochs=epochs, acc1=score, epoch_seconds=seconds,
                         info=summary_info)
        if stop is not None and epoch + 1 < epochs and stop.requested():
            raise stop.interrupted(f"last.pth holds {finished_epochs(epoch + 1)}")
    return best_acc1


def now(device):
    """The wall clock, read after the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class BlockTimer:
    """Total time of repeated code blocks without a host sync per block.

    On a GPU each block is bracketed by two CUDA events on the current stream and the total is
    read once, in ``seconds()`` (the events measure the stream's time between the two points,
    so asynchronous kernels are counted where they run); on the CPU it is the wall clock.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self._events = []
        self._seconds = 0.0

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
        """The total so far (waits for the last block's work on a GPU)."""
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
    for the generative methods, as in the original). The loop itself never waits for the
    device: the loss is summed on it and read once at the end, where ``precision``'s
    non-finite guard also reports a non-finite loss it only recorded on the device
    (datafree/guard.py).
    """
    student.train()
    teacher.eval()
    device = next(student.parameters()).device
    loss_sum = torch.zeros((), device=device)
    sampling = BlockTimer(device)
    taken = done = 0
    while done < steps:
        with sampling.measure():
            images = synthesizer.sample()
        with precision.autocast():
            with torch.no_grad():
                teacher_logits = teacher(images)
            loss = synthesizer.kd_loss(student(images), teacher_logits)
        optimizer.zero_grad(set_to_none=True)
        if precision.backward(loss):
            precision.step(optimizer)
            loss_sum += loss.detach().float()
            taken += 1
        done += 1
        if stop is not None and stop():
            break
    precision.guard.flush()
    return KDSteps(loss_sum.item(), taken, done, sampling.seconds())
