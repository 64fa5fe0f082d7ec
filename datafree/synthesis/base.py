"""The synthesizer interface shared by every data-free method, and the pieces they share.

A synthesizer is built from ``(teacher, student, config, device)`` where ``config`` is a
``SynthesisConfig``: the run facts it lists, and the method flags the synthesizer names in its
``flags``; nothing else of the command line reaches a method.
"""
import os
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch

from datafree import distributed
from datafree.datasets.folder import iter_image_batches
from datafree.criterions import kldiv
from datafree.errors import NonFiniteError, UsageError
from datafree.pool import MANIFEST, ImagePool, read_manifest
from datafree.precision import Precision
from datafree.tasks import build_task
from datafree.utils.registry import Registry

from .flags import TERMS, check_declared, method_flag

SYNTHESIZERS = Registry("method")


# The method flags several methods read (each method's own flags are declared in its module).
method_flag("adv", 0.0, "weight of the adversarial term", group=TERMS)
method_flag("bn", 0.0, "weight of the BN-statistics term", group=TERMS)
method_flag("oh", 0.0, "weight of the one-hot (cross-entropy) term", group=TERMS)
method_flag("cmi_init", None, "folder of pre-inverted images added to the pool", group=TERMS)
method_flag("lr_g", 1e-3, "learning rate of the generator")
method_flag("g_steps", 1, "synthesis steps per call (k of Fast-k)")

# Behaviours of the original release that ours changes on purpose, each of which --as_original brings back
# (for side-by-side measurements: docs/differences-from-original.md).
ORIGINAL_BEHAVIOURS = {
    "flips": "synthesis views (Fast, CMI, DeepInversion, SSD-KD, NAYER) flip horizontally whatever the dataset "
             "declares, as the original's kornia augmentation does; KD batches still follow the declaration",
    "deepinv_best": "DeepInversion's call keeps its last iterate, not its lowest-loss step (the original's 'best' "
                    "batch is a view of the pixels being optimised)",
}
method_flag("as_original", "", "comma list of the original release's behaviours to reproduce instead of ours: "
                               + "; ".join(f"{k}: {v}" for k, v in ORIGINAL_BEHAVIOURS.items()),
            metavar="NAME[,NAME]", group=TERMS)


def original_behaviours(value):
    """The set of names in an --as_original value (a comma list; empty: none)."""
    return frozenset(name.strip() for name in (value or "").split(",") if name.strip())


def check_original_behaviours(value, method, cls):
    """Refuse names --as_original does not know, or that ``method`` has no use for (one sentence)."""
    names = original_behaviours(value)
    unknown = sorted(names - set(ORIGINAL_BEHAVIOURS))
    if unknown:
        raise UsageError(f"--as_original {', '.join(unknown)}: unknown; choose from {', '.join(ORIGINAL_BEHAVIOURS)}")
    unused = sorted(names - cls.original_behaviours)
    if unused:
        raise UsageError(f"--as_original {', '.join(unused)} does not apply to method '{method}' (it applies to: "
                         f"{', '.join(sorted(cls.original_behaviours)) or 'nothing'}); drop it")


class KDBatch(NamedTuple):
    """One KD step's batch from ``sample()``: the normalised, augmented ``images`` (N, C, H, W)
    and what the method's ``kd_loss`` needs to weigh them (SSD-KD: the drawn buffer rows and
    their weights; None for the others)."""
    images: torch.Tensor
    draw: Any = None


class SynthesisConfig(SimpleNamespace):
    """What a synthesizer reads: the run facts of ``FACTS`` and the values of its method's flags
    (``cls.flags``, each declared with ``method_flag``). Reading anything else is an error that
    names the omission, so a method's inputs stay visible in its class."""

    FACTS = {
        "num_classes": "classes of the task",
        "nc": "channels of the data's images",
        "img_size": "side of the synthetic images",
        "mean": "per-channel normalisation mean of the data", "std": "per-channel normalisation std",
        "task": "the datafree.tasks object: task-dependent losses, metric and augmentation (None: classification)",
        "train_size": "images in the real training split, where known (SSD-KD's default buffer and passes)",
        "class_names": "the class names in label order, where the dataset registers them (NAYER's label embedding)",
        "teacher": "the teacher's registered name (CMI picks the layers it hooks by it)",
        "batch_size": "KD batch of this process",
        "synthesis_batch_size": "images per synthesis call of this process (None: batch_size)",
        "synthesis_channels": "channels synthesised, repeated to nc (None: nc)",
        "T": "KD temperature",
        "precision": "fp32, fp16 or bf16 (autocast of the synthesis steps)",
        "on_nonfinite": "stop or skip on a non-finite synthesis loss",
        "epochs": "epochs of the run", "warmup": "epochs of synthesis only",
        "kd_steps": "KD steps per round", "ep_steps": "KD steps per epoch (with kd_steps: Fast's rounds)",
        "pool_storage": "memory or disk", "pool_root": "run folder of the pool (None: not persisted)",
        "pool_file": "this process's pool shard in pool_root",
    }

    def __init__(self, flags, **facts):
        unknown = sorted(set(facts) - set(self.FACTS))
        missing = sorted(set(self.FACTS) - set(facts))
        if unknown or missing:
            raise TypeError(f"SynthesisConfig needs exactly the facts of SynthesisConfig.FACTS "
                            f"(unknown: {', '.join(unknown) or '-'}; missing: {', '.join(missing) or '-'})")
        super().__init__(**facts, **flags)

    @classmethod
    def for_method(cls, method, values, **facts):
        """The config of ``method`` (a synthesizer class): its flags' values from ``values`` (a
        namespace holding every method flag, e.g. the parsed command line), and ``facts``."""
        return cls({name: getattr(values, name) for name in sorted(method.flags)}, **facts)

    def __getattr__(self, name):    # only called for a name that is not set
        raise AttributeError(f"the synthesis config has no '{name}': a method reads the facts of "
                             f"SynthesisConfig.FACTS and the flags it names in its `flags`")


