"""Forward hooks on the teacher: the DeepInversion BN-statistics loss (with momentum).

``register_bn_hooks(teacher, momentum)`` is the one place where hooks are attached; every
synthesizer that needs the BN loss calls it and sums ``hook.loss``.
"""
import contextlib

import torch
import torch.nn as nn


class BNStatsHook:
    """Distance between a batch's feature statistics and a BatchNorm2d's running statistics.

    loss = ||running_var - var_b||_2 + ||running_mean - mean_b||_2, where (mean_b, var_b) are
    the batch statistics of the layer's input (biased variance), blended as
    (1 - m) * batch + m * ema when ``momentum`` m > 0 and an exponential moving average of
    earlier batches exists (``update_momentum`` folds the latest batch into it).
    Statistics are computed in float32 even under autocast.
    """

    def __init__(self, module, momentum=0.0):
        self.momentum = momentum
        self.ema_mean = self.ema_var = None   # (C,) each, once update_momentum has run
        self.loss = None
        self._last = None                     # detached (mean, var) of the latest batch
        self.active = False                   # computed only while a synthesizer asks for it
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if not self.active:
            return
        var, mean = torch.var_mean(inputs[0].float(), dim=(0, 2, 3), unbiased=False)   # one pass, no transposed copy
        self._last = (mean.detach(), var.detach())
        if self.momentum > 0 and self.ema_mean is not None:
            mean = (1 - self.momentum) * mean + self.momentum * self.ema_mean
            var = (1 - self.momentum) * var + self.momentum * self.ema_var
        self.loss = (torch.norm(module.running_var.float() - var, 2)
                     + torch.norm(module.running_mean.float() - mean, 2))

    def update_momentum(self):
        """Fold the statistics of the latest batch into the moving average (a non-finite
        statistic leaves its average as it was: a skipped non-finite step must not poison it)."""
        if self._last is None:
            return
        mean, var = self._last
        if self.ema_mean is None:
            self.ema_mean, self.ema_var = mean.clone(), var.clone()
        else:
            m = self.momentum
            self.ema_mean = _finite_or(m * self.ema_mean + (1 - m) * mean, self.ema_mean)
            self.ema_var = _finite_or(m * self.ema_var + (1 - m) * var, self.ema_var)

    def state_dict(self):
        return {"ema_mean": self.ema_mean, "ema_var": self.ema_var}

    def load_state_dict(self, state):
        self.ema_mean, self.ema_var = state["ema_mean"], state["ema_var"]

    def remove(self):
        self._handle.remove()


def _finite_or(new, old):
    return torch.where(torch.isfinite(new), new, old)


def register_bn_hooks(model, momentum=0.0):
    """A BNStatsHook on every BatchNorm2d of ``model``, in module order."""
    return [BNStatsHook(m, momentum) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def bn_loss(hooks):
    return sum(h.loss for h in hooks)


@contextlib.contextmanager
def hooks_active(hooks):
    """Compute the BN loss only inside this block (the teacher's KD forwards skip it)."""
    for h in hooks:
        h.active = True
    try:
        yield
    finally:
        for h in hooks:
            h.active = False
