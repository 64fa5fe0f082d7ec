"""Command-line pieces shared by the entry scripts: flags, config files, run folders, loaders, error exit."""
import argparse
import os
import sys

import torch
import yaml

from datafree import distributed
from datafree.checkpoint import load_weights
from datafree.engine import SupervisedJob, evaluate, fit, resume_training
from datafree.errors import CheckpointError, RunStopped, UsageError
from datafree.interrupt import StopSignals
from datafree.precision import Precision
from datafree.tasks import Classification
from datafree.utils.misc import select_device, set_seed


def add_data_args(parser, dataset_choices, default_dataset="digits", purpose=None):
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default=default_dataset, choices=dataset_choices,
                       help=f"registered dataset{' ' + purpose if purpose else ''} (default: %(default)s)")
    group.add_argument("--data_root", default="data", help="root folder of the datasets (default: %(default)s)")
    group.add_argument("--download", action="store_true",
                       help="let torchvision download the dataset into --data_root if it is missing")
    group.add_argument("-j", "--workers", default=0, type=int,
                       help="data-loading worker processes (default: %(default)s, load in the main process)")
    return group


def add_optim_args(parser, lr, epochs, batch_size, schedule="cosine"):
    group = parser.add_argument_group(f"optimisation (SGD, {schedule})")
    group.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", default=batch_size, type=int,
                       help="mini-batch size; under torchrun the total over the GPUs of one node (default: %(default)s)")
    group.add_argument("--lr", "--learning-rate", dest="lr", default=lr, type=float,
                       help="initial learning rate (default: %(default)s)")
    group.add_argument("--epochs", "--epoch", dest="epochs", default=epochs, type=int,
                       help="number of epochs (default: %(default)s)")
    group.add_argument("--momentum", default=0.9, type=float, help="SGD momentum (default: %(default)s)")
    group.add_argument("--wd", "--weight_decay", "--weight-decay", dest="weight_decay", default=1e-4, type=float,
                       help="weight decay (default: %(default)s)")
    return group


def add_distillation_args(parser, model_choices, teacher, student, T):
    group = parser.add_argument_group("distillation")
    group.add_argument("--teacher", default=teacher, choices=model_choices,
                       help="teacher architecture (default: %(default)s)")
    group.add_argument("--student", default=student, choices=model_choices,
                       help="student architecture (default: %(default)s)")
    group.add_argument("--teacher_ckpt", default=None, metavar="PATH",
                       help="teacher checkpoint (default: checkpoints/pretrained/{dataset}_{teacher}.pth)")
    group.add_argument("--T", default=T, type=float, help="distillation temperature (default: %(default)s)")
    return group


def add_precision_arg(group, default="fp32", help_tail=""):
    """--precision, as every entry script reads it (datafree.precision's modes)."""
    from datafree.precision import AUTO, MODES
    group.add_argument("--precision", default=default, choices=(*MODES, AUTO),
                       help="fp32, fp16 (float16 + gradient scaling on CUDA, bfloat16 on the CPU), bf16 (bfloat16 "
                            "autocast on any device, no scaler), or auto: bf16 where the device computes bfloat16 "
                            f"natively (a CPU with AVX512-BF16/AMX, a recent GPU), else fp32{help_tail}")


def add_run_args(parser, print_freq="log the training loss every N iterations (default: 0, once per epoch)"):
    group = parser.add_argument_group("run")
    group.add_argument("--config", default=None, metavar="YAML",
                       help="YAML file of flag values (flag names without '--'); command-line flags override it")
    group.add_argument("--output", default=None,
                       help="run folder for log.txt, tb/, last.pth and best.pth (default: see above)")
    group.add_argument("--resume", nargs="?", const="auto", default="", metavar="PATH",
                       help="continue a run: from PATH, or from OUTPUT/last.pth when no PATH is given")
    group.add_argument("--evaluate_only", action="store_true",
                       help="only evaluate the checkpoint given with --resume and exit")
    group.add_argument("--start_epoch", default=None, type=int,
                       help="override the epoch to start from (default: 0, or the checkpoint's epoch)")
    group.add_argument("--gpu", default=None, type=int,
                       help="GPU index; -1 for the CPU (default: the first GPU if any, else the CPU)")
    group.add_argument("--seed", default=0, type=int, help="random seed (default: %(default)s)")
    group.add_argument("-p", "--print_freq", "--print-freq", dest="print_freq", default=0, type=int, help=print_freq)
    group.add_argument("--log_tag", default="", help="suffix for the default run folder name")
    add_dist_args(group)
    return group


