"""Faults a long run meets: non-finite losses, stop signals, full disks, bad configs, bad resumes.

Each fault must end in one sentence and its exit status, with nothing the user had lost or
overwritten; runs are tiny digits jobs, run in this process through run_cli."""
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import datafree.synthesis.deepinv as deepinv_module
import datafree.synthesis.fast as fast_module
import datafree.synthesis.generative as generative_module
import datafree.synthesis.losses as losses_module     # where every method finds its BN and adversarial terms
import datafree.synthesis.ssd as ssd_module
import datafree.synthesis.base as kd_loss_module   # where BaseSynthesizer.kd_loss finds kldiv
import datafree_kd
from conftest import ROOT
from datafree import run_state
from datafree.checkpoint import (atomic_save, load_checkpoint, read_summary, remove_stale_temporaries,
                                 save_checkpoint)
from datafree.errors import CheckpointError, DiskFullError, NonFiniteError, UsageError
from datafree.guard import NonFiniteGuard
from datafree.interrupt import StopSignals, resume_hint
from datafree.pool import quantize
from datafree.synthesis.ssd_buffer import PrioritizedPool
from datafree.precision import Precision
from datafree.synthesis.base import KDBatch
from datafree.synthesis.base import BestBatch

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import kill_soak  # noqa: E402

BASE = ["--dataset", "digits", "--teacher", "resnet8", "--student", "resnet8", "--gpu", "-1", "--batch_size", "16",
        "--synthesis_batch_size", "8", "--kd_steps", "2", "--ep_steps", "4", "--epochs", "2", "--lr", "0.05",
        "--T", "4", "--seed", "3"]
FAST_META = ["--method", "fast_meta", "--bn", "1", "--oh", "1", "--adv", "1", "--bn_mmt", "0.9", "--lr_g", "1e-3",
             "--lr_z", "0.01", "--g_steps", "2"]
METHODS = {
    "fast_meta": FAST_META,
    "deepinv": ["--method", "deepinv", "--bn", "1", "--oh", "1", "--adv", "1", "--tv", "1e-4", "--lr_g", "0.05",
                "--g_steps", "2"],
    "cmi": ["--method", "cmi", "--bn", "1", "--oh", "1", "--adv", "1", "--cr", "0.8", "--lr_g", "1e-3",
            "--g_steps", "2"],
    "dfq": ["--method", "dfq", "--bn", "1", "--oh", "1", "--adv", "1", "--balance", "1", "--lr_g", "1e-3",
            "--g_steps", "1"],
    "ssd": ["--method", "ssd", "--bn", "1", "--oh", "1", "--adv", "1", "--lr_g", "1e-3", "--lr_z", "0.01",
            "--g_steps", "2", "--ssd_buffer_size", "24", "--ssd_kd_passes", "2", "--ssd_kd_batch", "16",
            "--ssd_sampling", "policy"],     # the learned policy: the most state to lose in a fault
}
ROW = 3 * 32 * 32


def run_dir(method):
    return f"checkpoints/datafree-{method}/digits-resnet8-resnet8"


def cli(argv):
    """datafree_kd.py's command line in this process: its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        datafree_kd.run_cli(datafree_kd.main, argv)
    return exit_info.value.code


def message(capsys):
    """The one line the script printed about its end (warnings aside)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line or ": stopped: " in line]
    assert len(lines) == 1, lines
    return lines[0]


class Poison:
    """Makes a loss function return NaN once the first epoch's checkpoint is written (or from
    call ``after`` on), and keeps what the run folder held at that moment."""

    def __init__(self, monkeypatch, module, name, after=None):
        self.active, self.calls, self.after, self.saved = False, 0, after, {}
        real = getattr(module, name)
        real_persist = run_state.persist

        def poisoned(*args, **kwargs):
            value = real(*args, **kwargs)
            self.calls += 1
            if self.active or (self.after is not None and self.calls > self.after):
                return value * float("nan")
            return value

        def persist(synthesizer, folder, *args, **kwargs):
            real_persist(synthesizer, folder, *args, **kwargs)
            if self.after is None:
                self.active = True
            self.saved = {name: open(os.path.join(folder, name), "rb").read()
                          for name in ("last.pth", "best.pth", "summary.json") if os.path.isfile(os.path.join(folder, name))}

        monkeypatch.setattr(module, name, poisoned)
        monkeypatch.setattr(run_state, "persist", persist)
        self.cure = lambda: (monkeypatch.setattr(module, name, real), monkeypatch.setattr(run_state, "persist",
                                                                                              real_persist))

    def assert_untouched(self, folder):
        for name, data in self.saved.items():
            assert open(os.path.join(folder, name), "rb").read() == data, name


