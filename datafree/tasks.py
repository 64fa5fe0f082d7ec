"""What a task (image classification, semantic segmentation) means to training and synthesis.

The scripts and synthesizers never branch on the task: they ask its object for (the KD loss, KL at
temperature T averaged over samples or over every pixel, needs no task: ``criterions.kldiv``)

- ``supervised_loss(logits, targets)``: cross-entropy (with the ignore index for segmentation);
- ``adversarial_loss(student_logits, teacher_logits, weights=None)``: Fast DFKD's L_adv, minus
  the KL on the samples (pixels) where student and teacher agree on the top-1 class;
- ``inversion_targets(n, device)`` and ``one_hot_loss(teacher_logits, targets, weights=None)``: the "oh" term
  of synthesis: cross-entropy to random class labels for classification; for segmentation,
  where no label map can be drawn, cross-entropy to the teacher's own per-pixel argmax;
- ``synthesis_augmentation(img_size, mean, std)``: device-side augmentation of synthetic images,
  with a horizontal flip only where the dataset declares flips valid (``hflip``);
- ``make_generator(nz, ngf, img_size, nc, out_channels)``: the generator architecture for synthesis;
- ``metric()``: a streaming metric whose state is one tensor (``reduce(fn)`` sums it across
  processes, e.g. ``fn = torch.distributed.all_reduce``);
- ``primary`` / ``label`` / ``describe(stats)`` / ``scalars(stats)``: which number picks the
  best checkpoint and how results are logged.

A dataset is registered with its task (``registry.register_dataset(..., task='segmentation',
ignore_index=255)``) and ``registry.get_task(dataset)`` builds the object.
"""
import torch
import torch.nn.functional as F
from datafree.augment import crop_flip_normalize, resized_crop_flip_normalize
from datafree.criterions import adversarial_kl, cross_entropy
from datafree.models.generator import DeepGenerator, Generator
from datafree.utils.registry import Registry

TASKS = Registry("task")


class Metric:
    """A streaming metric: ``update`` per batch (on the device, no host sync), ``compute`` at the end.

    All accumulated counts live in the one tensor ``self.state``, so several processes can
    sum them with ``reduce(fn)`` before ``compute``.
    """

    def __init__(self, size, device=None):
        self.state = torch.zeros(size, dtype=torch.float64, device=device)

    def reduce(self, fn):
        """Sum the state across processes: ``fn(tensor)`` reduces in place or returns the sum."""
        out = fn(self.state)
        if isinstance(out, torch.Tensor):
            self.state = out
        return self

    def _to(self, device):
        if self.state.device != device:
            self.state = self.state.to(device)


class AccuracyMetric(Metric):
    """Top-1 / top-5 accuracy (%) and mean cross-entropy; state = [correct1, correct5, loss_sum, count]."""

    def __init__(self, device=None):
        super().__init__(4, device)

    @torch.no_grad()
    def update(self, logits, targets):
        self._to(logits.device)
        maxk = min(5, logits.shape[1])
        hits = logits.topk(maxk, dim=1).indices.eq(targets.view(-1, 1))
        batch = torch.stack([hits[:, :1].any(dim=1).sum().double(), hits.any(dim=1).sum().double(),
                             F.cross_entropy(logits.float(), targets, reduction="sum").double(),
                             torch.tensor(float(targets.numel()), dtype=torch.float64, device=logits.device)])
        self.state += batch

    def compute(self):
        correct1, correct5, loss_sum, count = self.state.tolist()
        count = max(count, 1.0)
        return {"acc1": 100.0 * correct1 / count, "acc5": 100.0 * correct5 / count, "loss": loss_sum / count}


class ConfusionMatrixMetric(Metric):
    """Segmentation metrics from a confusion matrix (rows: ground truth, columns: prediction).

    Pixels whose target is ``ignore_index`` are left out of everything. IoU of class c is
    cm[c, c] / (row_c + col_c - cm[c, c]); the mean IoU averages over the classes present in
    the ground truth or the prediction (a class absent from both has no IoU and is skipped).
    Pixel accuracy is trace / total. Everything is reported in %. The state holds the
    flattened matrix and the summed cross-entropy of the counted pixels.
    """

    def __init__(self, num_classes, ignore_index=255, device=None):
        super().__init__(num_classes * num_classes + 1, device)
        self.num_classes, self.ignore_index = num_classes, ignore_index

    @property
    def confusion_matrix(self):
        n = self.num_classes
        return self.state[:n * n].view(n, n)

    @torch.no_grad()
    def update(self, logits, targets):
        self._to(logits.device)
        n = self.num_classes
        logits = match_size(logits, targets)
        loss_sum = F.cross_entropy(logits.float(), targets, ignore_index=self.ignore_index, reduction="sum")
        preds, targets = logits.argmax(dim=1).flatten(), targets.flatten()
        keep = targets != self.ignore_index
        counts = torch.bincount(targets[keep] * n + preds[keep], minlength=n * n)
        self.state[:n * n] += counts.double()
        self.state[-1] += loss_sum.double()

    def compute(self):
        cm = self.confusion_matrix.cpu()
        tp = cm.diag()
        union = cm.sum(dim=0) + cm.sum(dim=1) - tp
        present = union > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        total = cm.sum().item()
        return {"miou": 100.0 * iou[present].mean().item() if present.any() else 0.0,
                "pixel_acc": 100.0 * tp.sum().item() / max(total, 1.0),
                "iou": [100.0 * v for v in iou.tolist()],
                "loss": self.state[-1].item() / max(total, 1.0)}


