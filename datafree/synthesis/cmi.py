"""Contrastive Model Inversion (Fang et al., IJCAI 2021).

Each call re-initialises the generator and optimises it with a fresh z (Adam, lr_g for
both, betas 0.5, 0.999) for ``g_steps`` steps on the inversion loss of Fast DFKD (BN +
one-hot + masked adversarial KL, no warmup) plus ``cr`` times a contrastive term:

- instance features: the per-channel spatial means of the inputs of every teacher
  BatchNorm2d (of the four residual stages for a ResNet-34 teacher), concatenated;
- two views of each image: global (crop with padding 4 + flip) and local (random resized
  crop, scale 0.25-1, + flip), both normalised; the flips only where the dataset declares
  them valid (not for digits or MNIST);
- an MLP head (D -> D -> 256, L2-normalised output) trained alongside (Adam, lr_g);
- InfoNCE at temperature ``cr_T`` between projected local features (queries) and projected
  global features (keys, detached), over the batch and up to 4,096 (local, global) pairs
  drawn from a memory bank of 40,960 earlier best batches.

The best batch goes to the pool and its (local, global) features to the bank.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from datafree.augment import RandomResizedCropFlip
from datafree.criterions import info_nce
from datafree.hooks import hooks_active, register_bn_hooks
from datafree.models.generator import DEFAULT_NGF, DEFAULT_NZ, Generator, reinitialize

from . import losses
from .base import BestBatch, PoolSynthesizer, original_behaviours, register_synthesizer
from .flags import TERMS, method_flag

method_flag("cr", 1.0, "weight of CMI's contrastive term", group=TERMS)
method_flag("cr_T", 0.5, "temperature of CMI's contrastive term", group=TERMS)

LOCAL_CROP_SCALE = (0.25, 1.0)   # the local view: a random resized crop of a quarter to all of the image

BANK_SIZE = 40960
NEGATIVES = 4096
HEAD_DIM = 256


class ProjectionHead(nn.Module):
    """Linear-ReLU-Linear with an L2-normalised output."""

    def __init__(self, dim_in, dim_out, dim_hidden=None):
        super().__init__()
        dim_hidden = dim_hidden or dim_in
        self.head = nn.Sequential(nn.Linear(dim_in, dim_hidden), nn.ReLU(inplace=True),
                                  nn.Linear(dim_hidden, dim_out))

    def forward(self, x):
        return F.normalize(self.head(x).float(), dim=1, p=2)   # the InfoNCE it feeds is float32


class MemoryBank:
    """A ring buffer of feature rows; draws random rows among those written so far."""

    def __init__(self, size, dim, device):
        self.data = torch.zeros(size, dim, device=device)
        self.size, self.ptr, self.count = size, 0, 0

    def add(self, rows):
        n = len(rows)
        idx = (self.ptr + torch.arange(n, device=self.data.device)) % self.size
        self.data[idx] = rows.detach().to(self.data.device)
        self.ptr = (self.ptr + n) % self.size
        self.count += n

    def draw(self, k):
        filled = min(self.count, self.size)
        idx = torch.randperm(filled, device=self.data.device)[:k]
        return self.data[idx]

    def state_dict(self):
        return {"data": self.data.cpu(), "ptr": self.ptr, "count": self.count}

    def load_state_dict(self, state):
        self.data = state["data"].to(self.data.device)
        self.ptr, self.count = state["ptr"], state["count"]


class InstanceMeanHook:
    """Per-sample, per-channel spatial mean of a module's input: (N, C)."""

    def __init__(self, module):
        self.features = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.features = inputs[0].float().mean(dim=(2, 3))

    def remove(self):
        self._handle.remove()


def feature_modules(teacher, teacher_name):
    if teacher_name == "resnet34":
        return [teacher.layer1, teacher.layer2, teacher.layer3, teacher.layer4]
    return [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]


