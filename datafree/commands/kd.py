"""Data-free knowledge distillation: every method, one command.

Each epoch runs ep_steps // kd_steps rounds of (one synthesis call -> kd_steps KD steps on
synthetic batches), or the rounds a method plans itself (SSD-KD), with no KD during the first --warmup epochs; then the student is
evaluated and checkpointed. The end of the run reports the best top-1 accuracy and the
synthesis cost in hours, as the paper does, beside the total wall time.

    python datafree_kd.py --config configs/digits/fast_meta_5.yaml
    python datafree_kd.py --method fast_meta --dataset cifar10 --teacher wrn40_2 --student wrn16_1 \\
        --batch_size 256 --lr 0.2 --kd_steps 400 --ep_steps 400 --adv 1.1 --bn 10.0 --oh 0.4 --T 20 \\
        --bn_mmt 0.9 --warmup 20 --epochs 220 --g_steps 5 --lr_z 0.01 --lr_g 3e-3 --is_maml 1 --reset_l0 1
    torchrun --nproc_per_node=8 datafree_kd.py --method fast_meta_imagenet ...   # several GPUs, see docs/imagenet-and-torchrun.md

``main`` parses the flags, builds the run (datafree/run.py) and fits it (datafree/engine.py); one KD step is
``engine.distill_steps``: the synthesizer's ``sample`` and ``kd_loss`` (datafree/synthesis/), the loss in
datafree/criterions.py.
"""
import argparse
import sys

from datafree import distributed, registry
from datafree.errors import UsageError
from datafree.guard import MODES as GUARD_MODES
from datafree.interrupt import StopSignals
from datafree.pool import STORAGES as POOL_STORAGES
from datafree.precision import AUTO, MODES as PRECISIONS, resolve_mode
from datafree.run import build_run, dataset_data, milestones
from datafree.synthesis import SYNTHESIZERS, PoolSynthesizer
from datafree.synthesis.base import check_original_behaviours
# METHOD_FLAGS: the registry build_parser adds, kept as one of this command's names for its callers
from datafree.synthesis.flags import METHOD_FLAGS, SYNTHESIS, TERMS, add_method_flags, flags_not_read  # noqa: F401
from datafree.utils.cli import (add_data_args, add_distillation_args, add_optim_args, add_run_args, evaluate_checkpoint,
                                parse_with_config, prepare_run, run_cli)

def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {TERMS: parser.add_argument_group(TERMS)}
    groups[TERMS].add_argument("--method", default=None, choices=sorted(SYNTHESIZERS),
                               help="synthesizer (required, here or in --config)")
    add_method_flags(parser, groups)   # each method's flags, as its module declares them
    synth = groups[SYNTHESIS]
    synth.add_argument("--synthesis_channels", default=None, type=int, metavar="C",
                       help="channels to synthesise (default: the data's); 1 for grayscale data stored as identical "
                            "channels (digits, mnist): one channel is made and repeated, so synthetic images are "
                            "gray like the data")
    synth.add_argument("--synthesis_batch_size", default=None, type=int,
                       help="images per synthesis call (default: --batch_size)")
    synth.add_argument("--img_size", default=None, type=int,
                       help="side of the synthetic images (default: the width of the test images; "
                            "set it for segmentation, e.g. 128 for NYUv2)")
    synth.add_argument("--save_dir", default="run/synthesis", help="folder for --save_pool")
    synth.add_argument("--save_pool", action="store_true",
                       help="write the synthetic pool as PNG files into --save_dir at the end (every process its "
                            "share, in parallel)")
    synth.add_argument("--pool_storage", default="auto", choices=("auto", *POOL_STORAGES),
                       help="where each process keeps its synthetic pool: memory (a copy in device memory; "
                            "fastest), disk (only the run folder's pool shard, read batch by batch), or auto "
                            "(memory unless the pool this run makes per process would exceed 2 GiB); either way "
                            "new images are appended to OUTPUT/pool/ and checkpoints only refer to them")

    kd = add_distillation_args(parser, registry.model_names(), teacher="wrn40_2", student="wrn16_1", T=1.0)
    kd.add_argument("--kd_steps", default=400, type=int, help="KD steps after each synthesis call")
    kd.add_argument("--ep_steps", default=400, type=int, help="KD steps per epoch")
    kd.add_argument("--warmup", default=0, type=int, help="epochs of synthesis only, before KD starts")
    add_data_args(parser, registry.dataset_names(), default_dataset="cifar100",
                  purpose="whose test split evaluates the student (its training data is not used)")
    optim = add_optim_args(parser, lr=0.1, epochs=200, batch_size=128, schedule="cosine to 2e-4 over the KD epochs")
    optim.add_argument("--lr_decay_milestones", default="", metavar="E1,E2,...",
                       help="step schedule instead of cosine: lr x 0.1 at these KD epochs (counted after warmup)")

    run = add_run_args(parser, print_freq="log the KD loss every N rounds of synthesis and KD steps "
                                          "(default: 0, once per epoch)")
    run.add_argument("--fp16", action="store_true",
                     help="mixed precision: float16 + gradient scaling on CUDA, bfloat16 on the CPU (= --precision fp16)")
    run.add_argument("--precision", default=None, choices=(*PRECISIONS, AUTO),
                     help="fp32 (default), fp16 (as --fp16), bf16 (bfloat16 autocast on any device, no scaler), or "
                          "auto: bf16 where the device computes bfloat16 natively (a CPU with AVX512-BF16/AMX, a "
                          "recent GPU), else fp32 (the digits presets use auto; --precision fp32 turns it off)")
    run.add_argument("--channels_last", action="store_true", help="channels-last memory format for the networks")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the student and teacher of the KD steps (synthesis stays eager: its "
                          "generator is cloned every call); the first epoch pays the compilation")
    run.add_argument("--on_nonfinite", default="stop", choices=GUARD_MODES,
                     help="a NaN or inf KD or synthesis loss: stop the run at once (exit status 3, last.pth stays the "
                          "last good checkpoint), or skip that step and count it in the log (a run whose steps are "
                          "all skipped for an epoch still stops); see docs/faults-and-recovery.md")
    return parser


