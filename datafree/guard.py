"""Non-finite losses: stop the run (or skip the step) before a NaN or inf reaches a weight,
the pool or a checkpoint.

Every loop that steps an optimiser (the KD steps, each synthesizer's steps) hands its loss to
``Precision.backward``, which asks its ``NonFiniteGuard`` whether the step may go on
(``--on_nonfinite``):

- ``stop`` (the default): a non-finite loss ends the run with a NonFiniteError (exit status 3);
- ``skip``: the step is skipped (no backward pass, no optimiser step) and counted; an epoch
  whose steps were all skipped, and a synthesis call without one finite step, still stop.

When the loss is read. On the CPU it is read at every step, before its backward pass: the bad
step never runs. On a GPU a read per step would make the host wait for the device at every
step, so in ``stop`` mode the guard only records on the device which step went non-finite,
and ``flush()`` reads that record where the host waits anyway: at the end of each KD round
(beside the round's summed loss) and at the end of each synthesis call, before the call's
meta-step, BN moving averages and pool images. The steps between the bad loss and that read
may have changed weights in memory (they hold NaN then), but the run stops before any of it is
kept: no pool image is added, no checkpoint is written, last.pth stays the last good one.
``skip`` has to decide before each backward pass, so it reads every loss: one host sync per
step on a GPU (``stop`` adds none).

Under torchrun the processes agree: every ``flush`` and every ``skip`` decision is reduced
over the ranks, so all of them stop (or skip) at the same step; in ``stop`` mode every device
records and reads at ``flush`` (as a GPU does), so that no rank stops alone while the others
wait in a collective. Where the ranks run independently (make_init_pool.py: each makes its own
share, in its own number of calls) ``agree = False`` keeps every decision local.

Under float16 gradient scaling a non-finite step is the scaler's business: it skips the step
and lowers the scale. The guard then only counts the steps the scaler skipped (on the device,
read once per epoch) and stops a run whose scaler skipped every step of an epoch.
"""
import torch

from datafree import distributed
from datafree.errors import NonFiniteError

MODES = ("stop", "skip")
NO_STEP = 2 ** 52   # "no non-finite step yet": larger than any step count, exact in float64


class NonFiniteGuard:
    """Watches the losses of one loop: ``loop`` names it in messages ("KD", "synthesis")."""

    def __init__(self, device, mode="stop", loop="KD", scaled=False):
        if mode not in MODES:
            raise ValueError(f"unknown non-finite mode '{mode}'; choose one of {', '.join(MODES)}")
        self.device = torch.device(device)
        self.mode, self.loop, self.scaled = mode, loop, scaled
        self.agree = True           # reduce the decisions over the ranks of a torchrun run
        self.new_epoch()

    def new_epoch(self):
        """Restart the epoch's counts (``steps``: steps checked, ``skipped``: steps skipped)."""
        self.steps = self.skipped = 0
        self._first_bad = None      # device: the first non-finite step since the last flush, or NO_STEP
        self._bad_terms = {}        # device: term names -> which went non-finite since the last flush
        self._scaler_skips = None   # device: steps the float16 scaler skipped this epoch

    @property
    def world(self):
        """The processes that decide together."""
        return distributed.get_world_size() if self.agree else 1

    @property
    def reads_every_step(self):
        return self.mode == "skip" or (self.device.type != "cuda" and self.world == 1)

    def check(self, loss, terms=None):
        """Whether the step of ``loss`` may run its backward pass and optimiser step. ``terms``:
        the loss's named parts (tensors), to say which went non-finite."""
        self.steps += 1
        if self.scaled:
            return True
        if not self.reads_every_step:
            self._record(loss, terms)
            return True
        own_bad = not bool(torch.isfinite(loss.detach()).all())
        bad = own_bad
        if self.world > 1:
            bad = distributed.all_reduce_tensor(torch.tensor(float(own_bad)), op="max").item() > 0
        if not bad:
            return True
        if self.mode == "stop":
            raise NonFiniteError(self._sentence(self.steps, _values(loss, terms) if own_bad else None),
                                 agreed=self.world > 1)
        self.skipped += 1
        return False

    def _record(self, loss, terms):
        loss = loss.detach().float().sum()
        step = torch.where(torch.isfinite(loss), NO_STEP, self.steps)
        self._first_bad = step if self._first_bad is None else torch.minimum(self._first_bad, step)
        if terms:
            bad = ~torch.isfinite(torch.stack([t.detach().float().sum() for t in terms.values()]))
            key = tuple(terms)
            self._bad_terms[key] = bad if key not in self._bad_terms else self._bad_terms[key] | bad

    def flush(self):
        """Stop the run if a step recorded on the device since the last flush was non-finite.
        Under torchrun every rank calls it at the same points (it reduces over them)."""
        world = self.world
        if self.scaled or self.reads_every_step or (self._first_bad is None and world == 1):
            return
        local = self._first_bad if self._first_bad is not None else torch.tensor(NO_STEP, device=self.device)
        both = torch.stack([local.double(), local.double()])
        if world > 1:   # [first non-finite step of any rank, of this rank]
            both[0] = distributed.all_reduce_tensor(both[:1], op="min")[0]
        first, own_first = (int(v) for v in both.tolist())
        bad_terms = sorted({name for key, flags in self._bad_terms.items()
                            for name, bad in zip(key, flags.tolist()) if bad})
        self._first_bad, self._bad_terms = None, {}
        if first < NO_STEP:
            own = {"value": None, "terms": bad_terms} if own_first < NO_STEP else None
            raise NonFiniteError(self._sentence(first, own), agreed=world > 1)

    def record_scaler_step(self, overflowed):
        """Under float16 scaling: count a step the scaler skipped (``overflowed``: a device flag)."""
        flag = overflowed.float()
        self._scaler_skips = flag if self._scaler_skips is None else self._scaler_skips + flag

    def end_epoch(self):
        """At the end of an epoch: flush, then stop the run if every step of the epoch was
        skipped (by ``skip`` or by the float16 scaler). Returns the number of skipped steps."""
        self.flush()
        skipped = self.skipped
        if self.scaled and self._scaler_skips is not None:
            skipped = int(self._scaler_skips.item())
        all_skipped = self.steps > 0 and skipped == self.steps
        if self.world > 1:
            all_skipped = distributed.all_reduce_tensor(torch.tensor(float(all_skipped)), op="max").item() > 0
        if all_skipped:
            why = ("the float16 gradient scaler skipped them all (every gradient overflowed: the loss or the weights "
                   "are no longer finite)" if self.scaled else "every one had a non-finite loss and was skipped")
            raise NonFiniteError(f"no {self.loop} step of the epoch could be taken: {why}", agreed=self.world > 1)
        return skipped

    def _sentence(self, step, found):
        """What went non-finite, where; ``found``: this process's values (None: another process's)."""
        if found is None:
            detail = " on another process"
        else:
            parts = [found["value"]] if found["value"] else []
            if found["terms"]:
                parts.append(f"non-finite terms: {', '.join(found['terms'])}")
            detail = f" ({'; '.join(parts)})" if parts else ""
        return f"non-finite {self.loop} loss{detail} at {self.loop} step {step} of the epoch"


def _values(loss, terms):
    """The loss's value and its non-finite terms, read on the host, for a message."""
    value = loss.detach().float()
    value = f"{value.item():g}" if value.numel() == 1 else "a non-finite element"
    bad = [name for name, t in (terms or {}).items() if not bool(torch.isfinite(t.detach()).all())]
    return {"value": value, "terms": bad}
