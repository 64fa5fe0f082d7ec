"""SSD-KD: the prioritised buffer, the modulating function phi, and the synthesizer's KD weights."""
import math

import pytest
import torch

import registry
from datafree.criterions import adversarial_kl
from datafree.synthesis import SYNTHESIZERS
from datafree.synthesis.base import KDBatch
from datafree.synthesis.ssd import buffer_weights, count_classes, modulating_weights, refresh_calls, split_steps
from datafree.synthesis.ssd_buffer import PrioritizedPool
from datafree.synthesis.ssd_policy import SamplingPolicy, draw_rewards, importance_beta
from tests.test_baselines import make_config


def kl_by_hand(student_logits, teacher_logits, T):
    """KL(teacher || student) of the softmaxes at T, times T^2, per sample, from its definition."""
    p_teacher = torch.softmax(teacher_logits / T, dim=1)
    return T * T * (p_teacher * (p_teacher.log() - torch.log_softmax(student_logits / T, dim=1))).sum(dim=1)


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
    raw = [(4 * probs[i]) ** -beta for i in index.tolist()]
    expected = [w / (sum(raw) / len(raw)) for w in raw]                # self-normalised: mean 1 over the batch
    assert torch.allclose(pool.importance_weights(index, beta), torch.tensor(expected))
    assert pool.importance_weights(torch.tensor([0]), beta).item() == pytest.approx(1.0)  # a single draw: 1
    # a skewed P does not shrink the batch's weights (dividing by the rarest image's weight did)
    skewed = filled_pool([1e-3, 1.0, 1.0, 1.0], alpha=1.0)
    assert skewed.importance_weights(torch.tensor([1, 2, 3]), 1.0).tolist() == pytest.approx([1.0, 1.0, 1.0])
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
    assert pool.images[4:, 0, 0, 0].tolist() == [11, 13]
    pool.update_priorities(torch.arange(6), torch.tensor([5.0, 0.5, 4.0, 0.1, 3.0, 2.0]))
    before = pool.images[:, 0, 0, 0].clone()
    # Full: ceil(0.5 * 6) = 3 new images (the top-phi ones) replace 3 stored ones.
    phi = torch.tensor([1.0, 4.0, 2.0, 3.0, 0.5])
    slots = pool.add(torch.stack([batch(v, 1)[0] for v in (20, 21, 22, 23, 24)]), phi,
                     torch.full((5,), 2, dtype=torch.long))
    assert len(pool) == 6 and all(len(getattr(pool, key)) == 6 for key in pool.SLOT_STATE)
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
    synth, teacher, student = ssd_synthesizer(ssd_sampling="priority", g_steps=1)
    for _ in range(2):
        synth.synthesize()
    assert len(synth.pool) == 12                       # 8, then 4 of the next 8 (the largest phi)
    synth.pool.update_priorities(torch.arange(12), torch.rand(12))
    phi = synth.buffer_phi()
    batch = synth.sample()
    images, index, weights = batch.images, batch.draw["index"], batch.draw["weights"]
    beta = importance_beta(0.4, synth.steps_done, synth.total_kd_steps)
    is_weights = synth.pool.importance_weights(index, beta)
    assert is_weights.mean().item() == pytest.approx(1.0)   # self-normalised over the batch
    # phi over its buffer mean: the weights shift the loss between images, not its scale
    assert torch.allclose(weights, is_weights * phi[index] / phi.mean())
    s_out, t_out = student(images), teacher(images)
    priorities = synth.pool.priority.clone()
    loss = synth.kd_loss(batch, s_out, t_out)
    per = kl_by_hand(s_out, t_out, T=4.0)
    # float32 sums in another order: 2e-6 apart on some CPUs, so the tolerance is a few float32 roundings
    assert loss.item() == pytest.approx((weights * per).mean().item(), rel=1e-5)
    assert torch.equal(synth.pool.priority, priorities) and synth.steps_done == 0    # kd_loss is pure
    synth.after_step(batch, s_out.detach(), t_out.detach())                         # a step that was taken
    assert synth.steps_done == 1
    last = {}                                           # repeated draws: the last one wins
    for i, v in zip(index.tolist(), per.tolist()):
        last[i] = v
    for i, v in last.items():
        assert synth.pool.priority[i].item() == pytest.approx(v + synth.pool.eps, rel=1e-4)
    with pytest.raises(ValueError, match="its own sample"):
        synth.kd_loss(KDBatch(images), s_out, t_out)


