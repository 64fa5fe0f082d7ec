"""No host sync per KD step or per synthesis step, for every method.

On a GPU a host read (``.item()``, ``bool()`` of a tensor, ``bincount`` ...) makes the host wait for
the device. The CPU test counts the calls of the known sync points made by a synthesis call and by a
round of KD steps, with the non-finite guard recording on the device as it does on a GPU, and checks
that they do not grow with the number of steps: whatever is read is read once per call or round. The
GPU test counts the syncs CUDA itself reports (its sync-debug mode), in fp32, bf16 and fp16.
"""
import collections
import traceback
import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode

import registry
from datafree.engine import distill_steps
from datafree.guard import NonFiniteGuard
from datafree.precision import Precision
from datafree.synthesis import SYNTHESIZERS
from test_baselines import strict_config

# Calls that read a device tensor on the host (or need its values there to size their output).
SYNC_POINTS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero",
               "argwhere", "bincount", "unique", "masked_select"}
# Host tensors read on purpose: an optimiser's step counter lives on the host unless the optimiser is fused
# (which the float16 scaler gets, datafree.precision); DeepInversion's jitter offsets are drawn by the CPU's
# generator, as the original draws them (python-side ints: no device tensor is read).
HOST_SIDE = ("torch/optim/", "jitter_and_flip")
METHODS = sorted(m for m in SYNTHESIZERS if m != "fast_meta_imagenet")   # its 224x224 twin: tests/test_imagenet.py


class SyncPoints(TorchFunctionMode):
    """Counts the sync-point calls made inside the block, by (name, where)."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        boolean_index = (name == "__getitem__" and len(args) > 1 and torch.is_tensor(args[1])
                         and args[1].dtype == torch.bool)
        if name in SYNC_POINTS or boolean_index:
            stack = traceback.extract_stack()[:-1]
            if not any(part in frame.filename or part == frame.name for frame in stack[-4:] for part in HOST_SIDE):
                caller = next((f for f in reversed(stack) if "/datafree/" in f.filename), stack[-1])
                self.calls[(name, f"{caller.filename.split('/datafree/')[-1]}:{caller.lineno}")] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def guard_records_on_the_device(monkeypatch):
    """The guard as it runs on a GPU (stop mode): it records non-finite steps on the device and reads them at
    the end of a call or round, where a CPU run reads every loss at once."""
    monkeypatch.setattr(NonFiniteGuard, "reads_every_step", property(lambda self: self.mode == "skip"))


def tiny_run(method, device="cpu", precision="fp32"):
    torch.manual_seed(0)
    teacher = registry.get_model("resnet8", 10).to(device).eval()
    student = registry.get_model("resnet8", 10).to(device)
    config = strict_config(method)
    config.precision = precision
    return SYNTHESIZERS[method](teacher, student, config, torch.device(device)), teacher, student


def synthesis_syncs(synth, g_steps, count):
    synth.config.g_steps = g_steps
    with count() as counter:
        synth.synthesize()
    return counter


def kd_syncs(synth, teacher, student, steps, count, precision="fp32"):
    device = next(student.parameters()).device
    kd_precision = Precision(device, precision)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, **kd_precision.optimizer_options())
    with count() as counter:
        distill_steps(synth, student, teacher, optimizer, kd_precision, steps)
    return counter


@pytest.mark.parametrize("method", METHODS)
def test_no_sync_point_per_step_on_the_cpu(method, guard_records_on_the_device):
    synth, teacher, student = tiny_run(method)
    synth.synthesize()          # the first call builds what later calls reuse (NAYER's generator)
    one, three = synthesis_syncs(synth, 1, SyncPoints), synthesis_syncs(synth, 3, SyncPoints)
    assert one.calls == three.calls, f"synthesis steps read the device: {dict(three.calls - one.calls)}"
    one, three = kd_syncs(synth, teacher, student, 1, SyncPoints), kd_syncs(synth, teacher, student, 3, SyncPoints)
    assert one.calls == three.calls, f"KD steps read the device: {dict(three.calls - one.calls)}"
    assert sum(three.calls.values()) <= 2     # a round reads its summed loss (and SSD-KD nothing more)


def test_the_counter_sees_a_sync_point_per_step(guard_records_on_the_device, monkeypatch):
    """The test above can fail: a kd_loss that reads its loss on the host every step is caught."""
    synth, teacher, student = tiny_run("fast_meta")
    synth.synthesize()
    real = type(synth).kd_loss

    def reads_each_step(self, batch, student_logits, teacher_logits):
        loss = real(self, batch, student_logits, teacher_logits)
        loss.item()
        return loss

    monkeypatch.setattr(type(synth), "kd_loss", reads_each_step)
    one, three = kd_syncs(synth, teacher, student, 1, SyncPoints), kd_syncs(synth, teacher, student, 3, SyncPoints)
    extra = three.calls - one.calls
    assert sum(extra.values()) == 2 and all(name == "item" for name, _ in extra)     # one more read per step


class CudaSyncs:
    """Counts the synchronisations CUDA's sync-debug mode reports inside the block."""

    def __enter__(self):
        self._catcher = warnings.catch_warnings(record=True)
        self.caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._catcher.__exit__(*exc)
        self.calls = collections.Counter(str(w.message)[:80] for w in self.caught if "synchroniz" in str(w.message))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("method", METHODS)
def test_no_sync_per_step_on_a_gpu(method, precision):
    synth, teacher, student = tiny_run(method, "cuda", precision)
    synthesis_syncs(synth, 1, CudaSyncs)                                       # warm-up: caches, lazy init
    two, four = synthesis_syncs(synth, 2, CudaSyncs), synthesis_syncs(synth, 4, CudaSyncs)
    assert sum(two.calls.values()) == sum(four.calls.values()), dict(four.calls)
    kd_syncs(synth, teacher, student, 1, CudaSyncs, precision)
    two, eight = (kd_syncs(synth, teacher, student, n, CudaSyncs, precision) for n in (2, 8))
    assert sum(two.calls.values()) == sum(eight.calls.values()), dict(eight.calls)
