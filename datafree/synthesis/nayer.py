"""NAYER (Tran et al., CVPR 2024, "NAYER: Noisy Layer Data Generation for Efficient and Effective
Data-free Knowledge Distillation"): ``--method nayer``.

The generator's input is not a random latent but a fixed embedding of each class's name
(datafree/label_embedding.py; CLIP text features of "a image of {class}" in the paper), through a
BatchNorm1d and a *noisy layer*: one Linear(dim -> le_emb_size) per group of ``num_classes``
consecutive samples of the batch, re-drawn (weights N(0, 1), zero bias) before every synthesis
round, so that a class gets another code in every group and every round while the generator
body learns across rounds. The body is Fast's generator (for images above 64 pixels: a linear
projection into the 224x224-style ``DeepGenerator``); it is rebuilt with PyTorch's default
initialisation at the first round of epoch e when e % g_life == 0 or (e - warmup) % g_life == 0
(every ``g_life`` epochs, and when KD starts: NAYER's rule).

One epoch (``epoch_plan``): ``gwp_loops`` synthesis rounds in the warm-up epochs, ``g_loops``
after them, then the KD steps. One round (one ``synthesize`` call):

- targets: every class once per group, then distinct random classes for a last, partial group;
- re-draw the noisy layers; a new Adam(generator and noisy layers, lr_g, betas 0.5, 0.999);
- ``g_steps`` steps on Fast's inversion loss (fast.py): bn * BN statistics + oh * CE(teacher,
  targets) + adv * L_adv, the adversarial term (minus the student-teacher KL on the samples whose
  top-1 agree) only after the warm-up epochs;
- the lowest-loss step's images go to the pool; the BN moving averages take in the round (bn_mmt).

Under torchrun every rank synthesises its share of the batch with its own noisy layers (drawn
from its own random stream, like its own latents); the generator is one: built from a stream every
rank shares, its gradients and BatchNorm statistics averaged over the ranks. The noisy layers are
not checkpointed: they are re-drawn before any use, and a checkpoint is only written between rounds.

docs/nayer.md: what is NAYER's, what is ours, and the differences from its code.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from datafree import distributed
from datafree.errors import UsageError
from datafree.hooks import hooks_active, register_bn_hooks
from datafree.label_embedding import DEFAULT_CLIP_MODEL, check_source, label_embeddings
from datafree.models.generator import DEFAULT_NGF, DeepGenerator, Generator

from .base import BestBatch, PoolSynthesizer, register_synthesizer
from .fast import FastInversionLoss, update_bn_momentum
from .flags import method_flag

NAYER = "NAYER (--method nayer; docs/nayer.md)"
method_flag("g_life", 10, "epochs a generator lives: it is rebuilt every g_life epochs and when KD starts", group=NAYER)
method_flag("g_loops", 1, "synthesis rounds per epoch after the warm-up", group=NAYER)
method_flag("gwp_loops", 1, "synthesis rounds per warm-up epoch", group=NAYER)
method_flag("le_emb_size", 1000, "output size of each noisy layer (the generator's input size)", group=NAYER)
method_flag("label_embedding", "auto", "the class embedding the generator starts from: clip (CLIP text features "
                                       "of the class names, pip install .[clip]), hash (offline, made from the names "
                                       "alone), a (classes x dim) .pickle/.pt/.npy file, or auto: clip where the CLIP "
                                       "model is on this machine (never downloaded), else hash",
            metavar="auto|clip|hash|FILE", group=NAYER)
method_flag("clip_model", DEFAULT_CLIP_MODEL, "the CLIP text model of --label_embedding clip: a Hugging Face "
                                              "name or a local folder", group=NAYER)

DEEP_ABOVE = 64   # larger images get the DeepGenerator body (NAYER's ImageNet generator)


def balanced_targets(n, num_classes, device):
    """``n`` labels: 0..K-1 repeated for every full group of K, then distinct random classes."""
    full = torch.arange(num_classes, device=device).repeat(n // num_classes)
    rest = torch.randperm(num_classes, device=device)[:n % num_classes]
    return torch.cat([full, rest])


class NoisyLayers(nn.Module):
    """One Linear(in_dim -> out_dim) per group of ``group_size`` consecutive samples."""

    def __init__(self, groups, group_size, in_dim, out_dim):
        super().__init__()
        self.group_size = group_size
        self.weight = nn.Parameter(torch.empty(groups, out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(groups, out_dim))
        self.redraw()

    @torch.no_grad()
    def redraw(self):
        """NAYER's re-initialisation: weights N(0, 1), zero bias."""
        self.weight.normal_(0.0, 1.0)
        self.bias.zero_()

    def forward(self, x):
        full = len(x) // self.group_size          # complete groups: one batched product
        grouped = x[:full * self.group_size].view(full, self.group_size, x.shape[1])
        out = torch.baddbmm(self.bias[:full].unsqueeze(1), grouped, self.weight[:full].transpose(1, 2)).flatten(0, 1)
        if len(x) > len(out):                       # a last, partial group
            out = torch.cat([out, F.linear(x[len(out):], self.weight[full], self.bias[full])])
        return out


