"""Every model of the zoo against the original release's state-dict manifest."""
import pytest
import torch

import registry
from conftest import load_manifest
from datafree.models.generator import DeepGenerator, Generator

MANIFEST = load_manifest()
CASES = [(name, nc) for name, per_nc in MANIFEST.items() for nc in per_nc]
# Registered by this project only (CPU-sized DeepLab for the demo and tests), not in the original release.
PROJECT_ONLY = {"deeplabv3_tiny", "deeplabv3_tiny_s"}


def build(name, nc):
    entry = MANIFEST[name][nc]
    if name.startswith("generator"):
        return Generator(nz=entry["input_shape"][1], ngf=64, img_size=32, nc=3)
    return registry.get_model(name, num_classes=int(nc))


@pytest.mark.parametrize("name,nc", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_state_dict_matches_manifest(name, nc):
    entry = MANIFEST[name][nc]
    model = build(name, nc)
    got = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]
    assert got == entry["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == entry["n_parameters"]


@pytest.mark.parametrize("name,nc", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_manifest_state_dict_loads_strict_and_forward_shapes(name, nc):
    entry = MANIFEST[name][nc]
    model = build(name, nc)
    # A state dict made only from the manifest's shapes, as an original checkpoint would be.
    fake = {k: (torch.randint(0, 5, shape) if dtype == "int64" else torch.rand(shape) * 0.1 + 0.95)
            for k, shape, dtype in entry["state_dict"]}
    model.load_state_dict(fake, strict=True)
    for k, _, _ in entry["state_dict"]:
        assert torch.equal(model.state_dict()[k], fake[k])
    model.eval()
    x = torch.rand(*entry["input_shape"])
    with torch.no_grad():
        out = model(x)
        assert list(out.shape) == entry["output_shape"]
        if "return_features" in entry:
            logits, features = model(x, return_features=True)
            assert torch.allclose(logits, out)
            expected = entry["return_features"].get("features_shape", [x.shape[0], features.shape[1]])
            assert list(features.shape) == expected
            assert features.dim() == 2


def test_every_registered_model_is_in_the_manifest():
    assert set(registry.model_names()) - PROJECT_ONLY <= set(MANIFEST)
    assert PROJECT_ONLY <= set(registry.SEGMENTATION_MODEL_DICT)


def test_features_feed_the_classifier():
    """The returned features are exactly what the last linear layer sees."""
    model = registry.get_model("wrn16_1", 10).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        logits, features = model(x, return_features=True)
        assert torch.allclose(model.fc(features), logits, atol=1e-6)


def test_imagenet_model_with_other_class_count():
    model = registry.get_model("resnet18_imagenet", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 7)
    mobile = registry.get_model("mobilenetv2_imagenet", num_classes=5).eval()
    with torch.no_grad():
        assert mobile(torch.rand(1, 3, 64, 64)).shape == (1, 5)


def test_generators_output_images_in_unit_range():
    g = Generator(nz=16, ngf=8, img_size=32, nc=3)
    img = g(torch.randn(4, 16))
    assert img.shape == (4, 3, 32, 32) and img.min() >= 0 and img.max() <= 1
    clone = g.clone()
    assert clone is not g and all(torch.equal(a, b) for a, b in zip(g.parameters(), clone.parameters()))
    deep = DeepGenerator(nz=8, ngf=4, img_size=64, nc=3)
    assert deep(torch.randn(2, 8, deep.init_size, deep.init_size)).shape == (2, 3, 64, 64)
