"""datafree_kd.py end to end on the offline digits data with tiny budgets."""
import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import datafree.synthesis.fast as fast_module
import datafree_kd
import registry
from datafree import run_state
from conftest import ROOT, pool_images
from datafree.checkpoint import load_checkpoint
from datafree.errors import CheckpointError, UsageError
from datafree.synthesis.meta import FirstOrderMAML

TINY = ["--dataset", "digits", "--teacher", "resnet8", "--student", "resnet8", "--gpu", "-1",
        "--batch_size", "16", "--synthesis_batch_size", "8", "--kd_steps", "2", "--ep_steps", "4",
        "--epochs", "2", "--g_steps", "2", "--lr", "0.05", "--T", "4", "--bn", "1", "--oh", "1",
        "--adv", "1", "--bn_mmt", "0.9", "--lr_g", "1e-3", "--lr_z", "0.01", "--seed", "3"]


@pytest.mark.parametrize("method,extra", [("fast_meta", ["--is_maml", "1"]), ("fast_meta", ["--is_maml", "0"]),
                                          ("fast", [])])
def test_runs_and_writes_outputs(teacher_file, method, extra):
    result = datafree_kd.main(["--method", method, *TINY, *extra, "--warmup", "1"])
    run = f"checkpoints/datafree-{method}/digits-resnet8-resnet8"
    assert {"last.pth", "best.pth", "log.txt", "synthetic.png", "tb"} <= set(os.listdir(run))
    ckpt = load_checkpoint(f"{run}/last.pth")
    assert ckpt["epoch"] == 2 and ckpt["method"] == method
    pool = pool_images(run)
    assert len(pool) == 2 * 2 * 8 and pool.dtype == torch.uint8     # 2 epochs x 2 rounds x 8 images
    assert "images" not in ckpt["synthesizer"]["pool"]              # the checkpoint refers to the pool
    assert os.path.getsize(f"{run}/pool/rank0.u8") == 2 * 2 * 8 * 3 * 32 * 32
    best = load_checkpoint(f"{run}/best.pth")                       # best.pth: the student, no run state
    assert "synthesizer" not in best and "optimizer" not in best and best["arch"] == "resnet8"
    assert result["synthesis_seconds"] > 0 and result["kd_seconds"] > 0
    assert result["wall_seconds"] >= result["synthesis_seconds"] + result["kd_seconds"]
    log = open(f"{run}/log.txt").read()
    # the warm-up epoch took no KD step: its KD loss is not printed as a number, nor stored as one
    assert "synthesis cost:" in log and "seconds: synthesis=" in log and "kd_loss=none" in log
    assert "kd_loss=nan" not in log
    summary = json.load(open(f"{run}/summary.json"))
    assert summary["kd_batch"] == 16                               # --batch_size: Fast's KD batches
    history = summary["history"]
    assert history[0]["kd_loss"] is None and history[1]["kd_loss"] > 0


def test_maml_meta_gradient_inside_the_synthesizer(teacher_file, monkeypatch):
    """In a real synthesis call, G's meta-gradient is the sum of G' gradients over the k steps."""
    inner, meta_grads = [], []
    real_after, real_finish = FirstOrderMAML.after_inner_backward, FirstOrderMAML.finish

    def after(self, fast_generator, fast_latent=None):
        inner.append([p.grad.clone() for p in fast_generator.parameters()])
        real_after(self, fast_generator, fast_latent)

    def finish(self, fast_generator, fast_latent=None):
        meta_grads.append([p.grad.clone() for p in self.generator.parameters()])
        real_finish(self, fast_generator, fast_latent)

    monkeypatch.setattr(FirstOrderMAML, "after_inner_backward", after)
    monkeypatch.setattr(FirstOrderMAML, "finish", finish)
    datafree_kd.main(["--method", "fast_meta", *TINY, "--g_steps", "3", "--epochs", "1", "--ep_steps", "2"])
    assert len(inner) == 3 and len(meta_grads) == 1
    for got, *steps in zip(meta_grads[0], *inner):
        assert torch.allclose(got, sum(steps), atol=1e-6)


def test_reset_l0_happens_once_at_120_calls_after_warmup(teacher_file, monkeypatch):
    calls = []
    monkeypatch.setattr(fast_module, "RESET_AFTER_WARMUP", 1)
    monkeypatch.setattr(fast_module, "reset_first_layers", lambda g: calls.append(g))
    datafree_kd.main(["--method", "fast_meta", *TINY, "--reset_l0", "1", "--warmup", "1", "--epochs", "2"])
    assert len(calls) == 1   # call number 2 = 1 + warmup 1, of 4 calls


