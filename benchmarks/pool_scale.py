"""What a data-free run pays per epoch to persist its state, as the synthetic pool grows.

Simulates the ImageNet geometry without ImageNet: two gloo processes (torchrun), 3x224x224
images, a tiny student and teacher, ``--method noise`` (synthesis costs nothing, so the
epoch is dominated by what the loop itself does), and a pool pre-filled to N images on disk
(``--cmi_init`` from a pool folder, each process taking its half). For each N it runs a few
epochs and reports, from the run's summary.json and files:

- persist s/epoch: seconds per epoch spent writing the run's state (pool sync, per-rank state
  files, last.pth, best.pth), the median over the epochs;
- peak RSS: rank 0's peak resident memory (MiB) over the run;
- last.pth: its size in bytes.

    python benchmarks/pool_scale.py                      # N = 2,000 / 8,000 / 32,000 (about 10 GB of disk)
    python benchmarks/pool_scale.py --sizes 500 2000 --epochs 2

The last line reads
``pool_scale: persist_s ratio largest/smallest = R, rss ratio = M, last.pth ratio = C``.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHAPE = (3, 224, 224)
MODEL = "tiny224"


class Tiny224(nn.Module):
    """A few thousand parameters that take 224x224 images: strided convs, BN, global pooling."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 7, stride=8, padding=3), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def worker(argv):
    """One torchrun process: register the tiny model, then run datafree_kd.py's main."""
    from datafree.commands import kd as datafree_kd
    from datafree import registry

    registry.register_model(MODEL)(Tiny224)
    datafree_kd.run_cli(datafree_kd.main, argv)


def make_val_folder(root):
    """A 2-class ImageFolder of 4 small JPEGs as ImageNet's val/ (no train/: a data-free run needs none)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("n01440764", "n01443537"):
        folder = os.path.join(root, "ILSVRC2012", "val", c)
        os.makedirs(folder, exist_ok=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.JPEG"))


def make_init_pool(folder, n, seed=0):
    """A pool folder (shard + manifest) of n random uint8 images, written in pieces."""
    from datafree.pool import ShardFile, chunk_rows, write_manifest

    os.makedirs(folder, exist_ok=True)
    shard = ShardFile.create(os.path.join(folder, "init.u8"), SHAPE)
    rng = np.random.default_rng(seed)
    step = chunk_rows(SHAPE)
    for start in range(0, n, step):
        shard.append(rng.integers(0, 256, (min(step, n - start), *SHAPE), dtype=np.uint8))
    shard.sync()
    shard.close()
    write_manifest(folder, SHAPE, [("init.u8", n)])


def run_size(n, workdir, epochs, nproc):
    """Run the loop on a pool pre-filled to ``n`` images; return its figures."""
    from datafree.checkpoint import atomic_save

    case = os.path.join(workdir, f"n{n}")
    shutil.rmtree(case, ignore_errors=True)
    os.makedirs(case)
    make_val_folder(os.path.join(case, "data"))
    torch.manual_seed(0)
    atomic_save({"state_dict": Tiny224().state_dict()}, os.path.join(case, "teacher.pth"))
    tic = time.perf_counter()
    make_init_pool(os.path.join(case, "init"), n)
    fill_seconds = time.perf_counter() - tic
    out = os.path.join(case, "run")
    argv = ["--method", "noise", "--dataset", "imagenet", "--data_root", os.path.join(case, "data"),
            "--teacher", MODEL, "--student", MODEL, "--teacher_ckpt", os.path.join(case, "teacher.pth"),
            "--gpu", "-1", "--batch_size", str(8 * nproc), "--kd_steps", "2", "--ep_steps", "4",
            "--epochs", str(epochs), "--lr", "0.01", "--pool_storage", "disk",
            "--cmi_init", os.path.join(case, "init"), "--output", out]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.abspath(__file__), "--worker", *argv]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    run_seconds = time.perf_counter() - tic
    if proc.returncode != 0:
        sys.exit(f"pool_scale: the run with N={n} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        history = json.load(f)["history"]
    best = os.path.join(out, "best.pth")   # only written once the student beats 0% (chance on 2 of 1000 classes)
    pool_bytes = sum(os.path.getsize(os.path.join(out, "pool", p)) for p in os.listdir(os.path.join(out, "pool")))
    figures = {"n": n, "persist_s": float(np.median([h["persist_seconds"] for h in history])),
               "rss_mb": max(h["peak_rss_mb"] for h in history),
               "last_bytes": os.path.getsize(os.path.join(out, "last.pth")),
               "best_bytes": os.path.getsize(best) if os.path.isfile(best) else None,
               "pool_bytes": pool_bytes, "fill_s": fill_seconds, "run_s": run_seconds}
    shutil.rmtree(case, ignore_errors=True)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000],
                        help="pool sizes N (images over both processes)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2, help="gloo processes")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="pool_scale_")
    rows = [run_size(n, workdir, args.epochs, args.nproc) for n in sorted(args.sizes)]
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{'N images':>9} | {'pool GB':>8} | {'persist s/epoch':>15} | {'peak RSS MiB':>12} | "
          f"{'last.pth bytes':>14} | {'best.pth bytes':>14} | {'run s':>6}")
    print("-" * 98)
    for r in rows:
        print(f"{r['n']:>9,} | {r['pool_bytes'] / 1e9:>8.2f} | {r['persist_s']:>15.4f} | {r['rss_mb']:>12.0f} | "
              f"{r['last_bytes']:>14,} | {r['best_bytes'] or '-':>14} | {r['run_s']:>6.1f}")
    small, large = rows[0], rows[-1]
    print(f"pool_scale: persist_s ratio largest/smallest = {large['persist_s'] / small['persist_s']:.2f}, "
          f"rss ratio = {large['rss_mb'] / small['rss_mb']:.2f}, "
          f"last.pth ratio = {large['last_bytes'] / small['last_bytes']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
