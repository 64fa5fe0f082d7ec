"""Gaussian noise: the no-synthesis baseline.

Each call adds a batch of Gaussian noise to the pool and takes no optimisation step: pixels
are N(0, 1) in the normalised space of the dataset (DeepInversion's starting point), mapped
back to [0, 1] and clipped. Everything else (pool, augmentation, KD steps, budget) is the
same as for the other pool methods, so ``--method noise`` measures what distillation gets
from inputs that carry no knowledge of the teacher's data.
"""
import torch

from datafree.augment import Normalizer, repeat_channels

from .base import PoolSynthesizer, register_synthesizer


@register_synthesizer("noise")
class NoiseSynthesizer(PoolSynthesizer):
    flags = frozenset({"cmi_init"})
    original_behaviours = frozenset()   # nothing is synthesised
    tasks = frozenset({"classification", "segmentation"})
    distributed_ready = True   # no state shared between calls: each rank fills its own pool

    def __init__(self, teacher, student, config, device):
        super().__init__(teacher, student, config, device)
        self.normalizer = Normalizer(config.mean, config.std).to(device)

    @torch.no_grad()
    def synthesize(self):
        c = self.config
        self.calls += 1
        pixels = torch.randn(self.batch_size, self.synthesis_channels, c.img_size, c.img_size, device=self.device)
        images = self.normalizer.denormalize(repeat_channels(pixels, c.nc)).clamp(0, 1)
        self.pool.add(images)
        return {"images": images}
