"""In-memory pool of synthetic images, stored as uint8 exactly as a PNG round trip would.

The original release wrote every synthetic batch to PNG files and rebuilt a DataLoader
over the folder after each synthesis; this pool keeps the same quantised pixels on the
device and draws shuffled batches without replacement (a new permutation for each pass,
restarted whenever images are added, as the rebuilt loader did).
"""
import os

import torch


def quantize(images):
    """[0, 1] floats -> uint8 like saving to PNG: clamp, x255, truncate."""
    return (images.detach().clamp(0, 1) * 255).to(torch.uint8)


class ImagePool:
    def __init__(self, device):
        self.device = torch.device(device)
        self._data = None      # (capacity, C, H, W) uint8; the first `size` rows are used
        self.size = 0
        self._perm = None
        self._pos = 0

    def __len__(self):
        return self.size

    @property
    def images(self):
        """The stored images, uint8 (N, C, H, W)."""
        return self._data[:self.size] if self._data is not None else torch.empty(0, dtype=torch.uint8)

    def add(self, images):
        """Append a float batch in [0, 1] (quantised on the way in) and restart the pass."""
        batch = quantize(images).to(self.device)
        if self._data is None:
            self._data = torch.empty((max(len(batch), 1) * 16, *batch.shape[1:]), dtype=torch.uint8,
                                     device=self.device)
        needed = self.size + len(batch)
        if needed > len(self._data):  # grow geometrically: amortised O(1) appends
            grown = torch.empty((max(needed, 2 * len(self._data)), *batch.shape[1:]), dtype=torch.uint8,
                                device=self.device)
            grown[:self.size] = self._data[:self.size]
            self._data = grown
        self._data[self.size:needed] = batch
        self.size = needed
        self._perm, self._pos = None, 0

    def sample(self, batch_size):
        """The next float batch in [0, 1] of a shuffled pass (the last batch of a pass may be smaller)."""
        if self.size == 0:
            raise RuntimeError("the synthetic pool is empty: synthesize before sampling")
        if self._perm is None or self._pos >= len(self._perm):
            self._perm = torch.randperm(self.size).to(self.device)
            self._pos = 0
        idx = self._perm[self._pos:self._pos + batch_size]
        self._pos += len(idx)
        return self._data[idx].float().div_(255)

    def state_dict(self):
        return {"images": self.images.cpu(), "perm": None if self._perm is None else self._perm.cpu(),
                "pos": self._pos}

    def load_state_dict(self, state):
        self._data, self.size = None, 0
        if len(state["images"]):
            self._data = state["images"].to(self.device).clone()
            self.size = len(self._data)
        self._perm = None if state["perm"] is None else state["perm"].to(self.device)
        self._pos = state["pos"]

    def save_png(self, folder):
        """Write every image as folder/NNNNNN.png (for inspection; not used by training)."""
        from PIL import Image

        os.makedirs(folder, exist_ok=True)
        for i, img in enumerate(self.images.cpu()):
            array = img.permute(1, 2, 0).squeeze(-1).numpy()
            Image.fromarray(array).save(os.path.join(folder, f"{i:06d}.png"))