def test_buffer_size_defaults_to_a_tenth_of_the_training_set_or_of_fasts_pool():
    # Fast would make 40 epochs x 1 call x 128 = 5,120 images, more than the 1,257 training images
    synth, _, _ = ssd_synthesizer(ssd_buffer_size=0, train_size=1257, epochs=40, ep_steps=20, kd_steps=20,
                                  synthesis_batch_size=128)
    assert synth.pool.capacity == 126
    # 60,000 training images, but Fast would make only 5,120: a tenth of those
    synth, _, _ = ssd_synthesizer(ssd_buffer_size=0, train_size=60000, epochs=40, ep_steps=20, kd_steps=20,
                                  synthesis_batch_size=128)
    assert synth.pool.capacity == 512
    # two calls an epoch (ep_steps / kd_steps) of 8 images over 2 epochs: 32 images, 4 kept
    synth, _, _ = ssd_synthesizer(ssd_buffer_size=0, train_size=60000)
    assert synth.pool.capacity == math.ceil(3.2)


# ---- the refresh schedule -------------------------------------------------------------------------

def filled_synthesizer(**overrides):
    """An SSD synthesizer (buffer 12, batches of 8) with a full buffer of random images (no synthesis)."""
    synth, teacher, student = ssd_synthesizer(**overrides)
    assert synth.epoch_plan(0) == [(2, synth.steps_per_epoch)]      # ceil(12 / 8) calls fill the empty buffer
    torch.manual_seed(1)
    synth.pool.add(torch.rand(12, 3, 32, 32), torch.ones(12), torch.randint(0, 10, (12,)), torch.rand(12))
    assert synth.pool.full
    return synth, teacher, student


def test_kd_steps_keep_fasts_count_at_a_quarter_of_its_batch():
    # default: Fast's KD steps an epoch (ep_steps), however small the buffer, on batches of batch_size / 4
    synth, _, _ = ssd_synthesizer(ep_steps=40, kd_steps=20, batch_size=128, ssd_kd_batch=0)
    assert (synth.steps_per_epoch, synth.sample_batch_size, synth.total_kd_steps) == (40, 32, 80)
    synth, _, _ = ssd_synthesizer(ssd_buffer_size=2, batch_size=128, ssd_kd_batch=0)
    assert (synth.steps_per_epoch, synth.sample_batch_size) == (4, 32)
    synth, _, _ = ssd_synthesizer(batch_size=3, ssd_kd_batch=0)
    assert synth.sample_batch_size == 1                # at least one image
    # passes over the buffer x buffer / KD batch: 4 x 12 / 8 = 6 KD steps an epoch
    synth, _, _ = ssd_synthesizer(ssd_kd_passes=4.0)
    assert synth.steps_per_epoch == 6 and synth.total_kd_steps == 6 * 2
    synth, _, _ = ssd_synthesizer(ssd_kd_passes=0.01)
    assert synth.steps_per_epoch == 1                  # at least one step


def test_refresh_once_per_epoch_synthesises_only_what_it_replaces():
    synth, _, _ = filled_synthesizer(ssd_kd_passes=4.0, ssd_replace=0.25, g_steps=1)
    assert synth.epoch_plan(1) == [(1, 6)]             # default: one refresh call an epoch
    before = synth.pool.age.clone()
    out = synth.synthesize()
    # ceil(0.25 x 12) = 3 images made, and all three admitted in place of three stored ones
    assert out["images"].shape[0] == 3
    assert int((synth.pool.age != before).sum()) == 3 and len(synth.pool) == 12


def test_refresh_share_spreads_calls_over_epochs():
    # 1/8 of 12 images per epoch, 3 a call: 0.5 calls an epoch -> a call every second epoch
    assert [refresh_calls(e, 0.125, 12, 3) for e in range(6)] == [0, 1, 0, 1, 0, 1]
    # 3/4 of 12 = 9 images an epoch in calls of 2: 4.5 calls -> 4, 5, 4, 5
    assert [refresh_calls(e, 0.75, 12, 2) for e in range(4)] == [4, 5, 4, 5]
    synth, _, _ = filled_synthesizer(ssd_kd_passes=4.0, ssd_replace=0.25, ssd_refresh_share=0.125)
    assert [synth.epoch_plan(e) for e in (1, 2)] == [[(1, 6)], [(0, 6)]]
    synth, _, _ = filled_synthesizer(ssd_kd_passes=4.0, ssd_replace=0.25, ssd_refresh_share=0.5, epochs=4)
    assert synth.epoch_plan(1) == [(1, 3), (1, 3)]     # two calls, the epoch's steps split between them


