"""The pool's storage: shards on disk, memory and disk draws alike, cut-back on resume, re-sharding,
initial pools (--cmi_init from a pool folder, make_init_pool.py) and parallel --save_pool."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import datafree_kd
import registry
from conftest import ROOT, pool_images
from datafree.errors import CheckpointError, DatasetNotFoundError
from datafree.pool import ImagePool, ShardFile, read_manifest, read_pool, write_manifest
from datafree.synthesis.ssd_buffer import PrioritizedPool

SHAPE = (3, 4, 4)


def numbered(values):
    """Images whose every pixel is value/255 (so a drawn image tells which one it is)."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, *SHAPE) / 255


def ids(batch):
    return batch[:, 0, 0, 0].mul(255).round().long().tolist()


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_shard_holds_every_image_and_the_state_refers_to_it(tmp_path, storage):
    pool = ImagePool("cpu", storage, str(tmp_path), "pool/rank0.u8")
    pool.add(numbered(range(5)))
    pool.add(numbered(range(5, 12)))
    state = pool.state_dict()
    assert state["rows"] == 12 and state["file"] == "pool/rank0.u8" and "images" not in state
    assert os.path.getsize(tmp_path / "pool" / "rank0.u8") == 12 * 48
    assert ids(read_pool(state, str(tmp_path)).float() / 255) == list(range(12))
    assert ids(pool.images.float() / 255) == list(range(12))
    pool.close()


def test_disk_and_memory_draw_the_same_batches(tmp_path):
    pools = {s: ImagePool("cpu", s, str(tmp_path / s), "rank0.u8") for s in ("memory", "disk")}
    draws = {}
    for storage, pool in pools.items():
        torch.manual_seed(0)
        pool.add(numbered(range(10)))
        draws[storage] = [ids(pool.sample(4)) for _ in range(5)]   # more than two passes, with read-ahead
        pool.add(numbered([20, 21]))
        draws[storage].append(ids(pool.sample(12)))
        pool.close()
    assert draws["memory"] == draws["disk"]
    assert sorted(sum(draws["disk"][:3], [])) == list(range(10))    # one pass: each image once
    assert sorted(draws["disk"][-1]) == list(range(10)) + [20, 21]


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_resume_cuts_the_shard_back_and_continues_the_pass(tmp_path, storage):
    pool = ImagePool("cpu", storage, str(tmp_path), "rank0.u8")
    pool.add(numbered(range(9)))
    torch.manual_seed(1)
    pool.sample(4)
    pool.sync()
    state = pool.state_dict()
    assert len(state["sampler"]["rng"]) < 6000          # the pass is stored as a generator state, not a permutation
    expected = ids(pool.sample(5))                       # the rest of the pass
    pool.add(numbered([30, 31]))                         # appended after the "checkpoint"
    pool.close()
    assert os.path.getsize(tmp_path / "rank0.u8") == 11 * 48

    resumed = ImagePool("cpu", storage, str(tmp_path), "rank0.u8")
    resumed.load_state_dict(state)
    assert os.path.getsize(tmp_path / "rank0.u8") == 9 * 48
    assert len(resumed) == 9 and ids(resumed.sample(5)) == expected
    resumed.close()


def test_a_shard_shorter_than_its_checkpoint_is_refused(tmp_path):
    pool = ImagePool("cpu", "disk", str(tmp_path), "rank0.u8")
    pool.add(numbered(range(4)))
    state = pool.state_dict()
    pool.close()
    os.truncate(tmp_path / "rank0.u8", 2 * 48)
    with pytest.raises(CheckpointError, match="holds 2 images but the checkpoint expects 4"):
        ImagePool("cpu", "disk", str(tmp_path), "rank0.u8").load_state_dict(state)
    os.remove(tmp_path / "rank0.u8")
    with pytest.raises(CheckpointError, match="is missing"):
        ImagePool("cpu", "disk", str(tmp_path), "rank0.u8").load_state_dict(state)


def test_adopt_takes_every_nth_image_of_several_shards(tmp_path):
    sources = []
    for r, values in enumerate((range(0, 5), range(5, 12))):
        shard = ShardFile.create(str(tmp_path / f"old{r}.u8"), SHAPE)
        shard.append(torch.tensor(list(values), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, *SHAPE).contiguous())
        shard.close()
        sources.append((str(tmp_path / f"old{r}.u8"), SHAPE, len(values)))
    for rank in range(3):
        pool = ImagePool("cpu", "disk", str(tmp_path), f"new{rank}.u8")
        pool.adopt(sources, range(rank, 12, 3))
        assert pool.images[:, 0, 0, 0].tolist() == list(range(rank, 12, 3))
        pool.close()


