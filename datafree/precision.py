"""Mixed precision in one object.

Modes (``--precision``; the original flag ``--fp16`` is ``--precision fp16``):

- ``fp32``: no autocast;
- ``fp16``: float16 autocast with a GradScaler on CUDA; on the CPU, bfloat16 autocast
  (what ``--fp16`` has always done there);
- ``bf16``: bfloat16 autocast on any device, no scaler (bfloat16 has float32's range);
- ``auto`` (resolved by ``resolve_mode`` before a run starts): ``bf16`` where the device
  computes bfloat16 natively (a CPU with AVX512-BF16 or AMX-BF16 instructions, a CUDA GPU
  with bfloat16 units), ``fp32`` elsewhere, and ``fp32`` for a method whose synthesizer says
  ``bf16_in_auto = False`` (bf16 measurably cost it accuracy). Emulated bfloat16 is slower than float32.

Under float16 scaling the loops never wait for the device to learn whether a step overflowed:
``drop_overflowed`` uses the scaler's own device flag, and ``optimizer_options`` asks for fused
optimizers, which take the scaler's overflow flag on the device (a plain optimizer makes
``GradScaler.step`` read it on the host every step).

Each Precision also holds the loop's ``NonFiniteGuard`` (datafree/guard.py): ``backward``
asks it whether the step may run, and ``step`` does nothing for a step it skipped.
"""
import contextlib

import torch

from datafree.guard import NonFiniteGuard

MODES = ("fp32", "fp16", "bf16")
AUTO = "auto"
# /proc/cpuinfo flags of x86 CPUs with bfloat16 arithmetic (dot products / tile multiplies).
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags from ``cpuinfo`` (Linux); empty where it cannot be read."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bfloat16(device, cpuinfo="/proc/cpuinfo"):
    """Whether ``device`` computes bfloat16 in hardware (not emulated through float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(cpu_flags(cpuinfo) & CPU_BF16_FLAGS)
    return False


def resolve_mode(mode, device, bf16_in_auto=True):
    """``auto`` -> ``bf16`` or ``fp32`` for ``device``; other modes unchanged. ``bf16_in_auto`` False (a
    method whose accuracy bf16 measurably lowers) makes ``auto`` mean ``fp32`` everywhere."""
    if mode == AUTO:
        return "bf16" if bf16_in_auto and native_bfloat16(device) else "fp32"
    return mode


class Precision:
    def __init__(self, device, mode=False, on_nonfinite="stop", loop="KD"):
        """``mode``: one of MODES or ``auto``, or a bool (True: ``fp16``, False: ``fp32``) as ``--fp16`` gives;
        ``on_nonfinite`` ("stop" or "skip") and ``loop`` (its name in messages): the guard's settings."""
        if isinstance(mode, bool) or mode is None:
            mode = "fp16" if mode else "fp32"
        self.device = torch.device(device)
        mode = resolve_mode(mode, self.device)
        if mode not in MODES:
            raise ValueError(f"precision must be one of {MODES} or {AUTO!r}, not {mode!r}")
        self.mode = mode
        self.enabled = mode != "fp32"
        cuda = self.device.type == "cuda"
        self.dtype = torch.float16 if mode == "fp16" and cuda else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=mode == "fp16" and cuda)
        self.guard = NonFiniteGuard(self.device, on_nonfinite, loop, scaled=self.scaler.is_enabled())
        self._skipping = False      # the guard refused the current step: no optimiser step follows

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def optimizer_options(self):
        """Keyword arguments for torch.optim optimizers: fused under float16 scaling (no host
        sync in ``GradScaler.step``), none otherwise."""
        return {"fused": True} if self.scaler.is_enabled() else {}

    def backward(self, loss, inputs=None, terms=None):
        """Backward pass, if the non-finite guard lets the step run; returns whether it did.
        ``inputs`` limits the gradients to those tensors (None: all leaves); ``terms``: the loss's
        named parts, for the guard's message."""
        self._skipping = not self.guard.check(loss, terms)
        if self._skipping:
            return False
        self.scaler.scale(loss).backward(inputs=inputs)
        return True

    def unscale(self, optimizer):
        """Bring the gradients back to their true scale (before reading or copying them)."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(optimizer)

    def drop_overflowed(self, optimizer):
        """After ``unscale(optimizer)``: zero its gradients if any overflowed, as the scaler will
        then skip its step, so that a sum of gradients over steps (the meta-gradient) leaves the
        step out too. Done on the device with the flag ``unscale_`` recorded: no host sync."""
        if not self.scaler.is_enabled():
            return
        overflowed = self._overflowed(optimizer)
        if overflowed is None:
            raise RuntimeError("drop_overflowed(optimizer) needs unscale(optimizer) first")
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.masked_fill_(overflowed, 0.0)

    def step(self, *optimizers):
        """Step every optimizer (skipped together on overflow), then update the scale; nothing
        after a backward pass the guard skipped."""
        if self._skipping:
            self._skipping = False
            return
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        if self.scaler.is_enabled():
            self.guard.record_scaler_step(self._overflowed(optimizers[0]))
        self.scaler.update()

    def _overflowed(self, optimizer):
        """The device flag the scaler recorded for ``optimizer`` since its last update (None: none yet)."""
        found_inf = self.scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]
        if not found_inf:
            return None
        return sum(flag.to(self.device) for flag in found_inf.values()) > 0

    def state_dict(self):
        return self.scaler.state_dict()

    def load_state_dict(self, state):
        if state:
            self.scaler.load_state_dict(state)
