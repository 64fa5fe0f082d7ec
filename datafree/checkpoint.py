"""Checkpoint files: atomic writes, safe loads, and one-sentence errors for bad files.

A training checkpoint is ``{'state_dict', 'epoch', 'best_acc1', 'optimizer', 'scheduler',
'arch', 'num_classes', ...}`` (the original release's format plus a few keys); a teacher
file only needs ``state_dict``. Everything is loaded with ``weights_only=True``.
"""
import json
import os
import pickle
import shutil
import zipfile

import torch

from datafree.errors import CheckpointError


def atomic_save(obj, path):
    """Write ``obj`` to ``path`` through a temporary file, so a kill never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_copy(src, dst):
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = f"{dst}.tmp{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def save_checkpoint(state, run_dir, is_best, best_state=None):
    """Write ``run_dir/last.pth``; when ``is_best``, write ``best_state`` to ``run_dir/best.pth``
    (or, without one, copy ``last.pth`` there)."""
    last = os.path.join(run_dir, "last.pth")
    atomic_save(state, last)
    if is_best:
        best = os.path.join(run_dir, "best.pth")
        if best_state is None:
            atomic_copy(last, best)
        else:
            atomic_save(best_state, best)
    return last


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


def record_epoch(run_dir, *, epoch, epochs, acc1, epoch_seconds, info=None, measured=None, **totals):
    """Add one finished epoch to ``run_dir/summary.json``, the small file table collectors read
    instead of the (possibly large) checkpoints.

    ``wall_seconds`` accumulates ``epoch_seconds`` over the run, resumes included; ``totals``
    are other running totals (e.g. ``synthesis_seconds``) stored as given; ``info`` holds
    static facts of the run (script, arch, args); ``measured`` holds figures of this epoch alone
    (e.g. ``persist_seconds``), kept in its history entry. Epochs at or after ``epoch`` recorded
    by an interrupted attempt are replaced.
    """
    summary = read_summary(run_dir) or {}
    history = [h for h in summary.get("history", []) if h["epoch"] < epoch]
    wall = (history[-1]["wall_seconds"] if history else 0.0) + epoch_seconds
    history.append({"epoch": epoch, "acc1": float(acc1), "wall_seconds": wall,
                    **{k: float(v) for k, v in {**totals, **(measured or {})}.items()}})
    summary.update(info or {})
    summary.update(totals)
    summary.update(epoch=epoch + 1, epochs=epochs, finished=epoch + 1 >= epochs, wall_seconds=wall,
                   best_acc1=max(h["acc1"] for h in history), history=history)
    atomic_write_text(json.dumps(summary, indent=1), os.path.join(run_dir, SUMMARY_FILE))
    return summary


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint dict (tensors and plain containers only)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}); "
            f"it may be truncated or corrupt: download or create it again") from err
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
    state = extract_state_dict(ckpt)
    reason = mismatch_reason(model, state, arch, ckpt.get("arch"))
    if reason:
        raise CheckpointError(f"{path} does not fit model '{arch}': {reason}")
    model.load_state_dict(state)
    return ckpt
