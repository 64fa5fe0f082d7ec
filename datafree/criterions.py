"""Pure loss functions; each takes logits (or images, features) and returns a tensor.

Every one of them runs in float32 outside autocast (``@float32``): under bf16 or fp16 autocast
only the networks' forwards change precision, never the objective (a bf16 softmax at T=20 turns
the KD gradient near convergence into noise).
"""
import functools

import torch
import torch.nn.functional as F


def _to_float32(value):
    if torch.is_tensor(value) and value.is_floating_point() and value.dtype != torch.float32:
        return value.float()
    return value


def float32(fn):
    """Run ``fn`` with autocast off and its floating tensor arguments cast to float32."""
    @functools.wraps(fn)
    def run_in_float32(*args, **kwargs):
        args = [_to_float32(a) for a in args]
        kwargs = {k: _to_float32(v) for k, v in kwargs.items()}
        device = next((a.device.type for a in (*args, *kwargs.values()) if torch.is_tensor(a)), "cpu")
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)
    return run_in_float32


@float32
def kldiv(student_logits, teacher_logits, T=1.0):
    """KL(teacher || student) of the temperature-softened distributions, times T^2, batch mean."""
    return kldiv_per_sample(student_logits, teacher_logits, T).mean()


@float32
def kldiv_per_sample(student_logits, teacher_logits, T=1.0):
    """KL(teacher || student) at temperature T (times T^2) for each sample: shape (N,), or
    (N, H, W) for each pixel of (N, C, H, W) segmentation logits."""
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    p_teacher = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="none").sum(dim=1) * (T * T)


def agreement_mask(student_logits, teacher_logits):
    """1.0 where student and teacher agree on the top-1 class, else 0.0: shape (N,) or (N, H, W)."""
    return (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float()


@float32
def adversarial_kl(student_logits, teacher_logits, weights=None):
    """Negative student-teacher KL, counted only where their top-1 agree (Fast DFKD's L_adv),
    averaged over samples (and over pixels for segmentation logits).

    Minimising it pushes the generator towards samples the student still gets wrong in
    distribution while both networks agree on the label. ``weights`` (N,) weigh the samples
    (every pixel of a sample alike).
    """
    mask = agreement_mask(student_logits, teacher_logits)
    if weights is not None:
        mask = mask * weights.view(-1, *[1] * (mask.dim() - 1))
    return -(kldiv_per_sample(student_logits, teacher_logits) * mask).mean()


@float32
def jsdiv(student_logits, teacher_logits, T=1.0):
    """The original release's 'JS divergence': 0.5 KL(M || P) + 0.5 KL(M || Q), batch mean.

    P, Q are the softmaxes at temperature T and M = (P + Q) / 2; all three are clamped to
    [0.01, 0.99] before the logarithms, as in the original. Summed over classes (dim 1) and
    averaged over everything else: samples, and pixels for (N, C, H, W) segmentation logits.
    """
    p = F.softmax(student_logits / T, dim=1)
    q = F.softmax(teacher_logits / T, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    kl_mp = F.kl_div(p.log(), m, reduction="none").sum(dim=1)
    kl_mq = F.kl_div(q.log(), m, reduction="none").sum(dim=1)
    return (0.5 * kl_mp + 0.5 * kl_mq).mean()


@float32
def total_variation(images):
    """Sum over the four neighbour directions of the mean absolute pixel difference."""
    diffs = (images[:, :, :, :-1] - images[:, :, :, 1:],
             images[:, :, :-1, :] - images[:, :, 1:, :],
             images[:, :, 1:, :-1] - images[:, :, :-1, 1:],
             images[:, :, :-1, :-1] - images[:, :, 1:, 1:])
    return sum(d.abs().mean() for d in diffs)


@float32
def l2_prior(images):
    """The L2 norm of the whole batch."""
    return torch.norm(images, 2)


@float32
def class_balance(logits):
    """Negative entropy of the batch's mean prediction (minimising it balances the classes)."""
    mean_prob = F.softmax(logits, dim=1).mean(dim=0)
    # A class whose probability underflows to 0 in every sample (a generator stuck on one class) would
    # make 0 * log 0 = nan; clamped, its term is ~0 with no gradient, and every other class is unchanged.
    mean_prob = mean_prob.clamp_min(torch.finfo(mean_prob.dtype).tiny)
    return (mean_prob * mean_prob.log()).sum()


@float32
def activation(features):
    """DAFL's activation term: minus the mean absolute feature activation."""
    return -features.abs().mean()


@float32
def info_nce(queries, keys, T):
    """Per-query InfoNCE: query i's positive is key i, every other key is a negative.

    queries: (N, D), keys: (M, D) with M >= N; returns (N,) losses.
    """
    logits = queries @ keys.t() / T
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device), reduction="none")


@float32
def cross_entropy(logits, targets, weights=None, ignore_index=-100):
    """Cross-entropy of ``logits`` (N, C[, H, W]) to integer ``targets``, averaged; ``weights`` (N,)
    weigh the samples (every pixel of a sample alike) before the mean over everything."""
    if weights is None:
        return F.cross_entropy(logits, targets, ignore_index=ignore_index)
    per_item = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
    return (weights.view(-1, *[1] * (per_item.dim() - 1)) * per_item).mean()


@float32
def l1_logits(student_logits, teacher_logits):
    """Mean absolute difference of the logits (DFAD's divergence and KD loss)."""
    return F.l1_loss(student_logits, teacher_logits)
