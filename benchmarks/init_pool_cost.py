"""The GPU hours of the ImageNet initial-pool recipe, from a measured per-step time.

Runs scripts/make_init_pool.py with configs/imagenet/init_pool_deepinv.yaml (DeepInversion,
ResNet-50 teacher at 224x224, batch 128) for a few steps on two batches (the second is timed:
the first warms the device up), with a randomly
initialised teacher (the cost does not depend on the weights) and a stand-in val/ folder, then
projects the recipe's 2,000 steps per batch to a whole pool.

    python benchmarks/init_pool_cost.py --device cuda                # one GPU
    python benchmarks/init_pool_cost.py --steps 2 --batch_size 4     # a CPU smoke run

The last line reads ``init_pool_cost: <s> s/step at batch <b>, <h> GPU-hours for <n> images at 2000 steps``.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import make_init_pool  # noqa: E402
from datafree import registry  # noqa: E402
from datafree.checkpoint import atomic_save  # noqa: E402

PRESET = os.path.join(ROOT, "configs", "imagenet", "init_pool_deepinv.yaml")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=20, help="DeepInversion steps timed (one batch)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--images", type=int, default=50000, help="pool size to project the hours to")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    args = parser.parse_args()
    with open(PRESET) as f:
        preset = yaml.safe_load(f)
    batch = args.batch_size or preset["batch_size"]

    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        val = os.path.join(folder, "ILSVRC2012", "val", "n01440764")
        os.makedirs(val)
        Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(os.path.join(val, "0.JPEG"))
        teacher = os.path.join(folder, "teacher.pth")
        atomic_save({"state_dict": registry.get_model(preset["teacher"], 1000).state_dict()}, teacher)
        out = os.path.join(folder, "pool")
        gpu = "0" if args.device.startswith("cuda") else "-1"
        common = ["--config", PRESET, "--data_root", folder, "--teacher_ckpt", teacher, "--gpu", gpu,
                  "--g_steps", str(args.steps), "--batch_size", str(batch), "--precision", args.precision,
                  "--pool_out", out]
        progress = os.path.join(out, "progress-rank0.json")
        make_init_pool.main([*common, "--images", str(batch)])        # the first batch warms the device up
        with open(progress) as f:
            warm = json.load(f)["seconds"]
        make_init_pool.main([*common, "--images", str(2 * batch)])    # the timed one continues the pool
        with open(progress) as f:
            seconds = json.load(f)["seconds"] - warm
    per_step = seconds / args.steps
    steps = preset["g_steps"]
    hours = per_step * steps * args.images / batch / 3600
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{'device':<28} | {'precision':>9} | {'batch':>5} | {'s/step':>7} | {'s/batch at ' + str(steps):>16} | "
          f"{'hours for ' + format(args.images, ','):>16}")
    print(f"{device:<28} | {args.precision:>9} | {batch:>5} | {per_step:>7.3f} | {per_step * steps:>16.1f} | {hours:>16.1f}")
    print(f"init_pool_cost: {per_step:.3f} s/step at batch {batch}, {hours:.1f} GPU-hours for {args.images} images "
          f"at {steps} steps ({args.precision}, one process; n GPUs under torchrun divide it by n)")


if __name__ == "__main__":
    main()
