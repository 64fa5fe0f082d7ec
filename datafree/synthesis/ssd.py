"""SSD-KD (Liu et al., CVPR 2024, "Small Scale Data-Free Knowledge Distillation"), built from
the paper's description: its authors released no code.

Synthesis is fast_meta's (a meta-learned generator, k steps per batch), but the synthetic set
is a small fixed-size replay buffer (``PrioritizedPool``, ssd_buffer.py; by default 10% of the real
training set's size, or of the images Fast would keep where that is fewer), and the run's work follows
the buffer, not the training set:

- the first calls fill the buffer; from then on a synthesis call only refreshes it, with as
  many new images as it replaces (``--ssd_replace`` of the buffer, at most one batch), once per
  epoch, ``--ssd_refresh_share`` of the buffer per epoch, or before every
  ``--ssd_refresh_every``-th KD step (``epoch_plan``);
- an epoch has Fast's count of KD steps (``--ep_steps``; or as many as ``--ssd_kd_passes``
  passes over the buffer need), on batches of a quarter of Fast's (``--ssd_kd_batch``): the
  student keeps Fast's number of updates however small the buffer, at a quarter of the images;
- the modulating function phi balances samples by *diversity* (a sample whose teacher class is
  frequent in the buffer weighs less) and *difficulty* (a focal factor ``(1 - teacher
  confidence)^gamma``). It weighs the per-sample inversion terms (one-hot and adversarial; the
  BN term is a batch statistic), ranks the new images of a call, and weighs the per-sample KD
  loss. Each KD step refreshes the difficulty, class and priority of the images it drew from
  its own teacher and student outputs; the diversity follows the buffer's current class counts;
- KD batches are drawn uniformly by default (``--ssd_sampling``: the paper's learned policy was below
  uniform draws on Fashion-MNIST), or by priority sampling with importance-sampling weights (exponent
  beta, rising linearly to 1 over the KD steps) that correct the bias of the draws. The sampling
  distribution can be a learned policy (``SamplingPolicy``, ssd_policy.py, the paper's reinforcement
  learning): a softmax over features of each stored image, updated by REINFORCE, the reward of a draw
  being the student's progress on that image per unit of its KD weight (its KL before the KD step minus
  after it, measured on the same augmented view).

``sample()`` returns the drawn buffer rows and their weights with the images (a KDBatch); ``kd_loss``
weighs the batch it is given and changes nothing; ``after_step`` (called only for a KD step that was
taken) refreshes the buffer from the step's outputs. Every choice beyond the paper is a flag;
docs/ssd_kd.md says, line by line, what is the paper's and what is ours.
"""
import contextlib
import math

import torch
import torch.nn.functional as F

from datafree import distributed
from datafree.criterions import kldiv_per_sample
from datafree.errors import UsageError

from .base import KDBatch, pool_options, register_synthesizer
from .fast import FastMetaSynthesizer
from .flags import method_flag
from .ssd_buffer import REPLACE_RULES, PrioritizedPool
from .ssd_policy import SamplingPolicy, draw_rewards, importance_beta

BUFFER_SHARE = 0.1   # the paper's buffer: 10% of the original training set
KD_BATCH_DIVISOR = 4   # default KD batch: a quarter of --batch_size (what makes SSD-KD's KD cheaper than Fast's)
SAMPLING = ("policy", "priority", "uniform")
REWARDS = ("progress", "relative")
POLICY_INITS = ("priority", "uniform")

SSD = "SSD-KD (--method ssd; docs/ssd_kd.md: what is from the paper and what is ours)"
method_flag("ssd_buffer_size", 0, "images the replay buffer holds (default 0: 10%% of the dataset's training set, "
                                  "or of the images Fast would synthesise over the run where that is fewer); under "
                                  "torchrun the total, each process holding its share", group=SSD)
method_flag("ssd_kd_batch", 0, "images per KD batch drawn from the buffer (default 0: a quarter of --batch_size, "
                               "at least one)", group=SSD)
method_flag("ssd_kd_passes", 0.0, "passes over the buffer per epoch, which set its KD steps (default 0: --ep_steps "
                                  "KD steps an epoch, Fast's count, whatever the buffer's size)", group=SSD)
method_flag("ssd_refresh_every", 0, "once the buffer is full, a synthesis call before every K-th KD step (default 0: "
                                    "by --ssd_refresh_share)", metavar="K", group=SSD)
method_flag("ssd_refresh_share", 0.0, "once the buffer is full, the share of it renewed per epoch by synthesis calls "
                                      "of --ssd_replace each (default 0: one call per epoch)", group=SSD)