@pytest.mark.parametrize("method,module,function,term", [
    ("fast_meta", losses_module, "bn_loss", "bn"),
    ("deepinv", deepinv_module, "total_variation", "tv"),
    ("cmi", losses_module, "adversarial", "adv"),
    ("dfq", generative_module, "class_balance", "balance"),
])
def test_a_nan_synthesis_term_stops_before_it_reaches_anything(teacher_file, monkeypatch, capsys, method, module,
                                                               function, term):
    poison = Poison(monkeypatch, module, function)
    assert cli([*METHODS[method], *BASE]) == 3
    err = message(capsys)
    assert f": stopped: non-finite synthesis loss (nan; non-finite terms: {term}) at synthesis step 1 of the epoch " \
           f"(epoch 1, round 1 of 2)" in err
    assert f"the last good checkpoint is {run_dir(method)}/last.pth (1 finished epoch)" in err
    assert "--resume" in err and "--on_nonfinite skip" in err
    poison.assert_untouched(run_dir(method))
    ckpt = load_checkpoint(f"{run_dir(method)}/last.pth")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()
                                      if v.is_floating_point())
    if "pool" in ckpt["synthesizer"]:                                  # no image of the bad call joined the pool
        assert os.path.getsize(f"{run_dir(method)}/pool/rank0.u8") == ckpt["synthesizer"]["pool"]["rows"] * ROW
    assert len(read_summary(run_dir(method))["history"]) == 1


def test_a_nan_kd_loss_stops_and_the_run_resumes_from_the_last_good_checkpoint(teacher_file, monkeypatch, capsys):
    poison = Poison(monkeypatch, kd_loss_module, "kldiv")
    assert cli([*FAST_META, *BASE]) == 3
    err = message(capsys)
    assert "stopped: non-finite KD loss (nan) at KD step 1 of the epoch (epoch 1, round 1 of 2)" in err
    poison.assert_untouched(run_dir("fast_meta"))
    poison.cure()
    result = datafree_kd.main([*FAST_META, *BASE, "--resume"])
    assert result["epoch"] == 2


