"""datafree.distill on models that are in no registry, and examples/own_teacher.py, at tiny settings."""
import json
import os
import sys

import pytest
import torch
from torch import nn

import datafree
from conftest import ROOT
from datafree.errors import UsageError

sys.path.insert(0, os.path.join(ROOT, "examples"))
import own_teacher  # noqa: E402

TINY = dict(batch_size=8, synthesis_batch_size=8, kd_steps=1, ep_steps=2, g_steps=2, lr_g=3e-3, lr_z=0.01, bn=1.0,
            oh=1.0, adv=1.0, T=4, device="cpu")
SHAPE = dict(input_shape=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=4)


def test_distill_without_data_measures_agreement_with_the_teacher(tmp_path):
    torch.manual_seed(0)
    teacher, student = own_teacher.small_cnn(8, num_classes=4), own_teacher.small_cnn(4, num_classes=4)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in student.parameters()]
    trained, summary = datafree.distill(teacher, student, "fast_meta", epochs=2, output=str(tmp_path / "run"),
                                        **SHAPE, **TINY)
    assert trained is student
    assert summary["metric"] == "top-1 agreement with the teacher on synthetic batches"
    assert [h["epoch"] for h in summary["history"]] == [0, 1]
    assert all(h["kd_loss"] > 0 for h in summary["history"])
    # agreement on four synthetic batches of 8 images: a whole number of the 32 images, in %
    assert all(round(h["acc1"] * 32 / 100, 4).is_integer() for h in summary["history"])
    assert summary["best_acc1"] == max(h["acc1"] for h in summary["history"])
    assert summary["synthesis_seconds"] > 0 and summary["kd_seconds"] > 0 and summary["epochs"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters()))
    for key, value in teacher.state_dict().items():   # read only, and its parameters trainable again
        assert torch.equal(value, teacher_before[key]), key
    assert all(p.requires_grad for p in teacher.parameters())
    run = tmp_path / "run"
    assert {"last.pth", "best.pth", "summary.json", "synthetic.png"} <= set(os.listdir(run))
    assert json.loads((run / "summary.json").read_text())["history"][-1]["acc1"] == summary["acc1"]
    with pytest.raises(UsageError, match="already holds a run"):
        datafree.distill(teacher, student, "fast_meta", epochs=1, output=str(run), **SHAPE, **TINY)


def test_distill_with_val_data_and_a_preset(tmp_path):
    torch.manual_seed(0)
    images, labels = torch.randn(20, 3, 16, 16), torch.randint(0, 4, (20,))
    val = torch.utils.data.TensorDataset(images, labels)
    preset = tmp_path / "preset.yaml"
    preset.write_text("method: fast_meta\ndataset: digits\nteacher: wrn16_2\ng_steps: 3\nepochs: 5\n")
    settings = {k: v for k, v in TINY.items() if k != "g_steps"}
    _, summary = datafree.distill(own_teacher.small_cnn(8, 4), own_teacher.small_cnn(4, 4), "fast_meta", epochs=1,
                                  val_data=val, config=str(preset), **SHAPE, **settings)
    assert summary["metric"] == "top-1 accuracy on val_data" and summary["epochs"] == 1 and summary["output"] is None
    assert summary["acc1"] in {100.0 * k / 20 for k in range(21)}


@pytest.mark.parametrize("change,message", [
    (dict(dataset="digits"), "takes 'dataset' as input_shape"),
    (dict(no_such_flag=1), "unknown keys no_such_flag"),
    (dict(g_steps="many"), "not a valid int"),
    (dict(cr=0.5), "--cr is not used by method 'fast_meta'"),
    (dict(mean=(0.5,)), "one value per input channel"),
    (dict(input_shape=(16, 16)), r"must be \(channels, height, width\)"),
    (dict(synthesis_channels=2), "must be 1"),
])
def test_distill_refuses_bad_input_in_one_sentence(change, message):
    kwargs = {**SHAPE, **TINY, "epochs": 1, **change}
    with pytest.raises(UsageError, match=message):
        datafree.distill(own_teacher.small_cnn(4, 4), own_teacher.small_cnn(4, 4), "fast_meta", **kwargs)


def test_distill_says_what_a_teacher_lacks():
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    with pytest.raises(UsageError, match="no BatchNorm2d layer"):
        datafree.distill(no_bn, own_teacher.small_cnn(4, 4), "fast_meta", epochs=1, **SHAPE, **TINY)
    with pytest.raises(UsageError, match="return_features=True"):
        datafree.distill(own_teacher.small_cnn(4, 4), own_teacher.small_cnn(4, 4), "dafl", epochs=1, **SHAPE,
                         device="cpu")


def test_only_methods_that_read_teacher_features_need_return_features():
    """The synthesizers say which of them call teacher(x, return_features=True); CMI reads BN inputs
    through hooks, so a plain teacher is enough for it."""
    from datafree.api import check_inputs
    from datafree.synthesis import SYNTHESIZERS
    plain = own_teacher.small_cnn(4, 4)
    needing = sorted(name for name, cls in SYNTHESIZERS.items() if cls.reads_teacher_features)
    assert needing == ["dafl", "dfad", "dfq", "zskt"]
    for name, cls in SYNTHESIZERS.items():
        if cls.reads_teacher_features:
            with pytest.raises(UsageError, match=f"method '{name}' reads the teacher's features"):
                check_inputs(plain, **SHAPE, synthesizer=cls, bn=1.0)
        else:
            assert check_inputs(plain, **SHAPE, synthesizer=cls, bn=1.0)["mean"] == (0.5, 0.5, 0.5)


def test_own_teacher_example_runs():
    teacher_acc, summary = own_teacher.main(["--teacher_epochs", "1", "--epochs", "1"])
    assert teacher_acc > 25.0      # one seeded epoch on the digits (36.5%) already beats chance (10%)
    assert summary["metric"] == "top-1 accuracy on val_data" and len(summary["history"]) == 1
