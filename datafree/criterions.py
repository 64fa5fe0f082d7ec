"""Pure loss functions; each takes logits and returns a scalar tensor."""
import torch
import torch.nn.functional as F


def kldiv(student_logits, teacher_logits, T=1.0):
    """KL(teacher || student) of the temperature-softened distributions, times T^2, batch mean."""
    return kldiv_per_sample(student_logits, teacher_logits, T).mean()


def kldiv_per_sample(student_logits, teacher_logits, T=1.0):
    """KL(teacher || student) at temperature T (times T^2) for each sample: shape (N,), or
    (N, H, W) for each pixel of (N, C, H, W) segmentation logits."""
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    p_teacher = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="none").sum(dim=1) * (T * T)


def agreement_mask(student_logits, teacher_logits):
    """1.0 where student and teacher agree on the top-1 class, else 0.0: shape (N,) or (N, H, W)."""
    return (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float()


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


def total_variation(images):
    """Sum over the four neighbour directions of the mean absolute pixel difference."""
    diffs = (images[:, :, :, :-1] - images[:, :, :, 1:],
             images[:, :, :-1, :] - images[:, :, 1:, :],
             images[:, :, 1:, :-1] - images[:, :, :-1, 1:],
             images[:, :, :-1, :-1] - images[:, :, 1:, 1:])
    return sum(d.abs().mean() for d in diffs)


def l2_prior(images):
    """The L2 norm of the whole batch."""
    return torch.norm(images, 2)


def class_balance(logits):
    """Negative entropy of the batch's mean prediction (minimising it balances the classes)."""
    mean_prob = F.softmax(logits, dim=1).mean(dim=0)
    # A class whose probability underflows to 0 in every sample (a generator stuck on one class) would
    # make 0 * log 0 = nan; clamped, its term is ~0 with no gradient, and every other class is unchanged.
    mean_prob = mean_prob.clamp_min(torch.finfo(mean_prob.dtype).tiny)
    return (mean_prob * mean_prob.log()).sum()


def activation(features):
    """DAFL's activation term: minus the mean absolute feature activation."""
    return -features.abs().mean()


def info_nce(queries, keys, T):
    """Per-query InfoNCE: query i's positive is key i, every other key is a negative.

    queries: (N, D), keys: (M, D) with M >= N; returns (N,) losses.
    """
    logits = queries @ keys.t() / T
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device), reduction="none")
