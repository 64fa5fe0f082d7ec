"""SIGINT (Ctrl-C) and SIGTERM (a cluster's pre-emption): finish the current step, save, exit.

While a run trains, ``StopSignals`` replaces the handlers of both signals: a signal only sets
a flag, which the epoch loop reads with ``requested()`` after every KD step, every synthesis
call and every epoch; the loop then writes last.pth at that point and raises Interrupted
(exit status 130 for SIGINT, 143 for SIGTERM). Under torchrun ``requested()`` takes the
largest signal number over the ranks (a CPU all-reduce, no device sync), so every rank stops
after the same step, whichever of them the signal reached first. A second Ctrl-C stops at
once (KeyboardInterrupt; last.pth keeps the previous save).
"""
import os
import shlex
import signal
import sys
import threading

from datafree import distributed
from datafree.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """A context manager; ``received``: the first stop signal's number here (0: none)."""

    def __init__(self):
        self.received = 0
        self.agreed = 0          # the signal the ranks agreed on at the last request
        self._previous = {}
        self._group = self._no_group = object()   # the CPU process group, made at the first request

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():   # handlers can only be set there
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.received:
            self.received = signum
            # os.write, not print: a handler may run while the main code is inside a print
            os.write(2, f"{signal.Signals(signum).name} received: stopping after the current step, then writing "
                        f"last.pth (press Ctrl-C again to stop at once)\n".encode())

    def interrupted(self, saved, resume="the same command with --resume added"):
        """The Interrupted to raise once ``requested()`` said yes; ``saved``: what last.pth holds."""
        name = signal.Signals(self.agreed).name
        return Interrupted(f"{name} received; {saved}: resume with {resume}", self.agreed,
                           agreed=distributed.get_world_size() > 1)

    def requested(self):
        """The stop signal every rank agrees on (its number; 0: go on). Under torchrun every
        rank must ask at the same points."""
        if distributed.get_world_size() == 1:
            self.agreed = self.received
        else:
            if self._group is self._no_group:
                self._group = distributed.host_group()
            self.agreed = distributed.all_reduce_max_int(self.received, self._group)
        return self.agreed


def finished_epochs(count):
    return f"{count} finished epoch{'' if count == 1 else 's'}"


def resume_hint(argv, script, resume=True):
    """How to continue a stopped run: its command with ``--resume`` (which then reads the run
    folder's last.pth) in place of any --resume it had; without ``resume``, with none."""
    if distributed.launched_by_torchrun():
        return "the same torchrun command with --resume added" if resume else "the same torchrun command"
    kept, skip_value = [], False
    for token in argv:
        if skip_value:
            skip_value = False
            if not token.startswith("-"):
                continue
        if token == "--resume":
            skip_value = True
            continue
        if not token.startswith("--resume="):
            kept.append(token)
    command = shlex.join([script, *kept, *(["--resume"] if resume else [])])
    return f"python {command}" if script.endswith(".py") else command


NOTHING_SAVED = "no checkpoint was written yet"


def describe_progress(progress):
    """', round R, after ... KD steps of it' for a run saved mid-epoch (``progress``: engine.Progress), else ''."""
    if not progress:
        return ""
    done = "its synthesis call and " if progress.synthesized else ""
    return f", round {progress.round + 1}, after {done}{progress.kd_done} KD steps of it"


# How a data-free run is started: the flat script of a checkout, or the installed command.
DATAFREE_COMMANDS = ("datafree_kd.py", "datafree-kd")


class ResumeHint:
    """What a stopped run tells the user: how to resume it, and which checkpoint is the last good one."""

    def __init__(self, argv, resume_path, progress):
        self.argv = argv
        self.saved = (f"the last good checkpoint is {resume_path} (as resumed{describe_progress(progress)})"
                      if resume_path else NOTHING_SAVED)

    def command(self):
        """The command that continues the run (the same one when nothing was saved yet), as it was typed."""
        script = sys.argv[0] if os.path.basename(sys.argv[0]) in DATAFREE_COMMANDS else DATAFREE_COMMANDS[0]
        return resume_hint(self.argv, script, resume=self.saved != NOTHING_SAVED)

    def saved_at(self, path, epochs_done, progress=None):
        point = f"epoch {epochs_done}{describe_progress(progress)}" if progress else finished_epochs(epochs_done)
        self.saved = f"the last good checkpoint is {path} ({point})"
