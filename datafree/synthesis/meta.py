"""Meta-updates of Fast DFKD's generator G from the fast generator G' of one synthesis call.

Both use the meta optimiser Adam(G, lr = lr_g * g_steps, betas = (0.5, 0.999)):

- ``FirstOrderMAML``: after every inner backward pass, G'.grad is added to G.grad; the
  sum over the k inner steps is applied in one meta step.
- ``Reptile``: after the inner loop, G.grad = (G - G') * scale (67 in the original code).

A persistent latent tensor (the ImageNet variant's z, one per sample) can be meta-learned
alongside G: pass ``latent`` (a leaf tensor) and its own meta learning rate ``latent_lr``, and
the fast copy z' to ``after_inner_backward`` / ``finish``; z gets the same rule as G.

Under torchrun, G's meta-gradient is averaged over the ranks before the meta step, so every
rank keeps the same G; the latent belongs to the rank's own samples and is not averaged.
"""
import torch

from datafree import distributed


class MetaStrategy:
    def __init__(self, generator, lr, betas=(0.5, 0.999), latent=None, latent_lr=None):
        self.generator = generator
        self.latent = latent
        groups = [{"params": list(generator.parameters())}]
        if latent is not None:
            groups.append({"params": [latent], "lr": lr if latent_lr is None else latent_lr})
        self.optimizer = torch.optim.Adam(groups, lr=lr, betas=betas)

    def _pairs(self, fast_generator, fast_latent=None):
        """(meta tensor, fast tensor) pairs: G with G', then z with z' when both are there."""
        pairs = list(zip(self.generator.parameters(), fast_generator.parameters()))
        if self.latent is not None and fast_latent is not None:
            pairs.append((self.latent, fast_latent))
        return pairs

    def begin(self):
        self.optimizer.zero_grad(set_to_none=False)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)

    def after_inner_backward(self, fast_generator, fast_latent=None):
        """Called after each inner step's backward, before the inner optimiser steps."""

    def finish(self, fast_generator, fast_latent=None):
        """Write the meta-gradient into G.grad (if not yet there) and take the meta step."""
        self.meta_step()

    def meta_step(self):
        distributed.average_gradients(self.generator.parameters())
        self.optimizer.step()

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)


class FirstOrderMAML(MetaStrategy):
    @torch.no_grad()
    def after_inner_backward(self, fast_generator, fast_latent=None):
        for p, fast_p in self._pairs(fast_generator, fast_latent):
            if fast_p.grad is not None:
                p.grad.add_(fast_p.grad)


class Reptile(MetaStrategy):
    def __init__(self, generator, lr, betas=(0.5, 0.999), scale=67.0, latent=None, latent_lr=None):
        super().__init__(generator, lr, betas, latent, latent_lr)
        self.scale = scale

    @torch.no_grad()
    def finish(self, fast_generator, fast_latent=None):
        for p, fast_p in self._pairs(fast_generator, fast_latent):
            p.grad.copy_(p - fast_p).mul_(self.scale)
        self.meta_step()
