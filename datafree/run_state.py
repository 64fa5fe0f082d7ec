"""What a data-free run persists at the end of each epoch, and how a resume reads it back.

A run folder holds:

- ``last.pth`` (written by rank 0): the student, its optimiser and schedule, the run's
  counters, rank 0's synthesizer state and random state, the process count and the names of
  the other ranks' state files. Synthesizer states refer to their pool (shard file and
  length, see datafree/pool.py); they never hold its images;
- ``ranks/rank{k}-epoch{E}.pth`` (written by rank k > 0 itself): its synthesizer state and
  random stream at the end of epoch E. The files of the previous epoch are kept until a newer
  ``last.pth`` cannot refer to them any more;
- ``pool/rank{k}.u8``: rank k's append-only pool shard (``.g{n}`` after the n-th re-shard);
- ``best.pth``: the best student and what evaluating it needs, nothing more.

What is written per epoch is O(new images + model state), whatever the size of the pool. On
resume every process reads ``last.pth`` and its own state file, onto its own device. A resume
with another process count re-shards: process r of the new run takes images r, r + n, ... of
the old shards concatenated in rank order (copied once into a new shard), the synthesizer
state of old rank ``r mod old_count``, and a fresh random stream.
"""
import glob
import math
import os
import re


from datafree import distributed
from datafree.checkpoint import RUN_CHECKPOINT_ADVICE, atomic_save, load_checkpoint, missing_entries, save_checkpoint
from datafree.errors import CheckpointError
from datafree.utils.misc import rng_state, set_rng_state, set_seed

RANK_DIR = "ranks"
# --pool_storage auto keeps a process's pool in device memory up to this many bytes (the pool
# a run will have made by its end), and on disk beyond.
AUTO_MEMORY_LIMIT = 2 * 2 ** 30


def rank_file(rank, epoch, tag=None):
    """Rank ``rank``'s state file at the end of ``epoch`` epochs, or within the next one (``tag``:
    where, for a save made mid-epoch)."""
    return os.path.join(RANK_DIR, f"rank{rank}-epoch{epoch}{'-' + tag if tag else ''}.pth")


def pool_file(rank, generation=0):
    suffix = f".g{generation}" if generation else ""
    return os.path.join("pool", f"rank{rank}{suffix}.u8")


def projected_pool_bytes(epochs, calls_per_epoch, images_per_call, image_shape):
    """Bytes of the pool one process will hold at the end of a run (uint8 images)."""
    return epochs * calls_per_epoch * images_per_call * math.prod(image_shape)


def choose_pool_storage(requested, projected_bytes):
    """``auto``: device memory for pools up to AUTO_MEMORY_LIMIT, disk beyond; else as requested."""
    if requested != "auto":
        return requested
    return "disk" if projected_bytes > AUTO_MEMORY_LIMIT else "memory"


def persist(synthesizer, run_dir, epoch, state, is_best, best_state, tag=None):
    """Write the end of ``epoch``'s state (``epoch`` = epochs done): every rank its own part,
    then rank 0 ``last.pth`` (``state`` plus its synthesizer) and, if ``is_best``, ``best.pth``.
    A save in the middle of the next epoch (a stop signal) passes a ``tag`` naming the point."""
    rank, world = distributed.get_rank(), distributed.get_world_size()
    pool = getattr(synthesizer, "pool", None)
    if pool is not None:
        pool.sync()
    own = {"synthesizer": synthesizer.state_dict(), "rng": rng_state()}
    if rank > 0:
        atomic_save(own, os.path.join(run_dir, rank_file(rank, epoch, tag)))
    distributed.barrier()   # the rank files exist before last.pth names them
    if rank == 0:
        save_checkpoint({**state, **own, "world_size": world,
                         "rank_files": [rank_file(k, epoch, tag) for k in range(1, world)]},
                        run_dir, is_best, best_state)
    else:
        remove_stale_rank_files(run_dir, rank, keep_from=epoch - 1)


def remove_stale_rank_files(run_dir, rank, keep_from):
    """Delete this rank's state files of epochs before ``keep_from`` (no last.pth refers to them:
    rank 0 wrote the last.pth of epoch keep_from before this rank could finish the next epoch)."""
    for path in glob.glob(os.path.join(run_dir, RANK_DIR, f"rank{rank}-epoch*.pth")):
        match = re.search(r"-epoch(\d+)(-[\w-]+)?\.pth$", path)
        if match and int(match.group(1)) < keep_from:
            os.remove(path)


