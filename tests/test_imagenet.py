"""ImageNet pieces on the CPU: torchvision teachers, and the Fast-50 synthesizer on tiny data."""
import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torchvision

import datafree_kd
import registry
from conftest import pool_images
from datafree.checkpoint import load_checkpoint, mismatch_reason
from datafree.synthesis.fast_imagenet import FastMetaImageNetSynthesizer
from datafree.synthesis.meta import FirstOrderMAML, Reptile


@pytest.mark.parametrize("ours,theirs", [("resnet18_imagenet", "resnet18"), ("resnet50_imagenet", "resnet50"),
                                         ("mobilenetv2_imagenet", "mobilenet_v2")])
def test_torchvision_state_dicts_load_and_compute_the_same(ours, theirs):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, theirs)(weights=None).eval()
    model = registry.get_model(ours, 1000).eval()
    state = reference.state_dict()
    assert mismatch_reason(model, state) is None
    assert list(model.state_dict()) == list(state)
    model.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def make_imagefolder(root, classes=("n01440764", "n01443537"), per_class=2, size=64, splits=("val",)):
    """ImageNet's layout with only val/ by default: a data-free run needs no training images."""
    from PIL import Image
    for split in splits:
        for c in classes:
            folder = root / "ILSVRC2012" / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = (torch.rand(size, size, 3) * 255).byte().numpy()
                Image.fromarray(pixels).save(folder / f"{c}_{i}.JPEG", format="JPEG")


def test_fast_meta_imagenet_two_calls_and_one_kd_step(in_tmp_cwd):
    """--dataset imagenet on a 2-class ImageFolder of 64x64 JPEGs with no train/ folder (val: resized and cropped to 224),
    a torchvision ResNet-18 state dict as --teacher_ckpt, a MobileNetV2 student: a warmup epoch
    (one synthesis call) and one epoch of one synthesis call + one KD step."""
    make_imagefolder(in_tmp_cwd / "data")
    assert not (in_tmp_cwd / "data" / "ILSVRC2012" / "train").exists()
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), in_tmp_cwd / "resnet18-tv.pth")
    result = datafree_kd.main([
        "--method", "fast_meta_imagenet", "--dataset", "imagenet", "--data_root", "data",
        "--teacher", "resnet18_imagenet", "--student", "mobilenetv2_imagenet", "--teacher_ckpt", "resnet18-tv.pth",
        "--gpu", "-1", "--batch_size", "2", "--kd_steps", "1", "--ep_steps", "1", "--epochs", "2", "--warmup", "1",
        "--g_steps", "2", "--adv", "1", "--bn", "0.1", "--oh", "0.1", "--bn_mmt", "0.9", "--T", "5",
        "--lr_g", "2e-4", "--lr_z", "0.01", "--lr_g_meta", "1e-4", "--lr_z_meta", "5e-3", "--is_maml", "0",
        "--reinit", "2", "--rand_label", "0", "--lr", "0.1", "--lr_decay_milestones", "1"])
    run = "checkpoints/datafree-fast_meta_imagenet/imagenet-resnet18_imagenet-mobilenetv2_imagenet"
    ckpt = load_checkpoint(f"{run}/last.pth")
    assert ckpt["epoch"] == 2 and ckpt["synthesizer"]["calls"] == 2
    assert pool_images(run).shape == (4, 3, 224, 224)
    assert ckpt["synthesizer"]["z"].shape == (2, 256, 14, 14)
    assert ckpt["scheduler"]["milestones"] == {1: 1} and ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)
    log = open(f"{run}/log.txt").read()
    kd = re.findall(r"kd_loss=(\S+)", log)
    assert kd[0] == "none" and math.isfinite(float(kd[1]))     # warmup epoch: no KD step; then one finite step
    assert all(math.isfinite(float(v)) for v in re.findall(r" loss=(\S+) loss_bn", log))
    history = json.load(open(f"{run}/summary.json"))["history"]
    assert result["best_acc1"] == max(h["acc1"] for h in history) == ckpt["best_acc1"]