def test_bounded_pool_persists_an_append_only_log(tmp_path):
    pool = PrioritizedPool("cpu", capacity=4, alpha=1.0, replace=0.5, storage="disk", root=str(tmp_path),
                           file="rank0.u8")
    pool.add(numbered(range(4)), torch.ones(4), torch.zeros(4, dtype=torch.long))
    pool.update_priorities(torch.arange(4), torch.tensor([5.0, 0.1, 4.0, 0.2]))
    pool.add(numbered([10, 11]), torch.tensor([1.0, 2.0]), torch.ones(2, dtype=torch.long))   # evicts slots 1, 3
    state = pool.state_dict()
    assert state["rows"] == 6 and state["slot_rows"].tolist() == [0, 4, 2, 5]
    assert ids(read_pool(state, str(tmp_path)).float() / 255) == [0, 11, 2, 10]
    pool.close()
    memory = PrioritizedPool("cpu", capacity=4, storage="memory", root=str(tmp_path), file="rank0.u8")
    memory.load_state_dict(state)
    assert ids(memory.images.float() / 255) == [0, 11, 2, 10]
    small = PrioritizedPool("cpu", capacity=3, storage="memory", root=str(tmp_path), file="rank0.u8")
    with pytest.raises(CheckpointError, match="resume with the buffer size it was written with"):
        small.load_state_dict(state)


def test_imagenet_builds_without_a_training_folder(tmp_path):
    from PIL import Image
    (tmp_path / "ILSVRC2012" / "val" / "n0").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "ILSVRC2012" / "val" / "n0" / "a.JPEG")
    _, train_set, _ = registry.get_dataset("imagenet", str(tmp_path))
    assert registry.train_size("imagenet", train_set) == 1281167          # declared: train/ is not read
    with pytest.raises(DatasetNotFoundError, match=r"ImageNet \(train\) is not at"):
        len(train_set)                                                     # only a run that needs it fails


TINY = ["--dataset", "digits", "--teacher", "resnet8", "--student", "resnet8", "--gpu", "-1",
        "--batch_size", "16", "--synthesis_batch_size", "8", "--kd_steps", "2", "--ep_steps", "2",
        "--g_steps", "2", "--lr", "0.05", "--T", "4", "--bn", "1", "--oh", "1", "--lr_g", "0.05", "--seed", "3"]


def test_make_init_pool_continues_and_seeds_a_run(teacher_file, in_tmp_cwd):
    script = os.path.join(ROOT, "scripts", "make_init_pool.py")
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    common = [sys.executable, script, "--method", "deepinv", *TINY, "--pool_out", "init"]
    first = subprocess.run([*common, "--images", "8"], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "8/8 images" in first.stdout and "projected" in first.stdout
    second = subprocess.run([*common, "--images", "20", "--png"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "16/20 images" in second.stdout and "8/20" not in second.stdout    # continued after the first 8
    (path, shape, rows), = read_manifest("init")
    assert rows == 20 and tuple(shape) == (3, 32, 32) and len(os.listdir("init/png")) == 20
    bad = subprocess.run([*common, "--images", "0"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "give --images N" in bad.stderr

    datafree_kd.main(["--method", "deepinv", *TINY, "--epochs", "1", "--cmi_init", "init", "--output", "run",
                      "--save_pool", "--save_dir", "saved"])
    pool = pool_images("run")
    assert len(pool) == 20 + 8
    init = np.fromfile(path, dtype=np.uint8)[:20 * 3 * 32 * 32].reshape(20, 3, 32, 32)
    assert torch.equal(pool[:20], torch.from_numpy(init))
    assert sorted(os.listdir("saved")) == [f"{i:07d}.png" for i in range(28)]


def test_cmi_init_pool_of_another_size_is_refused(teacher_file, in_tmp_cwd):
    os.makedirs("wrong")
    shard = ShardFile.create("wrong/r.u8", (3, 8, 8))
    shard.append(np.zeros((2, 3, 8, 8), dtype=np.uint8))
    shard.close()
    write_manifest("wrong", (3, 8, 8), [("r.u8", 2)])
    with pytest.raises(datafree_kd.UsageError, match=r"shape \(3, 8, 8\).*\(3, 32, 32\)"):
        datafree_kd.main(["--method", "deepinv", *TINY, "--epochs", "1", "--cmi_init", "wrong"])
    assert json.load(open("wrong/pool.json"))["shards"][0]["rows"] == 2