method_flag("ssd_sampling", "uniform", "how KD batches are drawn from the buffer: a learned policy (REINFORCE, "
                                       "rewarded by the student's progress on its draws), fixed priorities "
                                       "(prioritised replay), or uniformly (the default: on Fashion-MNIST, seeds 0-2, "
                                       "the learned policy did not beat it; docs/ssd_kd.md)", choices=SAMPLING,
            group=SSD)
method_flag("ssd_policy_lr", 0.01, "learning rate of the sampling policy (--ssd_sampling policy)", group=SSD)
method_flag("ssd_policy_init", "uniform", "where the learned policy starts: prioritised replay's probabilities "
                                           "(priority^alpha) or uniform draws", choices=POLICY_INITS, group=SSD)
method_flag("ssd_reward", "relative", "the policy's reward for a draw: the student's progress on it, KL before its KD "
                                      "step minus after (progress), or that over KL before (relative: the share of the "
                                      "discrepancy removed, so images the student cannot fit do not earn the most)",
            choices=REWARDS, group=SSD)
method_flag("ssd_phi", 1, "1: the modulating function phi weighs inversion and KD; 0: every sample weighs 1",
            choices=(0, 1), group=SSD)
method_flag("ssd_gamma", 0.5, "difficulty exponent of the modulating function: (1 - teacher confidence)^gamma",
            group=SSD)
method_flag("ssd_beta", 0.4, "importance-sampling exponent at the start; it rises linearly to 1 by the last KD step",
            group=SSD)
method_flag("ssd_alpha", 0.6, "priority exponent: P(i) proportional to priority_i^alpha (--ssd_sampling priority), "
                              "and the policy's starting point", group=SSD)
method_flag("ssd_min_weight", 0.5, "floor of the modulating weight phi (mean 1 before the floor and the cap): with a "
                                   "confident teacher most images' focal factor is near 0, and without a floor they "
                                   "drop out of the KD loss", group=SSD)
method_flag("ssd_max_weight", 2.0, "cap of the modulating weight phi (mean 1 over a batch) of one sample", group=SSD)
method_flag("ssd_replace", 0.25, "share of a full buffer that one refresh call synthesises and replaces (at most one "
                                 "synthesis batch)", group=SSD)
method_flag("ssd_replace_rule", "priority", "which stored images a full buffer gives up: lowest priority, oldest, or "
                                            "random", choices=REPLACE_RULES, group=SSD)


def focal_difficulty(teacher_logits, gamma):
    """(difficulty, predicted class) per sample: difficulty = (1 - max softmax)^gamma."""
    probs = F.softmax(teacher_logits.detach().float(), dim=1)
    confidence, predicted = probs.max(dim=1)
    return (1 - confidence).clamp_min(1e-6) ** gamma, predicted


def count_classes(labels, num_classes):
    """How many of ``labels`` fall in each class: shape (num_classes,). A scatter-add, where torch.bincount
    reads the labels' maximum on the host first (a sync on a GPU, every KD step here)."""
    return torch.zeros(num_classes, dtype=torch.long, device=labels.device).scatter_add_(0, labels,
                                                                                        torch.ones_like(labels))


def class_diversity(classes, class_counts, num_classes):
    """(1 / K) / freq(c_i): freq is the Laplace-smoothed share of class c_i among ``class_counts``."""
    counts = class_counts.float()
    freq = (counts + 1) / (counts.sum() + num_classes)
    return (1.0 / num_classes) / freq[classes]


def modulating_weights(teacher_logits, class_counts, gamma, max_weight=None, min_weight=0.0):
    """phi of a new batch = diversity x difficulty, normalised to mean 1 over the batch and capped
    at ``max_weight``: shape (N,). The class shares count the buffer (``class_counts``) and this batch.

    The cap matters: with a confident teacher the focal factor spans orders of magnitude, and
    uncapped the few unsure samples of a batch would carry all of its weight (measured on digits:
    phi from 1e-8 to 19, training unstable).
    """
    difficulty, predicted = focal_difficulty(teacher_logits, gamma)
    num_classes = teacher_logits.shape[1]
    counts = class_counts.float() + count_classes(predicted, num_classes).float()
    return normalised_phi(predicted, counts, difficulty, num_classes, max_weight, min_weight)


def buffer_weights(labels, difficulty, num_classes, max_weight=None, min_weight=0.0):
    """phi of every stored image = diversity (from the buffer's class counts now) x its latest
    difficulty, normalised to mean 1 over the buffer and kept within [``min_weight``, ``max_weight``]
    (a floor keeps the images a confident teacher finds easy in the KD loss)."""
    return normalised_phi(labels, count_classes(labels, num_classes), difficulty, num_classes,
                          max_weight, min_weight)


