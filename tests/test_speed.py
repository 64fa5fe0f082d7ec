"""Speed work: the GPU check at tiny sizes on the CPU, the epoch-cost benchmark's pieces, the
sync-free float16 bookkeeping and the bfloat16 choice of --precision auto."""
import json
import os
import subprocess
import sys

import pytest
import torch

import datafree_kd
import registry
from conftest import ROOT
from datafree import engine
from datafree.engine import Clock
from datafree.precision import Precision, native_bfloat16, resolve_mode
from datafree.synthesis import SYNTHESIZERS
from test_baselines import make_config
from test_datafree_kd import TINY

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import epoch_cost  # noqa: E402


def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    """scripts/gpu_check.sh --cpu: the GPU check's every step and setting, at tiny sizes."""
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    report = (tmp_path / "gpu_check.txt").read_text()
    assert "gpu_check: all steps passed" in report
    assert "dist_check: gloo, world 2, all-reduce sum ok" in report
    assert "synthesis_call: fast_meta_imagenet fp32" in report
    assert "synthesis_call: deepinv bf16+cl" in report and "h for 2100 images" in report
    rows = json.loads((tmp_path / "epoch_cost.json").read_text())
    assert [r["setting"] for r in rows] == ["fp32", "fp16+cl", "bf16+cl+compile"]
    for row in rows:
        assert row["status"].startswith("ok"), row["status"]
        summary = row["summary"]
        assert len(row["result"]["epoch_seconds"]) == 2
        assert summary["epoch"] > 0 and summary["synthesis"] > 0 and summary["kd"] > 0 and summary["eval"] > 0
        assert 0 < summary["floor"] and 0 < summary["floor_share"] < 2
        assert "--channels_last" in row["result"]["argv"] if "+cl" in row["setting"] else True
    table = (tmp_path / "epoch_cost.txt").read_text().splitlines()
    assert table[-1].startswith("epoch_cost: best=") and "floor share" in table[-1]
    assert any("220 epochs of which 20 warm-up" in line and "0.08 h" in line for line in table)


def test_gpu_check_refuses_unknown_arguments():
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--cpux"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "unknown argument '--cpux'" in proc.stderr


def test_settings_and_log_parsing():
    assert epoch_cost.parse_setting("bf16+cl+compile") == ["--precision", "bf16", "--channels_last", "--compile"]
    with pytest.raises(SystemExit, match="unknown part 'fast'"):
        epoch_cost.parse_setting("fp32+fast")
    with pytest.raises(SystemExit, match="must start with fp32, fp16 or bf16"):
        epoch_cost.parse_setting("fp8")
    log = ("[Eval] epoch=0 acc@1=10.00 best=10.00 | seconds: synthesis=1.50 kd=2.25 eval=0.50 output=0.05\n"
           "other line\n[Eval] epoch=1 acc@1=11.00 | seconds: synthesis=1.00 kd=2.00 eval=0.40 output=0.10\n")
    assert epoch_cost.phase_seconds(log) == [{"synthesis": 1.5, "kd": 2.25, "eval": 0.5, "output": 0.05},
                                             {"synthesis": 1.0, "kd": 2.0, "eval": 0.4, "output": 0.1}]