def parse_args(argv=None):
    """Parse flags; values from --config become defaults that the command line overrides."""
    parser = build_parser()
    args = parse_with_config(parser, argv)
    check_args(args, parser)
    return args


def check_args(args, parser, normalization=None):
    """Stop with one sentence on an impossible flag combination. ``normalization`` ({'mean', 'std'})
    is the data's, by default --dataset's registered one."""
    if args.method is None:
        raise UsageError(f"--method is required; choose one of: {', '.join(sorted(SYNTHESIZERS))}")
    if args.method not in SYNTHESIZERS:
        raise UsageError(f"unknown method '{args.method}'; choose one of: {', '.join(sorted(SYNTHESIZERS))}")
    for flag in flags_not_read(SYNTHESIZERS[args.method].flags):
        if getattr(args, flag) != parser.get_default(flag):
            users = sorted(name for name, cls in SYNTHESIZERS.items() if flag in cls.flags)
            where = f"it applies to: {', '.join(users)}" if users else "no registered method uses it yet"
            raise UsageError(f"--{flag} is not used by method '{args.method}' ({where}); drop it")
    SYNTHESIZERS[args.method].check_args(args)
    check_original_behaviours(getattr(args, "as_original", ""), args.method, SYNTHESIZERS[args.method])
    if args.kd_steps <= 0 or args.ep_steps < args.kd_steps:
        raise UsageError(f"--kd_steps ({args.kd_steps}) must be positive and at most --ep_steps ({args.ep_steps})")
    if args.save_pool and not issubclass(SYNTHESIZERS[args.method], PoolSynthesizer):
        raise UsageError(f"--save_pool needs a synthetic pool, but method '{args.method}' samples its generator instead")
    if args.warmup < 0 or args.epochs < 1:
        raise UsageError(f"--warmup ({args.warmup}) cannot be negative and --epochs ({args.epochs}) must be at least 1")
    if args.fp16 and args.precision == AUTO:   # an explicit --fp16 beats a preset's auto
        args.precision = "fp16"
    if args.fp16 and args.precision not in (None, "fp16"):
        raise UsageError(f"--fp16 means --precision fp16, which contradicts --precision {args.precision}; drop one")
    args.precision = args.precision or ("fp16" if args.fp16 else "fp32")
    milestones(args)    # refuses a malformed schedule before anything runs
    check_synthesis_channels(args, normalization or registry.NORMALIZE_DICT[args.dataset])
    if distributed.launched_by_torchrun() and not SYNTHESIZERS[args.method].distributed_ready:
        ready = sorted(name for name, cls in SYNTHESIZERS.items() if cls.distributed_ready)
        raise UsageError(f"method '{args.method}' cannot run under torchrun yet (its generator would drift apart "
                         f"between the processes); run it in one process, or use one of: {', '.join(ready)}")


def check_synthesis_channels(args, stats):
    """--synthesis_channels is the data's channel count (that of ``stats['mean']``), or 1 where every
    channel has the same statistics."""
    if args.synthesis_channels is None:
        return
    data_channels = len(stats["mean"])
    if args.synthesis_channels not in (1, data_channels):
        raise UsageError(f"--synthesis_channels {args.synthesis_channels} must be 1 (grayscale synthesis) or the "
                         f"channel count of {args.dataset} ({data_channels})")
    if args.synthesis_channels == 1 and (len(set(stats["mean"])) > 1 or len(set(stats["std"])) > 1):
        raise UsageError(f"--synthesis_channels 1 is for grayscale data whose channels share one mean and std, "
                         f"but {args.dataset}'s differ (mean {stats['mean']}); drop the flag to synthesise "
                         f"all {data_channels} channels")
    if args.synthesis_channels == data_channels:
        args.synthesis_channels = None     # one spelling of the default, so a resume compares like with like


def main(argv=None):
    """Parse the flags, build the run, fit it: pytorch/examples' main.py, for a data-free run."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with StopSignals() as stop:
        device, resume_path = prepare_run(args, f"datafree-{args.method}", f"{args.dataset}-{args.teacher}-{args.student}")
        args.precision = resolve_mode(args.precision, device, SYNTHESIZERS[args.method].bf16_in_auto)
        data = dataset_data(args, device)
        student = registry.get_model(args.student, data.num_classes, task=data.task).to(device)
        if args.evaluate_only:
            return evaluate_checkpoint(student, resume_path, args.student, data.val_loader, device, data.task)
        run = build_run(args, data, device, student=student, resume_path=resume_path)
        return run.execute(distributed.make_logger(args.output, f"datafree-{args.method}"), argv, stop)


def cli():
    """The console command (and the flat script at the repository's root)."""
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