def test_refresh_every_k_steps_follows_the_step_count():
    synth, _, _ = filled_synthesizer(ssd_kd_passes=4.0, ssd_refresh_every=4)
    synth.steps_done = 0                               # steps 0..5: a call before step 4
    assert synth.epoch_plan(1) == [(0, 4), (1, 2)]
    synth.steps_done = 6                               # steps 6..11: calls before 8
    assert synth.epoch_plan(2) == [(0, 2), (1, 4)]
    synth.steps_done = 8                               # steps 8..13: calls before 8 and 12
    assert synth.epoch_plan(3) == [(0, 0), (1, 4), (1, 2)]
    assert [split_steps(7, 3), split_steps(6, 2)] == [[3, 2, 2], [3, 3]]


def test_warmup_epochs_keep_fasts_calls():
    synth, _, _ = ssd_synthesizer(warmup=1, ep_steps=4, kd_steps=2)
    assert synth.epoch_plan(0) == [(1, 2), (1, 2)]     # Fast's rounds; the loop skips their KD steps


def test_no_second_teacher_pass_when_images_join_the_buffer():
    synth, teacher, _ = ssd_synthesizer(g_steps=2)
    calls = []
    handle = teacher.register_forward_hook(lambda *_: calls.append(1))
    try:
        synth.synthesize()
    finally:
        handle.remove()
    assert len(calls) == 2                             # one teacher forward per synthesis step, none more
    # the stored difficulty is the focal factor of the logits kept from the best step
    assert synth.pool.difficulty.min() >= 0 and synth.pool.difficulty.max() <= 1


# ---- phi refreshed from the KD step ----------------------------------------------------------------

def test_buffer_phi_by_hand():
    labels = torch.tensor([0, 0, 1, 2])
    difficulty = torch.tensor([0.5, 0.1, 0.2, 0.4])
    # counts [2, 1, 1] of 4 images, Laplace-smoothed shares [3/7, 2/7, 2/7]; diversity = (1/3) / share
    diversity = torch.tensor([7 / 9, 7 / 9, 7 / 6, 7 / 6])
    raw = diversity * difficulty
    assert torch.allclose(buffer_weights(labels, difficulty, 3), raw / raw.mean())
    capped = buffer_weights(labels, difficulty, 3, max_weight=1.2)
    assert torch.allclose(capped, (raw / raw.mean()).clamp(max=1.2))


def test_kd_step_refreshes_difficulty_class_and_phi_of_its_draws():
    synth, teacher, student = filled_synthesizer(ssd_sampling="uniform")
    synth.pool.difficulty.fill_(0.5)
    synth.pool.label.fill_(0)
    batch = synth.sample()
    images, index = batch.images, batch.draw["index"]
    t_out = torch.zeros(len(index), 10)
    t_out[:, 3] = torch.linspace(0.0, 4.0, len(index))       # confidence grows along the batch, class 3
    with torch.no_grad():
        synth.after_step(batch, student(images), t_out)       # a KD step that was taken
    confidence = torch.softmax(t_out, dim=1).max(dim=1).values
    last = {i: k for k, i in enumerate(index.tolist())}       # a slot drawn twice keeps its last draw
    for i, k in last.items():
        assert synth.pool.difficulty[i].item() == pytest.approx((1 - confidence[k].item()) ** 2, rel=1e-5)
        assert synth.pool.label[i].item() == 3
    others = [i for i in range(12) if i not in last]
    assert torch.all(synth.pool.difficulty[others] == 0.5) and torch.all(synth.pool.label[others] == 0)
    expected = buffer_weights(synth.pool.label, synth.pool.difficulty, 10, 3.0)
    assert torch.allclose(synth.buffer_phi(), expected)
    # the next draw's KD weights use the refreshed phi (uniform draws: importance weights 1)
    draw = synth.sample().draw
    assert torch.allclose(draw["weights"], expected[draw["index"]])


