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
"""
import argparse
import os
import resource
import sys
from types import SimpleNamespace

import torch
from torchvision.utils import make_grid, save_image

import registry
from datafree import distributed
from datafree import run_state
from datafree.checkpoint import (RUN_CHECKPOINT_ADVICE, load_checkpoint, missing_entries, record_epoch,
                                 remove_stale_temporaries)
from datafree.engine import distill_steps, evaluate, now, restore_training
from datafree.errors import CheckpointError, NonFiniteError, UsageError
from datafree.guard import MODES as GUARD_MODES
from datafree.interrupt import StopSignals, finished_epochs, resume_hint
from datafree.pool import REPLACE_RULES, STORAGES as POOL_STORAGES
from datafree.precision import AUTO, MODES as PRECISIONS, Precision, resolve_mode
from datafree.synthesis import SYNTHESIZERS, PoolSynthesizer, require_task_support
from datafree.synthesis.ssd import POLICY_INITS as SSD_POLICY_INITS, REWARDS as SSD_REWARDS, SAMPLING as SSD_SAMPLING
from datafree.utils.cli import evaluate_checkpoint, load_teacher, prepare_run, read_config, run_cli, run_summary_info

# Flags that belong to particular methods; setting one away from its default for a method
# that ignores it is an error.
METHOD_FLAGS = ("adv", "bn", "oh", "act", "balance", "tv", "l2", "cr", "cr_T", "cmi_init", "lr_g", "lr_z",
                "g_steps", "reset_l0", "reset_bn", "bn_mmt", "is_maml", "lr_g_meta", "lr_z_meta", "reinit", "rand_label",
                "ssd_buffer_size", "ssd_gamma", "ssd_beta", "ssd_alpha", "ssd_replace", "ssd_replace_rule", "ssd_max_weight",
                "ssd_min_weight", "ssd_sampling", "ssd_policy_lr", "ssd_policy_init", "ssd_reward", "ssd_phi", "ssd_kd_passes", "ssd_refresh_every",
                "ssd_refresh_share")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    method = parser.add_argument_group("data-free method")
    method.add_argument("--method", default=None, choices=sorted(SYNTHESIZERS),
                        help="synthesizer (required, here or in --config)")
    method.add_argument("--adv", default=0.0, type=float, help="weight of the adversarial term")
    method.add_argument("--bn", default=0.0, type=float, help="weight of the BN-statistics term")
    method.add_argument("--oh", default=0.0, type=float, help="weight of the one-hot (cross-entropy) term")
    method.add_argument("--act", default=0.0, type=float, help="weight of DAFL's activation term")
    method.add_argument("--balance", default=0.0, type=float, help="weight of the class-balance term")
    method.add_argument("--tv", default=0.0, type=float, help="weight of DeepInversion's total-variation prior")
    method.add_argument("--l2", default=0.0, type=float, help="weight of DeepInversion's L2 prior")
    method.add_argument("--cr", default=1.0, type=float, help="weight of CMI's contrastive term")
    method.add_argument("--cr_T", default=0.5, type=float, help="temperature of CMI's contrastive term")
    method.add_argument("--cmi_init", default=None, help="folder of pre-inverted images added to the pool")

    synth = parser.add_argument_group("synthesis")
    synth.add_argument("--lr_g", default=1e-3, type=float, help="learning rate of the generator")
    synth.add_argument("--lr_z", default=1e-3, type=float, help="learning rate of the latent code")
    synth.add_argument("--g_steps", default=1, type=int, help="synthesis steps per call (k of Fast-k)")
    synth.add_argument("--reset_l0", default=0, type=int,
                       help="re-initialise the generator's first layers once, 120 calls after warmup")
    synth.add_argument("--reset_bn", default=0, type=int,
                       help="also re-initialise the generator's BN affine parameters then")
    synth.add_argument("--bn_mmt", default=0.0, type=float, help="momentum of the BN statistics (0: off)")
    synth.add_argument("--is_maml", default=1, type=int, help="meta-gradient: 1 first-order MAML, 0 Reptile")
    synth.add_argument("--lr_g_meta", default=1e-4, type=float,
                       help="fast_meta_imagenet: meta learning rate of the generator")
    synth.add_argument("--lr_z_meta", default=5e-3, type=float,
                       help="fast_meta_imagenet: meta learning rate of the persistent latents z")
    synth.add_argument("--reinit", default=0, type=int,
                       help="fast_meta_imagenet: draw new z and restart the meta optimiser every N synthesis "
                            "calls (0: never)")
    synth.add_argument("--rand_label", default=1, type=int,
                       help="fast_meta_imagenet: 1 new random targets every call, 0 one fixed target per latent")
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

    ssd = parser.add_argument_group("SSD-KD (--method ssd; docs/ssd_kd.md: what is from the paper and what is ours)")
    ssd.add_argument("--ssd_buffer_size", default=0, type=int,
                     help="images the replay buffer holds (default 0: 10%% of the dataset's training set); under "
                          "torchrun the total, each process holding its share")
    ssd.add_argument("--ssd_kd_passes", default=0.0, type=float,
                     help="passes over the buffer per epoch, which set its KD steps (default 0: as many passes as "
                          "--ep_steps x --batch_size make over the real training set, Fast's schedule)")
    ssd.add_argument("--ssd_refresh_every", default=0, type=int, metavar="K",
                     help="once the buffer is full, a synthesis call before every K-th KD step (default 0: by "
                          "--ssd_refresh_share)")
    ssd.add_argument("--ssd_refresh_share", default=0.0, type=float,
                     help="once the buffer is full, the share of it renewed per epoch by synthesis calls of "
                          "--ssd_replace each (default 0: one call per epoch)")
    ssd.add_argument("--ssd_sampling", default="policy", choices=SSD_SAMPLING,
                     help="how KD batches are drawn from the buffer: a learned policy (REINFORCE, rewarded by the "
                          "student's progress on its draws), fixed priorities (prioritised replay), or uniformly")
    ssd.add_argument("--ssd_policy_lr", default=0.05, type=float,
                     help="learning rate of the sampling policy (--ssd_sampling policy)")
    ssd.add_argument("--ssd_policy_init", default="priority", choices=SSD_POLICY_INITS,
                     help="where the learned policy starts: prioritised replay's probabilities (priority^alpha) "
                          "or uniform draws")
    ssd.add_argument("--ssd_reward", default="relative", choices=SSD_REWARDS,
                     help="the policy's reward for a draw: the student's progress on it, KL before its KD step minus "
                          "after (progress), or that over KL before (relative: the share of the discrepancy removed, "
                          "so images the student cannot fit do not earn the most)")
    ssd.add_argument("--ssd_phi", default=1, type=int, choices=(0, 1),
                     help="1: the modulating function phi weighs inversion and KD; 0: every sample weighs 1")
    ssd.add_argument("--ssd_gamma", default=2.0, type=float,
                     help="difficulty exponent of the modulating function: (1 - teacher confidence)^gamma")
    ssd.add_argument("--ssd_beta", default=0.4, type=float,
                     help="importance-sampling exponent at the start; it rises linearly to 1 by the last KD step")
    ssd.add_argument("--ssd_alpha", default=0.6, type=float,
                     help="priority exponent: P(i) proportional to priority_i^alpha (--ssd_sampling priority), and "
                          "the policy's starting point")
    ssd.add_argument("--ssd_min_weight", default=0.0, type=float,
                     help="floor of the modulating weight phi (mean 1 before the floor and the cap): with a confident "
                          "teacher most images' focal factor is near 0, and without a floor they drop out of the KD loss")
    ssd.add_argument("--ssd_max_weight", default=3.0, type=float,
                     help="cap of the modulating weight phi (mean 1 over a batch) of one sample")
    ssd.add_argument("--ssd_replace", default=0.25, type=float,
                     help="share of a full buffer that one refresh call synthesises and replaces (at most one "
                          "synthesis batch)")
    ssd.add_argument("--ssd_replace_rule", default="priority", choices=REPLACE_RULES,
                     help="which stored images a full buffer gives up: lowest priority, oldest, or random")

    kd = parser.add_argument_group("distillation")
    kd.add_argument("--teacher", default="wrn40_2", choices=registry.model_names())
    kd.add_argument("--student", default="wrn16_1", choices=registry.model_names())
    kd.add_argument("--teacher_ckpt", default=None,
                    help="teacher checkpoint (default: checkpoints/pretrained/{dataset}_{teacher}.pth)")
    kd.add_argument("--dataset", default="cifar100", choices=registry.dataset_names(),
                    help="task whose test split evaluates the student (its training data is not used)")
    kd.add_argument("--data_root", default="data", help="root folder of the datasets (default: %(default)s)")
    kd.add_argument("--download", action="store_true", help="let torchvision download the test data")
    kd.add_argument("--lr", default=0.1, type=float, help="student learning rate (cosine to 2e-4)")
    kd.add_argument("--lr_decay_milestones", default="", metavar="E1,E2,...",
                    help="step schedule instead of cosine: lr x 0.1 at these KD epochs (counted after warmup)")
    kd.add_argument("--T", default=1.0, type=float, help="KD temperature")
    kd.add_argument("--epochs", default=200, type=int)
    kd.add_argument("--kd_steps", default=400, type=int, help="KD steps after each synthesis call")
    kd.add_argument("--ep_steps", default=400, type=int, help="KD steps per epoch")
    kd.add_argument("--warmup", default=0, type=int, help="epochs of synthesis only, before KD starts")
    kd.add_argument("--batch_size", "--batch-size", "-b", dest="batch_size", default=128, type=int,
                    help="KD batch size; under torchrun the total over the GPUs of one node")
    kd.add_argument("--momentum", default=0.9, type=float)
    kd.add_argument("--wd", "--weight_decay", dest="weight_decay", default=1e-4, type=float)

    run = parser.add_argument_group("run")
    run.add_argument("--config", default=None, help="YAML file of flag values; command-line flags override it")
    run.add_argument("--output", default=None,
                     help="run folder (default: checkpoints/datafree-{method}/{dataset}-{teacher}-{student}[-tag])")
    run.add_argument("--resume", nargs="?", const="auto", default="", metavar="PATH",
                     help="continue from PATH, or from OUTPUT/last.pth when no PATH is given")
    run.add_argument("--evaluate_only", action="store_true", help="evaluate the --resume checkpoint and exit")
    run.add_argument("--start_epoch", default=None, type=int, help="override the epoch to start from")
    run.add_argument("--gpu", default=None, type=int, help="GPU index; -1 for the CPU (default: GPU 0 if any)")
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
    run.add_argument("--dist_backend", default=None, choices=["nccl", "gloo"],
                     help="torchrun only: process-group backend (default: nccl on GPUs, gloo on the CPU)")
    run.add_argument("--on_nonfinite", default="stop", choices=GUARD_MODES,
                     help="a NaN or inf KD or synthesis loss: stop the run at once (exit status 3, last.pth stays the "
                          "last good checkpoint), or skip that step and count it in the log (a run whose steps are "
                          "all skipped for an epoch still stops); see docs/faults-and-recovery.md")
    run.add_argument("--seed", default=0, type=int)
    run.add_argument("--log_tag", default="")
    run.add_argument("-j", "--workers", default=0, type=int, help="loader workers for the test set")
    run.add_argument("-p", "--print_freq", default=0, type=int, help="unused; kept for the original's commands")
    return parser


def parse_args(argv=None):
    """Parse flags; values from --config become defaults that the command line overrides."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**read_config(parser, known.config))
    args = parser.parse_args(argv)
    check_args(args, parser)
    return args