def parse_with_config(parser, argv=None):
    """Parse ``argv``; the values of its --config file become defaults that the command line overrides."""
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**read_config(parser, known.config))
    return parser.parse_args(argv)


def add_dist_args(group):
    group.add_argument("--dist_backend", default=None, choices=["nccl", "gloo"],
                       help="torchrun only: process-group backend (default: nccl on GPUs, gloo on the CPU)")


def prepare_run(args, folder, name):
    """Fill the defaults that depend on other flags, seed, choose the device and check --resume.

    The default run folder is checkpoints/<folder>/<name>[-<log_tag>]. Returns (device, resume_path).
    """
    tag = f"-{args.log_tag}" if args.log_tag else ""
    args.output = args.output or os.path.join("checkpoints", folder, name + tag)
    if hasattr(args, "teacher_ckpt"):
        args.teacher_ckpt = args.teacher_ckpt or default_teacher_ckpt(args.dataset, args.teacher)
    device = (distributed.init_distributed(args.gpu, getattr(args, "dist_backend", None))
              or select_device(args.gpu))
    set_seed(args.seed)
    return device, resolve_resume(args)


def evaluate_checkpoint(model, path, arch, loader, device, task=None):
    """--evaluate_only: load ``path`` into ``model``, print and return its test metrics."""
    task = task or Classification(num_classes=0)
    load_weights(model, path, arch, map_location=device)
    stats = evaluate(model, loader, device, task)
    print(f"[Eval] {path}: {task.describe(stats)}")
    return stats


def resolve_resume(args):
    """Check the run folder against --resume; return the checkpoint to resume from, or None.

    A folder that already holds a run is never overwritten: the user must pass --resume
    or choose another --output.
    """
    last = os.path.join(args.output, "last.pth")
    if not args.resume:
        if args.evaluate_only:
            raise UsageError("--evaluate_only needs a checkpoint: pass --resume PATH")
        if os.path.exists(last):
            raise UsageError(f"{args.output} already holds a run; pass --resume to continue it, "
                             f"or choose another --output")
        return None
    path = last if args.resume == "auto" else args.resume
    if not os.path.isfile(path):
        raise CheckpointError(f"there is no checkpoint to resume at {path}; check --resume/--output")
    return path


def make_loaders(train_set, val_set, batch_size, workers, device, drop_last=False, seed=0):
    """Loaders of one process: under torchrun each rank reads its shard, ``batch_size`` per node."""
    pin = device.type == "cuda"
    common = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    batch_size = distributed.per_process(batch_size)
    sampler = distributed.train_sampler(train_set, seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=sampler is None,
                                               sampler=sampler, drop_last=drop_last, **common)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=max(batch_size, 256), shuffle=False,
                                             sampler=distributed.eval_sampler(val_set), **common)
    return train_loader, val_loader


def default_teacher_ckpt(dataset, teacher):
    return os.path.join("checkpoints", "pretrained", f"{dataset}_{teacher}.pth")