def test_phi_off_weighs_every_sample_alike():
    synth, _, _ = filled_synthesizer(ssd_phi=0, ssd_sampling="uniform")
    assert synth.sample_weights(torch.randn(4, 10)) is None
    assert torch.all(synth.sample().draw["weights"] == 1)


# ---- the learned sampling policy --------------------------------------------------------------------

def test_policy_starts_as_prioritised_replay():
    pool = filled_pool([1.0, 2.0, 3.0, 4.0], alpha=0.6)
    policy = SamplingPolicy(alpha=0.6, lr=0.1, device="cpu")
    features = policy.features(pool.priority, torch.rand(4) + 0.5, torch.tensor([0, 3, 1, 7]))
    assert torch.allclose(policy.probabilities(features), pool.probabilities(), atol=1e-6)


def test_policy_update_by_hand():
    policy = SamplingPolicy(alpha=0.6, lr=0.5, device="cpu")
    features = torch.tensor([[0.0, 0.0, 0.0],
                             [1.0, -1.0, 0.5],
                             [2.0, 0.5, 1.0]])
    pi = policy.probabilities(features)
    logits = torch.tensor([0.0, 0.6, 1.2])
    assert torch.allclose(pi, logits.exp() / logits.exp().sum())
    mean = pi @ features
    drawn = torch.tensor([0, 2])
    rewards = torch.tensor([0.3, 0.1])
    # advantages: mean 0.2, std 0.1 -> (+1, -1); step = lr x mean_k A_k (f_k - mean) = 0.5 x 0.5 x (f_0 - f_2)
    advantage = policy.update(features[drawn], mean, rewards)
    assert torch.allclose(advantage, torch.tensor([1.0, -1.0]), atol=1e-5)
    assert torch.allclose(policy.theta, torch.tensor([0.6 - 0.5, -0.125, -0.25]), atol=1e-5)
    assert policy.updates == 1
    # three draws, one of them repeated: A = (r - 0.4) / std(r) with r = (0.2, 0.2, 0.8), std = sqrt(0.08)
    policy = SamplingPolicy(alpha=0.0, lr=1.0, device="cpu")
    drawn, rewards = torch.tensor([1, 1, 2]), torch.tensor([0.2, 0.2, 0.8])
    mean = policy.probabilities(features) @ features                      # theta 0: the plain mean
    assert torch.allclose(mean, features.mean(dim=0))
    a = torch.tensor([-0.2, -0.2, 0.4]) / 0.08 ** 0.5
    expected = (a[:, None] * (features[drawn] - mean)).mean(dim=0)
    policy.update(features[drawn], mean, rewards)
    assert torch.allclose(policy.theta, expected, atol=1e-5)


@pytest.mark.parametrize("reward", ["progress", "relative"])
def test_policy_is_rewarded_by_the_students_progress_on_its_draws(reward):
    synth, teacher, student = filled_synthesizer(ssd_sampling="policy", ssd_policy_lr=0.3, ssd_reward=reward)
    theta = synth.policy.theta.clone()
    bn_before = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    batch = synth.sample()
    images = batch.images
    drawn_features, mean_features = batch.draw["policy"]
    weights = batch.draw["weights"]
    student.train()
    s_out = student(images)
    with torch.no_grad():
        t_out = teacher(images)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    loss = synth.kd_loss(batch, s_out, t_out)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    synth.after_step(batch, s_out.detach(), t_out)
    before = kl_by_hand(s_out.detach(), t_out, T=4.0)
    running = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    with torch.no_grad():
        after = kl_by_hand(student(images), t_out, T=4.0)        # train mode, as the KD step
    student.load_state_dict({**student.state_dict(), **running})
    synth.sample()                                                     # measures the progress, then draws
    # REINFORCE by hand: A = (r - mean r) / (std r + 1e-8), theta += lr * mean_k A_k (f_k - E_pi[f])
    # progress per unit of the draw's KD weight (and, relative, over KL before)
    rewards = (before - after) / weights / (before if reward == "relative" else 1)
    advantage = (rewards - rewards.mean()) / (((rewards - rewards.mean()) ** 2).mean().sqrt() + 1e-8)
    expected = theta + 0.3 * (advantage[:, None] * (drawn_features - mean_features)).mean(dim=0)
    assert torch.allclose(synth.policy.theta, expected, atol=1e-5)
    assert not torch.equal(synth.policy.theta, theta)
    for k, v in student.state_dict().items():                          # the probe left BN statistics alone
        if "running" in k:
            assert torch.equal(v, running[k]) and not torch.equal(v, bn_before[k]), k
    assert len(batch.draw["index"]) == 8


