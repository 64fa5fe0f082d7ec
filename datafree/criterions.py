"""Pure loss functions; each takes logits and returns a scalar tensor."""
import torch.nn.functional as F


def kldiv(student_logits, teacher_logits, T=1.0):
    """KL(teacher || student) of the temperature-softened distributions, times T^2, batch mean."""
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    p_teacher = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (T * T)


def kldiv_per_sample(student_logits, teacher_logits, T=1.0):
    """KL(teacher || student) at temperature T (times T^2) for each sample: shape (N,)."""
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    p_teacher = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="none").sum(dim=1) * (T * T)


def agreement_mask(student_logits, teacher_logits):
    """1.0 where student and teacher agree on the top-1 class, else 0.0: shape (N,)."""
    return (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float()


def adversarial_kl(student_logits, teacher_logits):
    """Negative student-teacher KL, counted only where their top-1 agree (Fast DFKD's L_adv).

    Minimising it pushes the generator towards samples the student still gets wrong in
    distribution while both networks agree on the label.
    """
    mask = agreement_mask(student_logits, teacher_logits)
    return -(kldiv_per_sample(student_logits, teacher_logits) * mask).mean()