def check_args(args, parser, normalization=None):
    """Stop with one sentence on an impossible flag combination. ``normalization`` ({'mean', 'std'})
    is the data's, by default --dataset's registered one."""
    if args.method is None:
        raise UsageError(f"--method is required; choose one of: {', '.join(sorted(SYNTHESIZERS))}")
    if args.method not in SYNTHESIZERS:
        raise UsageError(f"unknown method '{args.method}'; choose one of: {', '.join(sorted(SYNTHESIZERS))}")
    used = SYNTHESIZERS[args.method].flags
    for flag in METHOD_FLAGS:
        if flag not in used and getattr(args, flag) != parser.get_default(flag):
            users = sorted(name for name, cls in SYNTHESIZERS.items() if flag in cls.flags)
            where = f"it applies to: {', '.join(users)}" if users else "no registered method uses it yet"
            raise UsageError(f"--{flag} is not used by method '{args.method}' ({where}); drop it")
    SYNTHESIZERS[args.method].check_args(args)
    if args.kd_steps <= 0 or args.ep_steps < args.kd_steps:
        raise UsageError(f"--kd_steps ({args.kd_steps}) must be positive and at most --ep_steps ({args.ep_steps})")
    if args.save_pool and not issubclass(SYNTHESIZERS[args.method], PoolSynthesizer):
        raise UsageError(f"--save_pool needs a synthetic pool, but method '{args.method}' samples its generator instead")
    if not 0 <= args.warmup < args.epochs:
        raise UsageError(f"--warmup ({args.warmup}) must be at least 0 and below --epochs ({args.epochs})")
    if args.fp16 and args.precision == AUTO:   # an explicit --fp16 beats a preset's auto
        args.precision = "fp16"
    if args.fp16 and args.precision not in (None, "fp16"):
        raise UsageError(f"--fp16 means --precision fp16, which contradicts --precision {args.precision}; drop one")
    args.precision = args.precision or ("fp16" if args.fp16 else "fp32")
    milestones(args)
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


