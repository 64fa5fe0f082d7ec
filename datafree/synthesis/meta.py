"""Meta-updates of Fast DFKD's generator G from the fast generator G' of one synthesis call.

Both use the meta optimiser Adam(G, lr = lr_g * g_steps, betas = (0.5, 0.999)):

- ``FirstOrderMAML``: after every inner backward pass, G'.grad is added to G.grad; the
  sum over the k inner steps is applied in one meta step.
- ``Reptile``: after the inner loop, G.grad = (G - G') * scale (67 in the original code).
"""
import torch


class MetaStrategy:
    def __init__(self, generator, lr, betas=(0.5, 0.999)):
        self.generator = generator
        self.optimizer = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)

    def begin(self):
        self.optimizer.zero_grad(set_to_none=False)
        for p in self.generator.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def after_inner_backward(self, fast_generator):
        """Called after each inner step's backward, before the inner optimiser steps."""

    def finish(self, fast_generator):
        """Write the meta-gradient into G.grad (if not yet there) and take the meta step."""
        self.optimizer.step()

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)


class FirstOrderMAML(MetaStrategy):
    @torch.no_grad()
    def after_inner_backward(self, fast_generator):
        for p, fast_p in zip(self.generator.parameters(), fast_generator.parameters()):
            if fast_p.grad is not None:
                p.grad.add_(fast_p.grad)


class Reptile(MetaStrategy):
    def __init__(self, generator, lr, betas=(0.5, 0.999), scale=67.0):
        super().__init__(generator, lr, betas)
        self.scale = scale

    @torch.no_grad()
    def finish(self, fast_generator):
        for p, fast_p in zip(self.generator.parameters(), fast_generator.parameters()):
            p.grad.copy_(p - fast_p).mul_(self.scale)
        self.optimizer.step()
