"""The pieces of Fast DFKD against hand computations: BN loss, meta-gradients, pool, adversarial mask."""
import copy
import io

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from datafree.criterions import adversarial_kl, agreement_mask, kldiv_per_sample
from datafree.hooks import bn_loss, hooks_active, register_bn_hooks
from datafree.pool import ImagePool, quantize
from datafree.synthesis.meta import FirstOrderMAML, Reptile


def batch_stats(x):
    mean = x.mean(dim=(0, 2, 3))
    var = ((x - mean.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
    return mean, var


def make_bn():
    bn = nn.BatchNorm2d(3).eval()
    bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    return bn


def test_bn_loss_equals_hand_computation():
    bn = make_bn()
    (hook,) = register_bn_hooks(nn.Sequential(bn), momentum=0.0)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    with hooks_active([hook]):
        bn(x)
    mean, var = batch_stats(x)
    expected = (torch.sqrt(((bn.running_var - var) ** 2).sum())
                + torch.sqrt(((bn.running_mean - mean) ** 2).sum()))
    assert hook.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert bn_loss([hook]).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bn_loss_with_momentum_blends_earlier_batches():
    m = 0.9
    bn = make_bn()
    (hook,) = register_bn_hooks(nn.Sequential(bn), momentum=m)
    x1, x2, x3 = (torch.randn(4, 3, 5, 5) + i for i in range(3))
    mean1, var1 = batch_stats(x1)
    mean2, var2 = batch_stats(x2)
    mean3, var3 = batch_stats(x3)
    with hooks_active([hook]):
        bn(x1)  # no history yet: plain batch statistics
        first = hook.loss.item()
        hook.update_momentum()
        bn(x2)
        second = hook.loss.item()
        hook.update_momentum()
        bn(x3)
        third = hook.loss.item()

    def dist(mean, var):
        return (torch.norm(bn.running_var - var) + torch.norm(bn.running_mean - mean)).item()

    assert first == pytest.approx(dist(mean1, var1), rel=1e-5)
    assert second == pytest.approx(dist((1 - m) * mean2 + m * mean1, (1 - m) * var2 + m * var1), rel=1e-5)
    ema_mean, ema_var = m * mean1 + (1 - m) * mean2, m * var1 + (1 - m) * var2
    assert third == pytest.approx(dist((1 - m) * mean3 + m * ema_mean, (1 - m) * var3 + m * ema_var), rel=1e-5)


def test_bn_hooks_are_idle_outside_synthesis():
    bn = make_bn()
    (hook,) = register_bn_hooks(nn.Sequential(bn))
    bn(torch.randn(2, 3, 4, 4))
    assert hook.loss is None


def tiny_generator():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def inner_steps(generator, fast, meta, steps, lr=0.1):
    """Run `steps` SGD steps on fast; return the gradient of each step."""
    opt = torch.optim.SGD(fast.parameters(), lr=lr)
    meta.begin()
    grads = []
    for step in range(steps):
        torch.manual_seed(step)
        loss = (fast(torch.randn(5, 4)) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        grads.append([p.grad.clone() for p in fast.parameters()])
        meta.after_inner_backward(fast)
        opt.step()
    return grads


def test_maml_meta_gradient_is_the_sum_of_inner_gradients():
    generator = tiny_generator()
    fast = copy.deepcopy(generator)
    meta = FirstOrderMAML(generator, lr=0.05 * 3)
    before = [p.detach().clone() for p in generator.parameters()]
    captured = {}
    meta.optimizer.step = lambda: captured.update(grads=[p.grad.clone() for p in generator.parameters()])
    grads = inner_steps(generator, fast, meta, steps=3)
    meta.finish(fast)
    for got, *per_step in zip(captured["grads"], *grads):
        assert torch.allclose(got, sum(per_step), atol=1e-6)
    for p, b in zip(generator.parameters(), before):  # G itself only moves in the meta step
        assert torch.equal(p, b)
    assert meta.optimizer.param_groups[0]["lr"] == pytest.approx(0.15)
    assert meta.optimizer.param_groups[0]["betas"] == (0.5, 0.999)


def test_reptile_meta_gradient_is_67_times_the_difference():
    generator = tiny_generator()
    fast = copy.deepcopy(generator)
    meta = Reptile(generator, lr=0.01)
    captured = {}
    meta.optimizer.step = lambda: captured.update(grads=[p.grad.clone() for p in generator.parameters()])
    inner_steps(generator, fast, meta, steps=4)
    meta.finish(fast)
    for got, p, fp in zip(captured["grads"], generator.parameters(), fast.parameters()):
        assert torch.allclose(got, 67 * (p - fp), atol=1e-6)
        assert got.abs().sum() > 0


def test_meta_step_moves_generator_towards_fast_generator():
    generator = tiny_generator()
    fast = copy.deepcopy(generator)
    meta = Reptile(generator, lr=0.01)
    inner_steps(generator, fast, meta, steps=2)
    distance = sum((p - fp).norm() for p, fp in zip(generator.parameters(), fast.parameters())).item()
    meta.finish(fast)
    after = sum((p - fp).norm() for p, fp in zip(generator.parameters(), fast.parameters())).item()
    assert after < distance


def png_round_trip(images):
    """What the original did: float [0,1] -> uint8 PNG on disk -> ToTensor."""
    out = []
    for img in images:
        array = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype("uint8")
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        buffer.seek(0)
        back = np.array(Image.open(buffer))
        out.append(torch.from_numpy(back).permute(2, 0, 1))
    return torch.stack(out)


def test_pool_quantisation_equals_png_round_trip():
    images = torch.rand(6, 3, 8, 8) * 1.2 - 0.1   # includes values outside [0, 1]
    images[0, 0, 0, 0] = 0.99999                   # truncation, not rounding: 254
    expected = png_round_trip(images)
    assert torch.equal(quantize(images), expected)
    assert quantize(images)[0, 0, 0, 0] == 254
    pool = ImagePool("cpu")
    pool.add(images)
    assert torch.equal(pool.images, expected)
    batch = pool.sample(6)
    assert torch.allclose(batch.sort(0).values, (expected.float() / 255).sort(0).values)


def test_pool_draws_every_image_once_per_pass_and_restarts_after_add():
    pool = ImagePool("cpu")
    images = torch.arange(10).float().view(10, 1, 1, 1) / 255   # image i has pixel value i
    pool.add(images)
    torch.manual_seed(0)
    seen = torch.cat([pool.sample(4), pool.sample(4), pool.sample(4)]).flatten().mul(255).round().long()
    assert sorted(seen.tolist()) == list(range(10))                      # sizes 4, 4, 2
    second_pass = torch.cat([pool.sample(4) for _ in range(3)]).flatten().mul(255).round().long()
    assert sorted(second_pass.tolist()) == list(range(10))
    pool.add(torch.full((5, 1, 1, 1), 20 / 255))
    assert len(pool) == 15
    fresh = torch.cat([pool.sample(5) for _ in range(3)]).flatten().mul(255).round().long()
    assert sorted(fresh.tolist()) == list(range(10)) + [20] * 5


def test_pool_state_round_trip():
    pool = ImagePool("cpu")
    pool.add(torch.rand(7, 3, 4, 4))
    pool.sample(3)
    other = ImagePool("cpu")
    other.load_state_dict(pool.state_dict())
    assert torch.equal(other.images, pool.images)
    assert torch.equal(other.sample(4), pool.sample(4))


def test_adversarial_mask_and_value():
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.5, 0.0], [2.0, 0.0, 0.0], [0.0, 0.2, 0.4]])
    mask = agreement_mask(student, teacher)
    assert mask.tolist() == [1.0, 0.0, 1.0]
    kl = kldiv_per_sample(student, teacher)
    p_t, log_p_s = teacher.softmax(1), student.log_softmax(1)
    assert torch.allclose(kl, (p_t * (p_t.log() - log_p_s)).sum(1), atol=1e-6)
    expected = -(kl[0] + kl[2]) / 3
    assert adversarial_kl(student, teacher).item() == pytest.approx(expected.item(), rel=1e-6)


