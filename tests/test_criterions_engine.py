"""Golden values for the KD loss and the accuracy bookkeeping."""
import math

import pytest
import torch

from datafree.criterions import kldiv
from datafree.engine import evaluate
from datafree.tasks import AccuracyMetric


def test_kldiv_golden_value():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    T = 2.0
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    pt = [ps[1], ps[0]]
    expected = sum(p * math.log(p / q) for p, q in zip(pt, ps)) * T * T
    assert kldiv(s, t, T=T).item() == pytest.approx(expected, rel=1e-6)
    assert kldiv(t, t, T=T).item() == pytest.approx(0.0, abs=1e-6)


def test_kldiv_is_batch_mean():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    per_sample = torch.stack([kldiv(s[i:i + 1], t[i:i + 1], T=3.0) for i in range(4)])
    assert kldiv(s, t, T=3.0).item() == pytest.approx(per_sample.mean().item(), rel=1e-5)


def test_accuracy_metric_top1_top5():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    targets = torch.tensor([2, 0, 0])
    metric = AccuracyMetric()
    metric.update(logits, targets)
    stats = metric.compute()
    assert stats["acc1"] == pytest.approx(100 / 3)
    assert stats["acc5"] == pytest.approx(100.0)          # top-5 capped at the 3 classes
    assert stats["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-6)


def test_evaluate_percentages():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x

    x = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1, 1])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    stats = evaluate(Fixed(), loader, torch.device("cpu"))
    assert stats["acc1"] == pytest.approx(50.0) and stats["acc5"] == pytest.approx(100.0)
    expected_loss = torch.nn.functional.cross_entropy(x, y).item()
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-6)
