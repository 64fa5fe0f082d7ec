"""Generator-based baselines: a generator trained against the teacher, sampled fresh for every KD step.

One module, four registered presets that differ only in their loss terms. Each call takes
``g_steps`` Adam steps (lr_g, betas 0.5, 0.999; scaled with the student's schedule for dfad, constant for
the others, ``--lr_g_schedule`` to choose) on the generator, each on a fresh z, with

    bn * teacher BN loss + oh * CE(teacher, its own argmax) + act * -mean|teacher features|
  + balance * -entropy(mean teacher prediction) + adv * -D(student, teacher)

- dafl: one-hot + activation + balance, nz 512 (Chen et al., ICCV 2019);
- zskt: adversarial only, D = KL (Micaelli & Storkey, NeurIPS 2019);
- dfq: BN + one-hot + balance + adversarial, D = KL (Choi et al., CVPRW 2020);
- dfad: adversarial only with D = L1 between logits, also the KD loss (Fang et al., 2019).

The original release passed the teacher as the student of these methods, which made the
adversarial term zero (its gradient is rounding noise, which Adam still turns into steps); here it
is computed with the real student.
KD batches are drawn from the generator (no pool), so their sampling counts as synthesis time.
"""
import torch

from datafree.augment import Normalizer
from datafree.criterions import activation, class_balance, l1_logits
from datafree.hooks import hooks_active, register_bn_hooks
from datafree.models.generator import DEFAULT_NGF, DEFAULT_NZ, Generator

from . import losses
from .base import BaseSynthesizer, KDBatch, loss_report, register_synthesizer
from .flags import TERMS, method_flag

method_flag("act", 0.0, "weight of DAFL's activation term", group=TERMS)
method_flag("balance", 0.0, "weight of the class-balance term", group=TERMS)
LR_G_SCHEDULES = ("constant", "student")
method_flag("lr_g_schedule", None, "generator learning rate over the run (dafl, zskt, dfq, dfad): constant, or student "
                                   "(lr_g scaled with the student's schedule); default: student for dfad (DFAD's own "
                                   "release, run with --scheduler), constant for dafl, zskt and dfq (the Fast-Datafree "
                                   "release)", type=str, choices=LR_G_SCHEDULES)


class GenerativeSynthesizer(BaseSynthesizer):
    flags = frozenset({"adv", "bn", "oh", "act", "balance", "lr_g", "g_steps", "lr_g_schedule"})
    sampling_is_synthesis = True
    reads_teacher_features = True
    nz = DEFAULT_NZ

    def __init__(self, teacher, student, config, device):
        super().__init__(teacher, student, config, device)
        c = config
        self.generator = Generator(nz=self.nz, ngf=DEFAULT_NGF, img_size=c.img_size, nc=self.synthesis_channels,
                                   out_channels=c.nc).to(device).train()
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=c.lr_g, betas=(0.5, 0.999),
                                          **self.precision.optimizer_options())
        self.normalizer = Normalizer(c.mean, c.std).to(device)
        self.hooks = register_bn_hooks(teacher) if c.bn > 0 else []

    loss_terms = ("oh", "act", "balance", "bn", "adv")
    lr_g_schedule = "constant"   # the method's default, where --lr_g_schedule is not given
    l1_divergence = False    # DFAD: the generator maximises the L1 distance of the logits, not KL

    def generator_loss(self, inputs):
        c = self.config
        with self.precision.autocast():
            t_out, t_feat = self.teacher(inputs, return_features=True)
            s_out = self.student(inputs) if c.adv > 0 else None
        terms = {"oh": losses.one_hot(self.task, t_out, t_out.argmax(dim=1)), "act": activation(t_feat),
                 "balance": class_balance(t_out)}
        if self.hooks:
            terms["bn"] = losses.bn_statistics(self.hooks)
        if s_out is not None:
            terms["adv"] = losses.adversarial_divergence(s_out, t_out, l1=self.l1_divergence)
        weights = {"bn": c.bn, "oh": c.oh, "act": c.act, "balance": c.balance, "adv": c.adv}
        return losses.weighted_sum(terms, weights, self.loss_terms), terms

    def synthesize(self):
        self.calls += 1
        self.teacher.eval()
        self.student.eval()
        with hooks_active(self.hooks):
            for _ in range(self.config.g_steps):
                z = torch.randn(self.batch_size, self.nz, device=self.device)
                with self.precision.autocast():
                    images = self.generator(z)
                loss, terms = self.generator_loss(self.normalizer(images))
                self.optimizer.zero_grad(set_to_none=True)
                self.precision.backward(loss, inputs=list(self.generator.parameters()), terms=terms)
                self.precision.step(self.optimizer)
        self.precision.guard.flush()
        self.student.train()
        return {"images": images.detach().float(), **loss_report(loss, terms)}

    def follow_student_lr(self, scale):
        if (self.config.lr_g_schedule or self.lr_g_schedule) == "student":
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.lr_g * scale

    @torch.no_grad()
    def sample(self):
        z = torch.randn(self.sample_batch_size, self.nz, device=self.device)
        with self.precision.autocast():
            return KDBatch(self.normalizer(self.generator(z)).float())

    def state_dict(self):
        return {**super().state_dict(), "generator": self.generator.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])


@register_synthesizer("dafl")
class DAFLSynthesizer(GenerativeSynthesizer):
    nz = 512


@register_synthesizer("zskt")
class ZSKTSynthesizer(GenerativeSynthesizer):
    pass


@register_synthesizer("dfq")
class DFQSynthesizer(GenerativeSynthesizer):
    pass


@register_synthesizer("dfad")
class DFADSynthesizer(GenerativeSynthesizer):
    l1_divergence = True
    # DFAD's release steps its generator's lr down with the student's; with a constant lr_g (Fast-Datafree's DFAD)
    # the generator overpowers the student once the student's lr is low (docs/fashion-mnist.md)
    lr_g_schedule = "student"

    def kd_loss(self, batch, student_logits, teacher_logits):
        return l1_logits(student_logits, teacher_logits)
