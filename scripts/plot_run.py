"""Draw a data-free run: accuracy and losses per epoch, and its synthetic images per class.

    python scripts/plot_run.py checkpoints/datafree-fast_meta/digits-wrn16_2-wrn16_1

writes, into the run folder (or --out_dir):

- ``curves.png``: the test accuracy (or mIoU), the KD loss and the synthesis loss terms per
  epoch, from the run's ``summary.json``;
- ``pool_by_class.png``: up to ``--per_class`` synthetic images of each class, the class being
  the teacher's prediction (the teacher is the run's own ``--teacher_ckpt``), newest first.
  Without the teacher file, or for a segmentation run, the newest images of the pool instead.
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datafree import registry  # noqa: E402
from datafree.augment import Normalizer  # noqa: E402
from datafree.checkpoint import load_checkpoint, load_weights, read_summary  # noqa: E402
from datafree.errors import UsageError  # noqa: E402
from datafree.pool import read_pool  # noqa: E402
from datafree.utils.cli import run_cli  # noqa: E402


def plot_curves(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = summary["history"]
    epochs = [h["epoch"] for h in history]
    terms = sorted({k for h in history for k in h if k == "kd_loss" or k.startswith("loss")})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(epochs, [h["acc1"] for h in history], marker=".")
    axes[0].set(xlabel="epoch", ylabel="test score (%)", title=f"best {summary['best_acc1']:.2f}")
    axes[0].grid(alpha=0.3)
    for term in terms:
        values = [float("nan") if h.get(term) is None else h[term] for h in history]   # None: not measured
        if any(v == v for v in values):
            axes[1].plot(epochs, values, marker=".", label=term)
    axes[1].set(xlabel="epoch", ylabel="loss", title="losses")
    axes[1].set_yscale("symlog")
    if axes[1].lines:
        axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    fig.suptitle(f"{summary.get('script', '')} {summary.get('args', {}).get('method', '')}: {summary['arch']} "
                 f"on {summary['dataset']}, {summary['epoch']}/{summary['epochs']} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def teacher_classes(images, args, device):
    """The teacher's predicted class per image, or None when the teacher is missing or not a classifier."""
    path = args.get("teacher_ckpt")
    dataset, arch = args.get("dataset"), args.get("teacher")
    if not path or not os.path.isfile(path) or registry.model_task(arch) != "classification":
        return None
    num_classes = registry.DATASET_NUM_CLASSES[dataset]
    teacher = registry.get_model(arch, num_classes)
    load_weights(teacher, path, arch)
    teacher.to(device).eval()
    normalize = Normalizer(**registry.NORMALIZE_DICT[dataset]).to(device)
    with torch.no_grad():
        return torch.cat([teacher(normalize(chunk.to(device).float() / 255)).argmax(1).cpu()
                          for chunk in images.split(256)])


def plot_pool(images, classes, per_class, path):
    from torchvision.utils import make_grid, save_image

    if classes is None:
        chosen = images[-per_class * per_class:].flip(0)
        rows = per_class
    else:
        chosen, rows = [], 0
        blank = torch.zeros_like(images[0])
        for c in range(int(classes.max()) + 1):
            index = (classes == c).nonzero().flatten().flip(0)[:per_class]   # newest first
            picked = [images[i] for i in index.tolist()]
            chosen.extend(picked + [blank] * (per_class - len(picked)))
            rows += 1
        chosen = torch.stack(chosen)
    save_image(make_grid(chosen.float() / 255, nrow=per_class if classes is not None else
                         math.ceil(len(chosen) / max(rows, 1)), padding=1), path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a datafree_kd.py run folder (with summary.json and last.pth)")
    parser.add_argument("--out_dir", default=None, help="where to write the PNGs (default: the run folder)")
    parser.add_argument("--per_class", type=int, default=8, help="images per class in the grid")
    parser.add_argument("--gpu", type=int, default=-1, help="GPU for the teacher's predictions (default: CPU)")
    args = parser.parse_args(argv)
    summary = read_summary(args.run_dir)
    if summary is None:
        raise UsageError(f"{args.run_dir} has no summary.json: give a run folder that has finished an epoch")
    out_dir = args.out_dir or args.run_dir
    os.makedirs(out_dir, exist_ok=True)
    plot_curves(summary, os.path.join(out_dir, "curves.png"))
    written = ["curves.png"]
    last = os.path.join(args.run_dir, "last.pth")
    state = load_checkpoint(last).get("synthesizer", {}) if os.path.isfile(last) else {}
    if "pool" in state:
        images = read_pool(state["pool"], args.run_dir)
        device = torch.device("cpu" if args.gpu < 0 else f"cuda:{args.gpu}")
        classes = teacher_classes(images, summary.get("args", {}), device) if len(images) else None
        if len(images):
            plot_pool(images, classes, args.per_class, os.path.join(out_dir, "pool_by_class.png"))
            written.append("pool_by_class.png" + ("" if classes is not None else " (no teacher: newest images)"))
    print(f"wrote {', '.join(written)} in {out_dir}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