def milestones(args):
    """The epochs of --lr_decay_milestones as a list of ints ([] for the cosine schedule)."""
    try:
        values = [int(m) for m in str(args.lr_decay_milestones).split(",") if m.strip()]
    except ValueError:
        raise UsageError(f"--lr_decay_milestones '{args.lr_decay_milestones}' must be comma-separated "
                         f"epochs, e.g. 120,150,180") from None
    if values != sorted(values) or any(v <= 0 for v in values):
        raise UsageError(f"--lr_decay_milestones '{args.lr_decay_milestones}' must be increasing positive epochs")
    return values


def build_scheduler(args, optimizer):
    """Cosine over the KD epochs down to 2e-4, or x0.1 steps at --lr_decay_milestones."""
    steps = milestones(args)
    if steps:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=0.1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs - args.warmup, eta_min=2e-4)


def synthesizer_config(args, num_classes, image_shape, train_size=None, task=None, normalization=None):
    """The synthesizer's view of the run; batch sizes are this process's share under torchrun.
    The pool's shard is OUTPUT/pool/rank{k}.u8; ``pool_storage`` is resolved from ``auto``.
    ``normalization`` ({'mean', 'std'}): the data's, by default --dataset's registered one."""
    img_size = args.img_size or image_shape[-1]
    values = {**vars(args), "img_size": img_size}
    config = SimpleNamespace(**values, num_classes=num_classes, nc=image_shape[0], train_size=train_size, task=task,
                             **(normalization or registry.NORMALIZE_DICT[args.dataset]))
    config.batch_size = distributed.per_process(args.batch_size)
    config.synthesis_batch_size = distributed.per_process(args.synthesis_batch_size, "--synthesis_batch_size")
    projected = run_state.projected_pool_bytes(args.epochs, args.ep_steps // args.kd_steps,
                                               config.synthesis_batch_size or config.batch_size,
                                               (image_shape[0], img_size, img_size))
    if args.output:
        config.pool_storage = run_state.choose_pool_storage(args.pool_storage, projected)
        config.pool_root, config.pool_file = args.output, run_state.pool_file(distributed.get_rank())
    else:   # library use without a run folder: the pool stays in memory and is not persisted
        config.pool_storage = "memory"
    return config


