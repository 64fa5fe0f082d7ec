"""The baselines' loss terms against hand computations, and each method behind the interface."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import registry
from datafree.criterions import (activation, class_balance, info_nce, jsdiv, kldiv, l1_logits, l2_prior,
                                 total_variation)
from datafree.synthesis import SYNTHESIZERS, SynthesisConfig
from datafree.synthesis.base import BestBatch, KDBatch
from datafree.synthesis.cmi import MemoryBank
from datafree.tasks import Classification


def test_jsdiv_hand_computation():
    s, t = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    T = 3.0
    p = [math.exp(v / T) for v in (1.0, 0.0, -1.0)]
    p = [v / sum(p) for v in p]
    q = [math.exp(v / T) for v in (0.0, 2.0, 0.0)]
    q = [v / sum(q) for v in q]
    clamp = lambda v: min(max(v, 0.01), 0.99)
    m = [clamp(0.5 * (a + b)) for a, b in zip(p, q)]
    expected = 0.5 * sum(mi * (math.log(mi) - math.log(clamp(pi))) for mi, pi in zip(m, p)) \
        + 0.5 * sum(mi * (math.log(mi) - math.log(clamp(qi))) for mi, qi in zip(m, q))
    assert jsdiv(s, t, T=T).item() == pytest.approx(expected, rel=1e-5)
    assert jsdiv(t, t, T=T).item() == pytest.approx(0.0, abs=1e-6)


def test_total_variation_and_l2_priors():
    img = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # right: |0-1|,|2-4| -> 1.5; down: |0-2|,|1-4| -> 2.5; anti-diagonal: |2-1| -> 1; diagonal: |0-4| -> 4
    assert total_variation(img).item() == pytest.approx(1.5 + 2.5 + 1.0 + 4.0)
    assert total_variation(torch.ones(2, 3, 5, 5)).item() == 0.0
    assert l2_prior(img).item() == pytest.approx(math.sqrt(0 + 1 + 4 + 16))


def test_class_balance_and_activation():
    logits = torch.tensor([[10.0, -10.0], [-10.0, 10.0]])      # balanced batch: mean prob (0.5, 0.5)
    assert class_balance(logits).item() == pytest.approx(math.log(0.5), rel=1e-4)
    collapsed = torch.tensor([[10.0, -10.0], [10.0, -10.0]])   # one class: entropy 0
    assert class_balance(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    assert class_balance(logits) < class_balance(collapsed)    # minimising it prefers balance
    assert activation(torch.tensor([[1.0, -3.0], [0.5, 0.5]])).item() == pytest.approx(-5.0 / 4)


def test_class_balance_of_a_class_no_sample_predicts_is_finite():
    saturated = torch.tensor([[200.0, 0.0, 0.0], [0.0, 200.0, 0.0]], requires_grad=True)   # class 2 gets exactly 0
    assert F.softmax(saturated, dim=1).mean(dim=0)[2].item() == 0.0
    value = class_balance(saturated)
    assert value.item() == pytest.approx(math.log(0.5), rel=1e-6)
    value.backward()
    assert torch.isfinite(saturated.grad).all()
    # by hand: logits ln(1), ln(3) and ln(3), ln(1) give probabilities (1/4, 3/4) and (3/4, 1/4): mean (1/2, 1/2),
    # so p log p sums to log(1/2); (1, 0) and (1, 0) of equal logits give (1/2, 1/2) too
    unbalanced = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0], [0.0, 0.0]])
    assert class_balance(unbalanced).item() == pytest.approx(math.log(0.5), rel=1e-6)
    skewed = torch.tensor([[0.0, math.log(3.0)]])                 # (1/4, 3/4): 1/4 ln 1/4 + 3/4 ln 3/4
    assert class_balance(skewed).item() == pytest.approx(0.25 * math.log(0.25) + 0.75 * math.log(0.75), rel=1e-6)


def test_info_nce_with_a_known_bank():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[-1.0, 0.0]])
    keys = torch.cat([queries, bank])                 # positives first, then the bank's negative
    T = 0.5
    losses = info_nce(queries, keys, T)
    e = math.exp
    expected0 = -math.log(e(1 / T) / (e(1 / T) + e(0) + e(-1 / T)))
    expected1 = -math.log(e(1 / T) / (e(0) + e(1 / T) + e(0)))
    assert losses.tolist() == pytest.approx([expected0, expected1], rel=1e-5)


def test_memory_bank_ring_and_draw():
    bank = MemoryBank(size=4, dim=2, device="cpu")
    assert len(bank.draw(3)) == 0
    bank.add(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    assert sorted(bank.draw(10)[:, 0].tolist()) == [1.0, 2.0, 3.0]
    bank.add(torch.tensor([[4.0, 4.0], [5.0, 5.0]]))            # wraps: 5 overwrites 1
    assert sorted(bank.draw(10)[:, 0].tolist()) == [2.0, 3.0, 4.0, 5.0]
    assert bank.ptr == 1 and bank.count == 5


def test_l1_logits_for_dfad():
    assert l1_logits(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])).item() == pytest.approx(1.5)


def test_best_batch_keeps_a_copy():
    x = torch.zeros(2, requires_grad=False)
    best = BestBatch("cpu")
    best.update(torch.tensor(1.0), x=x)
    x.add_(5.0)                                  # the tensor keeps changing, as pixels do
    best.update(torch.tensor(2.0), x=x)          # worse: not taken
    assert best.values["x"].tolist() == [0.0, 0.0]
    best.update(torch.tensor(0.5), x=x)
    assert best.values["x"].tolist() == [5.0, 5.0]


def make_config(**overrides):
    values = dict(num_classes=10, img_size=32, nc=3, mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=8,
                  synthesis_batch_size=8, fp16=False, T=4.0, adv=1.0, bn=1.0, oh=1.0, act=0.1, balance=1.0,
                  tv=0.0, l2=0.0, cr=0.8, cr_T=0.2, cmi_init=None, lr_g=0.01, lr_z=0.01, g_steps=2,
                  reset_l0=0, reset_bn=0, bn_mmt=0.0, is_maml=1, warmup=0, teacher="resnet8",
                  lr_g_meta=1e-4, lr_z_meta=5e-3, reinit=0, rand_label=1, epochs=2, ep_steps=4, kd_steps=2,
                  train_size=100, ssd_buffer_size=0, ssd_gamma=2.0, ssd_beta=0.4, ssd_alpha=0.6, ssd_replace=0.1,
                  ssd_replace_rule="priority", ssd_max_weight=3.0, ssd_min_weight=0.0, ssd_sampling="policy", ssd_policy_lr=0.05,
                  ssd_reward="relative", ssd_policy_init="priority",
                  ssd_phi=1, ssd_kd_passes=0.0, ssd_kd_batch=8, ssd_refresh_every=0, ssd_refresh_share=0.0,
                  as_original="", lr_g_schedule=None,
                  g_life=10, g_loops=1, gwp_loops=1, le_emb_size=32, label_embedding="hash", clip_model="unused")
    values.update(overrides)
    return SimpleNamespace(**values)


def strict_config(method, **overrides):
    """make_config as datafree_kd.py gives it: the run facts and only ``method``'s own flags."""
    values = make_config(**overrides)
    facts = {k: getattr(values, k, None) for k in SynthesisConfig.FACTS}
    facts.update(precision="fp32", on_nonfinite="stop", pool_storage="memory")
    return SynthesisConfig.for_method(SYNTHESIZERS[method], values, **facts)