def test_policy_starts_as_prioritised_replay_or_uniform():
    synth, _, _ = filled_synthesizer(ssd_sampling="policy")
    synth.pool.update_priorities(torch.arange(12), torch.arange(1.0, 13.0))
    probs, _ = synth.sampling_probabilities(synth.buffer_phi())
    assert torch.allclose(probs, synth.pool.probabilities())          # theta = (alpha, 0, 0): p^alpha
    flat, _, _ = filled_synthesizer(ssd_sampling="policy", ssd_policy_init="uniform")
    flat.pool.update_priorities(torch.arange(12), torch.arange(1.0, 13.0))
    assert flat.policy.theta.tolist() == [0.0, 0.0, 0.0]
    probs, _ = flat.sampling_probabilities(flat.buffer_phi())
    assert torch.allclose(probs, torch.full((12,), 1 / 12))


def test_relative_reward_is_the_share_of_the_discrepancy_removed():
    before, after = torch.tensor([10.0, 1.0, 0.0]), torch.tensor([8.0, 0.5, 0.0])
    assert draw_rewards(before, after, "progress").tolist() == pytest.approx([2.0, 0.5, 0.0])
    # the image the student fits worst gains most in KL but least in share: 0.2 against 0.5
    assert draw_rewards(before, after, "relative").tolist() == pytest.approx([0.2, 0.5, 0.0])


def test_reward_is_not_confounded_by_the_draws_own_kd_weight():
    # Two images the student learns alike: the one weighted 2 in the KD loss moved twice as far.
    before, after = torch.tensor([1.0, 1.0]), torch.tensor([0.9, 0.8])
    weights = torch.tensor([1.0, 2.0])
    assert draw_rewards(before, after, "progress").tolist() == pytest.approx([0.1, 0.2])       # confounded
    assert draw_rewards(before, after, "progress", weights).tolist() == pytest.approx([0.1, 0.1])
    assert draw_rewards(before, after, "relative", weights).tolist() == pytest.approx([0.1, 0.1])


def test_policy_learns_the_feature_that_predicts_the_reward_in_a_bandit():
    # 400 arms, three features each; the reward of an arm is its third feature (plus noise), the other two are
    # noise. REINFORCE must put most weight on the third feature and draw the best arms far more than uniform
    # draws would (once the draws concentrate on a few arms, their other features pick up some weight by chance).
    g = torch.Generator().manual_seed(0)
    features = torch.randn(400, 3, generator=g)
    value = features[:, 2]
    policy = SamplingPolicy(alpha=0.0, lr=0.05, device="cpu")
    for _ in range(300):
        probs = policy.probabilities(features)
        drawn = torch.multinomial(probs, 16, replacement=True, generator=g)
        rewards = value[drawn] + 0.5 * torch.randn(16, generator=g)
        policy.update(features[drawn], probs @ features, rewards)
    theta = policy.theta
    assert theta[2] > 2.0 and theta[2] > 1.5 * theta[:2].abs().max()
    expected = policy.probabilities(features) @ value
    assert expected > value.mean() + 2 * value.std()      # uniform draws would get value.mean()


def test_policy_draws_and_importance_weights_use_its_probabilities():
    synth, _, _ = filled_synthesizer(ssd_sampling="policy")
    synth.policy.theta = torch.tensor([0.0, 0.0, 1.0])               # prefer what waited longest
    synth.steps_done = 10
    synth.pool.touched[:] = 10
    synth.pool.touched[5] = 0
    probs, features = synth.sampling_probabilities(synth.buffer_phi())
    expected = torch.full((12,), 1.0)
    expected[5] = 11.0                                                # exp(log(1 + 10)) against exp(0)
    assert torch.allclose(probs, expected / expected.sum())
    index = torch.tensor([5, 0])
    beta = 0.5
    w = (12 * probs[index]) ** -beta
    assert torch.allclose(synth.pool.importance_weights(index, beta, probs), w / w.mean())
    assert synth.pool.importance_weights(torch.tensor([0]), beta, probs).item() == pytest.approx(1.0)


