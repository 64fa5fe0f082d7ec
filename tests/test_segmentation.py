"""Segmentation: the task object, the mIoU metric, the data, the DeepLab models and the scripts."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import datafree.synthesis.fast as fast_module
import datafree_kd
import registry
from conftest import pool_images
import train_scratch
import vanilla_kd
from datafree.checkpoint import atomic_save, load_checkpoint, load_weights
from datafree.criterions import jsdiv, kldiv
from datafree.datasets import NYUv2
from datafree.datasets import shapes as shapes_module
from datafree.datasets.seg_transforms import Compose, RandomCrop, RandomHorizontalFlip, RandomScale, ToTensorNormalize
from datafree.engine import evaluate
from datafree.errors import CheckpointError, DatasetNotFoundError, UsageError
from datafree.models.generator import DeepGenerator
from datafree.models.torchvision_weights import load_backbone
from datafree.run import registered_data, synthesizer_config
from datafree.tasks import Classification, ConfusionMatrixMetric, Segmentation

# The small confusion case: 2 x 4 pixels, 3 classes, two pixels ignored (255).
TARGETS = torch.tensor([[[0, 0, 1, 255], [1, 2, 2, 255]]])
PREDS = torch.tensor([[[0, 1, 1, 2], [1, 2, 0, 0]]])


def one_hot_logits(preds, num_classes):
    return F.one_hot(preds, num_classes).permute(0, 3, 1, 2).float()


def test_miou_equals_hand_computation_with_ignored_pixels():
    # Counted pixels (target -> prediction): 0->0, 0->1, 1->1, 1->1, 2->2, 2->0.
    # Rows (truth) [[1, 1, 0], [0, 2, 0], [1, 0, 1]]: IoU0 = 1/(2+2-1), IoU1 = 2/(2+3-2), IoU2 = 1/(2+1-1).
    metric = ConfusionMatrixMetric(num_classes=3, ignore_index=255)
    metric.update(one_hot_logits(PREDS, 3), TARGETS)
    assert metric.confusion_matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    stats = metric.compute()
    assert stats["iou"] == pytest.approx([100 / 3, 200 / 3, 50.0])
    assert stats["miou"] == pytest.approx(50.0)
    assert stats["pixel_acc"] == pytest.approx(400 / 6)
    # One-hot logits: CE = log(e + 2) - 1 for the 4 right pixels, log(e + 2) for the 2 wrong ones.
    assert stats["loss"] == pytest.approx(math.log(math.e + 2) - 4 / 6, rel=1e-6)


def test_miou_skips_classes_absent_from_truth_and_prediction():
    metric = ConfusionMatrixMetric(num_classes=4, ignore_index=255)
    metric.update(one_hot_logits(PREDS, 4), TARGETS)
    stats = metric.compute()
    assert stats["miou"] == pytest.approx(50.0)
    assert math.isnan(stats["iou"][3])
    # A class that is predicted but never true has IoU 0 and counts in the mean.
    metric = ConfusionMatrixMetric(num_classes=3, ignore_index=255)
    metric.update(one_hot_logits(torch.tensor([[[1, 1]]]), 3), torch.tensor([[[0, 1]]]))
    assert metric.compute()["iou"][:2] == pytest.approx([0.0, 50.0]) and metric.compute()["miou"] == pytest.approx(25.0)


def test_metric_state_sums_across_processes():
    """Two 'processes' on halves of the data, summed with reduce(fn), equal one process on all of it."""
    logits = one_hot_logits(PREDS, 3)
    whole = ConfusionMatrixMetric(3)
    whole.update(logits, TARGETS)
    left, right = ConfusionMatrixMetric(3), ConfusionMatrixMetric(3)
    left.update(logits[..., :2], TARGETS[..., :2])
    right.update(logits[..., 2:], TARGETS[..., 2:])
    left.reduce(lambda state: state + right.state)             # returns the sum
    assert torch.equal(left.confusion_matrix, whole.confusion_matrix) and torch.allclose(left.state, whole.state)
    once = right.compute()
    right.reduce(lambda state: state.mul_(2))                  # reduces in place (as all_reduce does)
    assert right.compute()["miou"] == pytest.approx(once["miou"]) and right.compute()["loss"] == pytest.approx(
        once["loss"])
    assert right.confusion_matrix.sum().item() == 2 * 2        # 2 counted pixels (2 ignored), twice


def test_evaluate_reports_miou_and_applies_reduce_fn():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return one_hot_logits(PREDS, 3)

    loader = [(torch.zeros(1, 3, 2, 4), TARGETS)]
    stats = evaluate(Fixed(), loader, torch.device("cpu"), Segmentation(3))
    assert stats["miou"] == pytest.approx(50.0)
    doubled = evaluate(Fixed(), loader, torch.device("cpu"), Segmentation(3), reduce_fn=lambda s: s.mul_(2))
    assert doubled["miou"] == pytest.approx(50.0) and doubled["loss"] == pytest.approx(stats["loss"])


def test_segmentation_losses_are_per_pixel():
    torch.manual_seed(0)
    task, flat = Segmentation(4), Classification(4)
    s, t = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    pixels = lambda x: x.permute(0, 2, 3, 1).reshape(-1, 4)
    assert kldiv(s, t, T=4).item() == pytest.approx(kldiv(pixels(s), pixels(t), T=4).item(), rel=1e-5)
    assert task.adversarial_loss(s, t).item() == pytest.approx(flat.adversarial_loss(pixels(s), pixels(t)).item(),
                                                               rel=1e-5)
    assert jsdiv(s, t, T=3).item() == pytest.approx(jsdiv(pixels(s), pixels(t), T=3).item(), rel=1e-5)
    targets = torch.randint(0, 4, (2, 3, 5))
    targets[0, 0, :] = 255
    flat_targets = targets.reshape(-1)
    keep = flat_targets != 255
    expected = F.cross_entropy(pixels(s)[keep], flat_targets[keep])
    assert task.supervised_loss(s, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    # The one-hot term of synthesis: the teacher's own argmax, as there are no label maps to draw.
    assert task.inversion_targets(8, "cpu") is None
    assert task.one_hot_loss(t, None).item() == pytest.approx(F.cross_entropy(t, t.argmax(1)).item())
    # Low-resolution logits are upsampled to the target maps.
    small = torch.randn(2, 4, 2, 2)
    assert task.supervised_loss(small, torch.zeros(2, 6, 6, dtype=torch.long)).item() == pytest.approx(
        F.cross_entropy(F.interpolate(small, size=(6, 6), mode="bilinear"), torch.zeros(2, 6, 6).long()).item())


def test_shapes_data_is_fixed_and_normalised():
    images, masks = shapes_module.generate("test")
    assert images.shape == (200, 64, 64, 3) and masks.shape == (200, 64, 64)
    again = shapes_module.make_sample(np.random.default_rng(shapes_module.SPLITS["test"][1]))
    assert np.array_equal(again[0], images[0]) and np.array_equal(again[1], masks[0])
    assert set(np.unique(masks)) == set(range(len(shapes_module.SHAPES_CLASSES)))
    train = shapes_module.generate("train")[0].reshape(-1, 3) / 255.0
    assert train.mean(0) == pytest.approx(shapes_module.SHAPES_MEAN, abs=1e-3)
    assert train.std(0) == pytest.approx(shapes_module.SHAPES_STD, abs=1e-3)
    _, train_set, val_set = registry.get_dataset("shapes")
    image, mask = train_set[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.int64
    image, mask = val_set[3]
    assert torch.equal(mask, torch.from_numpy(masks[3]).long())


def test_joint_transforms_keep_image_and_mask_aligned():
    torch.manual_seed(0)
    mask = np.random.default_rng(0).integers(0, 5, (20, 30)).astype(np.uint8)
    image = Image.fromarray(np.repeat(mask[..., None] * 40, 3, axis=2))
    crop_flip = Compose([RandomCrop(16), RandomHorizontalFlip(), ToTensorNormalize((0, 0, 0), (1, 1, 1))])
    for _ in range(20):
        x, m = crop_flip(image, Image.fromarray(mask, mode="L"))
        assert x.shape == (3, 16, 16) and m.shape == (16, 16)
        assert torch.equal((x[0] * 255 / 40).round().long(), m)   # every pixel still shows its own class
    # A crop larger than the image pads the image with 0 and the mask with the ignore index.
    x, m = Compose([RandomCrop(40, ignore_index=255), ToTensorNormalize((0, 0, 0), (1, 1, 1))])(
        image, Image.fromarray(mask, mode="L"))
    assert x.shape == (3, 40, 40) and (m == 255).sum() == 40 * 40 - 20 * 30 and (x[:, m == 255] == 0).all()
    scaled_image, scaled_mask = RandomScale(0.5, 2.0)(image, Image.fromarray(mask, mode="L"))
    assert scaled_image.size == scaled_mask.size
    assert set(np.unique(np.array(scaled_mask))) <= set(range(5))   # nearest: no new label values


@pytest.fixture
def fake_nyuv2(tmp_path):
    """Two train and two test images in the original layout, 48 x 64, labels 0..13."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for folder in ("image", "seg13"):
            os.makedirs(tmp_path / "NYUv2" / folder / split)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
                tmp_path / "NYUv2" / "image" / split / f"{i:04d}.png")
            Image.fromarray(rng.integers(0, 14, (48, 64), dtype=np.uint8)).save(
                tmp_path / "NYUv2" / "seg13" / split / f"{i:04d}.png")
    return tmp_path


