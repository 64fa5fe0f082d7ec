"""In-memory pool of synthetic images, stored as uint8 exactly as a PNG round trip would.

The original release wrote every synthetic batch to PNG files and rebuilt a DataLoader
over the folder after each synthesis; this pool keeps the same quantised pixels on the
device and draws shuffled batches without replacement (a new permutation for each pass,
restarted whenever images are added, as the rebuilt loader did).
"""
import math
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


REPLACE_RULES = ("priority", "oldest", "random")


class PrioritizedPool(ImagePool):
    """A bounded pool drawn by priority, as in prioritised experience replay (Schaul et al., 2016).

    Each stored image keeps a priority ``p_i`` (its latest teacher-student discrepancy), a
    modulating weight ``phi_i`` and the teacher's predicted class. Batches are drawn with
    replacement with ``P(i) = p_i^alpha / sum_j p_j^alpha``; the importance-sampling weight of a
    draw is ``(n P(i))^-beta / max_j (n P(j))^-beta`` (n: images stored), which corrects the bias
    of prioritised draws when beta = 1.

    While the pool has room, new images are appended. Once it holds ``capacity`` images, each
    ``add`` admits at most ``ceil(replace * capacity)`` of the new images (those with the
    largest ``phi``) in place of as many stored ones chosen by ``rule``: ``priority`` evicts
    the lowest priorities (what the student has learned best), ``oldest`` the earliest added,
    ``random`` uniformly drawn ones. New images get the largest stored priority so that each is
    drawn soon.
    """

    def __init__(self, device, capacity, alpha=0.6, replace=0.1, rule="priority", eps=1e-3):
        super().__init__(device)
        if capacity < 1:
            raise ValueError("a prioritised pool needs a capacity of at least one image")
        if rule not in REPLACE_RULES:
            raise ValueError(f"unknown replacement rule '{rule}'; choose one of {', '.join(REPLACE_RULES)}")
        self.capacity, self.alpha, self.replace, self.rule, self.eps = capacity, alpha, replace, rule, eps
        self.priority = torch.empty(0, device=self.device)
        self.weight = torch.empty(0, device=self.device)
        self.label = torch.empty(0, dtype=torch.long, device=self.device)
        self.age = torch.empty(0, dtype=torch.long, device=self.device)
        self.added = 0          # images ever admitted: the age stamp of the next one

    def _stamps(self, n):
        stamps = torch.arange(self.added, self.added + n, device=self.device)
        self.added += n
        return stamps

    def _new_priority(self, n):
        top = self.priority.max() if len(self.priority) else torch.ones((), device=self.device)
        return top.expand(n).clone()

    def add(self, images, weights, labels):
        """Store a float batch in [0, 1] with its modulating weights and predicted classes.
        Returns the indices (slots) the admitted images now occupy."""
        weights, labels = weights.detach().to(self.device).float(), labels.to(self.device)
        free = self.capacity - self.size
        n_append = min(free, len(images))
        slots = []
        if n_append > 0:
            order = torch.argsort(weights, descending=True)[:n_append]
            new_priority = self._new_priority(n_append)
            start = self.size
            super().add(images[order.to(images.device)])
            self.priority = torch.cat([self.priority, new_priority])
            self.weight = torch.cat([self.weight, weights[order]])
            self.label = torch.cat([self.label, labels[order]])
            self.age = torch.cat([self.age, self._stamps(n_append)])
            slots.append(torch.arange(start, self.size, device=self.device))
        elif free == 0:
            k = min(len(images), max(1, math.ceil(self.replace * self.capacity)))
            chosen = torch.argsort(weights, descending=True)[:k]
            victims = self.evict(k)
            self._data[victims] = quantize(images[chosen.to(images.device)]).to(self.device)
            self.priority[victims] = self._new_priority(k)
            self.weight[victims] = weights[chosen]
            self.label[victims] = labels[chosen]
            self.age[victims] = self._stamps(k)
            slots.append(victims)
            self._perm, self._pos = None, 0
        return torch.cat(slots) if slots else torch.empty(0, dtype=torch.long, device=self.device)

    def evict(self, k):
        """The k stored slots that the replacement rule gives up."""
        if self.rule == "priority":
            return torch.argsort(self.priority)[:k]
        if self.rule == "oldest":
            return torch.argsort(self.age)[:k]
        return torch.randperm(self.size, device=self.device)[:k]

    def probabilities(self):
        scaled = self.priority.clamp_min(self.eps) ** self.alpha
        return scaled / scaled.sum()

    def importance_weights(self, index, beta):
        """(n P(i))^-beta normalised by the largest weight any stored image could get."""
        probs = self.probabilities()
        weights = (self.size * probs[index]) ** (-beta)
        return weights / (self.size * probs.min()) ** (-beta)

    def sample_prioritized(self, batch_size, beta, generator=None):
        """(images in [0, 1], indices, importance weights) of ``batch_size`` draws by priority."""
        if self.size == 0:
            raise RuntimeError("the synthetic pool is empty: synthesize before sampling")
        index = torch.multinomial(self.probabilities(), batch_size, replacement=True, generator=generator)
        return self._data[index].float().div_(255), index, self.importance_weights(index, beta)

    def update_priorities(self, index, discrepancy):
        """Refresh the priorities of drawn images with their latest discrepancy (repeats: last wins)."""
        self.priority[index] = discrepancy.detach().float().abs().to(self.device) + self.eps

    def state_dict(self):
        return {**super().state_dict(), "priority": self.priority.cpu(), "weight": self.weight.cpu(),
                "label": self.label.cpu(), "age": self.age.cpu(), "added": self.added}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        for key in ("priority", "weight", "label", "age"):
            setattr(self, key, state[key].to(self.device))
        self.added = state["added"]