def test_summary_projects_the_schedule():
    result = {"epoch_seconds": [9.0, 4.0, 6.0],
              "phases": [{"synthesis": 5, "kd": 3, "eval": 1, "output": 0}] +
                        [{"synthesis": 1.0, "kd": 3.0, "eval": 0.5, "output": 0.5}] * 2,
              "floor": {"synthesis": 1.0, "kd": 2.5, "eval": 0.5}}
    s = epoch_cost.summarise(result, schedule=(220, 20))
    assert s["first"] == 9.0 and s["epoch"] == 5.0 and s["synthesis"] == 1.0
    assert s["floor"] == 4.0 and s["floor_share"] == pytest.approx(0.8)
    # 20 warm-up epochs of synthesis + output, 200 whole epochs
    assert s["hours"] == pytest.approx((20 * 1.5 + 200 * 5.0) / 3600)
    assert s["synthesis_hours"] == pytest.approx(220 * 1.0 / 3600)
    rows = [{"setting": "fp32", "status": "ok", "summary": s},
            {"setting": "bf16", "status": "ok", "summary": {**s, "epoch": 2.5, "floor_share": 0.9}},
            {"setting": "fp16", "status": "failed: boom"}]
    assert epoch_cost.closing_line(rows) == ("epoch_cost: best=bf16 2.50s/epoch, fp32 5.00s/epoch, speed-up 2.00x, "
                                             "floor share 0.90")
    lines = epoch_cost.table(rows, (220, 20), 0.08)
    assert "failed: boom" in lines[4] and "2.00x" in lines[3]


def overflow_case(inf):
    """One SGD parameter whose scaled gradient is finite or not, under an enabled (CPU) scaler. The loss stays
    finite (3 + 2e38), as in a float16 overflow: only the scaled gradient (4e38) overflows, so the non-finite loss
    guard lets it through to the scaler."""
    precision = Precision("cpu", "fp32")
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.SGD([param], lr=0.5, **precision.optimizer_options())
    weight = torch.tensor([3.0, 1e38 if inf else 5.0])
    precision.backward((param * weight).sum())
    precision.unscale(optimizer)
    return precision, param, optimizer


def test_overflowed_gradients_are_dropped_on_the_device():
    precision, param, optimizer = overflow_case(inf=True)
    assert precision.optimizer_options() == {"fused": True}
    precision.drop_overflowed(optimizer)
    assert torch.equal(param.grad, torch.zeros(2))      # kept out of any sum of gradients
    precision.step(optimizer)
    assert torch.equal(param.detach(), torch.tensor([1.0, 2.0]))   # the scaler skipped the step
    assert precision.scaler.get_scale() == 2.0                       # and backed off

    precision, param, optimizer = overflow_case(inf=False)
    precision.drop_overflowed(optimizer)
    assert torch.equal(param.grad, torch.tensor([3.0, 5.0]))         # unscaled, untouched
    precision.step(optimizer)
    assert torch.allclose(param.detach(), torch.tensor([1.0 - 1.5, 2.0 - 2.5]))
    with pytest.raises(RuntimeError, match="needs unscale"):
        other = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
        precision.drop_overflowed(other)
    assert Precision("cpu", "fp16").optimizer_options() == {}        # no scaler on the CPU: plain optimisers


def test_native_bfloat16_reads_the_cpu_flags(tmp_path):
    with_bf16 = tmp_path / "bf16"
    with_bf16.write_text("processor : 0\nflags : fpu sse2 avx512f avx512_bf16 amx_tile\n")
    without = tmp_path / "plain"
    without.write_text("processor : 0\nflags : fpu sse2 avx2\n")
    assert native_bfloat16("cpu", str(with_bf16)) == torch.backends.mkldnn.is_available()
    assert not native_bfloat16("cpu", str(without))
    assert not native_bfloat16("cpu", str(tmp_path / "missing"))    # unreadable: fp32
    assert resolve_mode("fp32", "cpu") == "fp32" and resolve_mode("bf16", "cpu") == "bf16"
    assert resolve_mode("auto", "cpu") == ("bf16" if native_bfloat16("cpu") else "fp32")


def test_auto_precision_flag_and_fp16_override():
    assert datafree_kd.parse_args(["--method", "fast_meta", "--precision", "auto"]).precision == "auto"
    assert datafree_kd.parse_args(["--method", "fast_meta", "--precision", "auto", "--fp16"]).precision == "fp16"


def test_block_timer_sums_blocks_on_the_cpu():
    timer = Clock(torch.device("cpu"))
    for _ in range(3):
        with timer.measure():
            sum(range(20000))
    first = timer.seconds()
    assert first > 0 and timer.seconds() == first


