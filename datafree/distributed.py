"""Several processes, one run: torchrun set-up, rank-0 output, gradient and metric reduction.

A script started by ``torchrun --nproc_per_node=N script.py ...`` finds RANK, WORLD_SIZE,
LOCAL_RANK and LOCAL_WORLD_SIZE in its environment; ``init_distributed`` then joins the
process group (``env://``; NCCL when the process owns a GPU, gloo on the CPU, or
``--dist_backend``) and binds the process to GPU ``LOCAL_RANK``. Without those variables
(or with a world of one process) nothing happens and every helper below is a no-op, so a
plain ``python script.py`` behaves exactly as before.

Conventions of a distributed run:

- ``--batch_size`` (and ``--synthesis_batch_size``) is the total over the GPUs of one node,
  as in the original release and pytorch/examples: each process takes
  ``batch_size // LOCAL_WORLD_SIZE`` (``per_process``);
- only rank 0 prints, logs, writes TensorBoard, image grids and checkpoints;
- evaluation is split over the ranks (``ShardSampler``) and its sums are all-reduced.
"""
import builtins
import datetime
import os
import sys

import torch
import torch.distributed as dist

from datafree.errors import UsageError

def launched_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def local_world_size():
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE); 1 without torchrun."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if is_distributed() else 1


def is_main_process():
    return get_rank() == 0


def init_distributed(gpu=None, backend=None):
    """Join the torchrun process group; return this process's device, or None outside torchrun.

    ``gpu == -1`` keeps every process on the CPU; otherwise each process uses GPU LOCAL_RANK
    when CUDA is available. The backend is NCCL for GPUs and gloo for the CPU unless
    ``backend`` says otherwise.
    """
    if not launched_by_torchrun():
        return None
    if is_distributed():
        raise RuntimeError("the process group is already initialised")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and gpu != -1
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                             f"start at most that many processes with --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend == "nccl" and not use_cuda:
        raise UsageError("--dist_backend nccl needs GPUs; use gloo to run on the CPU")
    dist.init_process_group(backend=backend, init_method="env://", timeout=datetime.timedelta(minutes=30))
    quiet_other_ranks(is_main_process())
    if gpu not in (None, -1) and is_main_process():
        print(f"--gpu {gpu} is ignored under torchrun: process k uses GPU LOCAL_RANK")
    return device


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


def quiet_other_ranks(is_main):
    """Only the main process prints to stdout (``print(..., force=True)`` prints anyway);
    messages to stderr always go through."""
    builtin_print = builtins.print

    def print(*args, force=False, **kwargs):
        if is_main or force or kwargs.get("file") not in (None, sys.stdout):
            builtin_print(*args, **kwargs)

    builtins.print = print


def per_process(total, what="--batch_size"):
    """This process's share of a per-node batch size."""
    if total is None:
        return None
    n = local_world_size()
    if total < n:
        raise UsageError(f"{what} {total} is the total over the {n} processes of a node; "
                         f"give at least {n} (one sample per process)")
    return total // n


def seed_per_rank(seed, epoch=0):
    """Give each process its own random stream (no-op in a single process, whose stream stays as it is)."""
    if get_world_size() > 1:
        from datafree.utils.misc import set_seed
        set_seed(seed + 1000 * epoch + get_rank())


def wrap_ddp(model, device):
    """DistributedDataParallel around ``model`` in a distributed run; ``model`` itself otherwise."""
    if get_world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _reduce_device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


REDUCE_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def all_reduce_tensor(tensor, op="sum"):
    """The sum (or ``op`` "max" / "min") of ``tensor`` over the ranks (a new tensor, same device
    and dtype); ``tensor`` itself in a single process. Streaming metrics sum their state with it
    (datafree/tasks.py)."""
    if get_world_size() == 1:
        return tensor
    t = tensor.to(_reduce_device(), torch.float64)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, REDUCE_OPS[op]))
    return t.to(tensor.device, tensor.dtype)


def host_group():
    """A process group whose collectives run on the CPU (gloo): the default group when it is
    gloo, else a new one. Every rank must call it at the same point."""
    if not is_distributed() or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def all_reduce_max_int(value, group=None):
    """The largest of every rank's integer ``value``, reduced on the CPU over ``group`` (no
    device sync); ``value`` itself in a single process."""
    if get_world_size() == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())


def average_gradients(params):
    """Replace each parameter's gradient by its mean over the ranks (one flat all-reduce)."""
    average_tensors([p.grad for p in params if p.grad is not None])


@torch.no_grad()
def average_tensors(tensors):
    """Average tensors in place over the ranks (e.g. moving averages of BN statistics)."""
    tensors = [t for t in tensors if t is not None]
    if get_world_size() == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(get_world_size())
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def all_gather_ints(value):
    """Every rank's integer ``value`` as a list ordered by rank (``[value]`` in a single process)."""
    world = get_world_size()
    if world == 1:
        return [int(value)]
    counts = torch.zeros(world, dtype=torch.float64)
    counts[get_rank()] = value
    return [int(v) for v in all_reduce_tensor(counts).tolist()]


def barrier():
    if get_world_size() > 1:
        dist.barrier()


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ... of a dataset: every sample is seen by exactly one rank
    (no padding, unlike DistributedSampler, so summed metrics count each sample once)."""

    def __init__(self, dataset, rank=None, world_size=None):
        self.n = len(dataset)
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.n, self.world_size))


def train_sampler(dataset, seed=0):
    """A shuffling DistributedSampler in a distributed run, None (plain shuffling) otherwise."""
    if get_world_size() == 1:
        return None
    return torch.utils.data.distributed.DistributedSampler(dataset, shuffle=True, seed=seed)


def eval_sampler(dataset):
    return ShardSampler(dataset) if get_world_size() > 1 else None


class NullLogger:
    """What ranks other than 0 log to: nothing."""
    writer = None

    def info(self, msg):
        pass

    def args(self, args):
        pass

    def scalars(self, values, step, prefix=""):
        pass

    def close(self):
        pass


def make_logger(run_dir, name):
    """The run's RunLogger on rank 0, a NullLogger on the other ranks."""
    if not is_main_process():
        return NullLogger()
    from datafree.utils.logger import RunLogger
    return RunLogger(run_dir, name)
