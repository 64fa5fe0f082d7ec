"""Make an initial synthetic pool for --cmi_init with this project's own synthesizers.

The original release's ImageNet recipe starts from a pool of pre-inverted images that it never
published. This script makes one from the same teacher: it runs a pool method (by default
DeepInversion at 2,000 steps per batch, ``configs/imagenet/init_pool_deepinv.yaml``) until
the pool holds ``--images`` images, and writes a pool folder (one shard per process and a
``pool.json`` manifest) that ``datafree_kd.py --cmi_init FOLDER`` reads directly, each process
taking its share. ``--png`` also writes every image as a PNG file for inspection.

    python scripts/make_init_pool.py --config configs/imagenet/init_pool_deepinv.yaml --images 50000 \\
        --pool_out checkpoints/init_pools/imagenet-resnet50
    torchrun --nproc_per_node=8 scripts/make_init_pool.py --config ... --images 50000 --pool_out ...

It takes every flag of datafree_kd.py (method, teacher, synthesis settings; KD flags are
ignored). It can be stopped at any moment: run the same command again and it continues
where each process stopped. Each batch reports its seconds and the projected hours for the
whole pool (per process; under torchrun the processes work in parallel).
"""
import argparse
import json
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datafree import distributed, registry  # noqa: E402
from datafree.checkpoint import atomic_write_text  # noqa: E402
from datafree.commands import kd as datafree_kd  # noqa: E402
from datafree.engine import Clock  # noqa: E402
from datafree.errors import UsageError  # noqa: E402
from datafree.pool import ShardFile, write_manifest  # noqa: E402
from datafree.run import dataset_data, frozen_teacher, make_synthesizer, synthesizer_config  # noqa: E402
from datafree.synthesis import PoolSynthesizer, SYNTHESIZERS  # noqa: E402
from datafree.utils.cli import default_teacher_ckpt, run_cli  # noqa: E402
from datafree.utils.misc import select_device, set_seed  # noqa: E402


def parse(argv):
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--images", type=int, default=None, help="images the pool should hold (over all processes)")
    own.add_argument("--pool_out", default=None, help="folder of the pool (created; an unfinished one is continued)")
    own.add_argument("--png", action="store_true", help="also write every image as PNG under POOL_OUT/png/")
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        own.print_help()
        sys.exit(0)
    mine, rest = own.parse_known_args(argv)
    if mine.images is None or mine.images < 1 or not mine.pool_out:
        raise UsageError("give --images N (at least 1) and --pool_out FOLDER")
    args = datafree_kd.parse_args(rest)
    if not issubclass(SYNTHESIZERS[args.method], PoolSynthesizer):
        raise UsageError(f"method '{args.method}' keeps no pool (it samples a generator); use deepinv, fast, "
                         f"fast_meta, fast_meta_imagenet or cmi")
    args.output, args.pool_storage = mine.pool_out, "disk"
    args.teacher_ckpt = args.teacher_ckpt or default_teacher_ckpt(args.dataset, args.teacher)
    return mine, args


def progress_file(folder, rank):
    return os.path.join(folder, f"progress-rank{rank}.json")


def main(argv=None):
    mine, args = parse(argv)
    device = distributed.init_distributed(args.gpu, args.dist_backend) or select_device(args.gpu)
    rank, world = distributed.get_rank(), distributed.get_world_size()
    share = mine.images // world + (rank < mine.images % world)
    data = dataset_data(args, device)
    student = registry.get_model(args.student, data.num_classes, task=data.task).to(device)
    synthesizer = make_synthesizer(args, frozen_teacher(args, data, device), student, synthesizer_config(args, data),
                                   device)
    synthesizer.precision.guard.agree = False   # each process makes its own share, in its own number of calls
    pool = synthesizer.pool

    progress_path = progress_file(args.output, rank)
    done = {"rows": 0, "calls": 0, "seconds": 0.0}
    if os.path.isfile(progress_path):
        with open(progress_path) as f:
            done = json.load(f)
        if done["rows"]:
            pool.shard = ShardFile.open(pool.path, done["shape"], done["rows"])
            pool.size = done["rows"]
        synthesizer.calls = done["calls"]
    while pool.size < share:
        set_seed(args.seed + 1000 * done["calls"] + rank)   # a continued run draws what it would have drawn
        tic = Clock(device).now()
        synthesizer.synthesize()
        pool.sync()
        seconds = Clock(device).now() - tic
        done.update(rows=pool.size, calls=done["calls"] + 1, seconds=done["seconds"] + seconds,
                    shape=list(pool.shape))
        atomic_write_text(json.dumps(done), progress_path)
        per_image = done["seconds"] / pool.size
        print(f"[init pool] process {rank}: {pool.size}/{share} images, {seconds:.1f} s for this batch; "
              f"projected {per_image * share / 3600:.2f} h for its share of the pool")

    if pool.size > share:   # the last batch overshot this process's share
        pool.truncate(share)
        done["rows"] = share
        atomic_write_text(json.dumps(done), progress_path)
    sizes = distributed.all_gather_ints(pool.size)
    if rank == 0:
        write_manifest(args.output, pool.shape, [(os.path.join("pool", f"rank{r}.u8"), n) for r, n in enumerate(sizes)])
        print(f"[init pool] {sum(sizes)} images in {args.output} (pool.json); use --cmi_init {args.output}")
    if mine.png:
        pool.save_png(os.path.join(args.output, "png"), start=sum(sizes[:rank]))
    pool.close()
    return {"images": sum(sizes), "seconds": done["seconds"]}


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