@pytest.mark.filterwarnings("ignore:NYUv2 .* split at")
def test_nyuv2_layout_labels_and_transforms(fake_nyuv2):
    with pytest.warns(UserWarning, match="not the usual 795"):
        num_classes, train_set, val_set = registry.get_dataset("nyuv2", str(fake_nyuv2))
    assert num_classes == 13 and registry.get_task("nyuv2").ignore_index == 255
    raw = torch.from_numpy(np.array(Image.open(fake_nyuv2 / "NYUv2" / "seg13" / "test" / "0000.png"))).long()
    image, mask = val_set[0]
    assert image.shape == (3, 256, 341) and mask.shape == (256, 341)
    with pytest.warns(UserWarning):
        untransformed = NYUv2(str(fake_nyuv2 / "NYUv2"), "test")
    mask = torch.from_numpy(np.array(untransformed[0][1])).long()
    assert torch.equal(mask, torch.where(raw == 0, torch.tensor(255), raw - 1))   # 0 -> 255, k -> k - 1
    image, mask = train_set[1]
    assert image.shape == (3, 128, 128) and mask.shape == (128, 128) and mask.dtype == torch.int64


def test_nyuv2_missing_says_where_to_put_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"NYUv2 is not at .*NYUv2.image.train; put it there as"):
        registry.get_dataset("nyuv2", str(tmp_path))