def peak_rss_mb():
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_data(args):
    """The task, class count and image shape of --dataset, with its test split (the training split
    is not read: only its registered size is)."""
    num_classes, train_set, val_set = registry.get_dataset(args.dataset, args.data_root, args.download)
    task = registry.get_task(args.dataset)
    require_task_support(args.method, task)
    return SimpleNamespace(task=task, num_classes=num_classes, val_set=val_set, image_shape=tuple(val_set[0][0].shape),
                           train_size=registry.train_size(args.dataset, train_set))


def build_synthesizer(args, data, student, device):
    """The frozen teacher, the --method synthesizer around it and the student, and its config."""
    teacher = load_teacher(registry.get_model(args.teacher, data.num_classes, task=data.task), args.teacher_ckpt,
                           args.dataset, args.teacher, device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    config = synthesizer_config(args, data.num_classes, data.image_shape, train_size=data.train_size, task=data.task)
    return teacher, make_synthesizer(args, teacher, student, config, device), config


def make_synthesizer(args, teacher, student, config, device):
    """The --method synthesizer around a frozen ``teacher`` and ``student`` (channels-last if asked)."""
    if args.channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    synthesizer = SYNTHESIZERS[args.method](teacher, student, config, device)
    if args.channels_last and hasattr(synthesizer, "generator"):
        synthesizer.generator.to(memory_format=torch.channels_last)
    return synthesizer


def student_training(args, student, device):
    """The KD steps' precision (autocast, scaler, non-finite guard), SGD optimiser and schedule."""
    precision = Precision(device, args.precision, on_nonfinite=args.on_nonfinite)
    optimizer = torch.optim.SGD(student.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                **precision.optimizer_options())
    return precision, optimizer, build_scheduler(args, optimizer)


def new_run_totals():
    """The running totals a data-free run checkpoints and reports."""
    return {"epoch": 0, "best_acc1": 0.0, "synthesis_seconds": 0.0, "kd_seconds": 0.0, "wall_seconds": 0.0,
            "synthesis_calls": 0, "kd_steps": 0}


def log_end(logger, task, run, output):
    hours = run["synthesis_seconds"] / 3600
    logger.info(f"Best {task.label}: {run['best_acc1']:.2f}  synthesis cost: {hours:.4f} h "
                f"({run['synthesis_seconds']:.1f} s)  KD: {run['kd_seconds']:.1f} s  "
                f"total wall: {run['wall_seconds']:.1f} s  (run folder: {output})")


# Flags a resume must keep: they shape the saved state (models, image size, the SSD-KD buffer)
# or what its counters mean (steps per round and per epoch). The method is checked first.
RESUME_FIXED = ("dataset", "teacher", "student", "img_size", "synthesis_channels", "ssd_buffer_size", "kd_steps",
                "ep_steps", "ssd_kd_passes", "ssd_sampling")
# Run totals that checkpoints of older versions lack (resumed as 0).
RUN_COUNTERS = ("synthesis_calls", "kd_steps")


def check_resume_settings(args, ckpt, path, data):
    """Stop with one sentence if ``ckpt`` (read from ``path``) cannot continue with these flags."""
    if "synthesizer" not in ckpt:
        raise CheckpointError(f"{path} is not a datafree_kd.py run checkpoint; resume from its last.pth")
    if ckpt.get("method") != args.method:
        raise CheckpointError(f"{path} was written by method '{ckpt.get('method')}', not '{args.method}'; resume "
                              f"with --method {ckpt.get('method')}, or start a new run with another --output")
    saved = ckpt.get("args") or {}
    for flag in RESUME_FIXED:
        if flag not in saved:      # a checkpoint of an older version
            continue
        before, now_value = saved[flag], getattr(args, flag)
        if flag == "img_size":     # left out: the data's width
            before, now_value = before or data.image_shape[-1], now_value or data.image_shape[-1]
        if before != now_value:
            before, now_value = ("left out" if v is None else v for v in (before, now_value))
            raise CheckpointError(f"{path} was written with --{flag} {before}; resume with the same setting "
                                  f"(it shapes the saved state; this run has {now_value}), or start a new run "
                                  f"with another --output")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with StopSignals() as stop:
        return run_datafree(args, argv, stop)


def run_datafree(args, argv, stop):
    """The run of ``main``; ``stop`` (StopSignals) tells it when SIGINT or SIGTERM asked it to end."""
    device, resume_path = prepare_run(args, f"datafree-{args.method}", f"{args.dataset}-{args.teacher}-{args.student}")
    args.precision = resolve_mode(args.precision, device)

    data = load_data(args)
    task, num_classes = data.task, data.num_classes
    val_loader = torch.utils.data.DataLoader(data.val_set, batch_size=max(args.batch_size, 256), shuffle=False,
                                             sampler=distributed.eval_sampler(data.val_set),
                                             num_workers=args.workers, pin_memory=device.type == "cuda",
                                             persistent_workers=args.workers > 0)   # not respawned every epoch
    student = registry.get_model(args.student, num_classes, task=task).to(device)
    if args.evaluate_only:
        return evaluate_checkpoint(student, resume_path, args.student, val_loader, device, task)
    ckpt = None
    if resume_path:    # read and checked before any model is built
        ckpt = load_checkpoint(resume_path, map_location=device, advice=RUN_CHECKPOINT_ADVICE)
        check_resume_settings(args, ckpt, resume_path, data)
    teacher, synthesizer, config = build_synthesizer(args, data, student, device)
    distributed.seed_per_rank(args.seed)          # models are built alike; now each rank its own stream
    kd_student, kd_teacher = distributed.wrap_ddp(student, device), teacher
    if args.compile:
        kd_student, kd_teacher = torch.compile(kd_student), torch.compile(teacher)
    precision, optimizer, scheduler = student_training(args, student, device)

    run = new_run_totals()
    resharded = progress = None
    if resume_path:
        restore_training(ckpt, resume_path, student, args.student, optimizer, scheduler)
        resharded = run_state.restore(ckpt, resume_path, synthesizer, args.seed, device)
        with missing_entries(resume_path):
            precision.load_state_dict(ckpt.get("precision"))
            run.update({k: ckpt.get(k, 0) if k in RUN_COUNTERS else ckpt[k] for k in run})
        progress = ckpt.get("progress")
    elif args.cmi_init:
        synthesizer.seed_pool(args.cmi_init)
    if args.start_epoch is not None and args.start_epoch != run["epoch"]:
        run["epoch"], progress = args.start_epoch, None
    leftovers = remove_leftovers(args.output) if distributed.is_main_process() else []

    logger = distributed.make_logger(args.output, f"datafree-{args.method}")
    loop = EpochLoop(args, run, synthesizer, student, kd_teacher, optimizer, scheduler, precision, val_loader, device,
                     logger, kd_student, stop=stop, resume=ResumeHint(argv, resume_path, progress))
    try:
        logger.args(args)
        if leftovers:
            logger.info(f"removed temporary files of a killed run: {', '.join(leftovers)}")
        if resume_path:
            logger.info(f"resumed from {resume_path} at epoch {run['epoch']}{describe_progress(progress)} "
                        f"(best {task.label} {run['best_acc1']:.2f})")
            if resharded:
                logger.info(resharded)
        if hasattr(synthesizer, "pool"):
            logger.info(f"synthetic pool: {config.pool_storage} storage, shard {synthesizer.pool.path}")
        loop.run(progress)
        log_end(logger, task, run, args.output)
        if args.save_pool:
            save_pool(synthesizer.pool, args.save_dir, logger)
    finally:
        logger.close()
        if hasattr(synthesizer, "pool"):
            synthesizer.pool.close()
    return dict(run)


def remove_leftovers(run_dir):
    """The temporary files a killed process left in the run folder, removed (rank 0, at the start)."""
    return [os.path.join(sub, name) if sub else name for sub in ("", run_state.RANK_DIR)
            for name in remove_stale_temporaries(os.path.join(run_dir, sub))]


def save_pool(pool, folder, logger):
    """Write the pool as PNG files: every process its own images, in parallel, numbered after
    the images of the lower ranks."""
    sizes = distributed.all_gather_ints(len(pool))
    pool.save_png(folder, start=sum(sizes[:distributed.get_rank()]))
    distributed.barrier()
    logger.info(f"wrote {sum(sizes)} pool images to {folder}")


def new_progress():
    """Where the loop is inside an epoch: its plan (set when it starts), the round, whether the
    round's synthesis calls are done (and how many), its KD steps done, their summed loss, and the
    seconds and losses of the epoch so far. A save made mid-epoch (a stop signal) stores it, and
    the resumed run continues from it."""
    return {"plan": None, "round": 0, "synthesized": False, "calls_done": 0, "kd_done": 0, "kd_loss_sum": 0.0,
            "kd_taken": 0, "kd_loss": float("nan"), "seconds": 0.0, "phase": {"synthesis": 0.0, "kd": 0.0}, "losses": {}, "skipped": {}}


def describe_progress(progress):
    if not progress:
        return ""
    done = "its synthesis call and " if progress["synthesized"] else ""
    return f", round {progress['round'] + 1}, after {done}{progress['kd_done']} KD steps of it"


NOTHING_SAVED = "no checkpoint was written yet"


class ResumeHint:
    """What a stopped run tells the user: how to resume it, and which checkpoint is the last good one."""

    def __init__(self, argv, resume_path, progress):
        self.argv = argv
        self.saved = (f"the last good checkpoint is {resume_path} (as resumed{describe_progress(progress)})"
                      if resume_path else NOTHING_SAVED)

    def command(self):
        """The command that continues the run (the same one when nothing was saved yet)."""
        script = sys.argv[0] if os.path.basename(sys.argv[0]) == "datafree_kd.py" else "datafree_kd.py"
        return resume_hint(self.argv, script, resume=self.saved != NOTHING_SAVED)

    def saved_at(self, path, epochs_done, progress=None):
        point = f"epoch {epochs_done}{describe_progress(progress)}" if progress else finished_epochs(epochs_done)
        self.saved = f"the last good checkpoint is {path} ({point})"


class EpochLoop:
    """The epoch loop of a data-free run. ``kd_student`` is the student as trained
    (DistributedDataParallel under torchrun, compiled with --compile), ``teacher`` the teacher of
    the KD steps. Each epoch runs the synthesizer's ``epoch_plan``: rounds of synthesis calls,
    then KD steps (none during warmup); Fast's ``ep_steps // kd_steps`` rounds of one call and
    ``kd_steps`` steps unless the method plans otherwise. Then it evaluates and persists.

    ``stop`` (StopSignals) is asked after every synthesis call, KD step and epoch: on a signal
    the loop writes last.pth at that point (with the epoch's progress) and raises Interrupted.
    A non-finite loss (NonFiniteError) is completed with where it happened and what was saved.
    """

    def __init__(self, args, run, synthesizer, student, teacher, optimizer, scheduler, precision, val_loader, device,
                 logger, kd_student=None, stop=None, resume=None):
        self.args, self.run_totals, self.synthesizer = args, run, synthesizer
        self.student, self.teacher = student, teacher
        self.kd_student = student if kd_student is None else kd_student   # not `or`: a compiled module has no truth value
        self.optimizer, self.scheduler, self.precision = optimizer, scheduler, precision
        self.val_loader, self.device, self.logger = val_loader, device, logger
        self.stop, self.resume = stop, resume or ResumeHint([], None, None)
        self.guards = {"kd": precision.guard, "synthesis": synthesizer.precision.guard}

    def _stop_signal(self):
        return self.stop.requested() if self.stop is not None else 0

    def run(self, progress=None):
        args, run = self.args, self.run_totals
        if self._stop_signal():
            raise self.stop.interrupted(f"it came before training started, so nothing new was written and "
                                        f"{self.resume.saved}", resume=self.resume.command())
        warmup_stats = None
        for epoch in range(run["epoch"], args.epochs):
            at = progress or new_progress()
            progress = None
            epoch_start = now(self.device) - at["seconds"]
            for guard in self.guards.values():
                guard.new_epoch()
            try:
                images = self.rounds_of(epoch, at, epoch_start)
                at["skipped"] = {name: at["skipped"].get(name, 0) + guard.end_epoch()
                                 for name, guard in self.guards.items()}
            except NonFiniteError as err:
                err.context = self.nonfinite_context(epoch, at)
                raise
            warmup_stats = self.end_epoch(epoch, at, images, epoch_start, warmup_stats)
            if self._stop_signal() and epoch + 1 < args.epochs:
                raise self.stop.interrupted(f"the run saved its {finished_epochs(epoch + 1)} in last.pth",
                                            resume=self.resume.command())

    def rounds_of(self, epoch, at, epoch_start):
        """The rounds of ``epoch`` from ``at`` on; returns the images of the last synthesis call
        (None if this process made none in the epoch). The epoch's plan (the synthesizer's
        ``epoch_plan``: a list of rounds of synthesis calls, then KD steps) is fixed when the epoch
        starts and kept in ``at``, so that a run resumed mid-epoch follows the same plan."""
        args, phase, images = self.args, at["phase"], None
        stop_check = (lambda: self._stop_signal() != 0) if self.stop is not None else None
        if at["plan"] is None:
            at["plan"] = [list(r) for r in self.synthesizer.epoch_plan(epoch)]
        plan = at["plan"]
        while at["round"] < len(plan):
            number, (calls, steps) = at["round"] + 1, plan[at["round"]]
            if not at["synthesized"] and at["calls_done"] == 0:
                at.update(kd_loss_sum=0.0, kd_taken=0)
            while not at["synthesized"] and at["calls_done"] < calls:
                tic = now(self.device)
                syn_out = self.synthesizer.synthesize()
                phase["synthesis"] += now(self.device) - tic
                images = syn_out["images"]
                self.run_totals["synthesis_calls"] += 1
                at.update(calls_done=at["calls_done"] + 1,
                          losses={k: float(v) for k, v in syn_out.items() if k.startswith("loss")})
                at["synthesized"] = at["calls_done"] == calls
                call = "the synthesis call" if calls == 1 else f"synthesis call {at['calls_done']} of {calls}"
                self.maybe_stop(epoch, at, epoch_start, f"{call} of round {number}")
            at["synthesized"] = True
            if epoch >= args.warmup and at["kd_done"] < steps:
                tic = now(self.device)
                kd = distill_steps(self.synthesizer, self.kd_student, self.teacher, self.optimizer, self.precision,
                                   steps - at["kd_done"], stop=stop_check)
                kd_seconds = now(self.device) - tic
                moved = kd.sample_seconds if self.synthesizer.sampling_is_synthesis else 0.0
                phase["synthesis"] += moved
                phase["kd"] += kd_seconds - moved
                self.run_totals["kd_steps"] += kd.done
                at.update(kd_done=at["kd_done"] + kd.done, kd_loss_sum=at["kd_loss_sum"] + kd.loss_sum,
                          kd_taken=at["kd_taken"] + kd.taken)
                at["kd_loss"] = at["kd_loss_sum"] / at["kd_taken"] if at["kd_taken"] else float("nan")
                if at["kd_done"] < steps:
                    self.maybe_stop(epoch, at, epoch_start, f"KD step {at['kd_done']} of round {number}")
            at.update(round=number, synthesized=False, calls_done=0, kd_done=0)
            if at["round"] < len(plan):    # after the last round the epoch's end comes first
                self.maybe_stop(epoch, at, epoch_start, f"round {number} of {len(plan)}")
        return images

    def maybe_stop(self, epoch, at, epoch_start, point):
        """If a stop signal came: save this point of ``epoch`` in last.pth and raise Interrupted."""
        if not self._stop_signal():
            return
        at["seconds"] = now(self.device) - epoch_start
        at["skipped"] = {name: at["skipped"].get(name, 0) + guard.skipped for name, guard in self.guards.items()}
        tag = f"round{at['round']}-{'s' if at['synthesized'] else ''}kd{at['kd_done']}"
        self.persist(is_best=False, progress=at, tag=tag)
        raise self.stop.interrupted(f"the run saved epoch {epoch} up to {point} in last.pth",
                                    resume=self.resume.command())

    def checkpoint(self, progress=None):
        """The run's state for last.pth (``progress``: where in the next epoch, for a save mid-epoch)."""
        args, run = self.args, self.run_totals
        state = {"state_dict": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "precision": self.precision.state_dict(),
                 "arch": args.student, "num_classes": self.synthesizer.config.num_classes, "dataset": args.dataset,
                 "teacher": args.teacher, "method": args.method, "args": dict(vars(args)), **run}
        if progress is not None:
            state["progress"] = progress
        return state

    def persist(self, is_best, progress=None, tag=None):
        state = self.checkpoint(progress)
        best = {k: state[k] for k in ("state_dict", "arch", "num_classes", "dataset", "teacher", "method", "epoch",
                                      "best_acc1", "args")} if is_best else None
        run_state.persist(self.synthesizer, self.args.output, self.run_totals["epoch"], state, is_best, best, tag)
        self.resume.saved_at(os.path.join(self.args.output, "last.pth"), self.run_totals["epoch"], progress)

    def nonfinite_context(self, epoch, at):
        advice = "" if self.args.on_nonfinite == "skip" else ", or rerun it with --on_nonfinite skip to skip such steps"
        again = "start it again with" if self.resume.saved == NOTHING_SAVED else "resume from it with"
        rounds = len(at["plan"] or [None])    # the plan is made when the epoch's first round starts
        return (f" (epoch {epoch}, round {min(at['round'] + 1, rounds)} of {rounds}); the run stopped before it "
                f"reached a weight, the pool or a checkpoint, and {self.resume.saved}: {again} {self.resume.command()} "
                f"(lower learning rates or another --seed may avoid it){advice}")

    def end_epoch(self, epoch, at, images, epoch_start, warmup_stats):
        """Evaluate, log, checkpoint; returns the evaluation a warm-up epoch can reuse."""
        args, run, device, task = self.args, self.run_totals, self.device, self.synthesizer.task
        phase = {**at["phase"], "eval": 0.0, "output": 0.0, "persist": 0.0}
        tic = now(device)
        if epoch < args.warmup and warmup_stats is not None:
            stats = warmup_stats   # no KD yet: the student is the one already evaluated in this warm-up
        else:
            stats = evaluate(self.student, self.val_loader, device, task)
        phase["eval"] = now(device) - tic
        lr = self.optimizer.param_groups[0]["lr"]
        if epoch >= args.warmup:
            self.scheduler.step()

        tic = now(device)
        is_best = stats[task.primary] > run["best_acc1"]
        run["best_acc1"] = max(run["best_acc1"], stats[task.primary])
        run["synthesis_seconds"] += phase["synthesis"]
        run["kd_seconds"] += phase["kd"]
        run["epoch"] = epoch + 1
        if distributed.is_main_process() and images is not None:
            grid = make_grid(images[:64].float().cpu(), nrow=8)
            save_image(grid, os.path.join(args.output, "synthetic.png"))
            self.logger.writer.add_image("synthetic", grid, epoch)
        losses, kd_loss = at["losses"], at["kd_loss"]
        skipped = {f"skipped_{name}_steps": n for name, n in at["skipped"].items()} if args.on_nonfinite == "skip" else {}
        self.logger.scalars(task.scalars(stats), epoch, "val/")
        self.logger.scalars({"kd_loss": kd_loss, "lr": lr, **skipped, **{f"{k}_seconds": v for k, v in phase.items()}},
                            epoch, "train/")
        self.logger.scalars(losses, epoch, "synthesis/")
        epoch_seconds = now(device) - epoch_start
        run["wall_seconds"] += epoch_seconds
        phase["output"] = now(device) - tic

        tic = now(device)
        self.persist(is_best)
        phase["persist"] = now(device) - tic
        pool = getattr(self.synthesizer, "pool", None)
        stored = {} if pool is None else {"synthetic_images": sum(distributed.all_gather_ints(len(pool)))}
        if distributed.is_main_process():
            record_epoch(args.output, epoch=epoch, epochs=args.epochs, acc1=stats[task.primary],
                         epoch_seconds=epoch_seconds, info=run_summary_info("datafree_kd", args, args.student),
                         measured={"kd_loss": kd_loss, **losses, "persist_seconds": phase["persist"],
                                   "peak_rss_mb": peak_rss_mb()},
                         synthesis_seconds=run["synthesis_seconds"], kd_seconds=run["kd_seconds"],
                         synthesis_calls=run["synthesis_calls"], kd_steps=run["kd_steps"], **stored)
        self.logger.info(
            f"[Eval] epoch={epoch} {task.describe(stats)} "
            f"best={run['best_acc1']:.2f} lr={lr:.4g} kd_loss={kd_loss:.4f} "
            + " ".join(f"{k}={v:.3f}" for k, v in losses.items())
            + "".join(f" {k}={v}" for k, v in skipped.items())
            + " | seconds: " + " ".join(f"{k}={v:.2f}" for k, v in phase.items()))
        return stats if epoch < args.warmup else None


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
