"""Pure loss functions; each takes logits and returns a scalar tensor."""
import torch.nn.functional as F


def kldiv(student_logits, teacher_logits, T=1.0):
    """KL(teacher || student) of the temperature-softened distributions, times T^2, batch mean."""
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    p_teacher = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (T * T)