def test_deeplab_outputs_at_input_resolution_and_output_stride_8():
    model = registry.get_model("deeplabv3_mobilenet", 13).eval()
    with torch.no_grad():
        assert model.backbone(torch.rand(1, 3, 128, 128))["out"].shape == (1, 320, 16, 16)
        assert model(torch.rand(2, 3, 40, 56)).shape == (2, 13, 40, 56)
    tiny = registry.get_model("deeplabv3_tiny_s", 5).eval()
    with torch.no_grad():
        assert tiny(torch.rand(2, 3, 64, 48)).shape == (2, 5, 64, 48)


def test_model_made_for_another_task_is_refused(tmp_path):
    with pytest.raises(UsageError, match="'wrn16_1' is made for classification, but the dataset is a segmentation"):
        registry.get_model("wrn16_1", 5, task=registry.get_task("shapes"))
    with pytest.raises(UsageError, match="'deeplabv3_tiny' is made for segmentation"):
        registry.get_model("deeplabv3_tiny", 10, task=registry.get_task("digits"))
    path = str(tmp_path / "t.pth")
    atomic_save({"state_dict": registry.get_model("deeplabv3_tiny", 13).state_dict()}, path)
    with pytest.raises(CheckpointError, match="13-class classifier but the model has 5 classes"):
        load_weights(registry.get_model("deeplabv3_tiny", 5), path, "deeplabv3_tiny")