def image_body(nz, ngf, img_size, nc, out_channels):
    """The generator body from a code of ``nz`` values to an image: Fast's Generator, or above
    DEEP_ABOVE pixels a linear projection to (2 ngf, s/16, s/16) and a DeepGenerator."""
    if img_size <= DEEP_ABOVE:
        if img_size % 4:
            raise UsageError(f"nayer's generator needs an image size divisible by 4, not {img_size}")
        return Generator(nz=nz, ngf=ngf, img_size=img_size, nc=nc, out_channels=out_channels)
    if img_size % 16:
        raise UsageError(f"nayer's generator for images above {DEEP_ABOVE} pixels needs a size divisible by 16, "
                         f"not {img_size}")
    side = img_size // 16
    return nn.Sequential(nn.Linear(nz, 2 * ngf * side * side), nn.Unflatten(1, (2 * ngf, side, side)),
                         DeepGenerator(nz=2 * ngf, ngf=ngf, img_size=img_size, nc=nc, out_channels=out_channels))


class NayerGenerator(nn.Module):
    """label embedding[targets] -> BatchNorm1d -> noisy layers (given) -> body -> image in [0, 1]."""

    def __init__(self, embedding, le_emb_size, ngf, img_size, nc, out_channels=None):
        super().__init__()
        self.register_buffer("label_embedding", embedding.float().clone())
        self.label_norm = nn.BatchNorm1d(embedding.shape[1])
        self.body = image_body(le_emb_size, ngf, img_size, nc, out_channels)

    def forward(self, targets, noisy_layers):
        return self.body(noisy_layers(self.label_norm(self.label_embedding[targets])))


