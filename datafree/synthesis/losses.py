"""The inversion loss, composed once: every method's synthesis objective is a weighted sum of named terms.

Each method declares its terms, in the order they are summed (``SynthesisTerms``), and takes their
weights from its flags (bn, oh, adv, ...); the terms themselves are computed here and nowhere else:

- ``bn``: the distance of the batch's feature statistics to the teacher's BatchNorm statistics
  (datafree/hooks.py); DeepInversion subtracts a small multiple of the student's (its competition);
- ``oh``: cross-entropy of the teacher's logits to the targets, through the task (random labels for
  classification, the teacher's own argmax for segmentation), optionally weighted per sample;
- ``adv``: the adversarial term. Fast DFKD's (also CMI's and NAYER's): minus the student-teacher KL
  where their top-1 agree, through the task; DeepInversion's: minus the JS divergence at T=3; the
  generator baselines': minus a divergence (KL, or DFAD's L1 between logits).

Every term is float32 whatever autocast is on (datafree/criterions.py), and the weighted sum keeps
the declared order, so a method's loss is the same number whichever way it is assembled.
"""
from datafree import criterions
from datafree.hooks import bn_loss

# DeepInversion's adversarial term: the JS divergence at this temperature, as the original release.
JS_TEMPERATURE = 3.0


def bn_statistics(hooks, student_hooks=(), student_weight=0.0):
    """The teacher's BN-statistics distance, minus ``student_weight`` times the student's where given."""
    loss = bn_loss(hooks)
    if student_hooks:
        loss = loss - student_weight * bn_loss(student_hooks)
    return loss


def one_hot(task, teacher_logits, targets, weights=None):
    return task.one_hot_loss(teacher_logits, targets, weights)


def adversarial(task, student_logits, teacher_logits, weights=None):
    """Fast DFKD's L_adv: minus the student-teacher KL on the samples (pixels) whose top-1 agree."""
    return task.adversarial_loss(student_logits, teacher_logits, weights)


def adversarial_js(student_logits, teacher_logits):
    """DeepInversion's adversarial term: minus the original release's JS divergence at T=3."""
    return -criterions.jsdiv(student_logits, teacher_logits, T=JS_TEMPERATURE)


def adversarial_divergence(student_logits, teacher_logits, l1=False):
    """The generator baselines' adversarial term: minus KL(teacher || student), or minus DFAD's L1."""
    if l1:
        return -criterions.l1_logits(student_logits, teacher_logits)
    return -criterions.kldiv(student_logits, teacher_logits)


def weighted_sum(terms, weights, order):
    """sum of weights[name] * terms[name] over ``order`` (the method's declared order; absent terms
    count 0): the loss the synthesis step minimises."""
    return sum(weights[name] * terms[name] for name in order if name in terms)