def test_train_scratch_then_vanilla_kd_on_shapes(in_tmp_cwd):
    common = ["--dataset", "shapes", "--epochs", "1", "--batch-size", "50", "--lr", "0.05", "--gpu", "-1"]
    result = train_scratch.main(["--model", "deeplabv3_tiny_s", *common])
    teacher = load_checkpoint("checkpoints/pretrained/shapes_deeplabv3_tiny_s.pth")
    history = json.load(open("checkpoints/scratch/shapes_deeplabv3_tiny_s/summary.json"))["history"]
    assert teacher["best_acc1"] == pytest.approx(result["best_acc1"]) == max(h["acc1"] for h in history)
    log = open("checkpoints/scratch/shapes_deeplabv3_tiny_s/log.txt").read()
    assert "mIoU=" in log and "pixel_acc=" in log and "IoU=[" in log and "Best mIoU:" in log
    kd = vanilla_kd.main(["--teacher", "deeplabv3_tiny_s", "--student", "deeplabv3_tiny_s", "--T", "2",
                          "--beta", "0.5", *common])
    kd_history = json.load(open(f"checkpoints/vanilla_kd/{os.listdir('checkpoints/vanilla_kd')[0]}/summary.json"))
    assert kd["best_acc1"] == pytest.approx(max(h["acc1"] for h in kd_history["history"]))
    with pytest.raises(UsageError, match="transforms images and masks jointly"):
        vanilla_kd.main(["--teacher", "deeplabv3_tiny_s", "--student", "deeplabv3_tiny_s", "--transfer_set", "digits",
                         *common, "--output", "elsewhere"])


TINY = ["--dataset", "shapes", "--teacher", "deeplabv3_tiny_s", "--student", "deeplabv3_tiny_s", "--gpu", "-1",
        "--img_size", "32", "--batch_size", "4", "--synthesis_batch_size", "4", "--kd_steps", "2", "--ep_steps", "2",
        "--epochs", "2", "--warmup", "1", "--lr", "0.05", "--T", "2", "--seed", "0"]
METHODS = {
    "fast_meta": ["--g_steps", "2", "--bn", "1", "--oh", "1", "--adv", "1", "--bn_mmt", "0.9", "--lr_g", "1e-3",
                  "--lr_z", "0.01", "--reset_l0", "1"],
    "deepinv": ["--g_steps", "2", "--bn", "1", "--oh", "1", "--adv", "1", "--tv", "1e-4", "--lr_g", "0.05"],
    "noise": [],
}


