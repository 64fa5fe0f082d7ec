"""Fast DFKD (AAAI-22): a generator that needs only k synthesis steps per batch.

``fast``: the generator G and a fresh latent z are optimised together for k steps per call
(sequential updates, no meta-learning). ``fast_meta``: each call clones G into a fast
generator G', optimises G' and z for k steps, then meta-updates G from G' (first-order MAML
or Reptile, see meta.py). Both minimise the inversion loss

    bn * sum_l ||mu_l - running_mean_l|| + ||var_l - running_var_l||   (teacher BN layers)
  + oh * CE(teacher(x), y)                                              (random labels y)
  + adv * -KL(student || teacher) on samples whose top-1 agree          (after warmup)

on augmented, normalised images x = aug(G'(z)); the lowest-loss batch of the k steps goes
to the pool, from which the KD steps draw augmented batches. The task object supplies the
task-dependent pieces: for segmentation, y is the teacher's own per-pixel argmax, the KL and
the agreement mask are per pixel, the generator is fully convolutional and the
augmentation is a random resized crop (see datafree/tasks.py).
"""
import torch
import torch.nn as nn

from datafree import distributed
from datafree.hooks import hooks_active, register_bn_hooks
from datafree.models.generator import DEFAULT_NGF, DEFAULT_NZ, reset_bn_affine

from . import losses
from .base import BestBatch, PoolSynthesizer, loss_report, register_synthesizer
from .flags import method_flag
from .meta import FirstOrderMAML, Reptile

method_flag("lr_z", 1e-3, "learning rate of the latent code")
method_flag("reset_l0", 0, "re-initialise the generator's first layers once, 120 calls after warmup")
method_flag("reset_bn", 0, "also re-initialise the generator's BN affine parameters then")
method_flag("bn_mmt", 0.0, "momentum of the BN statistics (0: off)")
method_flag("is_maml", 1, "meta-gradient: 1 first-order MAML, 0 Reptile")

# The original re-initialises the generator's first layers once, at this many synthesis
# calls after the warmup.
RESET_AFTER_WARMUP = 120


def reset_first_layers(generator):
    """Re-initialise the first weight layer and the first BatchNorm (N(0, 0.02) weights, zero bias)."""
    for layer in generator.first_layers():
        nn.init.normal_(layer.weight, 0.0, 0.02)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def update_bn_momentum(hooks):
    """Fold the latest batch into each hook's moving average; under torchrun the averages are
    then averaged over the ranks, so every rank keeps the same (restorable) BN targets."""
    for hook in hooks:
        hook.update_momentum()
    distributed.average_tensors([t for h in hooks for t in (h.ema_mean, h.ema_var)])


class FastInversionLoss:
    """Fast DFKD's inversion loss and its inner loop, shared by the synthesizers that use them (fast,
    fast_meta, fast_meta_imagenet, ssd; NAYER the loss). The host class provides ``config``,
    ``synthesis_aug``, ``teacher``, ``student``, ``hooks``, ``task``, ``precision``, ``calls`` and, for the
    inner loop, ``meta`` (None without meta-learning) and ``pool_needs_logits``."""

    pool_needs_logits = False

    def sample_weights(self, teacher_logits):
        """Per-sample weights of the one-hot and adversarial terms; None: a plain batch mean."""
        return None

    def adversarial_on(self):
        """Whether the adversarial term counts in this call: Fast's rule compares the calls made
        with the warm-up epochs, as the original does."""
        return self.calls >= self.config.warmup

    loss_terms = ("bn", "oh", "adv")

    def inversion_loss(self, images, targets):
        """The weighted loss and its terms for one batch of generated images in [0, 1]."""
        c = self.config
        inputs = self.synthesis_aug(images)
        with self.precision.autocast():
            t_out = self.teacher(inputs)
            s_out = self.student(inputs) if c.adv > 0 and self.adversarial_on() else None
        self.teacher_logits = t_out.detach()
        weights = self.sample_weights(t_out)
        terms = {"bn": losses.bn_statistics(self.hooks), "oh": losses.one_hot(self.task, t_out, targets, weights)}
        if s_out is not None:
            terms["adv"] = losses.adversarial(self.task, s_out, t_out, weights)
        return losses.weighted_sum(terms, {"bn": c.bn, "oh": c.oh, "adv": c.adv}, self.loss_terms), terms

    def inner_steps(self, fast_generator, z, targets, optimizer, latent=None, keep="best"):
        """Fast's k = g_steps steps on the fast generator G' and its latent z, on the inversion loss; the
        meta strategy (``self.meta``, if any) collects its meta-gradient after every backward pass and
        takes its step at the end (``latent``: the fast copy of a meta-learned latent, as fast_meta_imagenet
        has). ``keep``: which step's images the call returns, the lowest-loss one ("best") or the last.
        Returns (images, the teacher's logits of the kept step where ``pool_needs_logits``, loss report)."""
        best = BestBatch(self.device)
        with hooks_active(self.hooks):
            for _ in range(self.config.g_steps):
                with self.precision.autocast():
                    images = fast_generator(z)
                loss, terms = self.inversion_loss(images, targets)
                if keep == "best":
                    kept = {"teacher_logits": self.teacher_logits} if self.pool_needs_logits else {}
                    best.update(loss, images=images, **kept, **{f"term_{k}": v for k, v in terms.items()})
                optimizer.zero_grad(set_to_none=True)
                self.precision.backward(loss, inputs=[z, *fast_generator.parameters()], terms=terms)
                self.precision.unscale(optimizer)
                # An overflowed float16 step is skipped by the scaler; keep it out of the meta-gradient too.
                self.precision.drop_overflowed(optimizer)
                if self.meta is not None:
                    self.meta.after_inner_backward(fast_generator, latent)
                self.precision.step(optimizer)
        self.precision.guard.flush()   # before the call's results reach G, the BN targets or the pool
        if self.config.bn_mmt > 0:
            update_bn_momentum(self.hooks)
        if self.meta is not None:
            self.meta.finish(fast_generator, latent)
        if keep == "best":
            return best.values["images"], best.values.get("teacher_logits"), best.report()
        return images.detach().float(), None, loss_report(loss, terms)