def match_size(logits, targets):
    """Segmentation logits upsampled (bilinear) to the size of the target maps, if they differ."""
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return logits


class Task:
    name = None
    primary = None    # key of compute()'s dict that picks the best checkpoint
    label = None      # how the primary number is named in logs

    def __init__(self, num_classes, hflip=True):
        self.num_classes = num_classes
        # Whether the data is mirror-symmetric (the dataset's declaration, registry.register_dataset):
        # every augmentation of synthetic images flips horizontally only if it is.
        self.hflip = hflip

    def prepare(self, logits, targets):
        """Bring a model's output to the targets' layout (identity unless a task needs more)."""
        return logits

    def supervised_loss(self, logits, targets):
        return cross_entropy(self.prepare(logits, targets), targets)

    def adversarial_loss(self, student_logits, teacher_logits, weights=None):
        """``weights`` (N,): optional per-sample weights (SSD-KD's modulation)."""
        return adversarial_kl(student_logits, teacher_logits, weights)

    def metric(self, device=None):
        raise NotImplementedError

    def inversion_targets(self, n, device, sort=False):
        raise NotImplementedError

    def one_hot_loss(self, teacher_logits, targets, weights=None):
        raise NotImplementedError

    def synthesis_augmentation(self, img_size, mean, std, hflip=None):
        """Images in [0, 1] -> augmented, normalised model inputs; ``hflip`` None: flip where the data declares it."""
        raise NotImplementedError

    def make_generator(self, nz, ngf, img_size, nc, out_channels=None):
        raise NotImplementedError

    def describe(self, stats):
        raise NotImplementedError

    def scalars(self, stats):
        """The numbers of ``stats`` worth a TensorBoard curve, as floats."""
        return {k: v for k, v in stats.items() if isinstance(v, (int, float))}


@TASKS.register("classification")
class Classification(Task):
    name, primary, label = "classification", "acc1", "acc@1"

    def metric(self, device=None):
        return AccuracyMetric(device)

    def inversion_targets(self, n, device, sort=False):
        """Random class labels, one per image (sorted if asked, as DeepInversion draws them)."""
        targets = torch.randint(0, self.num_classes, (n,), device=device)
        return targets.sort().values if sort else targets

    def one_hot_loss(self, teacher_logits, targets, weights=None):
        return cross_entropy(teacher_logits, targets, weights)

    def synthesis_augmentation(self, img_size, mean, std, hflip=None):
        return crop_flip_normalize(img_size, mean, std, hflip=self.hflip if hflip is None else hflip)

    def make_generator(self, nz, ngf, img_size, nc, out_channels=None):
        return Generator(nz=nz, ngf=ngf, img_size=img_size, nc=nc, out_channels=out_channels)

    def describe(self, stats):
        return f"acc@1={stats['acc1']:.2f} acc@5={stats['acc5']:.2f} loss={stats['loss']:.4f}"


@TASKS.register("segmentation")
class Segmentation(Task):
    """Per-pixel classification; targets are (N, H, W) int64 maps with ``ignore_index`` for unlabeled pixels."""

    name, primary, label = "segmentation", "miou", "mIoU"
    # Synthetic images are re-labelled by the teacher at every use, so any geometric
    # augmentation is safe: a random resized crop (half to all of the area) and a flip (where valid).
    CROP_SCALE = (0.5, 1.0)

    def __init__(self, num_classes, ignore_index=255, hflip=True):
        super().__init__(num_classes, hflip)
        self.ignore_index = ignore_index

    def prepare(self, logits, targets):
        return match_size(logits, targets)

    def supervised_loss(self, logits, targets):
        return cross_entropy(self.prepare(logits, targets), targets, ignore_index=self.ignore_index)

    def metric(self, device=None):
        return ConfusionMatrixMetric(self.num_classes, self.ignore_index, device)

    def inversion_targets(self, n, device, sort=False):
        """No label map can be drawn at random: the one-hot term uses the teacher's own argmax."""
        return None

    def one_hot_loss(self, teacher_logits, targets, weights=None):
        own = teacher_logits.argmax(dim=1) if targets is None else targets
        return cross_entropy(teacher_logits, own, weights, ignore_index=self.ignore_index)

    def synthesis_augmentation(self, img_size, mean, std, hflip=None):
        return resized_crop_flip_normalize(img_size, self.CROP_SCALE, mean, std, self.hflip if hflip is None else hflip)

    def make_generator(self, nz, ngf, img_size, nc, out_channels=None):
        """Fully convolutional, from a spatial latent (nz x img_size/16 x img_size/16): scales to 128-256 px."""
        return DeepGenerator(nz=nz, ngf=ngf, img_size=img_size, nc=nc, out_channels=out_channels)

    def describe(self, stats):
        ious = " ".join("-" if v != v else f"{v:.1f}" for v in stats["iou"])
        return (f"mIoU={stats['miou']:.2f} pixel_acc={stats['pixel_acc']:.2f} loss={stats['loss']:.4f} "
                f"IoU=[{ious}]")

    def scalars(self, stats):
        out = {k: stats[k] for k in ("miou", "pixel_acc", "loss")}
        out.update({f"iou/{c}": v for c, v in enumerate(stats["iou"]) if v == v})
        return out


def build_task(name, num_classes, **options):
    """The task object registered as ``name`` (``classification`` or ``segmentation``)."""
    return TASKS.lookup(name)(num_classes, **options)