@pytest.fixture
def seg_teacher(in_tmp_cwd):
    torch.manual_seed(0)
    atomic_save({"state_dict": registry.get_model("deeplabv3_tiny_s", 5).state_dict()},
                str(in_tmp_cwd / "checkpoints" / "pretrained" / "shapes_deeplabv3_tiny_s.pth"))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_datafree_kd_segmentation_runs(seg_teacher, method, monkeypatch):
    resets, real_reset = [], fast_module.reset_first_layers
    monkeypatch.setattr(fast_module, "RESET_AFTER_WARMUP", 1)
    monkeypatch.setattr(fast_module, "reset_first_layers", lambda g: (resets.append(g), real_reset(g)))
    result = datafree_kd.main(["--method", method, *TINY, *METHODS[method]])
    run = f"checkpoints/datafree-{method}/shapes-deeplabv3_tiny_s-deeplabv3_tiny_s"
    ckpt = load_checkpoint(f"{run}/last.pth")
    pool = pool_images(run)
    assert pool.shape == (2 * 4, 3, 32, 32) and pool.dtype == torch.uint8
    log = open(f"{run}/log.txt").read()
    assert "mIoU=" in log and "Best mIoU:" in log and "kd_loss=none" in log    # epoch 0 is warmup: no KD step
    history = json.load(open(f"{run}/summary.json"))["history"]
    assert ckpt["best_acc1"] == result["best_acc1"] == max(h["acc1"] for h in history)
    if method == "fast_meta":
        assert "loss_adv=" in log and "loss_oh=" in log and "loss_bn=" in log
        assert len(resets) == 1      # reset_l0 on the fully convolutional generator
        assert "conv_blocks.0.weight" in ckpt["synthesizer"]["generator"]   # the fully convolutional generator


def test_fast_meta_segmentation_synthesis_terms(seg_teacher):
    """One synthesis call on a segmentation teacher: spatial latent, finite per-pixel terms, images in [0, 1]."""
    args = datafree_kd.parse_args(["--method", "fast_meta", *TINY, *METHODS["fast_meta"], "--warmup", "0"])
    task = registry.get_task("shapes")
    teacher = registry.get_model("deeplabv3_tiny_s", 5, task=task).eval()
    student = registry.get_model("deeplabv3_tiny_s", 5, task=task)
    config = synthesizer_config(args, registered_data(args, (3, 64, 64), task=task, num_classes=5))
    synth = datafree_kd.SYNTHESIZERS["fast_meta"](teacher, student, config, torch.device("cpu"))
    assert isinstance(synth.generator, DeepGenerator) and synth.generator.latent_shape == (256, 2, 2)
    before = [p.clone() for p in synth.generator.parameters()]
    out = synth.synthesize()
    assert out["images"].shape == (4, 3, 32, 32) and 0 <= out["images"].min() and out["images"].max() <= 1
    assert all(math.isfinite(out[k]) for k in ("loss", "loss_bn", "loss_oh", "loss_adv"))
    assert out["loss_adv"] <= 0
    assert any(not torch.equal(a, b) for a, b in zip(before, synth.generator.parameters()))   # meta step taken
    batch = synth.sample()
    assert batch.images.shape == (4, 3, 32, 32)
    with torch.no_grad():
        s_out, t_out = student(batch.images), teacher(batch.images)
        per_pixel = (F.softmax(t_out / synth.config.T, 1) * (F.log_softmax(t_out / synth.config.T, 1)
                                                             - F.log_softmax(s_out / synth.config.T, 1))).sum(1)
        expected = per_pixel.mean() * synth.config.T ** 2       # KL(teacher || student) per pixel, T^2, mean
        assert synth.kd_loss(batch, s_out, t_out).item() == pytest.approx(expected.item(), rel=1e-5)


def test_method_without_segmentation_support_is_refused(seg_teacher):
    for method in ("dafl", "ssd"):
        with pytest.raises(UsageError, match=f"method '{method}' does not support segmentation"):
            datafree_kd.main(["--method", method, *TINY])


def test_imagenet_weights_fill_the_deeplab_backbones():
    """pretrained=True copies torchvision's ImageNet classifier weights into the backbone (no download here)."""
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v2().state_dict()
    model = registry.get_model("deeplabv3_mobilenet", 13)
    load_backbone(model, source)
    state = model.backbone.state_dict()
    assert torch.equal(state["low_level_features.0.0.weight"], source["features.0.0.weight"])
    assert torch.equal(state["high_level_features.17.conv.2.weight"], source["features.17.conv.2.weight"])
    with pytest.raises(UsageError, match="do not cover the backbone"):
        load_backbone(registry.get_model("deeplabv3_resnet50", 13), source)