@pytest.mark.parametrize("method", sorted(SYNTHESIZERS))
def test_every_method_synthesizes_samples_and_resumes(method):
    torch.manual_seed(0)
    teacher, student = registry.get_model("resnet8", 10).eval(), registry.get_model("resnet8", 10)
    synth = SYNTHESIZERS[method](teacher, student, strict_config(method), torch.device("cpu"))
    out = synth.synthesize()
    assert out["images"].shape == (8, 3, 32, 32) and 0 <= out["images"].min() and out["images"].max() <= 1
    assert all(math.isfinite(v) for k, v in out.items() if k.startswith("loss"))
    assert synth.sample().images.shape == (8, 3, 32, 32)
    twin = SYNTHESIZERS[method](teacher, student, strict_config(method), torch.device("cpu"))
    twin.load_state_dict(synth.state_dict())
    assert_same_state(twin.state_dict(), synth.state_dict())
    assert twin.calls == synth.calls == 1


@pytest.mark.parametrize("method", sorted(SYNTHESIZERS))
def test_every_method_synthesizes_gray_images_with_one_channel(method):
    torch.manual_seed(0)
    teacher, student = registry.get_model("resnet8", 10).eval(), registry.get_model("resnet8", 10)
    synth = SYNTHESIZERS[method](teacher, student, make_config(synthesis_channels=1), torch.device("cpu"))
    images, batch = synth.synthesize()["images"], synth.sample().images
    for x in (images, batch):             # 3 channels for the networks, all equal (mean/std are equal too)
        assert x.shape == (8, 3, 32, 32)
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert images.std() > 0
    generator = getattr(synth, "generator", None)
    if generator is not None:             # the generator itself makes one channel
        last_conv = [m for m in generator.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        assert last_conv.out_channels == 1


def assert_same_state(a, b, path="state"):
    """Every tensor and number of two nested state dicts is equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a.cpu(), b.cpu()), path
    else:
        assert a == b, path


def test_deepinversion_pool_holds_the_best_step_not_the_last(monkeypatch):
    torch.manual_seed(0)
    teacher, student = registry.get_model("resnet8", 10).eval(), registry.get_model("resnet8", 10)
    synth = SYNTHESIZERS["deepinv"](teacher, student, make_config(g_steps=3, lr_g=0.5), torch.device("cpu"))
    seen = []
    real_update = BestBatch.update

    def spy(self, loss, **values):
        seen.append((loss.item(), values["pixels"].detach().clone()))
        real_update(self, loss, **values)

    monkeypatch.setattr(BestBatch, "update", spy)
    out = synth.synthesize()
    best_loss, best_pixels = min(seen, key=lambda item: item[0])
    expected = synth.normalizer.denormalize(best_pixels).clamp(0, 1)
    assert torch.allclose(out["images"], expected, atol=1e-6)


def test_deepinversion_as_original_keeps_the_last_iterate(monkeypatch):
    """--as_original deepinv_best: the original's 'best' batch is a view of the pixels being optimised, so the
    pool gets the last step's pixels (after its update and clamp), whatever step had the lowest loss."""
    torch.manual_seed(0)
    teacher, student = registry.get_model("resnet8", 10).eval(), registry.get_model("resnet8", 10)
    synth = SYNTHESIZERS["deepinv"](teacher, student, make_config(g_steps=3, lr_g=0.5, as_original="deepinv_best"),
                                    torch.device("cpu"))
    final = {}
    real_add = synth.pool.add
    monkeypatch.setattr(synth.pool, "add", lambda images: (final.setdefault("images", images.clone()),
                                                            real_add(images))[1])
    real_step = torch.optim.Adam.step

    def step_and_record(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        final["pixels"] = self.param_groups[0]["params"][0]
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step_and_record)
    out = synth.synthesize()
    low = synth.normalizer(torch.zeros(1, 3, 1, 1))
    high = synth.normalizer(torch.ones(1, 3, 1, 1))
    last = torch.maximum(torch.minimum(final["pixels"].detach(), high), low)     # the last step, clamped
    assert torch.allclose(out["images"], synth.normalizer.denormalize(last).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("method", ["zskt", "dfad"])
def test_adversarial_generator_moves_towards_disagreement(method):
    """One generator step on the adversarial term raises the student-teacher divergence."""
    torch.manual_seed(0)
    teacher, student = registry.get_model("resnet8", 10).eval(), registry.get_model("resnet8", 10).eval()
    config = make_config(bn=0.0, oh=0.0, act=0.0, balance=0.0, adv=1.0, g_steps=1, lr_g=0.05, batch_size=64,
                         synthesis_batch_size=64)
    synth = SYNTHESIZERS[method](teacher, student, config, torch.device("cpu"))
    synth.generator.eval()                      # fixed BN statistics: compare like with like
    z = torch.randn(64, synth.nz)

    def divergence():
        with torch.no_grad():
            x = synth.normalizer(synth.generator(z))
            s, t = student(x), teacher(x)
            return (l1_logits(s, t) if method == "dfad" else kldiv(s, t)).item()

    before = divergence()
    assert before > 0
    loss, terms = synth.generator_loss(synth.normalizer(synth.generator(z)))
    assert terms["adv"].item() == pytest.approx(-before, rel=1e-5)    # the term is minus the divergence
    assert terms["adv"].item() != 0.0
    synth.optimizer.zero_grad()
    loss.backward(inputs=list(synth.generator.parameters()))
    synth.optimizer.step()
    assert divergence() > before


def test_generative_sampling_counts_as_synthesis():
    assert SYNTHESIZERS["dafl"].sampling_is_synthesis and not SYNTHESIZERS["fast_meta"].sampling_is_synthesis
    assert SYNTHESIZERS["dafl"].nz == 512 and SYNTHESIZERS["dfq"].nz == 256
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    dfad = SYNTHESIZERS["dfad"].__new__(SYNTHESIZERS["dfad"])
    assert dfad.kd_loss(KDBatch(torch.zeros(4, 3, 8, 8)), s, t).item() == pytest.approx(l1_logits(s, t).item())
    zskt = SYNTHESIZERS["zskt"].__new__(SYNTHESIZERS["zskt"])
    zskt.config, zskt.task = SimpleNamespace(T=4.0), Classification(10)
    assert zskt.kd_loss(KDBatch(torch.zeros(4, 3, 8, 8)), s, t).item() == pytest.approx(kldiv(s, t, T=4.0).item())


@pytest.mark.parametrize("method, schedule, expected", [
    ("dfad", None, [0.01, 0.005, 0.001]),          # DFAD's own: the student's schedule
    ("dfad", "constant", [0.01, 0.01, 0.01]),      # Fast-Datafree's DFAD
    ("dafl", None, [0.01, 0.01, 0.01]),            # the other generator methods keep lr_g
    ("dfq", "student", [0.01, 0.005, 0.001])])
def test_generator_lr_follows_the_student_schedule_where_the_method_or_flag_says(method, schedule, expected):
    teacher, student = registry.get_model("resnet8", 10).eval(), registry.get_model("resnet8", 10)
    synth = SYNTHESIZERS[method](teacher, student, strict_config(method, lr_g_schedule=schedule, lr_g=0.01),
                                 torch.device("cpu"))
    seen = []
    for scale in (1.0, 0.5, 0.1):
        synth.follow_student_lr(scale)
        seen.append(synth.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx(expected)
