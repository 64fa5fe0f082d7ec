"""Mixed precision in one object: float16 autocast + GradScaler on CUDA, bfloat16 autocast on CPU."""
import contextlib

import torch


class Precision:
    def __init__(self, device, enabled=False):
        self.device = torch.device(device)
        self.enabled = enabled
        cuda = self.device.type == "cuda"
        self.dtype = torch.float16 if cuda else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=enabled and cuda)

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
