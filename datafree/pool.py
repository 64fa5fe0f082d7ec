"""The synthetic image pool: uint8 images exactly as a PNG round trip keeps them, drawn in
shuffled passes, persisted as one append-only shard file per process.

The original release wrote every synthetic batch to PNG files and rebuilt a DataLoader over
the folder after each synthesis. Here each process (rank) appends its new images to its own
shard, a raw file of fixed-size uint8 rows (``row i`` at byte ``i * C * H * W``), and a
checkpoint records only how many rows the shard had (``state_dict``): what is persisted per
epoch is the new images, never the whole pool, and a run killed after an append resumes by
cutting the shard back to the recorded length.

Where the images are read from (``storage``):

- ``memory``: a copy lives in device memory (the fastest draws; for digits- and CIFAR-sized
  pools); the shard is written through on every ``add`` and only read back on resume;
- ``disk``: the device holds nothing but the batch in use. Rows are read with positional
  reads (not a memory map, whose touched pages would count towards the process's resident
  memory and grow with the pool) into a pinned buffer and copied to the device without
  blocking; the next batch of a pass is read by a background thread while the current one
  is used.

Draws are shuffled passes without replacement (a new permutation for each pass, restarted
whenever images are added, as the rebuilt loader did). The permutation is not stored: the
state keeps the random-generator state it was drawn from, so a checkpoint stays small.
"""
import contextlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from datafree.checkpoint import no_space_error
from datafree.errors import CheckpointError, NonFiniteError

STORAGES = ("memory", "disk")
# Bulk copies (resume, re-shard, --cmi_init, export) go through host memory in pieces of about this size.
CHUNK_BYTES = 64 * 2 ** 20
# A folder holding a pool outside a run (make_init_pool.py, --cmi_init): shards plus this manifest.
MANIFEST = "pool.json"


def quantize(images):
    """[0, 1] floats -> uint8 like saving to PNG: clamp, x255, truncate. Non-finite pixels stop
    the run (a cast would turn them into arbitrary bytes); one host read per batch."""
    images = images.detach()
    if not bool(torch.isfinite(images).all()):
        raise NonFiniteError("non-finite pixels in a batch about to enter the synthetic pool (nothing was added)")
    return (images.clamp(0, 1) * 255).to(torch.uint8)