def nan_at_call(monkeypatch, module, name, number):
    """``module.name`` returns NaN at its ``number``-th call only."""
    calls, real = [], getattr(module, name)

    def one_nan(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return value * float("nan") if len(calls) == number else value

    monkeypatch.setattr(module, name, one_nan)


def test_ssd_nan_priorities_are_kept_out_of_the_buffer(teacher_file, monkeypatch):
    """A NaN KD loss of SSD-KD must neither reach the buffer (torch.multinomial would fail on the next
    draw) nor the student: the skipped step's after_step never runs."""
    # 3 KD steps an epoch (2 passes over 24 images in batches of 16); calls: KD step 1's loss, its
    # after_step, the policy's measure of its progress, KD step 2's loss (NaN)
    nan_at_call(monkeypatch, ssd_module, "kldiv_per_sample", 4)
    result = datafree_kd.main([*METHODS["ssd"], *BASE, "--on_nonfinite", "skip"])
    assert result["epoch"] == 2
    ckpt = load_checkpoint(f"{run_dir('ssd')}/last.pth")
    assert torch.isfinite(ckpt["synthesizer"]["pool"]["priority"]).all()
    assert torch.isfinite(ckpt["synthesizer"]["policy"]["theta"]).all()     # the NaN reward left theta alone
    assert "skipped_kd_steps=1 skipped_synthesis_steps=0" in open(f"{run_dir('ssd')}/log.txt").read()


def test_skip_mode_skips_and_counts_the_step(teacher_file, monkeypatch):
    nan_at_call(monkeypatch, kd_loss_module, "kldiv", 3)
    result = datafree_kd.main([*FAST_META, *BASE, "--on_nonfinite", "skip"])
    assert result["epoch"] == 2
    ckpt = load_checkpoint(f"{run_dir('fast_meta')}/last.pth")
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    log = open(f"{run_dir('fast_meta')}/log.txt").read()
    assert "epoch=0" in log and "skipped_kd_steps=1 skipped_synthesis_steps=0" in log
    assert "skipped_kd_steps=0 skipped_synthesis_steps=0" in log   # the second epoch: nothing skipped


def test_skip_mode_still_stops_when_every_step_of_an_epoch_is_skipped(teacher_file, monkeypatch, capsys):
    Poison(monkeypatch, kd_loss_module, "kldiv")
    assert cli([*FAST_META, *BASE, "--on_nonfinite", "skip"]) == 3
    err = message(capsys)
    assert "no KD step of the epoch could be taken: every one had a non-finite loss and was skipped" in err
    assert "--on_nonfinite skip to skip" not in err          # already skipping: not advised again


def test_the_device_side_record_stops_at_the_end_of_the_round(teacher_file, monkeypatch, capsys):
    """What a GPU does: no read per step; the first bad step is found where the round's loss is read."""
    monkeypatch.setattr(NonFiniteGuard, "reads_every_step", property(lambda self: False))
    poison = Poison(monkeypatch, kd_loss_module, "kldiv")
    assert cli([*FAST_META, *BASE]) == 3
    err = message(capsys)
    assert "non-finite KD loss at KD step 1 of the epoch (epoch 1, round 1 of 2)" in err
    poison.assert_untouched(run_dir("fast_meta"))

    guard = NonFiniteGuard("cpu", "stop", "synthesis")
    monkeypatch.setattr(NonFiniteGuard, "reads_every_step", property(lambda self: False))
    for value in (1.0, 2.0, float("inf")):
        assert guard.check(torch.tensor(value), {"bn": torch.tensor(value), "oh": torch.tensor(1.0)})
    with pytest.raises(NonFiniteError, match=r"non-finite synthesis loss \(non-finite terms: bn\) at synthesis step 3"):
        guard.flush()
    guard.flush()                                             # the record was read: nothing left


def test_float16_scaler_that_skips_every_step_of_an_epoch_stops_the_run():
    precision = Precision("cpu", "fp32")
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    precision.guard.scaled = True
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=0.1)

    def step(value):
        optimizer.zero_grad()
        assert precision.backward((param * value).sum())     # the scaler's business: no loss check
        precision.step(optimizer)

    precision.guard.new_epoch()
    step(1.0)
    step(float("nan"))
    assert precision.guard.end_epoch() == 1                  # one of two skipped by the scaler: go on
    precision.guard.new_epoch()
    step(float("nan"))
    step(float("inf"))
    with pytest.raises(NonFiniteError, match="float16 gradient scaler skipped them all"):
        precision.guard.end_epoch()
    assert torch.isfinite(param).all()


def test_best_batch_quantize_and_priorities_refuse_non_finite_values():
    best = BestBatch("cpu")
    best.update(torch.tensor(float("nan")), x=torch.full((2,), float("nan")))
    best.update(torch.tensor(float("-inf")), x=torch.zeros(2))
    best.update(torch.tensor(3.0), x=torch.ones(2))
    assert best.values["x"].tolist() == [1.0, 1.0]           # the first finite step, not the NaN one
    only_nan = BestBatch("cpu")
    only_nan.update(torch.tensor(float("nan")), x=torch.zeros(2))
    with pytest.raises(NonFiniteError, match="no step of the synthesis call had a finite loss"):
        only_nan.values
    with pytest.raises(NonFiniteError, match="non-finite pixels"):
        quantize(torch.tensor([0.5, float("nan")]))
    pool = PrioritizedPool("cpu", capacity=4, alpha=1.0)
    pool.add(torch.rand(4, 1, 2, 2), torch.ones(4), torch.zeros(4, dtype=torch.long))
    pool.update_priorities(torch.tensor([0, 1]), torch.tensor([float("nan"), 2.0]))
    assert torch.isfinite(pool.priority).all() and pool.priority[1].item() == pytest.approx(2.0 + pool.eps)
    pool.sample_prioritized(8, beta=0.5)                     # draws still work