def register_synthesizer(name):
    """Class decorator: make a synthesizer available as ``--method name``; every flag in its
    ``flags`` must be declared (``method_flag``)."""
    def add(cls):
        check_declared(name, cls.flags)
        cls.method = name
        return SYNTHESIZERS.register(name, cls)
    return add


def require_task_support(method, task):
    """Stop with one sentence if ``method`` cannot work on ``task`` (a datafree.tasks object)."""
    if task.name not in SYNTHESIZERS.lookup(method).tasks:
        able = sorted(name for name, cls in SYNTHESIZERS.items() if task.name in cls.tasks)
        raise UsageError(f"method '{method}' does not support {task.name}; choose one of: {', '.join(able)}")


class BaseSynthesizer:
    """One data-free method.

    ``flags``: the method-specific command-line flags this method reads; datafree_kd.py
    refuses other method flags set away from their defaults.
    ``sampling_is_synthesis``: whether the time spent in ``sample()`` is synthesis time
    (generators sampled during KD) rather than reading a pool.
    ``tasks``: the task names (datafree.tasks) the method supports.
    ``reads_teacher_features``: whether synthesis calls ``teacher(x, return_features=True)``.
    """

    method = None
    flags = frozenset()
    sampling_is_synthesis = False
    reads_teacher_features = False
    # Whether the method keeps every rank consistent under torchrun (shared learned state
    # averaged over the ranks, per-rank state sharded); datafree_kd.py refuses the others.
    distributed_ready = False
    tasks = frozenset({"classification"})
    # Whether --precision auto may pick bfloat16 for this method: False where bf16 measurably cost accuracy
    # against fp32 on Fashion-MNIST (docs/fashion-mnist.md).
    bf16_in_auto = True
    # The names of ORIGINAL_BEHAVIOURS this method can reproduce with --as_original.
    original_behaviours = frozenset()

    @classmethod
    def check_args(cls, args):
        """Refuse impossible values of the method's own flags (a UsageError), before anything is built."""

    def __init__(self, teacher, student, config, device):
        self.teacher, self.student, self.config, self.device = teacher, student, config, device
        self.task = getattr(config, "task", None) or build_task("classification", config.num_classes)
        self.synthesis_channels = getattr(config, "synthesis_channels", None) or config.nc
        self.batch_size = config.synthesis_batch_size or config.batch_size
        self.sample_batch_size = config.batch_size
        self.precision = Precision(device, getattr(config, "precision", None) or "fp32",
                                   on_nonfinite=getattr(config, "on_nonfinite", None) or "stop", loop="synthesis")
        self.calls = 0

    def synthesize(self):
        """One round of synthesis. Returns at least ``{'images': (N, C, H, W) in [0, 1]}``
        and the loss terms (floats) for logging."""
        raise NotImplementedError

    def sample(self):
        """One KDBatch: a normalised, augmented batch for a KD step."""
        raise NotImplementedError

    def follow_student_lr(self, scale):
        """Called when each epoch starts with the student's learning rate over its initial one (1.0 before
        the schedule moves). A method whose synthesis learning rate follows the student's schedule applies
        ``scale`` here; the others ignore it. Set from the student's optimiser every epoch, so a resumed run
        gets the same rate without saving any state of its own."""

    def epoch_plan(self, epoch):
        """The rounds of ``epoch`` as a list of (synthesis calls, KD steps), run in order (the KD
        steps are skipped in warm-up epochs). Fast's schedule unless a method says otherwise:
        ep_steps // kd_steps rounds of one call and kd_steps steps."""
        c = self.config
        return [(1, c.kd_steps)] * (c.ep_steps // c.kd_steps)

    def kd_loss(self, batch, student_logits, teacher_logits):
        """The KD objective on ``batch`` (the KDBatch the logits were computed on): KL at temperature T
        unless a method says otherwise. Pure: what a step teaches the synthesizer goes to ``after_step``."""
        return kldiv(student_logits, teacher_logits, T=self.config.T)

    def after_step(self, batch, student_logits, teacher_logits):
        """Called after each KD step that was taken (never after one skipped as non-finite), with its
        batch and its (detached) outputs: where a method learns from its KD steps (SSD-KD's buffer)."""

    def state_dict(self):
        """Everything needed to resume (tensors and plain containers only)."""
        return {"calls": self.calls, "precision": self.precision.state_dict()}

    def load_state_dict(self, state):
        self.calls = state["calls"]
        self.precision.load_state_dict(state["precision"])


def pool_options(config):
    """Where a synthesizer's pool keeps its images (datafree/pool.py): ``pool_storage`` (memory
    or disk), and the run folder and file of this process's shard (none: not persisted)."""
    return {"storage": getattr(config, "pool_storage", None) or "memory",
            "root": getattr(config, "pool_root", None), "file": getattr(config, "pool_file", None)}


class PoolSynthesizer(BaseSynthesizer):
    """Methods that keep each synthesised batch in an ImagePool and train on augmented draws."""

    original_behaviours = frozenset({"flips"})

    def __init__(self, teacher, student, config, device):
        super().__init__(teacher, student, config, device)
        self.aug = self.task.synthesis_augmentation(config.img_size, config.mean, config.std).to(device)
        # the views the inversion loss sees; KD batches (self.aug) always follow the dataset's flip declaration
        self.synthesis_aug = self.aug
        if "flips" in original_behaviours(getattr(config, "as_original", "")):
            self.synthesis_aug = self.task.synthesis_augmentation(config.img_size, config.mean, config.std,
                                                                  hflip=True).to(device)
        self.pool = ImagePool(device, **pool_options(config))

    def seed_pool(self, folder):
        """Add pre-made images (--cmi_init) to the pool of a new run, each process its share
        (every world_size-th image): a folder of image files, resized to the synthesis size, or
        a pool folder with a pool.json manifest (make_init_pool.py), whose rows are copied."""
        rank, world = distributed.get_rank(), distributed.get_world_size()
        if os.path.isfile(os.path.join(folder, MANIFEST)):
            sources = read_manifest(folder)
            shape = tuple(sources[0][1])
            expected = (self.config.nc, self.config.img_size, self.config.img_size)
            if shape != expected:
                raise UsageError(f"the pool in {folder} holds images of shape {shape}, but this run synthesises "
                                 f"{expected}; make the initial pool at the run's image size")
            total = sum(rows for _, _, rows in sources)
            self.pool.adopt(sources, range(rank, total, world))
        else:
            for images in iter_image_batches(folder, self.config.img_size, start=rank, step=world):
                self.pool.add(images)
        self.pool.sync()   # durable now, so that the first epoch's checkpoint only waits for its own images

    def sample(self):
        with torch.no_grad():
            return KDBatch(self.aug(self.pool.sample(self.sample_batch_size)))

    def state_dict(self):
        return {**super().state_dict(), "pool": self.pool.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.pool.load_state_dict(state["pool"])


class BestBatch:
    """The lowest-loss step of an optimisation, tracked on the device (no host sync per step).

    A step whose loss is not finite is never the best; ``values`` stops the run (NonFiniteError)
    when no step was finite, so that no NaN batch reaches the pool."""

    def __init__(self, device):
        self.loss = torch.full((), float("inf"), device=device)
        self._values = None
        self._checked = False

    @torch.no_grad()
    def update(self, loss, **values):
        """Keep copies of ``values`` (tensors) if ``loss`` is finite and the lowest so far."""
        loss = loss.detach().float()
        better = torch.isfinite(loss) & (loss < self.loss)
        self.loss = torch.where(better, loss, self.loss)
        values = {k: v.detach().float() for k, v in values.items()}
        if self._values is None:  # a copy: the tensors may keep changing in place (DeepInversion's pixels)
            self._values = {k: v.clone() for k, v in values.items()}
        else:
            self._values = {k: torch.where(better, v, self._values[k]) for k, v in values.items()}
        self._checked = False

    @property
    def values(self):
        """The kept tensors of the best step (one host read, to check that a step was finite)."""
        if not self._checked:
            if self._values is None or not bool(torch.isfinite(self.loss)):
                raise NonFiniteError("no step of the synthesis call had a finite loss, so it made no batch for the pool")
            self._checked = True
        return self._values

    def report(self):
        """Loss terms of the best step as floats (one host sync), prefixed 'loss'."""
        return loss_report(self.loss, {k[5:]: v for k, v in self.values.items() if k.startswith("term_")})


def loss_report(loss, terms):
    """``{'loss': float, 'loss_<term>': float, ...}`` from device scalars, read in one host sync."""
    values = torch.stack([torch.as_tensor(v, device=loss.device).detach().float()
                          for v in (loss, *terms.values())]).tolist()
    return dict(zip(["loss", *(f"loss_{k}" for k in terms)], values))