def tiny_synthesizer(**overrides):
    torch.manual_seed(0)
    teacher = registry.get_model("resnet18_imagenet", 10).eval()
    values = dict(batch_size=4, synthesis_batch_size=None, fp16=False, precision="fp32", cmi_init=None,
                  num_classes=10, img_size=64, nc=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                  adv=0.0, bn=0.1, oh=0.1, bn_mmt=0.9, g_steps=2, lr_g=2e-4, lr_z=0.01, lr_g_meta=1e-4,
                  lr_z_meta=5e-3, is_maml=0, reinit=0, rand_label=1, warmup=0, T=5.0)
    values.update(overrides)
    return FastMetaImageNetSynthesizer(teacher, teacher, SimpleNamespace(**values), torch.device("cpu"))


def test_reptile_moves_g_and_z_towards_the_fast_copies_with_their_own_meta_rates(monkeypatch):
    seen = {}
    real_finish = Reptile.finish

    def finish(self, fast_generator, fast_latent=None):
        seen["z_fast"] = fast_latent.detach().clone()
        seen["g_fast"] = [p.detach().clone() for p in fast_generator.parameters()]
        real_finish(self, fast_generator, fast_latent)

    monkeypatch.setattr(Reptile, "finish", finish)
    synth = tiny_synthesizer()
    z0 = synth.z.detach().clone()
    g0 = [p.detach().clone() for p in synth.generator.parameters()]
    out = synth.synthesize()
    assert out["images"].shape == (4, 3, 64, 64) and len(synth.pool) == 4
    # Adam's first step moves every coordinate by its lr against the sign of the gradient (meta - fast)
    for before, fast, after, lr in [(z0, seen["z_fast"], synth.z.detach(), 5e-3),
                                    *zip(g0, seen["g_fast"], synth.generator.parameters(), [1e-4] * len(g0))]:
        moved = (before - fast).abs() > 1e-5
        assert moved.any()
        expected = before - lr * torch.sign(before - fast)
        assert torch.allclose(after.detach()[moved], expected[moved], atol=lr * 1e-3)


def test_fomaml_sums_inner_gradients_of_g_and_z_and_reinit_restarts(monkeypatch):
    inner, meta = [], []
    real_after, real_finish = FirstOrderMAML.after_inner_backward, FirstOrderMAML.finish

    def after(self, fast_generator, fast_latent=None):
        inner.append(fast_latent.grad.clone())
        real_after(self, fast_generator, fast_latent)

    def finish(self, fast_generator, fast_latent=None):
        meta.append(self.latent.grad.clone())
        real_finish(self, fast_generator, fast_latent)

    monkeypatch.setattr(FirstOrderMAML, "after_inner_backward", after)
    monkeypatch.setattr(FirstOrderMAML, "finish", finish)
    synth = tiny_synthesizer(is_maml=1, g_steps=3, reinit=2, rand_label=0)
    targets = synth.targets.clone()
    synth.synthesize()
    assert len(inner) == 3 and torch.allclose(meta[0], sum(inner), atol=1e-7)
    assert torch.equal(synth.targets, targets)               # rand_label 0: one target per latent
    z1, optimizer1 = synth.z.detach().clone(), synth.meta.optimizer
    state = synth.state_dict()
    synth.synthesize()                                       # call 2: reinit draws new z and a new meta optimiser
    assert synth.meta.optimizer is not optimizer1
    assert (synth.z.detach() - z1).abs().max() > 0.5         # not one meta step (5e-3) away: drawn afresh

    restored = tiny_synthesizer(is_maml=1, g_steps=3, reinit=2, rand_label=0)
    restored.load_state_dict(state)
    assert torch.equal(restored.z.detach(), z1) and restored.z.requires_grad
    assert restored.meta.latent is restored.z and restored.calls == 1
