"""SSD-KD's replay buffer: a bounded image pool drawn by priority (``PrioritizedPool``).

It is the project's image pool (datafree/pool.py: uint8 images in device memory or an append-only
shard on disk) with what prioritised replay keeps per stored image; SSD-KD (ssd.py) fills and
refreshes it and draws its KD batches from it through its sampling policy (ssd_policy.py).
"""
import math

import torch

from datafree.errors import CheckpointError
from datafree.pool import ImagePool, quantize

REPLACE_RULES = ("priority", "oldest", "random")


class PrioritizedPool(ImagePool):
    """A bounded pool drawn by priority, as in prioritised experience replay (Schaul et al., 2016).

    Each stored image keeps a priority ``p_i`` (its latest teacher-student discrepancy), the
    teacher's predicted class and its difficulty (SSD-KD's focal factor, from which the
    modulating weight is computed), its admission stamp and the KD step it was last drawn or
    admitted at (``touched``). ``probabilities()`` is prioritised replay's
    ``P(i) = p_i^alpha / sum_j p_j^alpha``; ``sample_from(probs, ...)`` draws with replacement
    from any distribution over the stored images (SSD-KD's learned policy) and returns the
    importance-sampling weights ``(n P(i))^-beta`` (n: images stored), which correct the bias of
    the draws when beta = 1, divided by their mean over the batch drawn.

    While the pool has room, new images are appended. Once it holds ``capacity`` images, each
    ``add`` admits at most ``ceil(replace * capacity)`` of the new images (those ranked first by
    the caller's ``weights``) in place of as many stored ones chosen by ``rule``: ``priority``
    evicts the lowest priorities (what the student has learned best), ``oldest`` the earliest
    added, ``random`` uniformly drawn ones. New images get the largest stored priority so that
    each is drawn soon.

    The shard stays append-only: an admitted image is appended to it and ``slot_rows`` maps
    each slot to the shard row that holds its image.
    """

    SLOT_STATE = ("priority", "difficulty", "label", "age", "touched")

    def __init__(self, device, capacity, alpha=0.6, replace=0.1, rule="priority", eps=1e-3, storage="memory",
                 root=None, file=None):
        super().__init__(device, storage, root, file)
        if capacity < 1:
            raise ValueError("a prioritised pool needs a capacity of at least one image")
        if rule not in REPLACE_RULES:
            raise ValueError(f"unknown replacement rule '{rule}'; choose one of {', '.join(REPLACE_RULES)}")
        self.capacity, self.alpha, self.replace, self.rule, self.eps = capacity, alpha, replace, rule, eps
        self.priority = torch.empty(0, device=self.device)
        self.difficulty = torch.empty(0, device=self.device)
        self.label = torch.empty(0, dtype=torch.long, device=self.device)
        self.age = torch.empty(0, dtype=torch.long, device=self.device)
        self.touched = torch.empty(0, dtype=torch.long, device=self.device)
        self.slot_rows = torch.empty(0, dtype=torch.long)
        self.added = 0          # images ever admitted: the age stamp of the next one

    @property
    def full(self):
        return self.size >= self.capacity

    @property
    def admit_per_add(self):
        """How many new images an ``add`` to a full pool admits."""
        return max(1, math.ceil(self.replace * self.capacity))

    def rows_of(self, index):
        return self.slot_rows[index] if self.file is not None else index

    def _stamps(self, n):
        stamps = torch.arange(self.added, self.added + n, device=self.device)
        self.added += n
        return stamps

    def _new_priority(self, n):
        top = self.priority.max() if len(self.priority) else torch.ones((), device=self.device)
        return top.expand(n).clone()

    def add(self, images, weights, labels, difficulty=None, step=0):
        """Store a float batch in [0, 1] with its predicted classes; ``weights`` rank the images
        when not all of them can be admitted (highest first), ``difficulty`` is kept per image
        (default 1) and ``step`` is the KD step count now. Returns the slots the admitted images
        now occupy."""
        weights, labels = weights.detach().to(self.device).float(), labels.to(self.device)
        difficulty = (torch.ones(len(images), device=self.device) if difficulty is None
                      else difficulty.detach().to(self.device).float())
        free = self.capacity - self.size
        n_append = min(free, len(images))
        if n_append > 0:
            order = torch.argsort(weights, descending=True)[:n_append]
            new_priority = self._new_priority(n_append)
            start = self.size
            batch = quantize(images[order.to(images.device)])
            rows = self._append_rows(batch)
            if rows is not None:
                self.slot_rows = torch.cat([self.slot_rows, rows])
            if self.storage == "memory":
                self._store(batch.to(self.device))
            self.size += len(batch)
            self.priority = torch.cat([self.priority, new_priority])
            self.difficulty = torch.cat([self.difficulty, difficulty[order]])
            self.label = torch.cat([self.label, labels[order]])
            self.age = torch.cat([self.age, self._stamps(n_append)])
            self.touched = torch.cat([self.touched, torch.full((n_append,), step, device=self.device)])
            slots = torch.arange(start, self.size, device=self.device)
        elif free == 0:
            k = min(len(images), self.admit_per_add)
            chosen = torch.argsort(weights, descending=True)[:k]
            victims = self.evict(k)
            batch = quantize(images[chosen.to(images.device)])
            rows = self._append_rows(batch)
            if rows is not None:
                self.slot_rows[victims.cpu()] = rows
            if self.storage == "memory":
                self._data[victims] = batch.to(self.device)
            self.priority[victims] = self._new_priority(k)
            self.difficulty[victims] = difficulty[chosen]
            self.label[victims] = labels[chosen]
            self.age[victims] = self._stamps(k)
            self.touched[victims] = step
            slots = victims
        else:
            slots = torch.empty(0, dtype=torch.long, device=self.device)
        self._restart_pass()
        return slots

    def evict(self, k):
        """The k stored slots that the replacement rule gives up."""
        if self.rule == "priority":
            return torch.argsort(self.priority)[:k]
        if self.rule == "oldest":
            return torch.argsort(self.age)[:k]
        return torch.randperm(self.size, device=self.device)[:k]

    def probabilities(self):
        """Prioritised replay's draw probabilities p_i^alpha / sum_j p_j^alpha."""
        scaled = self.priority.clamp_min(self.eps) ** self.alpha
        return scaled / scaled.sum()

    def importance_weights(self, index, beta, probs=None):
        """(n P(i))^-beta of the draws ``index``, normalised to mean 1 over them (``probs``: the
        distribution drawn from; default: ``probabilities()``).

        Self-normalised, not divided by the largest weight any stored image could get (PER's
        rule): with a skewed P that divisor made every weight of a batch tiny and so shrank the
        student's learning rate (on digits, priority draws learned slower than uniform ones)."""
        probs = self.probabilities() if probs is None else probs
        weights = (self.size * probs[index]) ** (-beta)
        return weights / weights.mean()

    def sample_from(self, probs, batch_size, beta, generator=None):
        """(images in [0, 1], indices, importance weights) of ``batch_size`` draws with
        replacement from ``probs`` (one probability per stored image)."""
        if self.size == 0:
            raise RuntimeError("the synthetic pool is empty: synthesize before sampling")
        index = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        return self.gather(index).float().div_(255), index, self.importance_weights(index, beta, probs)

    def sample_prioritized(self, batch_size, beta, generator=None):
        """``sample_from`` prioritised replay's probabilities."""
        return self.sample_from(self.probabilities(), batch_size, beta, generator)

    def update_priorities(self, index, discrepancy):
        """Refresh the priorities of drawn images with their latest discrepancy (repeats: last wins);
        a non-finite discrepancy keeps the image's old priority (the KD step's guard handles the loss)."""
        fresh = discrepancy.detach().float().abs().to(self.device) + self.eps
        self.priority[index] = torch.where(torch.isfinite(fresh), fresh, self.priority[index])

    def state_dict(self):
        return {**super().state_dict(), **{key: getattr(self, key).cpu() for key in self.SLOT_STATE},
                "added": self.added, "slot_rows": self.slot_rows.clone()}

    def load_state_dict(self, state):
        if state.get("size", 0) > self.capacity:
            raise CheckpointError(f"the checkpoint's buffer holds {state['size']} images, more than "
                                  f"--ssd_buffer_size {self.capacity}; resume with the buffer size it was written with")
        if "difficulty" not in state:
            raise CheckpointError("the checkpoint's SSD-KD buffer was written by an older version (no per-image "
                                  "difficulty); start a new run")
        self.slot_rows = state["slot_rows"].clone() if "slot_rows" in state else torch.empty(0, dtype=torch.long)
        super().load_state_dict(state)
        if "images" in state:
            self.slot_rows = torch.arange(self.size) if self.file is not None else self.slot_rows
        for key in self.SLOT_STATE:
            setattr(self, key, state[key].to(self.device))
        self.added = state["added"]
