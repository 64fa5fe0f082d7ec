"""Memory against disk pool storage: the cost of drawing one KD batch from the pool.

For each image geometry (digits/CIFAR 3x32x32, ImageNet 3x224x224) it fills one pool per
storage with the same random images, then times ``sample()`` over a few passes, as the KD
steps call it (a batch of floats in [0, 1] on the device; CUDA is synchronised before the
clock is read). ``disk`` reads rows with positional reads into pinned memory, the next batch
ahead in a thread; right after filling, the rows are still in the page cache, as they are in a
run that drew them recently.

    python benchmarks/pool_storage.py                 # CPU
    python benchmarks/pool_storage.py --device cuda   # a GPU

The last line reads ``pool_storage: disk/memory ms per batch = <ratio at 32x32> (32x32), <ratio> (224x224)``.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datafree.pool import ImagePool  # noqa: E402

CASES = [  # (name, shape, images in the pool, batch)
    ("digits/CIFAR", (3, 32, 32), 50000, 256),
    ("ImageNet", (3, 224, 224), 4000, 100),
]


def time_sampling(pool, batch, draws, device):
    pool.sample(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tic = time.perf_counter()
    for _ in range(draws):
        out = pool.sample(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    assert out.device.type == device.type
    return (time.perf_counter() - tic) / draws * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--draws", type=int, default=50, help="timed batches per case and storage")
    parser.add_argument("--pool_share", type=float, default=1.0,
                        help="fill each pool with this share of its images (the tests run it at 0.02)")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, shape, n, batch in CASES:
            n = max(batch, int(n * args.pool_share))
            timings = {}
            for storage in ("memory", "disk"):
                pool = ImagePool(device, storage, folder, f"{storage}-{shape[-1]}.u8")
                generator = torch.Generator().manual_seed(0)
                for start in range(0, n, 1000):
                    pool.add(torch.rand((min(1000, n - start), *shape), generator=generator))
                timings[storage] = time_sampling(pool, batch, args.draws, device)
                pool.close()
            rows.append((name, shape, n, batch, timings["memory"], timings["disk"]))

    print(f"device: {device}")
    print(f"{'data':<13} | {'image':>9} | {'pool':>6} | {'batch':>5} | {'memory ms':>9} | {'disk ms':>8} | {'disk/memory':>11}")
    print("-" * 80)
    for name, shape, n, batch, memory, disk in rows:
        print(f"{name:<13} | {'x'.join(map(str, shape)):>9} | {n:>6} | {batch:>5} | {memory:>9.2f} | {disk:>8.2f} | "
              f"{disk / memory:>11.2f}")
    print("pool_storage: disk/memory ms per batch = "
          + ", ".join(f"{disk / memory:.2f} ({shape[-1]}x{shape[-1]})" for _, shape, _, _, memory, disk in rows))


if __name__ == "__main__":
    main()
