"""torchrun runs (two gloo processes on the CPU) against one-process arithmetic."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import datafree_kd
import registry
from conftest import ROOT, pool_images
from datafree import distributed
from datafree.checkpoint import load_checkpoint
from datafree.criterions import kldiv
from datafree.engine import evaluate
from datafree.errors import CheckpointError, UsageError

sys.path.insert(0, os.path.join(ROOT, "tests"))
from dist_probe import ProbeNet  # noqa: E402

LR, MOMENTUM, WD, T = 0.05, 0.9, 1e-4, 4.0
PROBE_FLAGS = ["--method", "fast_meta", "--dataset", "digits", "--teacher", "resnet8", "--student", "probe_gn",
               "--gpu", "-1", "--batch_size", "16", "--synthesis_batch_size", "16", "--kd_steps", "1",
               "--ep_steps", "2", "--g_steps", "2", "--lr", str(LR), "--T", str(T), "--bn", "1", "--oh", "1",
               "--adv", "1", "--bn_mmt", "0.9", "--lr_g", "1e-3", "--lr_z", "0.01", "--is_maml", "0", "--seed", "3"]
RUN = "checkpoints/datafree-fast_meta/digits-resnet8-probe_gn"


def torchrun(args, cwd, nproc=2, check=True, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def logged_eval(log, epoch):
    line = re.search(rf"\[Eval\] epoch={epoch} acc@1=([\d.]+) acc@5=([\d.]+) loss=([\d.]+)", log)
    return float(line.group(1)), float(line.group(2)), float(line.group(3))


def assert_logged_eval_matches_one_process(log, model):
    """The metrics summed over the two shards of the test set match a one-process evaluation."""
    _, _, val_set = registry.get_dataset("digits")
    stats = evaluate(model, torch.utils.data.DataLoader(val_set, batch_size=256), torch.device("cpu"))
    acc1, acc5, loss = logged_eval(log, 0)
    # after one epoch the logits are near ties; the shards' batches reduce in another order, which
    # may flip a tie: allow one image per shard, far below what a lost or doubled batch would move
    one_image = 100.0 / len(val_set)
    assert acc1 == pytest.approx(stats["acc1"], abs=2 * one_image + 0.01)
    assert acc5 == pytest.approx(stats["acc5"], abs=2 * one_image + 0.01)
    assert loss == pytest.approx(stats["loss"], abs=1e-4)


def test_torchrun_fast_meta_matches_one_process_and_resumes(teacher_file, in_tmp_cwd, monkeypatch):
    monkeypatch.setitem(registry.MODEL_DICT, "probe_gn", ProbeNet)   # for the one-process call below
    proc = torchrun([os.path.join(ROOT, "tests", "dist_probe.py"), "probe", *PROBE_FLAGS, "--epochs", "1"],
                    in_tmp_cwd)
    ranks = [torch.load(f"probe/rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["saves"] for r in ranks] == [1, 0]              # rank 0 alone writes checkpoints
    assert proc.stdout.count("[Eval] epoch=0") == 1          # and alone prints
    assert all(len(r["rounds"]) == 2 for r in ranks)         # ep_steps 2 / kd_steps 1: two rounds

    teacher = registry.get_model("resnet8", 10)
    teacher.load_state_dict(torch.load(teacher_file, weights_only=True)["state_dict"])
    teacher.eval()
    reference = ProbeNet(10)
    reference.load_state_dict(ranks[0]["rounds"][0]["before"])
    optimizer = torch.optim.SGD(reference.parameters(), LR, momentum=MOMENTUM, weight_decay=WD)
    for i, (r0, r1) in enumerate(zip(ranks[0]["rounds"], ranks[1]["rounds"])):
        # the generator after each meta-step is the same on both ranks, and it did move
        for k, v in r0["generator"].items():
            assert torch.equal(v, r1["generator"][k]), k
        # each rank drew its own batch (half of the global batch of 16) from its own pool shard
        (b0,), (b1,) = r0["batches"], r1["batches"]
        assert b0.shape == b1.shape == (8, 3, 32, 32) and not torch.equal(b0, b1)
        for k in r0["before"]:
            assert torch.equal(r0["before"][k], r1["before"][k]), k
            assert torch.allclose(r0["before"][k], reference.state_dict()[k], atol=1e-6, rtol=1e-5), k
        # one-process KD step on the global batch (both halves)
        batch = torch.cat([b0, b1])
        with torch.no_grad():
            t_out = teacher(batch)
        loss = kldiv(reference(batch), t_out, T=T)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for k, v in reference.state_dict().items():
            assert torch.allclose(r0["after"][k], v, atol=1e-6, rtol=1e-5), (i, k)
            assert torch.allclose(r1["after"][k], v, atol=1e-6, rtol=1e-5), (i, k)
    moved = [not torch.equal(v, ranks[0]["rounds"][1]["generator"][k])
             for k, v in ranks[0]["rounds"][0]["generator"].items() if v.is_floating_point()]
    assert any(moved)

    # each rank persisted its own pool shard and state file; last.pth refers to them
    ckpt = load_checkpoint(f"{RUN}/last.pth")
    assert ckpt["world_size"] == 2 and ckpt["rank_files"] == ["ranks/rank1-epoch1.pth"]
    assert "rank_states" not in ckpt and "images" not in ckpt["synthesizer"]["pool"]
    pool0, pool1 = pool_images(RUN, 0), pool_images(RUN, 1)
    assert pool0.shape == pool1.shape == (2 * 8, 3, 32, 32) and not torch.equal(pool0, pool1)
    log = open(f"{RUN}/log.txt").read()
    assert log.count("[Eval] epoch=0") == 1
    student = ProbeNet(10)
    student.load_state_dict(ckpt["state_dict"])
    assert_logged_eval_matches_one_process(log, student)

    # a one-process resume (of a copy) re-shards both pools into one and finishes
    shutil.copytree(RUN, "one")
    datafree_kd.main([*PROBE_FLAGS, "--epochs", "2", "--output", "one", "--resume"])
    one = load_checkpoint("one/last.pth")
    assert one["epoch"] == 2 and one["world_size"] == 1 and one["synthesizer"]["pool"]["file"] == "pool/rank0.g1.u8"
    merged = pool_images("one")
    assert len(merged) == 2 * 16 + 2 * 16          # both shards, then two calls of the whole batch of 16
    assert torch.equal(merged[:16], pool0) and torch.equal(merged[16:32], pool1)   # rank order
    assert "re-sharded a run of 2 process(es) for 1" in open("one/log.txt").read()
    assert torch.equal(pool_images(RUN, 0), pool0)  # the old shards are only read

    # a two-process resume continues each rank's own state
    torchrun([os.path.join(ROOT, "tests", "dist_probe.py"), "probe2", *PROBE_FLAGS, "--epochs", "2", "--resume",
              "--save_pool", "--save_dir", "pngs"], in_tmp_cwd)
    resumed = load_checkpoint(f"{RUN}/last.pth")
    assert resumed["epoch"] == 2
    new0, new1 = pool_images(RUN, 0), pool_images(RUN, 1)
    assert len(new0) == len(new1) == 4 * 8
    assert torch.equal(new0[:16], pool0) and torch.equal(new1[:16], pool1)
    # --save_pool: each process wrote its own images, numbered after the lower rank's
    assert sorted(os.listdir("pngs")) == [f"{i:07d}.png" for i in range(64)]
    from PIL import Image
    assert torch.equal(torch.from_numpy(np.array(Image.open("pngs/0000032.png"))).permute(2, 0, 1), new1[0])
    other = load_checkpoint(os.path.join(RUN, resumed["rank_files"][0]))["synthesizer"]
    for k, v in resumed["synthesizer"]["generator"].items():
        assert torch.equal(v, other["generator"][k]), k
    for a, b in zip(resumed["synthesizer"]["bn_hooks"], other["bn_hooks"]):   # BN targets averaged over ranks
        assert torch.allclose(a["ema_mean"], b["ema_mean"]) and torch.allclose(a["ema_var"], b["ema_var"])
    assert "resumed from" in open(f"{RUN}/log.txt").read()
    assert sorted(os.listdir(f"{RUN}/ranks")) == ["rank1-epoch1.pth", "rank1-epoch2.pth"]


def test_torchrun_ranks_agree_to_stop_on_a_signal_that_reached_one_of_them(teacher_file, in_tmp_cwd):
    """SIGTERM reaches rank 1 only, in its third KD step: both ranks stop after that step, save that
    point (each its own part) and exit 143; the same command with --resume finishes the run."""
    proc = torchrun([os.path.join(ROOT, "tests", "dist_probe.py"), "probe", *PROBE_FLAGS, "--epochs", "2"], in_tmp_cwd,
                    check=False, env={"PROBE_SIGTERM": "1,3"})
    ranks = [torch.load(f"probe/rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["exit"] for r in ranks] == [143, 143], proc.stderr[-3000:]
    assert [r["kd_steps"] for r in ranks] == [3, 3]          # the same step on both
    err = proc.stderr
    assert err.count("stopped: SIGTERM received; the run saved epoch 1 up to round 1 of 2 in last.pth") == 1
    assert "the same torchrun command with --resume added" in err
    ckpt = load_checkpoint(f"{RUN}/last.pth")
    assert ckpt["epoch"] == 1 and (ckpt["progress"]["round"], ckpt["progress"]["kd_done"]) == (1, 0)
    assert ckpt["rank_files"] == ["ranks/rank1-epoch1-round1-kd0.pth"] and os.path.isfile(f"{RUN}/ranks/rank1-epoch1-round1-kd0.pth")
    torchrun([os.path.join(ROOT, "tests", "dist_probe.py"), "probe2", *PROBE_FLAGS, "--epochs", "2", "--resume"],
             in_tmp_cwd)
    resumed = [torch.load(f"probe2/rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["kd_steps"] for r in resumed] == [1, 1]        # the one KD step left
    assert load_checkpoint(f"{RUN}/last.pth")["epoch"] == 2
    assert len(pool_images(RUN, 0)) == len(pool_images(RUN, 1)) == 2 * 2 * 8   # each call's images once


def test_torchrun_train_scratch(in_tmp_cwd):
    proc = torchrun([os.path.join(ROOT, "train_scratch.py"), "--model", "resnet8", "--dataset", "digits",
                     "--epochs", "1", "--batch-size", "128", "--lr", "0.05", "--gpu", "-1"], in_tmp_cwd)
    run = "checkpoints/scratch/digits_resnet8"
    assert sorted(f for f in os.listdir(run) if f.endswith(".pth")) == ["best.pth", "last.pth"]
    assert not [f for f in os.listdir(run) if ".tmp" in f]
    assert os.path.isfile("checkpoints/pretrained/digits_resnet8.pth")
    assert proc.stdout.count("[Eval] epoch=0") == 1 and proc.stdout.count("teacher file:") == 1
    log = open(f"{run}/log.txt").read()
    assert log.count("[Eval] epoch=0") == 1
    model = registry.get_model("resnet8", 10)
    model.load_state_dict(load_checkpoint(f"{run}/last.pth")["state_dict"])
    assert_logged_eval_matches_one_process(log, model)


def test_shard_sampler_covers_each_index_once():
    data = list(range(11))
    shards = [list(distributed.ShardSampler(data, rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(shards, [])) == data and [len(s) for s in shards] == [4, 4, 3]


def test_single_process_helpers_are_no_ops():
    assert not distributed.is_distributed() and distributed.get_world_size() == 1
    t = torch.tensor([3.0, 4.5])
    assert distributed.all_reduce_tensor(t) is t
    assert distributed.per_process(100) == 100 and distributed.per_process(None) is None
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(model, torch.device("cpu")) is model
    assert distributed.all_gather_ints(7) == [7]


def test_methods_that_would_drift_are_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UsageError, match="cannot run under torchrun.*fast_meta"):
        datafree_kd.parse_args(["--method", "zskt"])
    assert datafree_kd.parse_args(["--method", "fast_meta"]).method == "fast_meta"


SSD_FLAGS = ["--method", "ssd", "--dataset", "digits", "--teacher", "resnet8", "--student", "probe_gn", "--gpu", "-1",
             "--batch_size", "16", "--synthesis_batch_size", "16", "--ssd_buffer_size", "24", "--ssd_kd_passes", "2", "--ssd_kd_batch", "16",
             "--ssd_replace", "0.25", "--g_steps", "1", "--lr", str(LR), "--T", str(T), "--bn", "1", "--oh", "1",
             "--adv", "1", "--bn_mmt", "0.9", "--lr_g", "1e-3", "--lr_z", "0.01", "--seed", "3", "--ssd_sampling", "policy"]
SSD_RUN = "checkpoints/datafree-ssd/digits-resnet8-probe_gn"


def test_torchrun_ssd_each_rank_its_buffer_and_policy(teacher_file, in_tmp_cwd, monkeypatch):
    monkeypatch.setitem(registry.MODEL_DICT, "probe_gn", ProbeNet)   # for the one-process resume below
    torchrun([os.path.join(ROOT, "tests", "dist_probe.py"), "probe", *SSD_FLAGS, "--epochs", "2"], in_tmp_cwd)
    ranks = [torch.load(f"probe/rank{r}.pt", weights_only=False) for r in range(2)]
    # buffer 24 over 2 processes: 12 each, batches of 8; 2 passes x 12 / 8 = 3 KD steps an epoch. Epoch 0:
    # two calls of 8 fill it (the 4 with the largest phi of the second join); epoch 1: one refresh call of
    # ceil(0.25 x 12) = 3 images
    for r in ranks:
        assert [len(e["batches"]) for e in r["rounds"]] == [3, 3]
        assert all(b.shape == (8, 3, 32, 32) for e in r["rounds"] for b in e["batches"])
    for r0, r1 in zip(ranks[0]["rounds"], ranks[1]["rounds"]):
        for k, v in r0["generator"].items():          # one generator, meta-updated alike on both ranks
            assert torch.equal(v, r1["generator"][k]), k
        for k, v in r0["after"].items():              # one student (DDP)
            assert torch.allclose(v, r1["after"][k]), k
    ckpt = load_checkpoint(f"{SSD_RUN}/last.pth")
    other = load_checkpoint(os.path.join(SSD_RUN, ckpt["rank_files"][0]))
    states = [ckpt["synthesizer"], other["synthesizer"]]
    assert [s["pool"]["size"] for s in states] == [12, 12] and [s["steps_done"] for s in states] == [6, 6]
    assert [s["pool"]["rows"] for s in states] == [8 + 4 + 3] * 2    # append-only: 8, the 4 that fit, a refresh of 3
    assert all(s["policy"]["updates"] == 5 for s in states)                    # every step but the run's last
    assert not torch.equal(states[0]["policy"]["theta"], states[1]["policy"]["theta"])   # each rank learns its own
    assert not torch.equal(pool_images(SSD_RUN, 0), pool_images(SSD_RUN, 1))
    summary = json.load(open(f"{SSD_RUN}/summary.json"))
    assert summary["synthetic_images"] == 24 and summary["kd_steps"] == 6 and summary["synthesis_calls"] == 3
    assert summary["kd_batch"] == 16                     # --ssd_kd_batch 16: 8 images a step on each process

    # two processes resume their own buffers; one process is refused (bounded buffers are not re-sharded)
    torchrun([os.path.join(ROOT, "tests", "dist_probe.py"), "probe2", *SSD_FLAGS, "--epochs", "3", "--resume"],
             in_tmp_cwd)
    resumed = load_checkpoint(f"{SSD_RUN}/last.pth")
    assert resumed["epoch"] == 3 and resumed["synthesizer"]["steps_done"] == 9
    with pytest.raises(CheckpointError, match="cannot be re-sharded"):
        datafree_kd.main([*SSD_FLAGS, "--epochs", "4", "--resume"])


NAYER_FLAGS = ["--method", "nayer", "--dataset", "digits", "--teacher", "resnet8", "--student", "probe_gn",
               "--gpu", "-1", "--batch_size", "16", "--synthesis_batch_size", "24", "--kd_steps", "1", "--ep_steps", "2",
               "--g_steps", "2", "--lr", str(LR), "--T", str(T), "--bn", "1", "--oh", "1", "--adv", "1",
               "--bn_mmt", "0.9", "--lr_g", "1e-3", "--label_embedding", "hash", "--le_emb_size", "32",
               "--g_loops", "2", "--g_life", "1", "--seed", "3"]
NAYER_RUN = "checkpoints/datafree-nayer/digits-resnet8-probe_gn"


def test_torchrun_nayer_one_generator_and_each_rank_its_own_images(teacher_file, in_tmp_cwd):
    """Each rank synthesises its 12 of the 24 images with its own noisy layers; the generator, trained on
    both halves and rebuilt every epoch (g_life 1), stays one and the same on both ranks."""
    torchrun([os.path.join(ROOT, "tests", "dist_probe.py"), "probe", *NAYER_FLAGS, "--epochs", "2"], in_tmp_cwd)
    ranks = [torch.load(f"probe/rank{r}.pt", weights_only=False) for r in range(2)]
    assert all(len(r["rounds"]) == 4 for r in ranks)          # two rounds of KD an epoch (the first after 2 calls)
    for r0, r1 in zip(ranks[0]["rounds"], ranks[1]["rounds"]):
        for k, v in r0["generator"].items():
            assert torch.equal(v, r1["generator"][k]), k
        (b0,), (b1,) = r0["batches"], r1["batches"]
        assert not torch.equal(b0, b1)
        for k, v in r0["after"].items():                      # one student (DDP)
            assert torch.allclose(v, r1["after"][k]), k
    first, second = ranks[0]["rounds"][0]["generator"], ranks[0]["rounds"][2]["generator"]
    assert any(not torch.equal(v, second[k]) for k, v in first.items() if v.is_floating_point())
    ckpt = load_checkpoint(f"{NAYER_RUN}/last.pth")
    other = load_checkpoint(os.path.join(NAYER_RUN, ckpt["rank_files"][0]))["synthesizer"]
    for k, v in ckpt["synthesizer"]["generator"].items():
        assert torch.equal(v, other["generator"][k]), k
    assert torch.equal(ckpt["synthesizer"]["init_rng"], other["init_rng"])
    pool0, pool1 = pool_images(NAYER_RUN, 0), pool_images(NAYER_RUN, 1)
    assert len(pool0) == len(pool1) == 2 * 2 * 12 and not torch.equal(pool0, pool1)