def assert_same_final_state(resumed_dir, full_dir):
    full, resumed = load_checkpoint(f"{full_dir}/last.pth"), load_checkpoint(f"{resumed_dir}/last.pth")
    assert resumed["epoch"] == full["epoch"] == 3
    assert resumed["best_acc1"] == full["best_acc1"]
    for k, v in full["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][k].float(), v.float(), atol=1e-5), k
    for k, v in full["synthesizer"]["generator"].items():
        assert torch.allclose(resumed["synthesizer"]["generator"][k].float(), v.float(), atol=1e-5), k
    assert torch.equal(pool_images(resumed_dir), pool_images(full_dir))
    for a, b in zip(resumed["synthesizer"]["bn_hooks"], full["synthesizer"]["bn_hooks"]):
        assert torch.allclose(a["ema_mean"], b["ema_mean"], atol=1e-5)


def test_resumed_run_matches_an_uninterrupted_one(teacher_file, monkeypatch):
    common = ["--method", "fast_meta", *TINY, "--epochs", "3", "--warmup", "1"]
    datafree_kd.main([*common, "--output", "full"])

    real_save = run_state.save_checkpoint
    saves = []

    def die_after_second_epoch(state, run_dir, is_best, best_state=None):
        real_save(state, run_dir, is_best, best_state)
        saves.append(state["epoch"])
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_state, "save_checkpoint", die_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        datafree_kd.main([*common, "--output", "killed"])
    monkeypatch.setattr(run_state, "save_checkpoint", real_save)
    assert load_checkpoint("killed/last.pth")["epoch"] == 2
    datafree_kd.main([*common, "--output", "killed", "--resume"])
    assert_same_final_state("killed", "full")


def test_kill_between_a_pool_append_and_the_checkpoint(teacher_file, monkeypatch):
    """Images appended to the shard after the last checkpoint are cut off on resume."""
    common = ["--method", "fast_meta", *TINY, "--epochs", "3", "--warmup", "1"]
    datafree_kd.main([*common, "--output", "full"])

    real_synthesize = fast_module.FastMetaSynthesizer.synthesize

    def die_after_fifth_call(self):
        out = real_synthesize(self)
        if self.calls == 5:           # epoch 2, first round: its images are in the shard
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(fast_module.FastMetaSynthesizer, "synthesize", die_after_fifth_call)
    with pytest.raises(KeyboardInterrupt):
        datafree_kd.main([*common, "--output", "killed"])
    monkeypatch.setattr(fast_module.FastMetaSynthesizer, "synthesize", real_synthesize)
    row = 3 * 32 * 32
    assert load_checkpoint("killed/last.pth")["synthesizer"]["pool"]["rows"] == 4 * 8
    assert os.path.getsize("killed/pool/rank0.u8") == 5 * 8 * row     # one call more than the checkpoint
    datafree_kd.main([*common, "--output", "killed", "--resume"])
    assert os.path.getsize("killed/pool/rank0.u8") == 6 * 8 * row
    assert_same_final_state("killed", "full")


def test_resume_into_another_folder_copies_the_pool_and_leaves_the_original(teacher_file):
    common = ["--method", "fast_meta", *TINY, "--warmup", "1"]
    datafree_kd.main([*common, "--epochs", "2", "--output", "first"])
    before = open("first/pool/rank0.u8", "rb").read()
    datafree_kd.main([*common, "--epochs", "3", "--output", "second", "--resume", "first/last.pth"])
    assert open("first/pool/rank0.u8", "rb").read() == before
    pool = pool_images("second")
    assert len(pool) == 3 * 2 * 8
    assert torch.equal(pool[:2 * 2 * 8].flatten(), torch.frombuffer(bytearray(before), dtype=torch.uint8))


def test_disk_storage_gives_the_same_run_as_memory(teacher_file):
    common = ["--method", "fast_meta", *TINY, "--epochs", "2", "--warmup", "1"]
    datafree_kd.main([*common, "--output", "memory", "--pool_storage", "memory"])
    datafree_kd.main([*common, "--output", "disk", "--pool_storage", "disk"])
    memory, disk = load_checkpoint("memory/last.pth"), load_checkpoint("disk/last.pth")
    for k, v in memory["state_dict"].items():
        assert torch.equal(disk["state_dict"][k], v), k
    assert torch.equal(pool_images("memory"), pool_images("disk"))
    assert "disk storage" in open("disk/log.txt").read()


def test_grayscale_synthesis_end_to_end(teacher_file):
    datafree_kd.main(["--method", "fast", *TINY, "--synthesis_channels", "1", "--epochs", "1"])
    pool = pool_images("checkpoints/datafree-fast/digits-resnet8-resnet8")
    assert pool.shape == (2 * 8, 3, 32, 32) and pool.float().std() > 0
    assert torch.equal(pool[:, 0], pool[:, 1]) and torch.equal(pool[:, 0], pool[:, 2])
    with pytest.raises(CheckpointError, match="written with --synthesis_channels 1; resume with the same"):
        datafree_kd.main(["--method", "fast", *TINY, "--resume"])
    assert datafree_kd.parse_args(["--method", "dafl", "--dataset", "mnist", "--synthesis_channels", "1"])
    assert datafree_kd.parse_args(["--method", "dafl", "--synthesis_channels", "3"]).synthesis_channels is None


def test_bf16_autocast_on_cpu(teacher_file):
    result = datafree_kd.main(["--method", "fast_meta", *TINY, "--fp16", "--epochs", "1"])
    log = open("checkpoints/datafree-fast_meta/digits-resnet8-resnet8/log.txt").read()
    assert "kd_loss=nan" not in log and "loss=nan" not in log
    assert load_checkpoint("checkpoints/datafree-fast_meta/digits-resnet8-resnet8/last.pth")["args"]["precision"] == "fp16"
    history = json.load(open("checkpoints/datafree-fast_meta/digits-resnet8-resnet8/summary.json"))["history"]
    assert result["best_acc1"] == max(h["acc1"] for h in history) and math.isfinite(history[-1]["kd_loss"])


def test_config_file_with_command_line_override(teacher_file, in_tmp_cwd):
    config = in_tmp_cwd / "tiny.yaml"
    config.write_text("method: fast\ng_steps: 3\nepochs: 5\n")
    args = datafree_kd.parse_args(["--config", str(config), "--epochs", "1"])
    assert args.method == "fast" and args.g_steps == 3 and args.epochs == 1
    args = datafree_kd.parse_args(["--config", str(config)])
    assert args.g_steps == 3 and args.epochs == 5
    tables = os.path.join(ROOT, "configs", "tables", "")   # table specs for scripts/reproduce_table.py, not run presets
    for preset in sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)):
        if preset.startswith(tables):
            continue
        parsed = datafree_kd.parse_args(["--config", preset])
        assert parsed.teacher in registry.model_names() and parsed.student in registry.model_names(), preset
    config.write_text("method: fast\ng_stepz: 3\n")
    with pytest.raises(UsageError, match="unknown keys g_stepz"):
        datafree_kd.parse_args(["--config", str(config)])