def _saved_rank_state(ckpt, path, rank, device):
    """Rank ``rank``'s {'synthesizer', 'rng', 'source'} of the run checkpoint at ``path`` (source:
    the file it came from)."""
    if rank == 0:
        return {"synthesizer": ckpt["synthesizer"], "rng": ckpt.get("rng"), "source": path}
    if "rank_states" in ckpt:      # written before per-rank files: every state inside last.pth
        return {**ckpt["rank_states"][rank - 1], "source": path}
    files = ckpt.get("rank_files") or []
    if len(files) < rank:
        raise CheckpointError(f"{path} names no state file for process {rank}; it is incomplete: resume with the "
                              f"process count it was written with, or from an earlier copy")
    file = os.path.join(os.path.dirname(os.path.abspath(path)), files[rank - 1])
    if not os.path.isfile(file):
        raise CheckpointError(f"{file} (process {rank}'s state, named by {path}) is missing; restore the run "
                              f"folder's {RANK_DIR}/ or start a new run")
    state = load_checkpoint(file, map_location=device, advice=RUN_CHECKPOINT_ADVICE)
    with missing_entries(file):
        return {"synthesizer": state["synthesizer"], "rng": state["rng"], "source": file}


def restore(ckpt, path, synthesizer, seed, device):
    """Give this process its synthesizer state and random stream from the run checkpoint at ``path``.

    Returns None, or a sentence saying how the run was re-sharded for another process count.
    """
    rank, world = distributed.get_rank(), distributed.get_world_size()
    saved_world = ckpt.get("world_size", 1)
    source_root = os.path.dirname(os.path.abspath(path))
    if saved_world == world:
        own = _saved_rank_state(ckpt, path, rank, device)
        with missing_entries(own["source"]):
            synthesizer.load_state_dict(_with_pool_source(own["synthesizer"], source_root))
        if rank > 0:
            set_rng_state(own["rng"])
        return None
    return _reshard(ckpt, path, synthesizer, saved_world, seed, device, source_root)


def _with_pool_source(state, source_root):
    if "pool" not in state:
        return state
    return {**state, "pool": {**state["pool"], "source_root": source_root}}


def _reshard(ckpt, path, synthesizer, saved_world, seed, device, source_root):
    rank, world = distributed.get_rank(), distributed.get_world_size()
    states = [_saved_rank_state(ckpt, path, k, device) for k in range(saved_world)]
    with missing_entries(path):
        _reshard_into(synthesizer, path, states, saved_world, source_root)
    set_seed(seed + 1000 * ckpt["epoch"] + rank)
    return (f"re-sharded a run of {saved_world} process(es) for {world}: this process holds "
            f"{len(synthesizer.pool) if hasattr(synthesizer, 'pool') else 0} pool images and a new random stream")


def _reshard_into(synthesizer, path, states, saved_world, source_root):
    rank, world = distributed.get_rank(), distributed.get_world_size()
    template = dict(states[rank % saved_world]["synthesizer"])
    pools = [s["synthesizer"].get("pool") for s in states]
    if pools[0] is not None:
        if any("slot_rows" in p for p in pools):
            raise CheckpointError(f"{path} holds bounded replay buffers (SSD-KD), which cannot be re-sharded; resume "
                                  f"with {saved_world} process(es)")
        if any("file" not in p for p in pools):
            raise CheckpointError(f"{path} keeps its pool inside the checkpoint (written by an older version); "
                                  f"resume it with {saved_world} process(es)")
        generation = max(p.get("generation", 0) for p in pools) + 1
        template["pool"] = {"size": 0, "rows": 0, "sampler": None}
        synthesizer.pool.file = pool_file(rank, generation)
        synthesizer.load_state_dict(template)
        synthesizer.pool.generation = generation
        sources = [(os.path.join(source_root, p["file"]), p["shape"], p["rows"]) for p in pools if p["rows"]]
        total = sum(p["size"] for p in pools)
        synthesizer.pool.adopt(sources, range(rank, total, world))
        synthesizer.pool.sync()
    else:
        synthesizer.load_state_dict(template)
