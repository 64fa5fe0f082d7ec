"""SSD-KD (Liu et al., CVPR 2024, "Small Scale Data-Free Knowledge Distillation"), built from
the paper's description: its authors released no code.

Synthesis is fast_meta's (a meta-learned generator, k steps per batch), but the synthetic set
is a small fixed-size replay buffer (``PrioritizedPool``; by default 10% of the real training
set's size) that each call updates partially. Two functions shape what is learned:

- the modulating function phi balances samples by *diversity* (a sample whose teacher-predicted
  class is frequent in the buffer weighs less) and *difficulty* (a focal factor
  ``(1 - teacher confidence)^gamma`` favours samples the teacher is unsure of). phi weighs the
  per-sample inversion terms (one-hot and adversarial; the BN term is a batch statistic) and
  the per-sample KD loss, and chooses which new images enter a full buffer;
- the priority sampling function draws KD batches by priority (each image's latest
  teacher-student KL, refreshed whenever it is drawn) with importance-sampling weights
  (exponent beta, rising linearly to 1 over the run) that correct the bias of the draws.

``kd_loss`` refers to the batch that the last ``sample()`` returned (the engine calls them in
that order), so the priorities of exactly the drawn images are refreshed. Every choice beyond
the paper is a flag; README section "SSD-KD: what is from the paper and what is ours".
"""
import math

import torch
import torch.nn.functional as F

from datafree.augment import Normalizer
from datafree.criterions import kldiv_per_sample
from datafree.pool import PrioritizedPool

from .base import pool_options, register_synthesizer
from .fast import FastMetaSynthesizer

BUFFER_SHARE = 0.1   # the paper's buffer: 10% of the original training set


def modulating_weights(teacher_logits, class_counts, gamma, max_weight=None):
    """phi = diversity x difficulty per sample, normalised to mean 1 and capped at
    ``max_weight``: shape (N,).

    diversity_i = (1 / K) / freq(c_i), with c_i the teacher's class of sample i and freq the
    Laplace-smoothed share of c_i among ``class_counts`` (the buffer) plus this batch;
    difficulty_i = (1 - max softmax_i)^gamma. The cap matters: with a confident teacher the
    focal factor spans orders of magnitude, and uncapped the few unsure samples of a batch
    would carry all of its weight (measured on digits: phi from 1e-8 to 19, training unstable).
    """
    probs = F.softmax(teacher_logits.detach().float(), dim=1)
    confidence, predicted = probs.max(dim=1)
    num_classes = probs.shape[1]
    counts = class_counts.float() + torch.bincount(predicted, minlength=num_classes).float()
    freq = (counts + 1) / (counts.sum() + num_classes)
    diversity = (1.0 / num_classes) / freq[predicted]
    difficulty = (1 - confidence).clamp_min(1e-6) ** gamma
    phi = diversity * difficulty
    phi = phi / phi.mean()
    return phi if max_weight is None else phi.clamp(max=max_weight)


def importance_beta(beta0, calls, total_calls):
    """beta rises linearly from beta0 at the first call to 1 at the last (as in PER)."""
    return beta0 + (1 - beta0) * min(1.0, calls / max(total_calls, 1))


@register_synthesizer("ssd")
class SSDSynthesizer(FastMetaSynthesizer):
    flags = (FastMetaSynthesizer.flags - {"cmi_init"}) | {
        "ssd_buffer_size", "ssd_gamma", "ssd_beta", "ssd_alpha", "ssd_replace", "ssd_replace_rule", "ssd_max_weight"}
    distributed_ready = False
    tasks = frozenset({"classification"})   # per-sample priorities and class counts need one class per image

    def __init__(self, teacher, student, config, device):
        super().__init__(teacher, student, config, device)
        c = config
        capacity = c.ssd_buffer_size or math.ceil(BUFFER_SHARE * (c.train_size or 0))
        if capacity < 1:
            raise ValueError("SSD-KD needs --ssd_buffer_size (the training-set size of this dataset is unknown)")
        self.pool.close()
        self.pool = PrioritizedPool(device, capacity, alpha=c.ssd_alpha, replace=c.ssd_replace,
                                    rule=c.ssd_replace_rule, **pool_options(c))
        self.normalizer = Normalizer(c.mean, c.std).to(device)
        self.total_calls = c.epochs * (c.ep_steps // c.kd_steps)
        self.drawn = None    # (indices, KD weights) of the batch the last sample() returned

    def class_counts(self):
        return torch.bincount(self.pool.label, minlength=self.config.num_classes)

    def sample_weights(self, teacher_logits):
        return modulating_weights(teacher_logits, self.class_counts(), self.config.ssd_gamma,
                                  self.config.ssd_max_weight)

    @torch.no_grad()
    def add_to_pool(self, images):
        logits = self.teacher(self.normalizer(images))
        phi = modulating_weights(logits, self.class_counts(), self.config.ssd_gamma, self.config.ssd_max_weight)
        self.pool.add(images, phi, logits.argmax(dim=1))

    def sample(self):
        beta = importance_beta(self.config.ssd_beta, self.calls, self.total_calls)
        with torch.no_grad():
            images, index, is_weights = self.pool.sample_prioritized(self.sample_batch_size, beta)
            self.drawn = (index, is_weights * self.pool.weight[index])
            return self.aug(images)

    def kd_loss(self, student_logits, teacher_logits):
        if self.drawn is None:
            raise RuntimeError("SSD-KD's kd_loss needs the batch of a preceding sample() call")
        index, weights = self.drawn
        per_sample = kldiv_per_sample(student_logits, teacher_logits, T=self.config.T)
        self.pool.update_priorities(index, per_sample.detach())
        self.drawn = None
        return (weights.to(per_sample.dtype) * per_sample).mean()
