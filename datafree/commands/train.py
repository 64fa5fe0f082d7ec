"""Supervised training of any registered model on any registered dataset (a teacher, or a
from-scratch student baseline).

When training ends, the best model is also written as the teacher file that vanilla_kd.py
and datafree_kd.py load by default: checkpoints/pretrained/{dataset}_{model}.pth.

    python train_scratch.py --model wrn16_2 --dataset digits --epochs 30 --lr 0.05 --batch-size 64
"""
import argparse
import os
import sys

from datafree import distributed, registry
from datafree.checkpoint import atomic_save, load_checkpoint
from datafree.errors import UsageError
from datafree.utils.cli import (add_data_args, add_optim_args, add_precision_arg, add_run_args, default_teacher_ckpt,
                                make_loaders, parse_with_config, prepare_run, run_cli, run_training)

TEACHER_KEYS = ("state_dict", "arch", "num_classes", "dataset", "epoch", "best_acc1")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wrn16_2", choices=registry.model_names(),
                        help="registered model to train (default: %(default)s)")
    parser.add_argument("--pretrained", action="store_true",
                        help="start from torchvision's ImageNet weights (ImageNet models; the backbone of "
                             "deeplabv3_resnet50 / deeplabv3_mobilenet); downloaded on first use")
    add_data_args(parser, registry.dataset_names())
    add_optim_args(parser, lr=0.1, epochs=200, batch_size=128)
    add_precision_arg(add_run_args(parser))
    teacher = parser.add_argument_group("teacher file")
    teacher.add_argument("--save_teacher", default=None, metavar="PATH",
                         help="where the best model is written as a teacher "
                              "(default: checkpoints/pretrained/{dataset}_{model}.pth)")
    teacher.add_argument("--overwrite_teacher", action="store_true",
                         help="replace an existing teacher file at --save_teacher")
    return parser


def main(argv=None):
    args = parse_with_config(build_parser(), argv)
    device, resume_path = prepare_run(args, "scratch", f"{args.dataset}_{args.model}")
    args.save_teacher = args.save_teacher or default_teacher_ckpt(args.dataset, args.model)
    if (not resume_path and not args.overwrite_teacher and os.path.exists(args.save_teacher)):
        raise UsageError(f"{args.save_teacher} already exists and would be replaced by this run; "
                         f"pass --overwrite_teacher, or --save_teacher PATH to write elsewhere")

    num_classes, train_set, val_set = registry.get_dataset(args.dataset, args.data_root, args.download)
    task = registry.get_task(args.dataset)
    model = registry.get_model(args.model, num_classes, pretrained=args.pretrained, task=task).to(device)
    train_loader, val_loader = make_loaders(train_set, val_set, args.batch_size, args.workers, device, seed=args.seed)
    trained = distributed.wrap_ddp(model, device)   # DistributedDataParallel under torchrun

    def loss_fn(images, targets):
        logits = trained(images)
        return task.supervised_loss(logits, targets), logits

    extra = {"arch": args.model, "num_classes": num_classes, "dataset": args.dataset, "args": vars(args).copy()}
    result = run_training(args, model, train_loader, val_loader, loss_fn, device, resume_path,
                          run_name="scratch", checkpoint_extra=extra, task=task)
    if not args.evaluate_only and distributed.is_main_process():
        # Published only once training is complete, so the file never holds a half-trained teacher.
        best = load_checkpoint(os.path.join(args.output, "best.pth"))
        atomic_save({k: best[k] for k in TEACHER_KEYS}, args.save_teacher)
        print(f"teacher file: {args.save_teacher} ({task.label} {best['best_acc1']:.2f})")
    return result


def cli():
    """The console command (and the flat script at the repository's root)."""
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