class ShardFile:
    """One process's append-only file of uint8 images of one shape."""

    def __init__(self, path, shape):
        self.path, self.shape = path, tuple(int(s) for s in shape)
        self.row_bytes = math.prod(self.shape)
        self.rows = 0
        self._fd = None

    @classmethod
    def create(cls, path, shape):
        """A new, empty shard at ``path`` (a leftover file of a run that never checkpointed is emptied)."""
        shard = cls(path, shape)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        shard._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        return shard

    @classmethod
    def open(cls, path, shape, rows, writable=True):
        """The shard at ``path`` cut back to its first ``rows`` images (what a checkpoint recorded)."""
        shard = cls(path, shape)
        if not os.path.isfile(path):
            raise CheckpointError(f"the pool file {path} is missing; the checkpoint needs its {rows} images: "
                                  f"restore the run folder's pool/ or start a new run")
        shard._fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        stored = os.fstat(shard._fd).st_size // shard.row_bytes
        if stored < rows:
            shard.close()
            raise CheckpointError(f"the pool file {path} holds {stored} images but the checkpoint expects {rows}: "
                                  f"it was truncated or replaced; restore it or start a new run")
        if writable and stored > rows:   # appended after the checkpoint was written: not part of its state
            os.ftruncate(shard._fd, rows * shard.row_bytes)
        shard.rows = rows
        return shard

    def append(self, images):
        """Write a uint8 array or tensor (n, *shape) after the last row."""
        array = np.ascontiguousarray(images.numpy() if isinstance(images, torch.Tensor) else images)
        view, offset = memoryview(array).cast("B"), self.rows * self.row_bytes
        with self._no_space_as_one_sentence():
            while len(view):
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
        self.rows += len(array)

    def read_rows(self, rows, out):
        """Rows ``rows`` (int64 array) into ``out`` (a uint8 array of at least len(rows) rows)."""
        flat = out.reshape(len(out), -1)
        for i, row in enumerate(rows.tolist()):
            self._read_into(flat[i], row * self.row_bytes)

    def read_range(self, start, stop):
        """Rows start..stop-1 as a new uint8 array."""
        out = np.empty((stop - start, *self.shape), dtype=np.uint8)
        self._read_into(out.reshape(-1), start * self.row_bytes)
        return out

    def _read_into(self, buffer, offset):
        view = memoryview(buffer).cast("B")
        while len(view):
            got = os.preadv(self._fd, [view], offset)
            if got == 0:
                raise CheckpointError(f"the pool file {self.path} ended early: it was truncated while in use")
            view, offset = view[got:], offset + got

    def sync(self):
        """Make the appended rows durable (called before a checkpoint records them)."""
        with self._no_space_as_one_sentence():
            os.fsync(self._fd)

    @contextlib.contextmanager
    def _no_space_as_one_sentence(self):
        try:
            yield
        except OSError as err:
            full = no_space_error(err, self.path, "the images past the last checkpoint are cut off when the run "
                                                  "resumes, the rest is intact")
            if full is None:
                raise
            raise full from err

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class BatchReader:
    """Reads batches of rows of a shard into pinned host memory and copies them to the device
    without blocking; one batch can be read ahead by a background thread."""

    def __init__(self, shard, device):
        self.shard, self.device = shard, torch.device(device)
        self.pin = self.device.type == "cuda"
        self._buffers = [None, None]
        self._copied = [None, None]     # CUDA event after the last copy out of each buffer
        self._turn = 0
        self._executor = ThreadPoolExecutor(max_workers=1)
        self._pending = None            # (rows, buffer index, future)

    def _buffer(self, slot, n):
        buffer = self._buffers[slot]
        if buffer is None or len(buffer) < n:
            buffer = torch.empty((n, *self.shard.shape), dtype=torch.uint8, pin_memory=self.pin)
            self._buffers[slot] = buffer
        return buffer

    def _read(self, rows, slot):
        buffer = self._buffer(slot, len(rows))
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()      # the device has finished copying the previous batch out
        self.shard.read_rows(rows, buffer.numpy())
        return slot

    def prefetch(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        slot = self._turn
        self._turn ^= 1
        self._pending = (rows, slot, self._executor.submit(self._read, rows, slot))

    def fetch(self, rows):
        """The images of ``rows`` as a uint8 tensor on the device."""
        rows = np.asarray(rows, dtype=np.int64)
        pending, self._pending = self._pending, None
        if pending is not None and np.array_equal(pending[0], rows):
            slot = pending[2].result()
        else:
            if pending is not None:
                pending[2].result()
            slot = self._turn
            self._turn ^= 1
            self._read(rows, slot)
        batch = self._buffers[slot][:len(rows)]
        if self.device.type != "cuda":
            return batch.clone()
        out = batch.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._copied[slot] = event
        return out

    def drop_pending(self):
        if self._pending is not None:
            self._pending[2].result()
            self._pending = None

    def close(self):
        self.drop_pending()
        self._executor.shutdown(wait=True)


class ImagePool:
    """Synthetic images of one process.

    ``root`` and ``file``: where the shard lives (``root/file``); without them the pool is kept
    in memory only and its state dict carries the images (library use and tests).
    """

    def __init__(self, device, storage="memory", root=None, file=None):
        if storage not in STORAGES:
            raise ValueError(f"unknown pool storage '{storage}'; choose one of {', '.join(STORAGES)}")
        if storage == "disk" and file is None:
            raise ValueError("a pool stored on disk needs a root folder and a file name")
        self.device = torch.device(device)
        self.storage, self.root, self.file = storage, root, file
        self.generation = 0        # counts the times the pool was re-sharded (a new file each time)
        self.shard = None
        self._reader = None
        self._data = None          # memory storage: (capacity, C, H, W) uint8; the first `size` slots are used
        self.size = 0
        self._perm = self._perm_device = None   # the pass's order (on the CPU, and on the device for memory storage)
        self._perm_rng = None      # the CPU generator state the permutation was drawn from
        self._pos = 0

    def __len__(self):
        return self.size

    @property
    def path(self):
        return None if self.file is None else os.path.join(self.root, self.file)

    @property
    def shape(self):
        return self.shard.shape if self.shard is not None else (
            tuple(self._data.shape[1:]) if self._data is not None else None)

    # ------------------------------------------------------------------ adding
    def add(self, images):
        """Append a float batch in [0, 1] (quantised on the way in) and restart the pass."""
        self.add_uint8(quantize(images))

    def add_uint8(self, batch):
        """Append already quantised images (uint8, e.g. read from another pool) and restart the pass."""
        batch = torch.as_tensor(batch)
        self._append_rows(batch)
        if self.storage == "memory":
            self._store(batch.to(self.device))
        self.size += len(batch)
        self._restart_pass()

    def _append_rows(self, batch):
        """Write a uint8 batch through to the shard; returns the rows it took there."""
        if self.file is None:
            return None
        if self.shard is None:
            self.shard = ShardFile.create(self.path, batch.shape[1:])
        if tuple(batch.shape[1:]) != self.shard.shape:
            raise ValueError(f"images of shape {tuple(batch.shape[1:])} cannot join a pool of {self.shard.shape}")
        start = self.shard.rows
        self.shard.append(batch.cpu())
        return torch.arange(start, self.shard.rows)

    def _store(self, batch):
        """Memory storage: append a device batch after the used slots, growing geometrically."""
        needed = self.size + len(batch)
        if self._data is None or needed > len(self._data):
            capacity = max(needed, 2 * len(self._data) if self._data is not None else 16 * max(len(batch), 1))
            grown = torch.empty((capacity, *batch.shape[1:]), dtype=torch.uint8, device=self.device)
            if self._data is not None:
                grown[:self.size] = self._data[:self.size]
            self._data = grown
        self._data[self.size:needed] = batch

    def _restart_pass(self):
        self._set_perm(None)
        self._perm_rng, self._pos = None, 0
        if self._reader is not None:
            self._reader.drop_pending()

    # ----------------------------------------------------------------- reading
    def rows_of(self, index):
        """Shard rows of pool slots ``index`` (the identity here; a bounded pool maps them)."""
        return index

    def gather(self, index):
        """The uint8 images of slots ``index`` (a CPU or device int64 tensor), on the device."""
        if self.storage == "memory":
            return self._data[index.to(self.device)]
        return self._disk_reader().fetch(self.rows_of(index.cpu()).numpy())

    def _disk_reader(self):
        if self._reader is None:
            self._reader = BatchReader(self.shard, self.device)
        return self._reader

    def sample(self, batch_size):
        """The next float batch in [0, 1] of a shuffled pass (the last batch of a pass may be smaller)."""
        if self.size == 0:
            raise RuntimeError("the synthetic pool is empty: synthesize before sampling")
        if self._perm is None or self._pos >= len(self._perm):
            self._perm_rng = torch.get_rng_state()
            self._set_perm(torch.randperm(self.size))
            self._pos = 0
        start, self._pos = self._pos, min(self._pos + batch_size, len(self._perm))
        if self.storage == "memory":   # the pass's order is on the device: no host round trip per batch
            return self._data[self._perm_device[start:self._pos]].float().div_(255)
        batch = self.gather(self._perm[start:self._pos]).float().div_(255)
        if self._pos < len(self._perm):
            self._reader.prefetch(self.rows_of(self._perm[self._pos:self._pos + batch_size]).numpy())
        return batch

    def _set_perm(self, perm):
        self._perm = perm
        self._perm_device = perm.to(self.device) if self.storage == "memory" and perm is not None else None

    @property
    def images(self):
        """Every stored image, uint8 (N, C, H, W), on the device for memory storage, else on the CPU."""
        if self.size == 0:
            return torch.empty(0, dtype=torch.uint8)
        if self.storage == "memory":
            return self._data[:self.size]
        return torch.cat(list(self.chunks()))

    def chunks(self):
        """The stored images in order, as uint8 CPU tensors of about CHUNK_BYTES each."""
        size = chunk_rows(self.shape) if self.size else 1
        for start in range(0, self.size, size):
            index = torch.arange(start, min(start + size, self.size))
            if self.storage == "memory":
                yield self._data[index.to(self.device)].cpu()
            else:
                rows = self.rows_of(index).numpy()
                out = np.empty((len(rows), *self.shard.shape), dtype=np.uint8)
                self.shard.read_rows(rows, out)
                yield torch.from_numpy(out)

    # ------------------------------------------------------------ persistence
    def sync(self):
        """Make every added image durable before a checkpoint records the pool."""
        if self.shard is not None:
            self.shard.sync()

    def state_dict(self):
        """What a checkpoint keeps: the shard's name and length and the sampling state (no images),
        or the images themselves for a pool without a file."""
        sampler = None if self._perm is None else {"rng": self._perm_rng, "pos": self._pos, "size": len(self._perm)}
        state = {"size": self.size, "sampler": sampler, "storage": self.storage}
        if self.file is None:   # a copy of the used rows (a CPU view would save the whole grown buffer)
            return {**state, "images": self.images.to("cpu", copy=True)}
        return {**state, "file": self.file, "rows": self.shard.rows if self.shard else 0,
                "shape": list(self.shape) if self.shape else None, "generation": self.generation}

    def load_state_dict(self, state):
        """Restore ``state``; its shard is read from ``state['source_root']`` if the resuming code
        set it (the folder of the checkpoint), else from this pool's root.

        A shard in another folder (a run resumed into a new --output) is copied into this pool's
        own file; the user's original files are only read.
        """
        self.close()
        self._data, self.size, self.shard = None, 0, None
        if "images" in state:           # a pool that was never persisted
            if len(state["images"]):
                self._store(state["images"].to(self.device))
                self.size = len(state["images"])
                self._append_rows(state["images"])
        elif state.get("rows"):
            self.generation = state.get("generation", 0)
            source = os.path.join(state.get("source_root") or self.root, state["file"])
            own = os.path.join(self.root, state["file"])
            if os.path.abspath(source) == os.path.abspath(own):
                self.file = state["file"]
                self.shard = ShardFile.open(own, state["shape"], state["rows"])
            else:
                copy_shard(source, own, state["shape"], state["rows"])
                self.file = state["file"]
                self.shard = ShardFile.open(own, state["shape"], state["rows"])
            self.size = state["size"]
            if self.storage == "memory":
                self._load_slots()
        self._load_sampler(state.get("sampler"))

    def _load_slots(self):
        """Memory storage: read the images of every used slot from the shard onto the device."""
        self._data = None
        stored, self.size = self.size, 0
        for chunk in _slot_chunks(self, stored):
            self._store(chunk.to(self.device))
            self.size += len(chunk)

    def _load_sampler(self, sampler):
        self._restart_pass()
        if sampler is not None and sampler["size"] == self.size:
            generator = torch.Generator()
            generator.set_state(sampler["rng"])
            self._perm_rng = sampler["rng"]
            self._set_perm(torch.randperm(self.size, generator=generator))
            self._pos = sampler["pos"]

    def adopt(self, sources, take):
        """Fill this (empty) pool from other shards: ``sources`` is a list of (path, shape, rows)
        read in order as one sequence of images, of which indices ``take`` (a range) are kept.
        Used to re-shard a pool for another process count and to seed a pool (--cmi_init)."""
        wanted = np.arange(take.start, take.stop, take.step, dtype=np.int64)
        offset = 0
        for path, shape, rows in sources:
            local = wanted[(wanted >= offset) & (wanted < offset + rows)] - offset
            if len(local):
                shard = ShardFile.open(path, shape, rows, writable=False)
                try:
                    chunk = chunk_rows(shard.shape)
                    for start in range(0, len(local), chunk):
                        part = local[start:start + chunk]
                        out = np.empty((len(part), *shard.shape), dtype=np.uint8)
                        shard.read_rows(part, out)
                        self.add_uint8(torch.from_numpy(out))
                finally:
                    shard.close()
            offset += rows

    def save_png(self, folder, start=0, workers=4):
        """Write every image as folder/NNNNNNN.png, numbered from ``start`` (for inspection and
        --cmi_init; not used by training). Images are encoded by ``workers`` threads."""
        from PIL import Image

        os.makedirs(folder, exist_ok=True)

        def write(item):
            i, img = item
            Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy()).save(os.path.join(folder, f"{i:07d}.png"))

        with ThreadPoolExecutor(max_workers=workers) as executor:
            offset = start
            for chunk in self.chunks():
                list(executor.map(write, enumerate(chunk, offset)))
                offset += len(chunk)

    def truncate(self, size):
        """Keep the first ``size`` images only (the shard is cut back too)."""
        if size < self.size:
            if self.shard is not None:
                os.ftruncate(self.shard._fd, size * self.shard.row_bytes)
                self.shard.rows = size
            self.size = size
            self._restart_pass()

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.shard is not None:
            self.shard.close()