@register_synthesizer("fast")
class FastSynthesizer(FastInversionLoss, PoolSynthesizer):
    flags = frozenset({"adv", "bn", "oh", "lr_g", "lr_z", "g_steps", "bn_mmt", "cmi_init", "as_original"})
    tasks = frozenset({"classification", "segmentation"})
    meta_learning = False

    def __init__(self, teacher, student, config, device):
        super().__init__(teacher, student, config, device)
        c = config
        self.generator = self.task.make_generator(DEFAULT_NZ, DEFAULT_NGF, c.img_size, self.synthesis_channels,
                                                  out_channels=c.nc).to(device)
        self.generator.train()
        self.hooks = register_bn_hooks(teacher, c.bn_mmt)
        self.meta = None
        if self.meta_learning:
            meta_cls = FirstOrderMAML if c.is_maml else Reptile
            self.meta = meta_cls(self.generator, lr=c.lr_g * c.g_steps)

    def synthesize(self):
        c = self.config
        self.calls += 1
        self.teacher.eval()
        self.student.eval()
        if self.meta is not None and self.calls == RESET_AFTER_WARMUP + c.warmup:
            if c.reset_l0:
                reset_first_layers(self.generator)
            if c.reset_bn:
                reset_bn_affine(self.generator)

        z = torch.randn(self.batch_size, *self.generator.latent_shape, device=self.device, requires_grad=True)
        targets = self.task.inversion_targets(self.batch_size, self.device)
        fast_generator = self.generator.clone() if self.meta is not None else self.generator
        optimizer = torch.optim.Adam([{"params": fast_generator.parameters()},
                                      {"params": [z], "lr": c.lr_z}], lr=c.lr_g, betas=(0.5, 0.999),
                                      **self.precision.optimizer_options())
        if self.meta is not None:
            self.meta.begin()
        images, teacher_logits, report = self.inner_steps(fast_generator, z, targets, optimizer)
        self.student.train()
        self.add_to_pool(images, teacher_logits)
        return {"images": images, **report}

    def add_to_pool(self, images, teacher_logits=None):
        """Store the best step's images; ``teacher_logits`` (when ``pool_needs_logits``) are the
        teacher's on their augmented view, kept from the inversion loss (no second teacher pass)."""
        self.pool.add(images)

    def state_dict(self):
        return {**super().state_dict(),
                "generator": self.generator.state_dict(),
                "meta": self.meta.state_dict() if self.meta is not None else None,
                "bn_hooks": [h.state_dict() for h in self.hooks]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        if self.meta is not None:
            self.meta.load_state_dict(state["meta"])
        for hook, hook_state in zip(self.hooks, state["bn_hooks"]):
            hook.load_state_dict({k: None if v is None else v.to(self.device) for k, v in hook_state.items()})


@register_synthesizer("fast_meta")
class FastMetaSynthesizer(FastSynthesizer):
    flags = FastSynthesizer.flags | {"is_maml", "reset_l0", "reset_bn"}
    meta_learning = True
    distributed_ready = True
