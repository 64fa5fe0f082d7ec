"""Fast DFKD for 224x224 ImageNet images (the paper's Fast-50 runs): ``--method fast_meta_imagenet``.

What differs from ``fast_meta`` (fast.py):

- the generator is ``DeepGenerator``: a spatial latent z of nz x H/16 x W/16 per sample,
  four 2x upsampling conv blocks, sigmoid output;
- z is persistent: one latent per sample of the synthesis batch, meta-learned together with
  G. Each call starts G' = G and z' = z, takes ``g_steps`` Adam steps (betas 0.5, 0.999;
  ``lr_g`` for G', ``lr_z`` for z') on the inversion loss, then meta-updates both G and z
  (Reptile: gradient G - G' and z - z', unscaled as in the original ImageNet code; first-order
  MAML: the sum of the inner gradients) with one Adam meta optimiser whose learning rates are
  ``lr_g_meta`` for G and ``lr_z_meta`` for z;
- every ``reinit`` synthesis calls, z is drawn afresh and the meta optimiser restarts
  (G is kept); ``reinit 0`` never re-initialises;
- ``rand_label 1`` draws new random targets every call; ``rand_label 0`` keeps one target per
  latent (drawn with z, and again at each re-initialisation);
- synthesis augmentation: random resized crop (scale 0.75-1) + horizontal flip; the KD batches
  drawn from the pool get ImageNet's training augmentation (random resized crop, scale
  0.08-1, + flip), as the original's pool loader did with the dataset's transform (both flip
  only where the dataset declares flips valid);
- the images of the last inner step join the pool (the original's choice, not the best step).

Under torchrun each rank owns its share of the synthesis batch: its own z, targets and pool;
G's meta-gradient is averaged over the ranks (meta.py), so G stays the same everywhere.
"""
import torch

from datafree.augment import resized_crop_flip_normalize
from datafree.hooks import register_bn_hooks
from datafree.models.generator import DEFAULT_NGF, DEFAULT_NZ, DeepGenerator

from .base import KDBatch, PoolSynthesizer, register_synthesizer
from .fast import FastInversionLoss
from .flags import method_flag
from .meta import FirstOrderMAML, Reptile

method_flag("lr_g_meta", 1e-4, "fast_meta_imagenet: meta learning rate of the generator")
method_flag("lr_z_meta", 5e-3, "fast_meta_imagenet: meta learning rate of the persistent latents z")
method_flag("reinit", 0, "fast_meta_imagenet: draw new z and restart the meta optimiser every N synthesis calls "
                         "(0: never)")
method_flag("rand_label", 1, "fast_meta_imagenet: 1 new random targets every call, 0 one fixed target per latent")

SYNTHESIS_CROP_SCALE = (0.75, 1.0)
KD_CROP_SCALE = (0.08, 1.0)
# The original ImageNet code applies the Reptile difference G - G' as is (the CIFAR code scales it by 67).
REPTILE_SCALE = 1.0


@register_synthesizer("fast_meta_imagenet")
class FastMetaImageNetSynthesizer(FastInversionLoss, PoolSynthesizer):
    flags = frozenset({"adv", "bn", "oh", "lr_g", "lr_z", "lr_g_meta", "lr_z_meta", "g_steps", "bn_mmt",
                       "is_maml", "reinit", "rand_label", "cmi_init"})
    distributed_ready = True
    original_behaviours = frozenset()

    def __init__(self, teacher, student, config, device):
        super().__init__(teacher, student, config, device)
        c = config
        if c.img_size % 16:
            raise ValueError(f"fast_meta_imagenet needs an image size divisible by 16, not {c.img_size}")
        self.kd_aug = resized_crop_flip_normalize(c.img_size, KD_CROP_SCALE, c.mean, c.std, self.task.hflip).to(device)
        self.aug = self.synthesis_aug = resized_crop_flip_normalize(c.img_size, SYNTHESIS_CROP_SCALE, c.mean, c.std,
                                                                    self.task.hflip).to(device)
        self.generator = DeepGenerator(nz=DEFAULT_NZ, ngf=DEFAULT_NGF, img_size=c.img_size, nc=self.synthesis_channels,
                                       out_channels=c.nc).to(device)
        self.generator.train()
        self.hooks = register_bn_hooks(teacher, c.bn_mmt)
        self.z = self.targets = self.meta = None
        self.new_latents()

    def new_latents(self):
        """Draw z (and the fixed targets of ``rand_label 0``) and restart the meta optimiser."""
        c = self.config
        side = c.img_size // 16
        self.z = torch.randn(self.batch_size, DEFAULT_NZ, side, side, device=self.device).requires_grad_()
        self.targets = torch.randint(0, c.num_classes, (self.batch_size,), device=self.device)
        self.meta = self.make_meta()

    def make_meta(self):
        c = self.config
        if c.is_maml:
            return FirstOrderMAML(self.generator, lr=c.lr_g_meta, latent=self.z, latent_lr=c.lr_z_meta)
        return Reptile(self.generator, lr=c.lr_g_meta, scale=REPTILE_SCALE, latent=self.z, latent_lr=c.lr_z_meta)

    def synthesize(self):
        c = self.config
        self.calls += 1
        self.teacher.eval()
        self.student.eval()
        if c.reinit > 0 and self.calls % c.reinit == 0:
            self.new_latents()
        targets = self.targets
        if c.rand_label:
            targets = torch.randint(0, c.num_classes, (self.batch_size,), device=self.device)

        fast_generator = self.generator.clone()
        z = self.z.detach().clone().requires_grad_()
        optimizer = torch.optim.Adam([{"params": fast_generator.parameters()},
                                      {"params": [z], "lr": c.lr_z}], lr=c.lr_g, betas=(0.5, 0.999),
                                      **self.precision.optimizer_options())
        self.meta.begin()
        images, _, report = self.inner_steps(fast_generator, z, targets, optimizer, latent=z, keep="last")
        self.student.train()
        self.pool.add(images)
        return {"images": images, **report}

    def sample(self):
        with torch.no_grad():
            return KDBatch(self.kd_aug(self.pool.sample(self.sample_batch_size)))

    def state_dict(self):
        return {**super().state_dict(), "generator": self.generator.state_dict(), "z": self.z.detach(),
                "targets": self.targets, "meta": self.meta.state_dict(),
                "bn_hooks": [h.state_dict() for h in self.hooks]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        if state["z"].shape[0] != self.batch_size:
            # re-sharded for another process count: this process's share of the batch changed, so
            # its latents (and the meta optimiser that holds their moments) start afresh, G is kept
            self.new_latents()
        else:
            self.z = state["z"].to(self.device).clone().requires_grad_()
            self.targets = state["targets"].to(self.device)
            self.meta = self.make_meta()
            self.meta.load_state_dict(state["meta"])
        for hook, hook_state in zip(self.hooks, state["bn_hooks"]):
            hook.load_state_dict({k: None if v is None else v.to(self.device) for k, v in hook_state.items()})