def read_pool(state, root):
    """The images a pool's state dict refers to, uint8 (N, C, H, W) on the CPU, in slot order;
    ``root`` is the run folder. Read-only: for inspection, plots and tests."""
    if "images" in state:
        return state["images"]
    size = state.get("size", 0)
    if not size:
        return torch.empty(0, dtype=torch.uint8)
    shard = ShardFile.open(os.path.join(root, state["file"]), state["shape"], state["rows"], writable=False)
    try:
        rows = state["slot_rows"][:size].numpy() if "slot_rows" in state else np.arange(size)
        out = np.empty((size, *shard.shape), dtype=np.uint8)
        shard.read_rows(rows, out)
    finally:
        shard.close()
    return torch.from_numpy(out)


def chunk_rows(shape):
    """Images per piece of a bulk copy: about CHUNK_BYTES, at least one."""
    return max(1, CHUNK_BYTES // math.prod(shape))


def _slot_chunks(pool, size):
    chunk = chunk_rows(pool.shard.shape)
    for start in range(0, size, chunk):
        rows = pool.rows_of(torch.arange(start, min(start + chunk, size))).numpy()
        out = np.empty((len(rows), *pool.shard.shape), dtype=np.uint8)
        pool.shard.read_rows(rows, out)
        yield torch.from_numpy(out)


def copy_shard(source, target, shape, rows):
    """Copy the first ``rows`` images of shard ``source`` into a new shard ``target``."""
    src = ShardFile.open(source, shape, rows, writable=False)
    dst = ShardFile.create(target, shape)
    chunk = chunk_rows(shape)
    try:
        for start in range(0, rows, chunk):
            dst.append(src.read_range(start, min(start + chunk, rows)))
        dst.sync()
    finally:
        src.close()
        dst.close()


def write_manifest(folder, shape, shards):
    """Describe a standalone pool folder: ``shards`` is a list of (file name, rows)."""
    manifest = {"shape": list(shape), "shards": [{"file": f, "rows": int(n)} for f, n in shards]}
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)


def read_manifest(folder):
    """The shards of a standalone pool folder as a list of (path, shape, rows)."""
    with open(os.path.join(folder, MANIFEST)) as f:
        manifest = json.load(f)
    return [(os.path.join(folder, s["file"]), manifest["shape"], s["rows"]) for s in manifest["shards"]]
