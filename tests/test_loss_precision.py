"""Every loss family gives the same gradient under bfloat16 autocast as in float32, from the same
state: autocast changes the networks' forwards, never the objective (docs/methods-and-flags.md)."""
import pytest
import torch
import torch.nn.functional as F

from datafree import criterions
from datafree.hooks import bn_loss, hooks_active, register_bn_hooks
from datafree.models.generator import Float32Sigmoid, Generator
from datafree.tasks import Classification, Segmentation

MIN_COSINE = 0.99


def near_convergence(n=128, classes=10, gap=0.1, seed=0):
    """Teacher logits and student logits within ``gap`` of them (a student close to the teacher)."""
    g = torch.Generator().manual_seed(seed)
    teacher = 4 * torch.randn(n, classes, generator=g)
    student = teacher + gap * torch.randn(n, classes, generator=g)
    return student, teacher


def grads(loss_fn, *inputs, bf16):
    """Gradients of ``loss_fn(*inputs)`` w.r.t. every floating input, in float32 or as under bfloat16
    autocast: there the inputs arrive as bfloat16 tensors, as a network's outputs do. Both runs see the
    same values (rounded to bfloat16 first), so only the loss's own arithmetic can differ."""
    inputs = [x.bfloat16() if x.is_floating_point() else x for x in inputs]
    leaves = [(x if bf16 else x.float()).clone().requires_grad_() if x.is_floating_point() else x for x in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(*leaves)
    assert loss.dtype == torch.float32
    loss.backward()
    return (torch.cat([x.grad.float().flatten() for x in leaves if getattr(x, "grad", None) is not None]),
            loss.detach())


def cosine(a, b):
    return F.cosine_similarity(a, b, dim=0).item()


LOSS_FAMILIES = {
    "kd_T20": lambda s, t: criterions.kldiv(s, t, T=20),
    "kd_per_sample_T20": lambda s, t: criterions.kldiv_per_sample(s, t, T=20).mean(),
    "adversarial_kl": lambda s, t: criterions.adversarial_kl(s, t),
    "js_T3": lambda s, t: criterions.jsdiv(s, t, T=3),
    "l1_logits": lambda s, t: criterions.l1_logits(s, t),
    "balance": lambda s, t: criterions.class_balance(s),
    "one_hot": lambda s, t: criterions.cross_entropy(s, t.argmax(1)),
    "info_nce": lambda s, t: criterions.info_nce(0.125 * s, 0.125 * t, 0.2).mean(),
}


@pytest.mark.parametrize("family", sorted(LOSS_FAMILIES))
def test_logit_losses_have_the_float32_gradient_under_bf16_autocast(family):
    student, teacher = near_convergence()
    fp32_grad, fp32_loss = grads(LOSS_FAMILIES[family], student, teacher, bf16=False)
    bf16_grad, bf16_loss = grads(LOSS_FAMILIES[family], student, teacher, bf16=True)
    assert cosine(fp32_grad, bf16_grad) >= MIN_COSINE
    assert torch.allclose(fp32_loss, bf16_loss, rtol=1e-5, atol=1e-7)


def test_kd_at_T20_near_convergence_is_what_bf16_used_to_break():
    # The same KL computed in bfloat16 (what autocast did before the losses were pinned to float32)
    # has a gradient far from the float32 one here: the test above would catch a regression.
    student, teacher = near_convergence()

    def bf16_kd(s, t):
        log_p = F.log_softmax(s.bfloat16() / 20, dim=1)
        q = F.softmax(t.bfloat16() / 20, dim=1)
        return (F.kl_div(log_p, q, reduction="none").sum(1) * 400).float().mean()

    fp32_grad, _ = grads(lambda s, t: criterions.kldiv(s, t, T=20), student, teacher, bf16=False)
    bf16_grad, _ = grads(bf16_kd, student, teacher, bf16=True)
    assert cosine(fp32_grad, bf16_grad) < 0.9


def test_image_and_feature_priors_are_float32_under_autocast():
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    features = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    for fn, x in ((criterions.total_variation, images), (criterions.l2_prior, images),
                  (criterions.activation, features)):
        fp32_grad, fp32_loss = grads(fn, x, bf16=False)
        bf16_grad, bf16_loss = grads(fn, x, bf16=True)
        assert cosine(fp32_grad, bf16_grad) >= MIN_COSINE
        assert bf16_loss.dtype == torch.float32


def test_task_losses_are_float32_for_both_tasks():
    student, teacher = near_convergence(n=8)
    targets = teacher.argmax(1)
    weights = torch.rand(8)
    clf = Classification(10)
    seg = Segmentation(10)
    seg_logits = student.view(8, 10, 1, 1).expand(8, 10, 2, 3).contiguous()
    seg_targets = targets.view(8, 1, 1).expand(8, 2, 3).contiguous()
    for fn, inputs in ((lambda s: clf.one_hot_loss(s, targets, weights), (student,)),
                       (lambda s: clf.supervised_loss(s, targets), (student,)),
                       (lambda s: seg.one_hot_loss(s, seg_targets, weights), (seg_logits,)),
                       (lambda s: seg.supervised_loss(s, seg_targets), (seg_logits,))):
        fp32_grad, fp32_loss = grads(fn, *inputs, bf16=False)
        bf16_grad, bf16_loss = grads(fn, *inputs, bf16=True)
        assert cosine(fp32_grad, bf16_grad) >= MIN_COSINE
        assert torch.allclose(fp32_loss, bf16_loss, rtol=1e-5, atol=1e-7)


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0])
    per_sample = [-torch.log_softmax(logits[i], 0)[0].item() for i in range(2)]
    weights = torch.tensor([1.0, 3.0])
    expected = (1.0 * per_sample[0] + 3.0 * per_sample[1]) / 2
    assert criterions.cross_entropy(logits, targets, weights).item() == pytest.approx(expected)
    assert criterions.cross_entropy(logits, targets).item() == pytest.approx(sum(per_sample) / 2)


def test_bn_statistics_loss_is_float32_under_autocast():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2)
    hooks = register_bn_hooks(net)
    x = torch.randn(16, 3, 8, 8)

    def loss_of(images):
        with hooks_active(hooks):
            net(images)
        return bn_loss(hooks)

    fp32_grad, _ = grads(loss_of, x, bf16=False)
    bf16_grad, bf16_loss = grads(loss_of, x, bf16=True)
    assert bf16_loss.dtype == torch.float32 and cosine(fp32_grad, bf16_grad) >= MIN_COSINE


def test_generator_sigmoid_keeps_its_gradient_above_6_under_bf16():
    x = torch.tensor([6.5, 8.0, 9.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = torch.sigmoid(x.bfloat16())
    assert torch.all(in_bf16 == 1)   # what a bfloat16 sigmoid gives: exactly 1, no gradient left
    leaf = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Float32Sigmoid()(leaf.bfloat16())
    out.sum().backward()
    assert out.dtype == torch.float32 and torch.all(out < 1)
    expected = torch.sigmoid(x) * (1 - torch.sigmoid(x))
    assert torch.allclose(leaf.grad, expected, rtol=1e-2)


def test_generator_output_is_float32_under_autocast():
    gen = Generator(nz=8, ngf=4, img_size=8, nc=1, out_channels=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = gen(torch.randn(4, 8))
    assert images.dtype == torch.float32 and images.shape == (4, 3, 8, 8)