def test_policy_state_resumes():
    synth, _, _ = filled_synthesizer()
    synth.policy.theta = torch.tensor([0.1, 0.2, 0.3])
    synth.policy.updates, synth.steps_done = 7, 9
    twin, _, _ = ssd_synthesizer()
    twin.load_state_dict(synth.state_dict())
    assert torch.equal(twin.policy.theta, synth.policy.theta) and twin.policy.updates == 7
    assert twin.steps_done == 9 and torch.equal(twin.pool.touched, synth.pool.touched)


def test_a_non_finite_reward_leaves_the_policy_as_it_was():
    policy = SamplingPolicy(alpha=0.6, lr=0.5, device="cpu")
    features = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]])
    mean = policy.probabilities(features) @ features
    policy.update(features, mean, torch.tensor([0.2, float("nan")]))
    assert torch.equal(policy.theta, torch.tensor([0.6, 0.0, 0.0]))
    policy.update(features, mean, torch.tensor([0.2, 0.1]))
    assert not torch.equal(policy.theta, torch.tensor([0.6, 0.0, 0.0]))


def test_the_pending_reward_survives_a_checkpoint():
    synth, teacher, student = filled_synthesizer(ssd_sampling="policy", ssd_policy_lr=0.3)
    batch = synth.sample()
    with torch.no_grad():
        synth.after_step(batch, student(batch.images), teacher(batch.images))
    twin, _, _ = ssd_synthesizer(ssd_sampling="policy", ssd_policy_lr=0.3)
    twin.student.load_state_dict(student.state_dict())
    twin.load_state_dict(synth.state_dict())
    for key in ("inputs", "teacher_logits", "before"):
        assert torch.equal(twin.probe[key], synth.probe[key])
    torch.manual_seed(5)
    synth.sample()
    torch.manual_seed(5)
    twin.sample()                                       # both reward the same step alike
    assert torch.allclose(twin.policy.theta, synth.policy.theta) and twin.policy.updates == synth.policy.updates == 1


def test_a_floor_keeps_easy_images_in_the_kd_loss():
    labels = torch.tensor([0, 0, 1, 2])
    difficulty = torch.tensor([0.5, 1e-6, 0.2, 0.4])
    raw = torch.tensor([7 / 9, 7 / 9, 7 / 6, 7 / 6]) * difficulty
    phi = buffer_weights(labels, difficulty, 3, max_weight=3.0, min_weight=0.25)
    assert torch.allclose(phi, (raw / raw.mean()).clamp(0.25, 3.0))
    assert phi[1].item() == pytest.approx(0.25)
    synth, _, _ = filled_synthesizer(ssd_sampling="uniform", ssd_min_weight=0.5)
    assert synth.buffer_phi().min().item() >= 0.5


def test_a_step_skipped_as_non_finite_leaves_the_buffer_as_it_was():
    """after_step runs only for taken steps: a non-finite KD loss that --on_nonfinite skip skips leaves the
    priorities, the counters and the policy's pending reward untouched."""
    from datafree.engine import distill_steps
    from datafree.precision import Precision

    synth, teacher, student = filled_synthesizer(ssd_sampling="policy")
    before = {k: getattr(synth.pool, k).clone() for k in ("priority", "difficulty", "label", "touched")}
    with torch.no_grad():
        next(student.parameters()).fill_(float("nan"))        # every logit NaN: the loss is NaN
    precision = Precision("cpu", "fp32", on_nonfinite="skip")
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    steps = distill_steps(synth, student, teacher, optimizer, precision, 2)
    assert (steps.taken, steps.done) == (0, 2) and precision.guard.skipped == 2
    assert all(torch.equal(getattr(synth.pool, k), v) for k, v in before.items())
    assert synth.steps_done == 0 and synth.probe is None


def test_class_counts_by_hand():
    labels = torch.tensor([2, 0, 2, 2, 4])
    assert count_classes(labels, 6).tolist() == [1, 0, 3, 0, 1, 0]
    assert count_classes(torch.empty(0, dtype=torch.long), 3).tolist() == [0, 0, 0]