def test_sigterm_finishes_the_step_saves_and_resumes_to_the_same_end(teacher_file, monkeypatch, capfd):
    argv = [*FAST_META, *BASE, "--epochs", "3", "--warmup", "1"]
    datafree_kd.main([*argv, "--output", "full"])
    calls = {"n": 0}
    real = kd_loss_module.kldiv

    def signal_at_fifth_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:          # epoch 2 (after a warm-up epoch and 4 KD steps), round 1, step 1
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(kd_loss_module, "kldiv", signal_at_fifth_step)
    assert cli([*argv, "--output", "stopped"]) == 143
    monkeypatch.setattr(kd_loss_module, "kldiv", real)
    captured = capfd.readouterr().err        # the handler writes to the file descriptor itself
    assert "SIGTERM received: stopping after the current step" in captured
    err = [line for line in captured.splitlines() if ": stopped: " in line][0]
    assert "stopped: SIGTERM received; the run saved epoch 2 up to KD step 1 of round 1 in last.pth: resume with " \
           "python datafree_kd.py" in err and err.strip().endswith("--output stopped --resume")
    ckpt = load_checkpoint("stopped/last.pth")
    assert ckpt["epoch"] == 2 and ckpt["progress"]["round"] == 0 and ckpt["progress"]["kd_done"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL     # the handlers are given back
    datafree_kd.main([*argv, "--output", "stopped", "--resume"])
    assert kill_soak.differences(kill_soak.final_state("stopped"), kill_soak.final_state("full")) == []
    assert "resumed from stopped/last.pth at epoch 2, round 1, after its synthesis call and 1 KD steps of it" in \
        open("stopped/log.txt").read()


def ssd_stopped_and_resumed(monkeypatch, stop_when, argv):
    """An SSD-KD run stopped by SIGTERM where ``stop_when(synthesizer)`` first says so (asked after
    every synthesis call and KD step), resumed; returns the stopped run's last.pth before the resume."""
    calls = {"sent": False}
    real_synthesize, real_after_step = ssd_module.SSDSynthesizer.synthesize, ssd_module.SSDSynthesizer.after_step

    def check(self):
        if not calls["sent"] and stop_when(self):
            calls["sent"] = True
            os.kill(os.getpid(), signal.SIGTERM)

    def synthesize(self):
        out = real_synthesize(self)
        check(self)
        return out

    def after_step(self, *args):
        out = real_after_step(self, *args)
        check(self)
        return out

    monkeypatch.setattr(ssd_module.SSDSynthesizer, "synthesize", synthesize)
    monkeypatch.setattr(ssd_module.SSDSynthesizer, "after_step", after_step)
    assert cli([*argv, "--output", "stopped"]) == 143
    monkeypatch.setattr(ssd_module.SSDSynthesizer, "synthesize", real_synthesize)
    monkeypatch.setattr(ssd_module.SSDSynthesizer, "after_step", real_after_step)
    saved = load_checkpoint("stopped/last.pth")
    datafree_kd.main([*argv, "--output", "stopped", "--resume"])
    return saved


def test_ssd_resumed_mid_epoch_keeps_the_epochs_plan_and_the_policys_step(teacher_file, monkeypatch):
    """SSD-KD plans an epoch from its buffer: stopped right after the call that fills it, a resumed
    run must not re-plan the epoch as a full buffer's (one refresh call); stopped between KD steps,
    it must still reward the policy for the last step. Both end as the uninterrupted run."""
    argv = [*METHODS["ssd"], *BASE, "--epochs", "2"]
    datafree_kd.main([*argv, "--output", "full"])
    want = kill_soak.final_state("full")
    theta = load_checkpoint("full/last.pth")["synthesizer"]["policy"]["theta"]
    # epoch 0: 3 calls of 8 fill the 24-image buffer, then 2 x 24 / 16 = 3 KD steps
    saved = ssd_stopped_and_resumed(monkeypatch, lambda synth: synth.pool.full and synth.steps_done == 0, argv)
    assert saved["epoch"] == 0 and saved["progress"]["plan"] == [[3, 3]]
    assert (saved["progress"]["calls_done"], saved["progress"]["synthesized"], saved["progress"]["kd_done"]) == \
        (3, True, 0)
    assert kill_soak.differences(kill_soak.final_state("stopped"), want) == []
    assert torch.equal(load_checkpoint("stopped/last.pth")["synthesizer"]["policy"]["theta"], theta)
    shutil.rmtree("stopped")
    # epoch 1 (one refresh call, then 3 KD steps), stopped after its second KD step
    saved = ssd_stopped_and_resumed(monkeypatch, lambda synth: synth.steps_done == 5, argv)
    assert saved["epoch"] == 1 and saved["progress"]["plan"] == [[1, 3]] and saved["progress"]["kd_done"] == 2
    assert saved["synthesizer"]["probe"] is not None
    assert kill_soak.differences(kill_soak.final_state("stopped"), want) == []
    assert torch.equal(load_checkpoint("stopped/last.pth")["synthesizer"]["policy"]["theta"], theta)


def test_sigint_in_a_warm_up_epoch_and_a_second_ctrl_c(teacher_file, monkeypatch, capsys):
    real = fast_module.FastMetaSynthesizer.synthesize

    def interrupt_first_call(self):
        out = real(self)
        if self.calls == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(fast_module.FastMetaSynthesizer, "synthesize", interrupt_first_call)
    assert cli([*FAST_META, *BASE, "--warmup", "1"]) == 130
    assert "saved epoch 0 up to the synthesis call of round 1 in last.pth" in capsys.readouterr().err
    assert load_checkpoint(f"{run_dir('fast_meta')}/last.pth")["progress"]["synthesized"]
    stop = StopSignals()
    stop._handle(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):                   # a second Ctrl-C stops at once
        stop._handle(signal.SIGINT, None)
    assert resume_hint(["--x", "1", "--resume", "old/last.pth", "--y"], "datafree_kd.py") == \
        "python datafree_kd.py --x 1 --y --resume"


def test_a_full_disk_leaves_the_last_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_save({"epoch": 1}, str(path))
    before = path.read_bytes()
    os.symlink("/dev/full", f"{path}.tmp{os.getpid()}")      # the temporary file lands on a full device
    with pytest.raises(DiskFullError, match=r"could not write .*last\.pth: no space left on the disk; last\.pth was "
                                            r"left as it was and no partial file remains"):
        atomic_save({"epoch": 2}, str(path))
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["last.pth"]

    # best.pth is written first: when it fails, last.pth still claims the old best, whose file is in place
    save_checkpoint({"epoch": 1, "best_acc1": 10.0}, str(tmp_path), is_best=True)
    os.symlink("/dev/full", str(tmp_path / f"best.pth.tmp{os.getpid()}"))
    with pytest.raises(DiskFullError):
        save_checkpoint({"epoch": 2, "best_acc1": 20.0}, str(tmp_path), is_best=True)
    assert load_checkpoint(str(tmp_path / "last.pth"))["best_acc1"] == 10.0
    assert load_checkpoint(str(tmp_path / "best.pth"))["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "last.pth"]

    leftover = tmp_path / "last.pth.tmp999999999"             # a killed process's file: no such pid
    leftover.write_bytes(b"partial")
    assert remove_stale_temporaries(str(tmp_path)) == ["last.pth.tmp999999999"] and not leftover.exists()


def test_a_full_disk_during_a_run_ends_in_one_sentence_and_the_run_resumes(teacher_file, monkeypatch, capsys):
    real_persist = run_state.persist

    def fill_the_disk_after_the_first_epoch(synthesizer, folder, *args, **kwargs):
        real_persist(synthesizer, folder, *args, **kwargs)
        os.symlink("/dev/full", os.path.join(folder, f"last.pth.tmp{os.getpid()}"))

    monkeypatch.setattr(run_state, "persist", fill_the_disk_after_the_first_epoch)
    assert cli([*FAST_META, *BASE]) == 2
    err = message(capsys)
    assert ": error: could not write" in err and "no space left on the disk" in err
    assert "then continue with --resume" in err
    folder = run_dir("fast_meta")
    assert load_checkpoint(f"{folder}/last.pth")["epoch"] == 1 and not [f for f in os.listdir(folder) if ".tmp" in f]
    monkeypatch.setattr(run_state, "persist", real_persist)
    assert datafree_kd.main([*FAST_META, *BASE, "--resume"])["epoch"] == 2


@pytest.mark.parametrize("text,sentence", [
    ("epochs: 220.0", r"epochs: 220\.0 is not a valid int, as '--epochs 220\.0' is not on the command line"),
    ("save_pool: 'false'", r"save_pool: 'false' is not true or false; --save_pool takes no value"),
    ("precision: fp8", r"precision: 'fp8' is not one of the choices of --precision: fp32, fp16, bf16, auto"),
    ("lr: fast", r"lr: 'fast' is not a valid float"),
    ("is_maml: true", r"is_maml: True is not a value --is_maml takes on the command line"),
    ("epochs:", r"epochs: None is empty"),
    ("- epochs", r"must map flag names to values"),
    ("epochs: [1", r"is not valid YAML"),
])
def test_config_values_are_checked_as_on_the_command_line(in_tmp_cwd, text, sentence):
    config = in_tmp_cwd / "bad.yaml"
    config.write_text(text + "\n" if text.startswith("-") else f"method: fast_meta\n{text}\n")
    with pytest.raises(UsageError, match=sentence):
        datafree_kd.parse_args(["--config", str(config)])


def test_config_values_that_the_command_line_takes(in_tmp_cwd, capsys):
    config = in_tmp_cwd / "good.yaml"
    config.write_text("method: fast_meta\nepochs: '12'\nlr_g: 3e-3\nsave_pool: true\nimg_size: null\n"
                      "precision: bf16\n")
    args = datafree_kd.parse_args(["--config", str(config)])
    assert (args.epochs, args.lr_g, args.save_pool, args.img_size, args.precision) == (12, 3e-3, True, None, "bf16")
    config.write_text("method: fast_meta\nsave_pool: false\n")
    assert datafree_kd.parse_args(["--config", str(config)]).save_pool is False
    config.write_text("method: fast_meta\nepochs: 220.0\n")
    assert cli(["--config", str(config)]) == 2                       # through run_cli: status 2
    assert "is not a valid int" in message(capsys)


def test_resume_mistakes_each_give_one_sentence(teacher_file, monkeypatch):
    argv = [*FAST_META, *BASE, "--epochs", "1"]
    datafree_kd.main(argv)
    folder = run_dir("fast_meta")
    last = f"{folder}/last.pth"
    good = open(last, "rb").read()
    for flag, value, shown in [("--img_size", "16", "--img_size 32"), ("--kd_steps", "1", "--kd_steps 2"),
                               ("--student", "resnet20", "--student resnet8")]:
        with pytest.raises(CheckpointError, match=f"was written with {shown}; resume with the same setting"):
            datafree_kd.main([*argv, flag, value, "--resume", last])
    with pytest.raises(CheckpointError, match="written by method 'fast_meta', not 'fast'"):
        datafree_kd.main(["--method", "fast", "--bn", "1", "--oh", "1", "--adv", "1", *BASE, "--resume", last])

    ckpt = load_checkpoint(last)
    del ckpt["synthesizer"]["pool"]
    atomic_save(ckpt, last)
    with pytest.raises(CheckpointError, match="lacks the entry 'pool' that resuming needs: it is incomplete"):
        datafree_kd.main([*argv, "--resume"])
    open(last, "wb").write(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt; it cannot be resumed: restore the run folder") \
            as err:
        datafree_kd.main([*argv, "--resume"])
    assert "download" not in str(err.value)


def test_resume_ignores_saved_flags_of_other_methods(teacher_file):
    """A run of another method resumes although a default of an SSD-KD or NAYER flag changed since it was
    saved (the --ssd_sampling default went from policy to uniform): those flags shape nothing of its state,
    and the method refuses them on its command line, so no resume command could match them."""
    argv = [*FAST_META, *BASE, "--epochs", "1"]
    datafree_kd.main(argv)
    last = f"{run_dir('fast_meta')}/last.pth"
    ckpt = load_checkpoint(last)
    ckpt["args"].update(ssd_sampling="policy", ssd_buffer_size=7, g_loops=9)
    atomic_save(ckpt, last)
    datafree_kd.main([*FAST_META, *BASE, "--epochs", "2", "--resume"])
    assert len(read_summary(run_dir("fast_meta"))["history"]) == 2


def test_ssd_buffer_size_cannot_change_on_resume(teacher_file):
    argv = [*METHODS["ssd"], *BASE, "--epochs", "1"]
    datafree_kd.main(argv)
    for size in ("16", "32"):
        with pytest.raises(CheckpointError, match=f"--ssd_buffer_size 24; resume with the same setting .*this run has "
                                                  f"{size}"):
            datafree_kd.main([*argv, "--ssd_buffer_size", size, "--resume"])


def test_kill_soak_tiny(tmp_path):
    """scripts/kill_soak.py --tiny: a SIGTERM and a SIGKILL, resumed, identical to the uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "kill_soak.py"), "--tiny", "--workdir",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.strip().splitlines()[-1].startswith("kill_soak: 2 kills, 2 resumed, identical=yes, lost epochs max=")
    assert "SIGTERM in training, exit 143" in out and "SIGKILL in training, exit -9" in out


def test_sigterm_stops_supervised_training_after_the_step(in_tmp_cwd, monkeypatch, capsys):
    import datafree.engine as engine
    import train_scratch

    class Bar:
        """tqdm's place: sends SIGTERM in the third step of the second epoch."""
        epochs = 0

        def __init__(self, loader, **options):
            self.loader = loader
            Bar.epochs += 1

        def __iter__(self):
            for step, batch in enumerate(self.loader):
                if Bar.epochs == 2 and step == 2:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch

        def set_postfix(self, **values):
            pass

    monkeypatch.setattr(engine, "tqdm", Bar)
    with pytest.raises(SystemExit) as stop:
        train_scratch.run_cli(train_scratch.main, ["--model", "resnet8", "--dataset", "digits", "--batch-size", "256",
                                                   "--lr", "0.05", "--gpu", "-1", "--epochs", "3"])
    assert stop.value.code == 143
    err = capsys.readouterr().err
    assert "stopped: SIGTERM received; the run stopped in epoch 1, whose steps are done again on resume; last.pth " \
           "holds 1 finished epoch: resume with the same command with --resume added" in err
    assert load_checkpoint("checkpoints/scratch/digits_resnet8/last.pth")["epoch"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_guard_adds_no_sync_per_step_and_still_stops(teacher_file, monkeypatch, capsys):
    from datafree.engine import distill_steps

    class Synth:
        def __init__(self):
            self.images = torch.rand(8, 3, 32, 32, device=torch.device("cuda"))

        def sample(self):
            return KDBatch(self.images)

        def kd_loss(self, batch, student_logits, teacher_logits):
            return kd_loss_module.kldiv(student_logits, teacher_logits)

        def after_step(self, batch, student_logits, teacher_logits):
            pass

    import registry
    device = torch.device("cuda")
    student, teacher = registry.get_model("resnet8", 10).to(device), registry.get_model("resnet8", 10).to(device).eval()
    precision = Precision(device, "fp32")
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    def syncs(steps):
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                distill_steps(Synth(), student, teacher, optimizer, precision, steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    syncs(2)                                                   # warm-up
    assert syncs(2) == syncs(8)                                # reads per round, none per step
    Poison(monkeypatch, kd_loss_module, "kldiv")
    assert cli([*FAST_META, *BASE, "--gpu", "0"]) == 3
    assert "non-finite KD loss at KD step 1 of the epoch (epoch 1, round 1 of 2)" in message(capsys)