@pytest.mark.parametrize("method", sorted(SYNTHESIZERS))
def test_warmup_synthesis_leaves_the_student_unchanged(method):
    """What lets train() evaluate a warm-up student once: no method's synthesis changes it."""
    torch.manual_seed(0)
    teacher, student = registry.get_model("resnet8", 10).eval(), registry.get_model("resnet8", 10)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    synth = SYNTHESIZERS[method](teacher, student, make_config(warmup=3), torch.device("cpu"))
    for _ in range(2):
        synth.synthesize()
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_warmup_epochs_evaluate_the_student_once(teacher_file, monkeypatch):
    calls = []
    real_evaluate = engine.evaluate

    def counted(model, *args, **kwargs):
        calls.append(1)
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", counted)
    datafree_kd.main(["--method", "fast_meta", *TINY, "--warmup", "2", "--epochs", "3"])
    assert len(calls) == 2       # the first warm-up epoch, then the KD epoch
    log = open("checkpoints/datafree-fast_meta/digits-resnet8-resnet8/log.txt").read()
    accs = [line.split("acc@1=")[1].split()[0] for line in log.splitlines() if "[Eval] epoch=" in line]
    assert len(accs) == 3 and accs[0] == accs[1]


def test_random_crop_flip_matches_pad_crop_and_mirror():
    from datafree.augment import RandomCropFlip
    torch.manual_seed(0)
    images = torch.rand(3, 2, 6, 5, requires_grad=True)
    aug = RandomCropFlip((6, 5), padding=2)
    top, left, flip = torch.tensor([0, 4, 2]), torch.tensor([4, 0, 1]), torch.tensor([False, True, True])
    out = aug.crop(images, top, left, flip)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(3):
        expected = padded[i, :, top[i]:top[i] + 6, left[i]:left[i] + 5]
        expected = expected.flip(-1) if flip[i] else expected
        assert torch.equal(out[i], expected), i
    out.sum().backward()                 # each pixel counts once per crop that kept it
    kept = torch.zeros(6, 5)
    kept[2:, :3] = 1                     # image 1: rows 2-5, columns 0-2 (corner 4, 0 of the 2-padded image)
    assert torch.equal(images.grad[1], kept.expand(2, 6, 5))
    # every corner and both flips are drawn, uniformly
    top, left, flip = aug.draw(20000, 6, 5, torch.device("cpu"))
    assert set(top.tolist()) == set(range(5)) and set(left.tolist()) == set(range(5))
    assert abs(flip.float().mean().item() - 0.5) < 0.02
    assert abs(top.eq(0).float().mean().item() - 0.2) < 0.02
    with pytest.raises(ValueError, match="does not fit"):
        RandomCropFlip(12, padding=2)(images)


def run_script(*args):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


def test_epoch_cost_digits_preset_and_removed_work_run(tmp_path):
    lines = run_script(os.path.join(ROOT, "benchmarks", "epoch_cost.py"), "--settings", "fp32", "--epochs", "2",
                       "--teacher_ckpt", str(tmp_path / "absent.pth"), "--json", str(tmp_path / "rows.json"),
                       "--", "--batch_size", "8", "--kd_steps", "1", "--ep_steps", "2", "--g_steps", "1")
    assert lines[-1].startswith("epoch_cost: best=fp32 ") and "speed-up 1.00x" in lines[-1]
    assert any("40 epochs of which 2 warm-up" in line for line in lines)   # the digits preset's schedule
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert "--config" in row["result"]["argv"] and row["result"]["precision"] == "fp32"
    assert len(row["result"]["phases"]) == 2 and all(p["kd"] > 0 for p in row["result"]["phases"])
    lines = run_script(os.path.join(ROOT, "benchmarks", "removed_work.py"), "--batch_size", "4", "--g_steps", "1",
                       "--kd_steps", "1", "--repeat", "1", "--teacher", "resnet8")
    assert lines[-1].startswith("removed_work: ") and len(lines) == 5
