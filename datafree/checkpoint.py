"""Checkpoint files: atomic writes, safe loads, and one-sentence errors for bad files.

A training checkpoint is ``{'state_dict', 'epoch', 'best_acc1', 'optimizer', 'scheduler',
'arch', 'num_classes', ...}`` (the original release's format plus a few keys); a teacher
file only needs ``state_dict``. Everything is loaded with ``weights_only=True``.
"""
import contextlib
import errno
import io
import json
import os
import pickle
import re
import shutil
import zipfile

import torch

from datafree.errors import CheckpointError, DiskFullError

# Temporary files are named NAME.tmp<pid> next to NAME.
TMP_MARK = ".tmp"
# What a user can do about an unreadable checkpoint of a training run (last.pth, a per-rank state file).
RUN_CHECKPOINT_ADVICE = ("it cannot be resumed: restore the run folder from a backup, or start a new run with another "
                         "--output (best.pth, if readable, still holds the best student)")


# errno values that mean "no room for this write": a full file system, a quota, a file size limit.
NO_SPACE = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "the disk quota is exceeded",
            errno.EFBIG: "the file size limit is reached"}


def no_space_error(err, path, intact):
    """A DiskFullError for an OSError that says there is no room for ``path``, else None.
    ``intact``: what the user still has (one clause)."""
    if not isinstance(err, OSError) or err.errno not in NO_SPACE:
        return None
    return DiskFullError(f"could not write {path}: {NO_SPACE[err.errno]}; {intact}: free some space (or move the "
                         f"run folder), then continue with --resume")


@contextlib.contextmanager
def replaced_atomically(path):
    """Yield a temporary file name next to ``path``; the block writes it, then it is renamed over
    ``path``. If anything fails (a full disk, a signal), the temporary file is removed and
    ``path`` is left as it was."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        full = no_space_error(err, path, f"{os.path.basename(path)} was left as it was and no partial file remains")
        if full is not None:
            raise full from err
        raise


def _write_durably(tmp, data):
    """Write ``data`` to ``tmp`` and make it durable (a full disk may only show at flush or fsync)."""
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_save(obj, path):
    """Write ``obj`` to ``path`` through a temporary file, so a kill never leaves half a file.

    The object is serialised in memory first: torch.save reports a failed write to a file as
    an unrelated RuntimeError, while a plain write gives the OSError that names a full disk."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with replaced_atomically(path) as tmp:
        _write_durably(tmp, buffer.getbuffer())


def atomic_write_text(text, path):
    with replaced_atomically(path) as tmp:
        _write_durably(tmp, text.encode())


def atomic_copy(src, dst):
    with replaced_atomically(dst) as tmp:
        shutil.copyfile(src, tmp)


def save_checkpoint(state, run_dir, is_best, best_state=None):
    """Write ``run_dir/last.pth``; when ``is_best``, first write ``best_state`` (or, without one,
    ``state``) to ``run_dir/best.pth``.

    best.pth comes first so that it is never older than the best accuracy last.pth claims: if
    writing it fails, last.pth still describes the previous epoch, whose best.pth is in place."""
    last = os.path.join(run_dir, "last.pth")
    if is_best:
        atomic_save(state if best_state is None else best_state, os.path.join(run_dir, "best.pth"))
    atomic_save(state, last)
    return last


@contextlib.contextmanager
def missing_entries(path):
    """Turn a KeyError met while reading a checkpoint's contents into one sentence naming the file."""
    try:
        yield
    except KeyError as err:
        raise CheckpointError(f"{path} lacks the entry {err.args[0]!r} that resuming needs: it is incomplete or was "
                              f"written by another version, so {RUN_CHECKPOINT_ADVICE}") from err


def remove_stale_temporaries(folder):
    """Delete the temporary files that killed processes left in ``folder`` (``NAME.tmp<pid>`` of a
    process that no longer runs); returns their names."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        match = re.search(rf"{re.escape(TMP_MARK)}(\d+)$", name)
        if match and not _process_alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
            removed.append(name)
    return removed


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, but another user's
        return True
    return True


SUMMARY_FILE = "summary.json"


def read_summary(run_dir):
    """The run's ``summary.json`` as a dict, or None when the run has not finished an epoch."""
    path = os.path.join(run_dir, SUMMARY_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); delete it, the next epoch writes it again") from err


