"""DeepInversion (Yin et al., CVPR 2020): pixels optimised directly against the teacher.

Each call starts a batch from Gaussian noise (in normalised space) with sorted random
labels and takes ``g_steps`` Adam steps (betas 0.5, 0.99) on the pixels, each on a randomly
rolled (up to 1/8 of the size) and flipped view (flipped only where the dataset declares
flips valid), minimising

    bn * (teacher BN loss - 0.001 * student BN loss) + oh * CE(teacher, y)
  + adv * -JS(student, teacher at T=3) + tv * total variation + l2 * ||x||_2.

After each step the pixels are clipped to the valid normalised range. The best batch (a
copy: the original kept a view of the tensor being optimised) goes to the pool. For a
segmentation teacher the one-hot term uses the teacher's own per-pixel argmax and the JS
term is averaged over pixels (datafree/tasks.py).
"""
import torch

from datafree.augment import repeat_channels
from datafree.criterions import l2_prior, total_variation
from datafree.hooks import hooks_active, register_bn_hooks

from . import losses
from .base import BestBatch, PoolSynthesizer, original_behaviours, register_synthesizer
from .flags import TERMS, method_flag

method_flag("tv", 0.0, "weight of DeepInversion's total-variation prior", group=TERMS)
method_flag("l2", 0.0, "weight of DeepInversion's L2 prior", group=TERMS)

JITTER_FRACTION = 1 / 8
STUDENT_BN_WEIGHT = 0.001   # the original's weight of the student's BN statistics (subtracted: its competition)


def jitter_and_flip(images, hflip=True):
    """Roll by a random offset of up to 1/8 of each side, and flip horizontally half the time
    if ``hflip`` (the dataset declares flips valid)."""
    lim_h, lim_w = int(images.shape[-2] * JITTER_FRACTION), int(images.shape[-1] * JITTER_FRACTION)
    dh, dw = torch.randint(-lim_h, lim_h + 1, ()).item(), torch.randint(-lim_w, lim_w + 1, ()).item()
    images = torch.roll(images, shifts=(dh, dw), dims=(2, 3))
    if hflip and torch.rand(()) < 0.5:
        images = torch.flip(images, dims=(3,))
    return images


@register_synthesizer("deepinv")
class DeepInversionSynthesizer(PoolSynthesizer):
    flags = frozenset({"adv", "bn", "oh", "tv", "l2", "lr_g", "g_steps", "cmi_init", "as_original"})
    original_behaviours = frozenset({"flips", "deepinv_best"})
    loss_terms = ("bn", "oh", "adv", "tv", "l2")
    distributed_ready = True   # no state shared between calls: each rank inverts its own pixels
    tasks = frozenset({"classification", "segmentation"})

    def __init__(self, teacher, student, config, device):
        super().__init__(teacher, student, config, device)
        self.teacher_hooks = register_bn_hooks(teacher)
        self.student_hooks = register_bn_hooks(student)
        self.normalizer = self.aug[-1]
        behaviours = original_behaviours(config.as_original)
        self.flip = self.task.hflip or "flips" in behaviours
        self.keep_last = "deepinv_best" in behaviours

    def synthesize(self):
        c = self.config
        self.calls += 1
        self.teacher.eval()
        self.student.eval()
        channels = self.synthesis_channels
        shape = (self.batch_size, channels, c.img_size, c.img_size)
        pixels = torch.randn(shape, device=self.device, requires_grad=True)
        targets = self.task.inversion_targets(self.batch_size, self.device, sort=True)
        optimizer = torch.optim.Adam([pixels], lr=c.lr_g, betas=(0.5, 0.99), **self.precision.optimizer_options())
        low = self.normalizer(torch.zeros(1, c.nc, 1, 1, device=self.device))[:, :channels]
        high = self.normalizer(torch.ones(1, c.nc, 1, 1, device=self.device))[:, :channels]

        best = BestBatch(self.device)
        with hooks_active(self.teacher_hooks + self.student_hooks):
            for _ in range(c.g_steps):
                view = repeat_channels(jitter_and_flip(pixels, self.flip), c.nc)
                with self.precision.autocast():
                    t_out = self.teacher(view)
                    s_out = self.student(view) if c.adv > 0 else None
                terms = {"oh": losses.one_hot(self.task, t_out, targets)}
                if s_out is not None:
                    terms["adv"] = losses.adversarial_js(s_out, t_out)
                    terms["bn"] = losses.bn_statistics(self.teacher_hooks, self.student_hooks, STUDENT_BN_WEIGHT)
                else:
                    terms["bn"] = losses.bn_statistics(self.teacher_hooks)
                terms["tv"] = total_variation(pixels)
                terms["l2"] = l2_prior(pixels)
                loss = losses.weighted_sum(terms, {"bn": c.bn, "oh": c.oh, "adv": c.adv, "tv": c.tv, "l2": c.l2},
                                           self.loss_terms)
                best.update(loss, pixels=pixels, **{f"term_{k}": v for k, v in terms.items()})
                optimizer.zero_grad(set_to_none=True)
                self.precision.backward(loss, inputs=[pixels], terms=terms)
                self.precision.step(optimizer)
                with torch.no_grad():
                    pixels.copy_(torch.maximum(torch.minimum(pixels, high), low))
        self.precision.guard.flush()   # before the best batch reaches the pool
        self.student.train()
        kept = pixels.detach() if self.keep_last else best.values["pixels"]
        images = self.normalizer.denormalize(repeat_channels(kept, c.nc)).clamp(0, 1)
        self.pool.add(images)
        return {"images": images, **best.report()}
