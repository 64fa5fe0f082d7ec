"""SSD-KD: the prioritised buffer, the modulating function phi, and the synthesizer's KD weights."""
import math

import pytest
import torch

import registry
from datafree.criterions import adversarial_kl, kldiv_per_sample
from datafree.pool import PrioritizedPool
from datafree.synthesis import SYNTHESIZERS
from datafree.synthesis.ssd import importance_beta, modulating_weights
from tests.test_baselines import make_config


def filled_pool(priorities, rule="priority", replace=0.5, alpha=1.0):
    pool = PrioritizedPool("cpu", capacity=len(priorities), alpha=alpha, replace=replace, rule=rule)
    n = len(priorities)
    images = torch.arange(n).float().div(255).view(n, 1, 1, 1).expand(n, 1, 2, 2)
    pool.add(images, torch.ones(n), torch.zeros(n, dtype=torch.long))
    pool.update_priorities(torch.arange(n), torch.tensor(priorities) - pool.eps)
    return pool


def test_priority_sampling_draws_with_the_configured_probabilities():
    pool = filled_pool([1.0, 2.0, 3.0, 4.0], alpha=1.0)
    expected = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert torch.allclose(pool.probabilities(), expected)
    draws = 40_000
    _, index, _ = pool.sample_prioritized(draws, beta=0.5, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(index, minlength=4).float() / draws
    # Binomial standard error of each frequency is at most 0.0025: 4 sigma.
    assert torch.allclose(freq, expected, atol=0.01)
    pool.alpha = 0.5
    root = torch.tensor([1.0, 2.0, 3.0, 4.0]).sqrt()
    assert torch.allclose(pool.probabilities(), root / root.sum())
    pool.alpha = 0.0                                   # alpha 0: uniform draws
    assert torch.allclose(pool.probabilities(), torch.full((4,), 0.25))


def test_importance_weights_equal_their_formula():
    pool = filled_pool([1.0, 2.0, 3.0, 4.0], alpha=1.0)
    beta = 0.4
    index = torch.tensor([0, 3, 3, 1])
    probs = [0.1, 0.2, 0.3, 0.4]
    expected = [((4 * probs[i]) ** -beta) / ((4 * 0.1) ** -beta) for i in index.tolist()]
    assert torch.allclose(pool.importance_weights(index, beta), torch.tensor(expected))
    assert pool.importance_weights(torch.tensor([0]), beta).item() == pytest.approx(1.0)  # rarest draw: 1
    assert importance_beta(0.4, 0, 100) == 0.4 and importance_beta(0.4, 50, 100) == pytest.approx(0.7)
    assert importance_beta(0.4, 150, 100) == 1.0


def test_phi_orders_rare_over_common_and_unsure_over_confident():
    logits = torch.tensor([[4.0, 0.0, 0.0],     # confident class 0
                           [1.0, 0.0, 0.0],     # unsure class 0
                           [0.0, 4.0, 0.0]])    # confident class 1
    buffer_counts = torch.tensor([50, 2, 10])   # class 0 is common in the buffer, class 1 rare
    phi = modulating_weights(logits, buffer_counts, gamma=2.0)
    assert phi.mean().item() == pytest.approx(1.0)
    assert phi[1] > phi[0]                       # low confidence > high confidence, same class
    assert phi[2] > phi[0]                       # rare class > common class, same confidence
    # Hand computation: counts with the batch = [52, 3, 10], Laplace-smoothed shares over 68.
    p = torch.softmax(logits, dim=1).max(dim=1).values
    share = torch.tensor([53 / 68, 53 / 68, 4 / 68])
    raw = (1 / 3) / share * (1 - p) ** 2
    assert torch.allclose(phi, raw / raw.mean(), rtol=1e-5)
    flat = modulating_weights(logits, buffer_counts, gamma=0.0)   # gamma 0: diversity only
    assert flat[0] == pytest.approx(flat[1].item())
    capped = modulating_weights(logits, buffer_counts, gamma=2.0, max_weight=1.5)
    assert capped.max().item() == pytest.approx(1.5) and torch.equal(capped, phi.clamp(max=1.5))


@pytest.mark.parametrize("rule", ["priority", "oldest", "random"])
def test_buffer_never_exceeds_its_size_and_replaces_by_rule(rule):
    pool = PrioritizedPool("cpu", capacity=6, alpha=1.0, replace=0.5, rule=rule)
    batch = lambda v, n: torch.full((n, 1, 2, 2), v / 255)           # noqa: E731
    slots = pool.add(batch(1, 4), torch.ones(4), torch.zeros(4, dtype=torch.long))
    assert len(pool) == 4 and slots.tolist() == [0, 1, 2, 3]
    # Two of these fit; the two with the largest phi are admitted.
    phi = torch.tensor([0.1, 3.0, 0.2, 2.0])
    pool.add(torch.stack([batch(v, 1)[0] for v in (10, 11, 12, 13)]), phi, torch.ones(4, dtype=torch.long))
    assert len(pool) == 6
    assert pool.images[4:, 0, 0, 0].tolist() == [11, 13] and pool.weight[4:].tolist() == [3.0, 2.0]
    pool.update_priorities(torch.arange(6), torch.tensor([5.0, 0.5, 4.0, 0.1, 3.0, 2.0]))
    before = pool.images[:, 0, 0, 0].clone()
    # Full: ceil(0.5 * 6) = 3 new images (the top-phi ones) replace 3 stored ones.
    phi = torch.tensor([1.0, 4.0, 2.0, 3.0, 0.5])
    slots = pool.add(torch.stack([batch(v, 1)[0] for v in (20, 21, 22, 23, 24)]), phi,
                     torch.full((5,), 2, dtype=torch.long))
    assert len(pool) == 6 and len(pool.priority) == len(pool.weight) == len(pool.label) == 6
    assert len(slots) == 3
    assert sorted(pool.images[slots, 0, 0, 0].tolist()) == [21, 22, 23]
    if rule == "priority":      # the three lowest priorities: slots 3 (0.1), 1 (0.5), 5 (2.0)
        assert sorted(slots.tolist()) == [1, 3, 5]
    if rule == "oldest":        # the first three images added
        assert sorted(slots.tolist()) == [0, 1, 2]
    kept = [i for i in range(6) if i not in slots.tolist()]
    assert torch.equal(pool.images[kept, 0, 0, 0], before[kept])
    # New images get the largest stored priority, so they are drawn soon.
    assert torch.all(pool.priority[slots] == pool.priority.max())
    for _ in range(5):
        pool.add(batch(30, 8), torch.ones(8), torch.zeros(8, dtype=torch.long))
        assert len(pool) == 6


def test_weighted_adversarial_term_reduces_to_the_plain_one():
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    t[:3] = s[:3] * 2                                  # some agreeing samples
    assert adversarial_kl(s, t, torch.ones(6)).item() == pytest.approx(adversarial_kl(s, t).item())


def ssd_synthesizer(**overrides):
    torch.manual_seed(0)
    teacher, student = registry.get_model("resnet8", 10).eval(), registry.get_model("resnet8", 10)
    config = make_config(**{"ssd_buffer_size": 12, "batch_size": 8, "synthesis_batch_size": 8, **overrides})
    return SYNTHESIZERS["ssd"](teacher, student, config, torch.device("cpu")), teacher, student


def test_ssd_kd_loss_weights_and_refreshes_drawn_priorities():
    synth, teacher, student = ssd_synthesizer()
    for _ in range(3):
        synth.synthesize()
    assert len(synth.pool) == 12                       # 8 + 4 appended, then partial replacement
    images = synth.sample()
    index, weights = synth.drawn
    beta = importance_beta(0.4, synth.calls, synth.total_calls)
    assert torch.allclose(weights, synth.pool.importance_weights(index, beta) * synth.pool.weight[index])
    assert weights.max().item() <= 3.0 + 1e-6          # importance weights <= 1, phi capped at 3
    s_out, t_out = student(images), teacher(images)
    loss = synth.kd_loss(s_out, t_out)
    per = kldiv_per_sample(s_out, t_out, T=4.0)
    assert loss.item() == pytest.approx((weights * per).mean().item(), rel=1e-6)
    last = {}                                           # repeated draws: the last one wins
    for i, v in zip(index.tolist(), per.tolist()):
        last[i] = v
    for i, v in last.items():
        assert synth.pool.priority[i].item() == pytest.approx(v + synth.pool.eps, rel=1e-5)
    with pytest.raises(RuntimeError, match="preceding sample"):
        synth.kd_loss(s_out, t_out)


def test_buffer_size_defaults_to_a_tenth_of_the_training_set():
    synth, _, _ = ssd_synthesizer(ssd_buffer_size=0, train_size=1257)
    assert synth.pool.capacity == math.ceil(125.7)
