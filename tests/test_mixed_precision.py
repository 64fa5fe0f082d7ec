"""--precision bf16 / --fp16 / --channels_last on the CPU."""
import math
import re

import pytest
import torch

import datafree_kd
import registry
from datafree.checkpoint import atomic_save, load_checkpoint
from datafree.errors import UsageError
from datafree.precision import Precision
from test_datafree_kd import TINY


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
def test_precision_modes_pick_dtype_and_scaler():
    assert Precision("cpu", "bf16").dtype == torch.bfloat16 and not Precision("cpu", "bf16").scaler.is_enabled()
    assert Precision("cpu", True).dtype == torch.bfloat16 and Precision("cpu", True).mode == "fp16"  # old --fp16
    assert not Precision("cpu", False).enabled and Precision("cpu", "fp32").mode == "fp32"
    assert Precision("cuda", "fp16").dtype == torch.float16 and Precision("cuda", "bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError):
        Precision("cpu", "fp8")


def test_precision_flags():
    assert datafree_kd.parse_args(["--method", "fast_meta", "--fp16"]).precision == "fp16"
    assert datafree_kd.parse_args(["--method", "fast_meta"]).precision == "fp32"
    with pytest.raises(UsageError, match="--fp16 means --precision fp16"):
        datafree_kd.parse_args(["--method", "fast_meta", "--fp16", "--precision", "bf16"])
    with pytest.raises(UsageError, match="comma-separated epochs"):
        datafree_kd.parse_args(["--method", "fast_meta", "--lr_decay_milestones", "120;150"])


def test_bf16_channels_last_run_has_finite_losses(in_tmp_cwd):
    torch.manual_seed(0)
    atomic_save({"state_dict": registry.get_model("resnet8", 10).state_dict()},
                str(in_tmp_cwd / "checkpoints" / "pretrained" / "digits_resnet8.pth"))
    datafree_kd.main(["--method", "fast_meta", *TINY, "--precision", "bf16", "--channels_last", "--epochs", "1"])
    run = "checkpoints/datafree-fast_meta/digits-resnet8-resnet8"
    log = open(f"{run}/log.txt").read()
    values = [float(v) for v in re.findall(r"(?:kd_loss|loss_bn|loss_oh| loss)=(-?[\d.]+|nan|inf)", log)]
    assert len(values) >= 4 and all(math.isfinite(v) for v in values)
    ckpt = load_checkpoint(f"{run}/last.pth")
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert ckpt["args"]["precision"] == "bf16"
