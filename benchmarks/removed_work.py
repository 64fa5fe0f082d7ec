"""Seconds per epoch of the per-batch work that issue 20 replaced, before and after, at one setting's shapes.

Two pieces ran in every synthesis and KD step and were cut without changing what they compute:

- crop + flip augmentation: kornia's RandomCrop(padding 4) + RandomHorizontalFlip (parameters drawn
  on the CPU) against datafree.augment.RandomCropFlip (drawn on the device, one gather);
- the BN-statistics hook's batch statistics: mean plus the variance of a transposed copy, against
  one torch.var_mean pass.

An epoch of the digits Fast-5 preset has ``g_steps`` synthesis steps (augmentation forward and
backward on a batch, BN statistics of every teacher BN input forward and backward) and
``kd_steps`` KD steps (augmentation forward, no gradient). Times are the fastest of ``--repeat``.

    python benchmarks/removed_work.py            # digits Fast-5: batch 128, 5 + 20 steps, wrn16_2 teacher
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn
from kornia import augmentation as K

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datafree import registry  # noqa: E402
from datafree.augment import RandomCropFlip  # noqa: E402


def transposed_statistics(x):
    """The hook's statistics before: a mean, and the variance of a (C, N*H*W) transposed copy."""
    x = x.float()
    return x.mean(dim=(0, 2, 3)), x.transpose(0, 1).reshape(x.shape[1], -1).var(dim=1, unbiased=False)


def one_pass_statistics(x):
    var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), unbiased=False)
    return mean, var


def bn_inputs(model, batch, img_size):
    """The shapes of the inputs of every BatchNorm2d of ``model`` for one batch."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
             for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(batch, 3, img_size, img_size))
    for h in hooks:
        h.remove()
    return shapes


def fastest(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        tic = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - tic)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", default=128, type=int)
    parser.add_argument("--g_steps", default=5, type=int, help="synthesis steps per epoch")
    parser.add_argument("--kd_steps", default=20, type=int, help="KD steps per epoch")
    parser.add_argument("--teacher", default="wrn16_2", choices=registry.model_names())
    parser.add_argument("--img_size", default=32, type=int)
    parser.add_argument("--repeat", default=3, type=int)
    opts = parser.parse_args(argv)
    torch.manual_seed(0)
    n, s = opts.batch_size, opts.img_size
    images = torch.rand(n, 3, s, s)

    def augmentation_epoch(aug):
        def run():
            for _ in range(opts.g_steps):
                x = images.clone().requires_grad_()
                aug(x).sum().backward()
            with torch.no_grad():
                for _ in range(opts.kd_steps):
                    aug(images)
        return run

    def statistics_epoch(statistics, inputs):
        def run():
            for _ in range(opts.g_steps):
                total = 0
                for x in inputs:
                    mean, var = statistics(x)
                    total = total + mean.sum() + var.sum()
                total.backward()
        return run

    kornia_aug = nn.Sequential(K.RandomCrop(size=(s, s), padding=4), K.RandomHorizontalFlip())
    own_aug = RandomCropFlip(s, 4)
    inputs = [torch.randn(shape, requires_grad=True) for shape in bn_inputs(registry.get_model(opts.teacher, 10),
                                                                             n, s)]
    rows = [("crop + flip augmentation", "kornia", fastest(augmentation_epoch(kornia_aug), opts.repeat),
             "RandomCropFlip", fastest(augmentation_epoch(own_aug), opts.repeat)),
            (f"BN statistics ({len(inputs)} {opts.teacher} layers)", "transposed copy",
             fastest(statistics_epoch(transposed_statistics, inputs), opts.repeat),
             "var_mean", fastest(statistics_epoch(one_pass_statistics, inputs), opts.repeat))]
    print(f"threads {torch.get_num_threads()}, batch {n}, {opts.g_steps} synthesis + {opts.kd_steps} KD steps "
          f"per epoch, fastest of {opts.repeat}")
    print(f"{'work':<32} {'before':<16} {'s/epoch':>8} {'after':<16} {'s/epoch':>8} {'saved':>7}")
    for work, old, old_s, new, new_s in rows:
        print(f"{work:<32} {old:<16} {old_s:8.3f} {new:<16} {new_s:8.3f} {old_s - new_s:7.3f}")
    saved = sum(r[2] - r[4] for r in rows)
    print(f"removed_work: {saved:.3f} s/epoch saved in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