@pytest.mark.parametrize("argv,message", [
    ([], "--method is required"),
    (["--method", "fast", "--is_maml", "0"], "--is_maml is not used by method 'fast'"),
    (["--method", "fast_meta", "--cr", "0.8"], "--cr is not used by method 'fast_meta'"),
    (["--method", "fast_meta", "--kd_steps", "10", "--ep_steps", "5"], "at most --ep_steps"),
    (["--method", "fast", "--tv", "1e-4"], "--tv is not used by method 'fast' \\(it applies to: deepinv\\)"),
    (["--method", "zskt", "--save_pool"], "--save_pool needs a synthetic pool"),
    (["--method", "fast", "--warmup", "-1"], "--warmup \\(-1\\) cannot be negative"),
    (["--method", "dafl", "--dataset", "digits", "--synthesis_channels", "2"],
     "must be 1 \\(grayscale synthesis\\) or the channel count of digits \\(3\\)"),
    (["--method", "dafl", "--dataset", "cifar10", "--synthesis_channels", "1"], "cifar10's differ"),
])
def test_impossible_flags(argv, message):
    with pytest.raises(UsageError, match=message):
        datafree_kd.parse_args(argv)


def test_original_command_line_parses():
    """A line of the original scripts/fast_cifar.sh, unchanged."""
    line = ("--batch_size 256 --lr 0.2 --kd_steps 400 --ep_steps 400 --adv 1.1 --bn 10.0 --oh 0.4 --act 0 "
            "--balance 0 --gpu 0 --T 20 --seed 0 --bn_mmt 0.9 --warmup 20 --epochs 220 --dataset cifar100 "
            "--method fast_meta --g_steps 5 --lr_z 0.01 --lr_g 3e-3 --student wrn40_1 --is_maml 1 --reset_l0 1 "
            "--reset_bn 0 --save_dir run/wrnS401-5 --log_tag wrnS401-5")
    args = datafree_kd.parse_args(line.split())
    assert (args.teacher, args.student, args.g_steps, args.T) == ("wrn40_2", "wrn40_1", 5, 20.0)


