import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A copy of the original release's state-dict manifest (shared/reference), kept in the project.
MANIFEST = os.path.join(ROOT, "tests", "data", "upstream_state_dicts.json")


def load_script(relpath):
    """A script of the checkout (a benchmark, say) imported as a module, by its path."""
    import importlib.util

    name = os.path.splitext(os.path.basename(relpath))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_manifest():
    with open(MANIFEST) as f:
        return json.load(f)["models"]


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run an entry script inside a temporary folder (its checkpoints/ go there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def teacher_file(in_tmp_cwd):
    """An (untrained) resnet8 digits teacher where the scripts look for it by default."""
    import registry
    from datafree.checkpoint import atomic_save

    torch.manual_seed(0)
    path = in_tmp_cwd / "checkpoints" / "pretrained" / "digits_resnet8.pth"
    atomic_save({"state_dict": registry.get_model("resnet8", 10).state_dict()}, str(path))
    return path


def pool_images(run_dir, rank=0):
    """The synthetic pool of process ``rank`` as the run's last.pth describes it (uint8, N x C x H x W)."""
    from datafree.checkpoint import load_checkpoint
    from datafree.pool import read_pool

    ckpt = load_checkpoint(os.path.join(run_dir, "last.pth"))
    state = ckpt if rank == 0 else load_checkpoint(os.path.join(run_dir, ckpt["rank_files"][rank - 1]))
    return read_pool(state["synthesizer"]["pool"], str(run_dir))