def test_adversarial_term_pushes_towards_disagreement():
    """A gradient step on L_adv increases the student-teacher divergence on agreeing samples."""
    torch.manual_seed(0)
    student_net, teacher_net = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(32, 4, requires_grad=True)
    mask = agreement_mask(student_net(x), teacher_net(x))
    assert mask.sum() > 0
    before = (kldiv_per_sample(student_net(x), teacher_net(x)) * mask).sum().item()
    adversarial_kl(student_net(x), teacher_net(x)).backward()
    with torch.no_grad():
        x2 = x - 0.05 * x.grad
        after = (kldiv_per_sample(student_net(x2), teacher_net(x2)) * mask).sum().item()
    assert after > before


def test_random_resized_crop_by_hand():
    from datafree.augment import RandomResizedCropFlip
    images = torch.arange(2 * 64, dtype=torch.float32).view(2, 1, 8, 8)
    crop = RandomResizedCropFlip(4, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    half, centre = torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])
    # a crop of half the width and height, centred: output pixels sit on the centres of pixels 2..5
    out = crop.crop(images, centre, centre, half, half, torch.tensor([False, True]))
    assert torch.allclose(out[0], images[0, :, 2:6, 2:6], atol=1e-4)
    assert torch.allclose(out[1], images[1, :, 2:6, 2:6].flip(-1), atol=1e-4)       # the second one mirrored
    # the top-left quarter
    out = crop.crop(images, torch.tensor([0.25, 0.25]), torch.tensor([0.25, 0.25]), half, half,
                    torch.tensor([False, False]))
    assert torch.allclose(out[:, :, :, :], images[:, :, 0:4, 0:4], atol=1e-4)
    whole = RandomResizedCropFlip(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    assert torch.allclose(whole(images), images, atol=1e-4)


def test_random_resized_crop_draws_within_bounds_on_the_device_and_keeps_gradients():
    from datafree.augment import RandomResizedCropFlip
    torch.manual_seed(0)
    crop = RandomResizedCropFlip(16, scale=(0.25, 1.0), ratio=(0.5, 2.0), hflip=False)
    cx, cy, w, h, flip = crop.draw(2000, 32, 32, torch.device("cpu"))
    assert not flip.any() and (w <= 1).all() and (h <= 1).all()
    assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.25 * 0.5 and area.max() <= 1.0 + 1e-6     # sides cut to the image shrink some crops
    assert 0.55 < area.mean() < 0.65                                  # about the mean of U(0.25, 1)
    assert 0.4 < RandomResizedCropFlip(16).draw(2000, 32, 32, torch.device("cpu"))[4].float().mean() < 0.6
    images = torch.rand(4, 3, 32, 32, requires_grad=True)
    crop(images).sum().backward()
    assert images.grad.abs().sum() > 0