def test_missing_teacher_says_how_to_get_one(in_tmp_cwd):
    with pytest.raises(CheckpointError, match="python train_scratch.py --model resnet8 --dataset digits"):
        datafree_kd.main(["--method", "fast_meta", *TINY])


def test_help_lists_methods():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "datafree_kd.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "fast_meta" in proc.stdout and "--is_maml" in proc.stdout


def test_save_pool_and_cmi_init(teacher_file, in_tmp_cwd):
    from PIL import Image
    init = in_tmp_cwd / "init"
    init.mkdir()
    for i in range(3):
        Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(init / f"{i}.png")
    datafree_kd.main(["--method", "fast_meta", *TINY, "--epochs", "1", "--ep_steps", "2", "--cmi_init", str(init),
                      "--save_pool", "--save_dir", "pool_png"])
    pool = pool_images("checkpoints/datafree-fast_meta/digits-resnet8-resnet8")
    assert pool.shape == (3 + 8, 3, 32, 32)          # the resized init images, then one synthetic batch
    files = sorted(os.listdir("pool_png"))
    assert len(files) == 11
    back = torch.from_numpy(np.array(Image.open(os.path.join("pool_png", files[-1]))))
    assert torch.equal(back.permute(2, 0, 1), pool[-1])


def test_plot_run_draws_curves_and_the_pool_per_class(teacher_file, in_tmp_cwd):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import plot_run
    from PIL import Image

    datafree_kd.main(["--method", "fast_meta", *TINY, "--warmup", "1", "--output", "run"])
    history = json.load(open("run/summary.json"))["history"]
    assert {"kd_loss", "loss", "loss_bn", "loss_oh"} <= set(history[1]) and history[1]["kd_loss"] > 0
    plot_run.main(["run", "--per_class", "4"])
    assert Image.open("run/curves.png").size[0] > 0
    # one row per class (10), 4 images of 32 + 1 px padding per row and column
    assert Image.open("run/pool_by_class.png").size == (4 * 33 + 1, 10 * 33 + 1)
    os.remove(str(teacher_file))                      # no teacher: the newest images, no classes
    plot_run.main(["run", "--per_class", "4", "--out_dir", "plain"])
    assert Image.open("plain/pool_by_class.png").size == (4 * 33 + 1, 4 * 33 + 1)


def test_a_run_shorter_than_its_warmup_only_synthesises_and_says_so(teacher_file):
    """`--epochs 1` on a preset with a longer warm-up (a quick try of an install) runs: it synthesises and
    evaluates, no KD step changes the student, and the log says why."""
    result = datafree_kd.main(["--method", "fast_meta", *TINY, "--epochs", "1", "--warmup", "2"])
    run = "checkpoints/datafree-fast_meta/digits-resnet8-resnet8"
    log = open(f"{run}/log.txt").read()
    assert "--warmup 2 covers all 1 epoch(s): the run only synthesises" in log and "kd_loss=none" in log
    assert result["kd_steps"] == 0 and result["synthesis_calls"] == 2 and result["epoch"] == 1


@pytest.mark.parametrize("schedule", [None, "constant"])
def test_dfad_generator_lr_schedule_end_to_end(teacher_file, schedule):
    """DFAD's default: each epoch's generator lr is lr_g times the student's lr over its initial lr;
    --lr_g_schedule constant keeps lr_g."""
    flag = [] if schedule is None else ["--lr_g_schedule", schedule]
    argv = ["--method", "dfad", *TINY[:TINY.index("--g_steps")], "--g_steps", "1", "--adv", "1", "--lr_g", "1e-3",
            "--lr", "0.05", "--seed", "3", "--epochs", "3", *flag, "--output", str(schedule)]
    datafree_kd.main(argv)
    ckpt = load_checkpoint(f"{schedule}/last.pth")
    lr_g = ckpt["synthesizer"]["optimizer"]["param_groups"][0]["lr"]
    # the cosine schedule over 3 epochs: epoch 2 (the last) starts at eta_min + (0.05 - eta_min) * (1 + cos(2pi/3)) / 2
    student_lr_at_last_epoch = 2e-4 + (0.05 - 2e-4) * (1 + math.cos(2 * math.pi / 3)) / 2
    expected = 1e-3 * (student_lr_at_last_epoch / 0.05 if schedule is None else 1.0)
    assert lr_g == pytest.approx(expected, rel=1e-6)


def test_lr_g_schedule_is_refused_for_a_method_that_does_not_read_it(teacher_file):
    with pytest.raises(UsageError, match="lr_g_schedule"):
        datafree_kd.main(["--method", "fast", *TINY, "--lr_g_schedule", "student"])