@register_synthesizer("nayer")
class NayerSynthesizer(FastInversionLoss, PoolSynthesizer):
    flags = frozenset({"adv", "bn", "oh", "lr_g", "g_steps", "bn_mmt", "g_life", "g_loops", "gwp_loops",
                       "le_emb_size", "label_embedding", "clip_model", "cmi_init", "as_original"})
    distributed_ready = True

    @classmethod
    def check_args(cls, args):
        for flag in ("g_life", "g_loops", "gwp_loops", "le_emb_size", "g_steps"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag} ({getattr(args, flag)}) must be at least 1")
        check_source(args.label_embedding)

    def __init__(self, teacher, student, config, device):
        super().__init__(teacher, student, config, device)
        c = config
        embedding = label_embeddings(c.label_embedding, c.num_classes, getattr(c, "class_names", None), c.clip_model)
        # The generator's (re)initialisations come from a stream of their own, seeded alike on every
        # rank (the models are built before each rank gets its own stream), so that the ranks share one.
        self.init_rng = torch.Generator().manual_seed(int(torch.randint(2 ** 62, ())))
        self.generator = self.fresh_generator(embedding)
        groups = math.ceil(self.batch_size / c.num_classes)
        self.noisy_layers = NoisyLayers(groups, c.num_classes, embedding.shape[1], c.le_emb_size).to(device)
        self.hooks = register_bn_hooks(teacher, c.bn_mmt)
        self.epoch = 0      # of the current call, for the adversarial term

    def fresh_generator(self, embedding):
        seed = int(torch.randint(2 ** 62, (), generator=self.init_rng))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            generator = NayerGenerator(embedding, self.config.le_emb_size, DEFAULT_NGF, self.config.img_size,
                                       self.synthesis_channels, out_channels=self.config.nc)
        return generator.to(self.device).train()

    def rebuild_generator(self):
        """A new generator in place (the module object stays: its memory format, its device)."""
        self.generator.load_state_dict(self.fresh_generator(self.generator.label_embedding).state_dict())

    def epoch_plan(self, epoch):
        """The epoch's synthesis rounds first (gwp_loops in warm-up, g_loops after), then its KD steps
        (kd_steps per round, ep_steps in all)."""
        c = self.config
        loops = c.gwp_loops if epoch < c.warmup else c.g_loops
        return [(loops, c.kd_steps)] + [(0, c.kd_steps)] * (c.ep_steps // c.kd_steps - 1)

    def position(self, call):
        """(epoch, round in that epoch) of the run's synthesis call number ``call`` (from 0), as the
        epoch plans place it."""
        c = self.config
        warm_calls = c.warmup * c.gwp_loops
        if call < warm_calls:
            return divmod(call, c.gwp_loops)
        epoch, round_ = divmod(call - warm_calls, c.g_loops)
        return c.warmup + epoch, round_

    def generator_expires(self, epoch):
        """Whether the generator is rebuilt as ``epoch`` starts: every g_life epochs, and when KD starts."""
        c = self.config
        return epoch % c.g_life == 0 or (epoch - c.warmup) % c.g_life == 0

    def adversarial_on(self):
        return self.epoch >= self.config.warmup

    def synthesize(self):
        c = self.config
        self.epoch, round_ = self.position(self.calls)
        self.calls += 1
        if round_ == 0 and self.generator_expires(self.epoch):
            self.rebuild_generator()
        self.teacher.eval()
        self.student.eval()
        self.noisy_layers.redraw()
        targets = balanced_targets(self.batch_size, c.num_classes, self.device)
        params = [*self.generator.parameters(), *self.noisy_layers.parameters()]
        optimizer = torch.optim.Adam(params, lr=c.lr_g, betas=(0.5, 0.999), **self.precision.optimizer_options())
        best = BestBatch(self.device)
        with hooks_active(self.hooks):
            for _ in range(c.g_steps):
                with self.precision.autocast():
                    images = self.generator(targets, self.noisy_layers)
                loss, terms = self.inversion_loss(images, targets)
                best.update(loss, images=images, **{f"term_{k}": v for k, v in terms.items()})
                optimizer.zero_grad(set_to_none=True)
                if self.precision.backward(loss, inputs=params, terms=terms):
                    distributed.average_gradients(self.generator.parameters())   # one generator; own noisy layers
                self.precision.step(optimizer)
        self.precision.guard.flush()   # before the round's results reach the BN targets or the pool
        distributed.average_tensors([t for m in self.generator.modules()
                                     if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
                                     for t in (m.running_mean, m.running_var)])
        if c.bn_mmt > 0:
            update_bn_momentum(self.hooks)
        self.student.train()
        self.pool.add(best.values["images"])
        return {"images": best.values["images"], **best.report()}

    def state_dict(self):
        return {**super().state_dict(), "generator": self.generator.state_dict(),
                "init_rng": self.init_rng.get_state(), "bn_hooks": [h.state_dict() for h in self.hooks]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        self.init_rng.set_state(state["init_rng"].cpu())
        for hook, hook_state in zip(self.hooks, state["bn_hooks"]):
            hook.load_state_dict({k: None if v is None else v.to(self.device) for k, v in hook_state.items()})