def normalised_phi(classes, class_counts, difficulty, num_classes, max_weight, min_weight):
    """diversity x difficulty, normalised to mean 1 over the images given, kept within the bounds."""
    phi = class_diversity(classes, class_counts, num_classes) * difficulty
    phi = phi / phi.mean()
    return phi.clamp(min=min_weight, max=max_weight)


def fast_images(config):
    """Images Fast (one call per round, ``synthesis_batch_size`` each) would synthesise over the run in one process."""
    return config.epochs * (config.ep_steps // config.kd_steps) * (config.synthesis_batch_size or config.batch_size)


def default_buffer_size(train_size, synthesised):
    """The buffer without --ssd_buffer_size: 10% of the training set, the paper's, where Fast's pool would reach that
    size (as on CIFAR: 220 epochs of 256 images, 56k, against 50k); 10% of Fast's pool where it would stay smaller (a
    short run), so the buffer stays a tenth of what Fast keeps. 0 when the training-set size is unknown."""
    if not train_size:
        return 0
    return math.ceil(BUFFER_SHARE * min(train_size, synthesised))


def kd_steps_per_epoch(passes, capacity, batch_size):
    """KD steps of ``passes`` passes over a buffer of ``capacity`` images, at least one."""
    return max(1, round(passes * capacity / batch_size))


def refresh_calls(kd_epoch, share, capacity, per_call):
    """Refresh calls in KD epoch ``kd_epoch`` (0-based) when ``share`` of the buffer is renewed per
    epoch, ``per_call`` images a call: floor((e + 1) x images) - floor(e x images) calls, so a
    share below one call per epoch spreads the calls over the epochs."""
    per_epoch = share * capacity / per_call
    return math.floor((kd_epoch + 1) * per_epoch + 1e-9) - math.floor(kd_epoch * per_epoch + 1e-9)


def split_steps(steps, parts):
    """``steps`` KD steps as ``parts`` rounds of near-equal size (the larger ones first)."""
    base, extra = divmod(steps, parts)
    return [base + (i < extra) for i in range(parts)]


@contextlib.contextmanager
def frozen_buffers(model):
    """Run a training-mode forward without leaving a trace: BN running statistics (and every
    other buffer) are restored afterwards."""
    saved = [(buf, buf.detach().clone()) for buf in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


@register_synthesizer("ssd")
class SSDSynthesizer(FastMetaSynthesizer):
    flags = (FastMetaSynthesizer.flags - {"cmi_init"}) | {
        "ssd_buffer_size", "ssd_gamma", "ssd_beta", "ssd_alpha", "ssd_replace", "ssd_replace_rule", "ssd_max_weight",
        "ssd_min_weight", "ssd_sampling", "ssd_policy_lr", "ssd_policy_init", "ssd_reward", "ssd_phi", "ssd_kd_passes",
        "ssd_kd_batch", "ssd_refresh_every", "ssd_refresh_share"}
    distributed_ready = True   # each process its own buffer and policy; the generator is shared (fast_meta)
    tasks = frozenset({"classification"})   # per-sample priorities and class counts need one class per image
    pool_needs_logits = True

    @classmethod
    def check_args(cls, args):
        if args.ssd_sampling not in SAMPLING:
            raise UsageError(f"--ssd_sampling must be one of {', '.join(SAMPLING)}, not '{args.ssd_sampling}'")
        if args.ssd_policy_init not in POLICY_INITS:
            raise UsageError(f"--ssd_policy_init must be one of {', '.join(POLICY_INITS)}, not '{args.ssd_policy_init}'")
        if args.ssd_reward not in REWARDS:
            raise UsageError(f"--ssd_reward must be one of {', '.join(REWARDS)}, not '{args.ssd_reward}'")
        if not 0 < args.ssd_replace <= 1:
            raise UsageError(f"--ssd_replace ({args.ssd_replace}) is the share of the buffer a refresh call renews: "
                             f"give a value in (0, 1]")
        if min(args.ssd_refresh_every, args.ssd_refresh_share, args.ssd_kd_passes, args.ssd_kd_batch) < 0:
            raise UsageError("--ssd_refresh_every, --ssd_refresh_share, --ssd_kd_passes and --ssd_kd_batch cannot be "
                             "negative")
        if args.ssd_refresh_every and args.ssd_refresh_share:
            raise UsageError("--ssd_refresh_every (a call every K KD steps) and --ssd_refresh_share (a share of the "
                             "buffer per epoch) are two ways to set one schedule; give one of them")

    def __init__(self, teacher, student, config, device):
        super().__init__(teacher, student, config, device)
        c = config
        world = distributed.get_world_size()
        total = c.ssd_buffer_size or default_buffer_size(c.train_size, fast_images(c) * world)
        if total < 1:
            raise UsageError("SSD-KD needs --ssd_buffer_size (the training-set size of this dataset is unknown)")
        if total < world:
            raise UsageError(f"--ssd_buffer_size {total} cannot be shared by {world} processes; give at least {world}")
        capacity = math.ceil(total / world)   # every process the same size, so every rank plans the same epochs
        self.pool.close()
        self.pool = PrioritizedPool(device, capacity, alpha=c.ssd_alpha, replace=c.ssd_replace,
                                    rule=c.ssd_replace_rule, **pool_options(c))
        self.full_batch = self.batch_size
        self.sample_batch_size = (distributed.per_process(c.ssd_kd_batch) if c.ssd_kd_batch
                                  else max(1, c.batch_size // KD_BATCH_DIVISOR))
        self.steps_per_epoch = (kd_steps_per_epoch(c.ssd_kd_passes, capacity, self.sample_batch_size)
                                if c.ssd_kd_passes else c.ep_steps)
        self.total_kd_steps = self.steps_per_epoch * (c.epochs - c.warmup)
        # the policy starts as prioritised replay (theta = (alpha, 0, 0)) or as uniform draws (theta = 0)
        start = c.ssd_alpha if c.ssd_policy_init == "priority" else 0.0
        self.policy = SamplingPolicy(start, c.ssd_policy_lr, device) if c.ssd_sampling == "policy" else None
        self.steps_done = 0     # KD steps drawn so far (the clock of staleness, beta and --ssd_refresh_every)
        self.probe = None       # the last KD step's batch, until the next sample() measures its progress

    # ------------------------------------------------------------------ schedule
    def epoch_plan(self, epoch):
        """Warm-up epochs: Fast's calls (no KD). Then: calls that fill the buffer, or the refresh
        calls of the schedule, and ``steps_per_epoch`` KD steps."""
        c = self.config
        if epoch < c.warmup:
            return super().epoch_plan(epoch)
        steps = self.steps_per_epoch
        if not self.pool.full:
            return [(math.ceil((self.pool.capacity - len(self.pool)) / self.full_batch), steps)]
        if c.ssd_refresh_every:
            due = [g for g in range(self.steps_done, self.steps_done + steps) if g > 0 and g % c.ssd_refresh_every == 0]
            bounds = [self.steps_done, *due, self.steps_done + steps]
            return [(int(i > 0), b - a) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        per_call = min(self.full_batch, self.pool.admit_per_add)
        share = c.ssd_refresh_share or per_call / self.pool.capacity      # default: one call per epoch
        calls = refresh_calls(epoch - c.warmup, share, self.pool.capacity, per_call)
        if calls == 0:
            return [(0, steps)]
        return [(1, part) for part in split_steps(steps, calls)]

    def synthesize(self):
        """A full batch while the buffer fills; once full, only the images a refresh admits."""
        self.batch_size = self.full_batch if not self.pool.full else min(self.full_batch, self.pool.admit_per_add)
        return super().synthesize()

    # ------------------------------------------------------------- modulation
    def class_counts(self):
        return count_classes(self.pool.label, self.config.num_classes)

    def sample_weights(self, teacher_logits):
        if not self.config.ssd_phi:
            return None
        return modulating_weights(teacher_logits, self.class_counts(), self.config.ssd_gamma,
                                  self.config.ssd_max_weight, self.config.ssd_min_weight)

    def buffer_phi(self):
        if not self.config.ssd_phi:
            return torch.ones(len(self.pool), device=self.device)
        return buffer_weights(self.pool.label, self.pool.difficulty, self.config.num_classes,
                              self.config.ssd_max_weight, self.config.ssd_min_weight)

    @torch.no_grad()
    def add_to_pool(self, images, teacher_logits):
        difficulty, predicted = focal_difficulty(teacher_logits, self.config.ssd_gamma)
        order = self.sample_weights(teacher_logits)     # which images a full buffer admits first
        self.pool.add(images, torch.ones(len(images)) if order is None else order, predicted, difficulty,
                      step=self.steps_done)

    # --------------------------------------------------------------- sampling
    def sampling_probabilities(self, phi):
        """(probabilities over the stored images, policy features or None)."""
        mode = self.config.ssd_sampling
        if mode == "uniform":
            return torch.full((len(self.pool),), 1.0 / len(self.pool), device=self.device), None
        if mode == "priority":
            return self.pool.probabilities(), None
        features = self.policy.features(self.pool.priority.clamp_min(self.pool.eps), phi,
                                        self.steps_done - self.pool.touched)
        return self.policy.probabilities(features), features

    def sample(self):
        with torch.no_grad():
            self.learn_from_last_step()
            phi = self.buffer_phi()
            probs, features = self.sampling_probabilities(phi)
            beta = importance_beta(self.config.ssd_beta, self.steps_done, self.total_kd_steps)
            images, index, is_weights = self.pool.sample_from(probs, self.sample_batch_size, beta)
            inputs = self.aug(images)
            policy_input = None if features is None else (features[index], probs @ features)
            # phi / its buffer mean: phi moves weight between images without shrinking the KD loss
            # (the floor and the cap left a mean of 0.58 on digits, a lower learning rate in effect)
            return KDBatch(inputs, {"index": index, "weights": is_weights * phi[index] / phi.mean(),
                                    "policy": policy_input})

    def kd_loss(self, batch, student_logits, teacher_logits):
        """The KL of each drawn image, weighed by its importance weight and phi (from ``sample``)."""
        if batch.draw is None:
            raise ValueError("SSD-KD's kd_loss weighs a batch of its own sample(), which carries the drawn rows")
        per_sample = kldiv_per_sample(student_logits, teacher_logits, T=self.config.T)
        return (batch.draw["weights"].to(per_sample.dtype) * per_sample).mean()

    @torch.no_grad()
    def after_step(self, batch, student_logits, teacher_logits):
        """The step's own outputs refresh what the buffer knows of the images it drew (priority: their
        KL; difficulty and class: the teacher's), and its batch is kept for the policy's reward."""
        drawn = batch.draw
        index = drawn["index"]
        per_sample = kldiv_per_sample(student_logits, teacher_logits, T=self.config.T)
        self.pool.update_priorities(index, per_sample)
        difficulty, predicted = focal_difficulty(teacher_logits, self.config.ssd_gamma)
        self.pool.difficulty[index] = difficulty
        self.pool.label[index] = predicted
        self.pool.touched[index] = self.steps_done
        if drawn["policy"] is not None:
            self.probe = {"inputs": batch.images, "teacher_logits": teacher_logits.detach(),
                          "before": per_sample, "weights": drawn["weights"].detach().float(),
                          "policy": drawn["policy"]}
        self.steps_done += 1

    @torch.no_grad()
    def learn_from_last_step(self):
        """The policy's update for the last KD step: its draws' KL before the step against after it."""
        probe, self.probe = self.probe, None
        if probe is None:
            return None
        was_training = self.student.training
        self.student.train()   # the same batch-statistics forward as the KD step, without touching BN's buffers
        with frozen_buffers(self.student), self.precision.autocast():
            after_logits = self.student(probe["inputs"])
        self.student.train(was_training)
        after = kldiv_per_sample(after_logits.float(), probe["teacher_logits"].float(), T=self.config.T)
        drawn_features, mean_features = probe["policy"]
        return self.policy.update(drawn_features, mean_features,
                                  draw_rewards(probe["before"], after, self.config.ssd_reward, probe["weights"]))

    # ------------------------------------------------------------- persistence
    def state_dict(self):
        # the last KD step's batch goes along, so that a resumed run rewards the policy for it as an
        # uninterrupted one does
        probe = None if self.probe is None else {
            "inputs": self.probe["inputs"].cpu(), "teacher_logits": self.probe["teacher_logits"].cpu(),
            "before": self.probe["before"].cpu(), "weights": self.probe["weights"].cpu(),
            "policy": tuple(t.cpu() for t in self.probe["policy"])}
        return {**super().state_dict(), "steps_done": self.steps_done,
                "policy": None if self.policy is None else self.policy.state_dict(), "probe": probe}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.steps_done = state.get("steps_done", 0)
        if self.policy is not None and state.get("policy") is not None:
            self.policy.load_state_dict(state["policy"])
        probe = state.get("probe") if self.policy is not None else None
        self.probe = None if probe is None else {
            "inputs": probe["inputs"].to(self.device), "teacher_logits": probe["teacher_logits"].to(self.device),
            "before": probe["before"].to(self.device), "policy": tuple(t.to(self.device) for t in probe["policy"]),
            "weights": probe["weights"].to(self.device) if "weights" in probe
            else torch.ones_like(probe["before"])}
