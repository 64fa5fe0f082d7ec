"""A torchrun process group on this machine's devices: one all-reduce checked, then its bandwidth.

    torchrun --standalone --nproc_per_node=N benchmarks/dist_check.py [--megabytes 64]

NCCL with one process per GPU (a world of one GPU still builds an NCCL communicator and runs
its kernels), gloo on the CPU. Rank 0 prints one line; a wrong sum exits with status 1.
"""
import argparse
import os
import sys
import time

import torch
import torch.distributed as dist


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", default=64, type=int, help="size of the timed all-reduce")
    parser.add_argument("--repeats", default=10, type=int)
    opts = parser.parse_args(argv)
    if "RANK" not in os.environ:
        parser.error("start it with torchrun (torchrun --standalone --nproc_per_node=N benchmarks/dist_check.py)")
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        value = torch.full((1000,), float(rank + 1), device=device)
        dist.all_reduce(value)
        expected = world * (world + 1) / 2
        ok = bool((value == expected).all())
        payload = torch.ones(opts.megabytes * 2 ** 18, device=device)   # float32: 4 bytes each
        dist.all_reduce(payload)
        if cuda:
            torch.cuda.synchronize(device)
        dist.barrier()
        tic = time.perf_counter()
        for _ in range(opts.repeats):
            dist.all_reduce(payload)
        if cuda:
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - tic) / opts.repeats
        if rank == 0:
            print(f"dist_check: {backend}, world {world}, all-reduce sum {'ok' if ok else 'WRONG'}, "
                  f"{opts.megabytes} MB all-reduce {seconds * 1000:.2f} ms ({opts.megabytes / 1024 / seconds:.1f} GB/s)")
    finally:
        dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
