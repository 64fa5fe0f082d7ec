"""Knowledge distillation with real data: a student learns from a teacher checkpoint on a
transfer set (the task's own training set by default, another registered dataset, or a
folder of unlabeled images).

loss = KL(teacher || student) at temperature T (times T^2) + beta * cross-entropy on the
hard labels (only when the transfer set is the task's own labeled training set). For a
segmentation dataset both terms are per pixel (datafree/tasks.py).

    python vanilla_kd.py --teacher wrn16_2 --student wrn16_1 --dataset digits --T 4 --epochs 30
"""
import argparse
import os
import sys

import torch

from datafree import distributed, registry
from datafree.criterions import kldiv
from datafree.datasets import UnlabeledImageFolder
from datafree.errors import UsageError
from datafree.utils.cli import (add_data_args, add_distillation_args, add_optim_args, add_precision_arg, add_run_args,
                                load_teacher, make_loaders, parse_with_config, prepare_run, run_cli, run_training)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kd = add_distillation_args(parser, registry.model_names(), teacher="wrn16_2", student="wrn16_1", T=4.0)
    kd.add_argument("--transfer_set", default=None,
                    help="registered dataset or image folder the student learns on (default: --dataset)")
    kd.add_argument("--alpha", default=1.0, type=float, help="weight of the KL term (default: %(default)s)")
    kd.add_argument("--beta", default=0.0, type=float,
                    help="weight of the hard-label cross-entropy (default: %(default)s)")
    add_data_args(parser, registry.dataset_names())
    add_optim_args(parser, lr=0.1, epochs=200, batch_size=128)
    add_precision_arg(add_run_args(parser))
    return parser


def build_transfer_set(args, train_set):
    """The transfer set, using the task's training transform; says whether its labels are the task's."""
    if args.transfer_set in (None, args.dataset):
        return train_set, True
    if getattr(train_set, "transform", None) is None:
        raise UsageError(f"--transfer_set needs the task's image transform, but '{args.dataset}' transforms "
                         f"images and masks jointly; drop --transfer_set to learn on its own training set")
    if os.path.isdir(args.transfer_set):
        return UnlabeledImageFolder(args.transfer_set, transform=train_set.transform), False
    if args.transfer_set not in registry.DATASET_DICT:
        raise UsageError(f"--transfer_set '{args.transfer_set}' is neither a folder nor a registered dataset; "
                         f"choose a folder or one of: {', '.join(registry.dataset_names())}")
    _, transfer, _ = registry.get_dataset(args.transfer_set, args.data_root, args.download)
    transfer.transform = train_set.transform
    return transfer, False


def main(argv=None):
    args = parse_with_config(build_parser(), argv)
    transfer_name = (args.transfer_set or args.dataset).strip("/").replace("/", "-")
    device, resume_path = prepare_run(args, "vanilla_kd", f"{args.dataset}-{transfer_name}-{args.teacher}-{args.student}")

    num_classes, train_set, val_set = registry.get_dataset(args.dataset, args.data_root, args.download)
    transfer_set, labeled = build_transfer_set(args, train_set)
    if args.beta > 0 and not labeled:
        raise UsageError(f"--beta {args.beta} needs the task's labels, but the transfer set "
                         f"'{args.transfer_set}' has none for '{args.dataset}'; use --beta 0")

    task = registry.get_task(args.dataset)
    student = registry.get_model(args.student, num_classes, task=task).to(device)
    teacher = None
    if not args.evaluate_only:
        teacher = load_teacher(registry.get_model(args.teacher, num_classes, task=task), args.teacher_ckpt,
                               args.dataset, args.teacher, device)
    train_loader, val_loader = make_loaders(transfer_set, val_set, args.batch_size, args.workers, device, seed=args.seed)
    trained = distributed.wrap_ddp(student, device)   # DistributedDataParallel under torchrun

    def loss_fn(images, targets):
        with torch.no_grad():
            teacher_logits = teacher(images)
        logits = trained(images)
        loss = args.alpha * kldiv(logits, teacher_logits, T=args.T)
        if args.beta > 0:
            loss = loss + args.beta * task.supervised_loss(logits, targets)
        return loss, logits

    extra = {"arch": args.student, "num_classes": num_classes, "dataset": args.dataset,
             "teacher": args.teacher, "args": vars(args).copy()}
    return run_training(args, student, train_loader, val_loader, loss_fn, device, resume_path,
                        run_name="vanilla_kd", checkpoint_extra=extra, task=task)


def cli():
    """The console command (and the flat script at the repository's root)."""
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
