"""Seconds per synthesis step of one data-free method at a given image size (random weights).

Builds the method's synthesizer as datafree_kd.py would (no data is read: the dataset only
gives the class count and normalisation), makes one untimed call (cuDNN autotuning), then
times ``--calls`` calls and reports seconds per call and per step (a call is ``--g_steps``
steps). With ``--recipe_steps N`` it also projects the GPU hours of a pool made with N steps
per batch, e.g. DeepInversion's 2,000 steps per ImageNet batch.

    python benchmarks/synthesis_call.py --method deepinv --teacher resnet50_imagenet \\
        --student resnet18_imagenet --img_size 224 --batch_size 64 --g_steps 20 --recipe_steps 2000
    python benchmarks/synthesis_call.py --method fast_meta_imagenet --g_steps 50 --batch_size 100
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datafree.commands import kd as datafree_kd  # noqa: E402
from datafree import registry  # noqa: E402
from datafree.engine import Clock  # noqa: E402
from datafree.precision import resolve_mode  # noqa: E402
from datafree.synthesis import SYNTHESIZERS  # noqa: E402
from datafree.run import registered_data, synthesizer_config  # noqa: E402

# Loss weights of the ImageNet recipes (docs/imagenet-and-torchrun.md: the initial pool; configs/imagenet/ for Fast-50, ResNet-18 student);
# only which terms are non-zero changes the cost.
METHOD_FLAGS = {
    "deepinv": ["--bn", "0.01", "--oh", "1", "--adv", "0", "--tv", "1e-4", "--l2", "1e-5", "--lr_g", "0.25"],
    "fast_meta_imagenet": ["--bn", "0.1", "--oh", "0.1", "--adv", "1.0", "--bn_mmt", "0.9", "--lr_g", "2e-4",
                           "--lr_z", "0.01", "--is_maml", "0", "--reinit", "50"],
}


def build(opts, device):
    flags = ["--method", opts.method, "--dataset", opts.dataset, "--teacher", opts.teacher, "--student", opts.student,
             "--batch_size", str(opts.batch_size), "--g_steps", str(opts.g_steps), "--img_size", str(opts.img_size),
             "--precision", opts.precision, *METHOD_FLAGS.get(opts.method, []), *opts.flags]
    if opts.channels_last:
        flags.append("--channels_last")
    args = datafree_kd.parse_args(flags)
    args.precision = resolve_mode(args.precision, device)
    task = registry.get_task(args.dataset)
    num_classes = registry.DATASET_NUM_CLASSES[args.dataset]
    nc = len(registry.NORMALIZE_DICT[args.dataset]["mean"])
    torch.manual_seed(0)
    teacher = registry.get_model(args.teacher, num_classes, task=task).to(device).eval()
    student = registry.get_model(args.student, num_classes, task=task).to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if args.channels_last:
        teacher.to(memory_format=torch.channels_last)
        student.to(memory_format=torch.channels_last)
    config = synthesizer_config(args, registered_data(args, (nc, args.img_size, args.img_size), task=task))
    synthesizer = SYNTHESIZERS[args.method](teacher, student, config, device)
    if args.channels_last and hasattr(synthesizer, "generator"):
        synthesizer.generator.to(memory_format=torch.channels_last)
    return synthesizer, args


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="deepinv", choices=sorted(SYNTHESIZERS))
    parser.add_argument("--dataset", default="imagenet", choices=registry.dataset_names(),
                        help="gives the class count and normalisation only; nothing is read")
    parser.add_argument("--teacher", default="resnet50_imagenet", choices=registry.model_names())
    parser.add_argument("--student", default="resnet18_imagenet", choices=registry.model_names())
    parser.add_argument("--img_size", default=224, type=int)
    parser.add_argument("--batch_size", default=64, type=int)
    parser.add_argument("--g_steps", default=20, type=int, help="synthesis steps per call")
    parser.add_argument("--calls", default=1, type=int, help="timed calls (after one untimed call)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "auto"])
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--recipe_steps", default=0, type=int,
                        help="also project the hours of a pool made with this many steps per batch")
    parser.add_argument("--recipe_images", default=0, type=int,
                        help="images of that pool (default: one batch)")
    parser.add_argument("flags", nargs="*", help="more datafree_kd.py flags, after --")
    opts = parser.parse_args(argv)
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {opts.device} but CUDA is not available; use --device cpu")
    device = torch.device(opts.device)
    synthesizer, args = build(opts, device)
    synthesizer.synthesize()   # untimed: autotuning, allocator warm-up
    tic = Clock(device).now()
    for _ in range(opts.calls):
        synthesizer.synthesize()
    call = (Clock(device).now() - tic) / opts.calls
    step = call / opts.g_steps
    setting = args.precision + ("+cl" if args.channels_last else "")
    print(f"{'method':<20} {'setting':<10} {'size':>5} {'batch':>6} {'steps':>6} {'s/call':>8} {'s/step':>8} "
          f"{'img/s':>8}")
    print(f"{args.method:<20} {setting:<10} {args.img_size:>5} {opts.batch_size:>6} {opts.g_steps:>6} "
          f"{call:8.3f} {step:8.4f} {opts.batch_size / step:8.1f}")
    recipe = ""
    if opts.recipe_steps:
        images = opts.recipe_images or opts.batch_size
        batches = -(-images // opts.batch_size)
        hours = batches * opts.recipe_steps * step / 3600
        recipe = (f", {opts.recipe_steps} steps per batch of {opts.batch_size}: {opts.recipe_steps * step:.1f} s "
                  f"per batch, {hours:.2f} h for {images} images")
    print(f"synthesis_call: {args.method} {setting} at {args.img_size}x{args.img_size}, batch {opts.batch_size}: "
          f"{step:.4f} s/step{recipe}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
