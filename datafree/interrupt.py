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
    return "python " + shlex.join([script, *kept, *(["--resume"] if resume else [])])