def record_epoch(run_dir, *, epoch, epochs, acc1, epoch_seconds, epoch_cpu_seconds=0.0, info=None, measured=None,
                 **totals):
    """Add one finished epoch to ``run_dir/summary.json``, the small file table collectors read
    instead of the (possibly large) checkpoints.

    ``wall_seconds`` accumulates ``epoch_seconds`` over the run, resumes included, and
    ``cpu_seconds`` the process's CPU seconds (``epoch_cpu_seconds``, every thread); ``totals``
    are other running totals (e.g. ``synthesis_seconds``) stored as given; ``info`` holds
    static facts of the run (script, arch, args); ``measured`` holds figures of this epoch alone
    (e.g. ``persist_seconds``), kept in its history entry; None (not measured) is stored as null. Epochs at
    or after ``epoch`` recorded
    by an interrupted attempt are replaced.
    """
    summary = read_summary(run_dir) or {}
    history = [h for h in summary.get("history", []) if h["epoch"] < epoch]
    wall = (history[-1]["wall_seconds"] if history else 0.0) + epoch_seconds
    cpu = (history[-1].get("cpu_seconds", 0.0) if history else 0.0) + epoch_cpu_seconds
    history.append({"epoch": epoch, "acc1": float(acc1), "wall_seconds": wall, "cpu_seconds": cpu,
                    **{k: None if v is None else float(v) for k, v in {**totals, **(measured or {})}.items()}})
    summary.update(info or {})
    summary.update(totals)
    summary.update(epoch=epoch + 1, epochs=epochs, finished=epoch + 1 >= epochs, wall_seconds=wall, cpu_seconds=cpu,
                   best_acc1=max(h["acc1"] for h in history), history=history)
    atomic_write_text(json.dumps(summary, indent=1), os.path.join(run_dir, SUMMARY_FILE))
    return summary


def load_checkpoint(path, map_location="cpu", advice="download or create it again"):
    """Load a checkpoint dict (tensors and plain containers only). ``advice``: what to do if the
    file is unreadable (a teacher can be downloaded again; a run's last.pth cannot)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}); "
            f"it may be truncated or corrupt; {advice}") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def extract_state_dict(ckpt):
    """The model weights of a checkpoint (or of a bare state dict), without DDP prefixes."""
    state = ckpt.get("state_dict", ckpt)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def mismatch_reason(model, state, arch=None, ckpt_arch=None):
    """Why ``state`` does not fit ``model`` in one phrase, or None if it fits exactly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or reshaped):
        return None
    if not (missing or unexpected):
        classifier = _classifier_keys(model)
        if set(reshaped) <= classifier:
            weight = next(k for k in classifier if k.endswith("weight"))
            return (f"it holds a {state[weight].shape[0]}-class classifier but the model has "
                    f"{expected[weight].shape[0]} classes")
    saved_as = f" (saved from '{ckpt_arch}')" if ckpt_arch else ""
    example = (missing or unexpected or reshaped)[0]
    return (f"it is another architecture{saved_as}: {len(missing)} missing, {len(unexpected)} "
            f"unexpected and {len(reshaped)} reshaped tensors, e.g. '{example}'")


def _classifier_keys(model):
    """The final layer's keys: the last Linear, or the last Conv2d of a model without one (segmentation)."""
    layers = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    layers = layers or [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    return {f"{layers[-1]}.weight", f"{layers[-1]}.bias"}


def load_weights(model, path, arch, map_location="cpu"):
    """Load model weights from ``path`` into ``model`` (registered as ``arch``); return the checkpoint."""
    ckpt = load_checkpoint(path, map_location)
    put_weights(model, ckpt, path, arch)
    return ckpt


def put_weights(model, ckpt, path, arch):
    """Load the weights of ``ckpt`` (a checkpoint dict read from ``path``) into ``model``, or stop
    with one sentence if they do not fit."""
    state = extract_state_dict(ckpt)
    reason = mismatch_reason(model, state, arch, ckpt.get("arch"))
    if reason:
        raise CheckpointError(f"{path} does not fit model '{arch}': {reason}")
    model.load_state_dict(state)
