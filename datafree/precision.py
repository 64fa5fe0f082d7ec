"""Mixed precision in one object.

Modes (``--precision``; the original flag ``--fp16`` is ``--precision fp16``):

- ``fp32``: no autocast;
- ``fp16``: float16 autocast with a GradScaler on CUDA; on the CPU, bfloat16 autocast
  (what ``--fp16`` has always done there);
- ``bf16``: bfloat16 autocast on any device, no scaler (bfloat16 has float32's range).
"""
import contextlib

import torch

MODES = ("fp32", "fp16", "bf16")


class Precision:
    def __init__(self, device, mode=False):
        """``mode``: one of MODES, or a bool (True: ``fp16``, False: ``fp32``) as ``--fp16`` gives."""
        if isinstance(mode, bool) or mode is None:
            mode = "fp16" if mode else "fp32"
        if mode not in MODES:
            raise ValueError(f"precision must be one of {MODES}, not {mode!r}")
        self.device = torch.device(device)
        self.mode = mode
        self.enabled = mode != "fp32"
        cuda = self.device.type == "cuda"
        self.dtype = torch.float16 if mode == "fp16" and cuda else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=mode == "fp16" and cuda)

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss, inputs=None):
        """Backward pass; ``inputs`` limits the gradients to those tensors (None: all leaves)."""
        self.scaler.scale(loss).backward(inputs=inputs)

    def unscale(self, optimizer):
        """Bring the gradients back to their true scale (before reading or copying them)."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(optimizer)

    def grads_finite(self, params):
        """False if a gradient overflowed under float16 scaling (the scaler then skips the step)."""
        if not self.scaler.is_enabled():
            return True
        return all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)

    def step(self, *optimizers):
        """Step every optimizer (skipped together on overflow), then update the scale."""
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self):
        return self.scaler.state_dict()

    def load_state_dict(self, state):
        if state:
            self.scaler.load_state_dict(state)