def load_teacher(model, path, dataset, arch, device):
    """Load a teacher's weights, or stop with a sentence that says how to get the checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(
            f"teacher checkpoint {path} not found; download the original release's teachers into "
            f"checkpoints/pretrained/ (see docs/teachers-and-data.md), or train one with: python train_scratch.py "
            f"--model {arch} --dataset {dataset}")
    load_weights(model, path, arch)
    return model.to(device).eval()


def read_config(parser, path):
    """The flag values of the YAML file ``path``, each checked and converted exactly as the same
    value on the command line would be (its type, its choices; a flag without a value takes
    true or false), as a dict of defaults for ``parser``."""
    if not os.path.isfile(path):
        raise UsageError(f"config file {path} does not exist")
    with open(path) as f:
        try:
            values = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise UsageError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise UsageError(f"{path} must map flag names to values, one per line (e.g. 'epochs: 200')")
    return config_values(parser, values, path)


def config_values(parser, values, where):
    """``values`` (flag name without '--' -> value, from a config file or Python keywords), each
    checked and converted as the same value on the command line; ``where`` names their source."""
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    unknown = sorted(str(key) for key in set(values) - set(actions))
    if unknown:
        raise UsageError(f"{where}: unknown keys {', '.join(unknown)}; keys are flag names without '--'")
    return {key: config_value(where, key, value, actions[key]) for key, value in values.items()}


def config_value(path, key, value, action):
    """One config value converted as argparse converts the same value given to the flag."""
    flag = f"--{key}" if f"--{key}" in action.option_strings else action.option_strings[-1]
    where = f"{path}: {key}: {value!r}"
    if action.nargs == 0:   # a flag without a value (store_true)
        if not isinstance(value, bool):
            raise UsageError(f"{where} is not true or false; {flag} takes no value on the command line, so write "
                             f"'{key}: true' to set it or leave the key out")
        return action.const if value else action.default
    if value is None:
        if action.default is None:
            return None
        raise UsageError(f"{where} is empty; give {key} a value or leave the key out")
    if isinstance(value, (bool, list, dict)):
        raise UsageError(f"{where} is not a value {flag} takes on the command line; write it as you would there")
    token = str(value)
    try:
        converted = action.type(token) if action.type else token
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        kind = getattr(action.type, "__name__", "value")
        raise UsageError(f"{where} is not a valid {kind}, as '{flag} {token}' is not on the command line; "
                         f"write it as you would there") from None
    if action.choices is not None and converted not in action.choices:
        raise UsageError(f"{where} is not one of the choices of {flag}: {', '.join(map(str, action.choices))}")
    return converted


def run_cli(main, argv=None):
    """Run ``main(argv)``; print a user error as one line and exit with status 2, and a run that
    stopped on purpose (datafree.errors.RunStopped) as one line with its own exit status."""
    script = os.path.basename(sys.argv[0])
    try:
        return main(argv)
    except UsageError as err:
        print(f"{script}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as err:
        if distributed.is_main_process() or not err.agreed:   # every rank stops the same way: rank 0 says it
            print(f"{script}: stopped: {err}", file=sys.stderr)
        sys.exit(err.exit_status)
    finally:
        distributed.cleanup()


def run_summary_info(script, args, arch):
    """The static facts of a run kept in its summary.json (what table collectors report)."""
    return {"script": script, "arch": arch, "dataset": args.dataset, "args": {k: v for k, v in vars(args).items()
                                                                              if isinstance(v, (int, float, str, bool, type(None)))}}


def run_training(args, model, train_loader, val_loader, loss_fn, device, resume_path, *,
                 run_name, checkpoint_extra, task=None):
    """The epoch loop of train_scratch.py and vanilla_kd.py: SGD, cosine schedule, resume, fit.

    With ``--evaluate_only`` the checkpoint is evaluated and nothing is written.
    Returns a dict with ``best_acc1`` (training: the best of the task's primary metric) or
    the evaluation metrics.
    """
    task = task or Classification(num_classes=0)
    arch = checkpoint_extra["arch"]
    if args.evaluate_only:
        return evaluate_checkpoint(model, resume_path, arch, val_loader, device, task)

    precision = Precision(device, getattr(args, "precision", "fp32"))
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, **precision.optimizer_options())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    start_epoch, best_acc1 = 0, 0.0
    if resume_path:
        ckpt = resume_training(resume_path, model, arch, optimizer, scheduler, device)
        start_epoch, best_acc1 = ckpt["epoch"], ckpt["best_acc1"]
        precision.load_state_dict(ckpt.get("precision"))
    if args.start_epoch is not None:
        start_epoch = args.start_epoch
    distributed.seed_per_rank(args.seed, start_epoch)

    logger = distributed.make_logger(args.output, run_name)
    try:
        logger.args(args)
        if resume_path:
            logger.info(f"resumed from {resume_path} at epoch {start_epoch} (best {task.label} {best_acc1:.2f})")
        with StopSignals() as stop:
            job = SupervisedJob(model, train_loader, optimizer, scheduler, loss_fn, device, args.output, logger,
                                extra=checkpoint_extra, print_freq=args.print_freq, stop=stop, start_epoch=start_epoch,
                                precision=precision)
            best_acc1 = fit(job, model, optimizer, scheduler, val_loader, device, epochs=args.epochs,
                            run_dir=args.output, logger=logger, start_epoch=start_epoch, best_acc1=best_acc1,
                            summary_info=run_summary_info(run_name, args, arch), task=task, stop=stop)
        logger.info(f"Best {task.label}: {best_acc1:.2f}  (run folder: {args.output})")
    finally:
        logger.close()
    return {"best_acc1": best_acc1}