@register_synthesizer("cmi")
class CMISynthesizer(PoolSynthesizer):
    flags = frozenset({"adv", "bn", "oh", "cr", "cr_T", "lr_g", "g_steps", "cmi_init", "as_original"})
    loss_terms = ("bn", "oh", "adv", "cr")

    def __init__(self, teacher, student, config, device):
        super().__init__(teacher, student, config, device)
        c = config
        self.generator = Generator(nz=DEFAULT_NZ, ngf=DEFAULT_NGF, img_size=c.img_size, nc=self.synthesis_channels,
                                   out_channels=c.nc).to(device).train()
        self.bn_hooks = register_bn_hooks(teacher)
        self.feature_hooks = [InstanceMeanHook(m) for m in feature_modules(teacher, c.teacher)]
        with torch.no_grad():
            teacher.eval()
            teacher(torch.zeros(1, c.nc, c.img_size, c.img_size, device=device))
        dim = sum(h.features.shape[1] for h in self.feature_hooks)
        self.head = ProjectionHead(dim, HEAD_DIM).to(device).train()
        self.head_optimizer = torch.optim.Adam(self.head.parameters(), lr=c.lr_g, **self.precision.optimizer_options())
        self.bank = MemoryBank(BANK_SIZE, 2 * dim, device)
        self.local_aug = nn.Sequential(
            RandomResizedCropFlip(c.img_size, LOCAL_CROP_SCALE,
                                  hflip=self.task.hflip or "flips" in original_behaviours(c.as_original)),
            self.aug[-1],
        )

    def instance_features(self):
        return torch.cat([h.features for h in self.feature_hooks], dim=1)

    def contrastive_loss(self, local_feat, global_feat):
        """InfoNCE over this batch plus negatives from the bank; the two parts are averaged separately."""
        n = len(local_feat)
        cached = self.bank.draw(NEGATIVES)
        cached_local, cached_global = cached.chunk(2, dim=1)
        with self.precision.autocast():
            proj = self.head(torch.cat([local_feat, cached_local, global_feat, cached_global]))
        proj_local, proj_global = proj.chunk(2, dim=0)
        per_query = info_nce(proj_local, proj_global.detach(), self.config.cr_T)
        if len(cached):
            return per_query[:n].mean() + per_query[n:].mean()
        return per_query.mean()

    def synthesize(self):
        c = self.config
        self.calls += 1
        self.teacher.eval()
        self.student.eval()
        reinitialize(self.generator)
        z = torch.randn(self.batch_size, DEFAULT_NZ, device=self.device, requires_grad=True)
        targets = torch.randint(0, c.num_classes, (self.batch_size,), device=self.device).sort().values
        optimizer = torch.optim.Adam([*self.generator.parameters(), z], lr=c.lr_g, betas=(0.5, 0.999),
                                     **self.precision.optimizer_options())

        best = BestBatch(self.device)
        for _ in range(c.g_steps):
            with self.precision.autocast():
                images = self.generator(z)
            global_view, local_view = self.synthesis_aug(images), self.local_aug(images)
            with hooks_active(self.bn_hooks), self.precision.autocast():
                t_out = self.teacher(global_view)
            global_feat = self.instance_features()
            terms = {"bn": losses.bn_statistics(self.bn_hooks), "oh": losses.one_hot(self.task, t_out, targets)}
            if c.adv > 0:
                with self.precision.autocast():
                    s_out = self.student(global_view)
                terms["adv"] = losses.adversarial(self.task, s_out, t_out)
            features = {}
            if c.cr > 0:  # the original's fast variant runs with --cr 0: no second view at all
                with self.precision.autocast():
                    self.teacher(local_view)
                local_feat = self.instance_features()
                terms["cr"] = self.contrastive_loss(local_feat, global_feat)
                features["features"] = torch.cat([local_feat, global_feat], dim=1)
            loss = losses.weighted_sum(terms, {"bn": c.bn, "oh": c.oh, "adv": c.adv, "cr": c.cr}, self.loss_terms)
            best.update(loss, images=images, **features, **{f"term_{k}": v for k, v in terms.items()})
            optimizer.zero_grad(set_to_none=True)
            self.head_optimizer.zero_grad(set_to_none=True)
            self.precision.backward(loss, inputs=[z, *self.generator.parameters(), *self.head.parameters()],
                                    terms=terms)
            self.precision.step(optimizer, self.head_optimizer)
        self.precision.guard.flush()   # before the best batch reaches the pool and the bank
        self.student.train()
        self.pool.add(best.values["images"])
        if "features" in best.values:
            self.bank.add(best.values["features"])
        return {"images": best.values["images"], **best.report()}

    def state_dict(self):
        return {**super().state_dict(), "generator": self.generator.state_dict(), "head": self.head.state_dict(),
                "head_optimizer": self.head_optimizer.state_dict(), "bank": self.bank.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        self.head.load_state_dict(state["head"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])
        self.bank.load_state_dict(state["bank"])
