"""Ours against the original's GenerativeSynthesizer on the same inputs: DAFL, ZSKT, DFQ.

Where a side-by-side pair differs (docs/side_by_side.md), this says whether the two implementations
differ or only their random streams. Both sides start from the same generator weights, teacher
file and student weights, and draw every z after the same ``torch.manual_seed``. Each call is one
synthesis call (the budget's generator steps) followed by the budget's KD steps (SGD, momentum 0.9,
weight decay 1e-4, KD at T 1 as in the original's loop), ours through ``datafree.engine.distill_steps``
with its run's optimiser (``datafree.run.student_training``), the original through a copy of its KD
loop. After every call it reports the largest difference of generator and student parameters, of the
last KD batch, and the KD losses.

With ``--epochs E`` it runs the whole budget instead: E epochs of ``ep_steps // kd_steps`` calls, each
epoch ending as a run's does, with both students evaluated on the test split (each side with its own
loader and evaluation: ours ``datafree.engine.evaluate`` on the registered dataset, the original the
harness's) and both cosine schedules stepped. It then prints one row per epoch with both accuracies:
where they stay equal, the two runs differ only in their random streams (initial weights and draws).
``--as_run SEED`` goes one step further: both sides are initialised in the harness's order after its
``seed_all(SEED)`` and each keeps its own stream, never reseeded, so that the original's side replays the
side-by-side run of that seed and ours is shown what it does with the same random numbers.

The original is built by the harness (``../shared/upstream_bench/run_upstream.py``: its
``build_synth``, with the side-by-side budget of ``benchmarks/side_by_side.py``). Ours takes the same
flags, plus the variant row's flags where the side-by-side has one for the method (ZSKT and DFQ:
``--adv 0``, since the original passes the teacher as the student of its generator). Both sides
normalise with our registry's mean and std (with ``--as_run``: the harness's, which for Fashion-MNIST are
the same numbers), so that their inputs are the same bits.

    python benchmarks/generative_probe.py --upstream /path/to/Fast-Datafree --methods dafl,zskt,dfq --calls 10
    python benchmarks/generative_probe.py --upstream /path/to/Fast-Datafree --methods dafl --epochs 12 [--as_run 2]
"""
import argparse
import contextlib
import dataclasses
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from datafree.commands import kd as datafree_kd  # noqa: E402
from datafree.engine import distill_steps, evaluate  # noqa: E402
from datafree.run import (dataset_data, frozen_teacher, registered_data, student_training,  # noqa: E402
                          synthesizer_config)
from datafree.synthesis import SYNTHESIZERS  # noqa: E402
from datafree import registry  # noqa: E402
import side_by_side  # noqa: E402

GENERATIVE = side_by_side.GENERATIVE
# Both projects name their package `datafree` (and their model zoo `registry`): each side's modules are put in
# sys.modules while that side runs, so that an import made inside a function finds its own project's.
SHARED_NAMES = ("datafree", "registry")


def own_modules():
    return {name: module for name, module in sys.modules.items()
            if name in SHARED_NAMES or name.startswith("datafree.")}


class TwoProjects:
    """Ours (imported at the top of this file) and the original, each importable while its side runs."""

    def __init__(self, upstream, harness):
        self.ours = own_modules()
        for name in self.ours:
            del sys.modules[name]
        sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != ROOT]
        if harness not in sys.path:
            sys.path.insert(0, harness)
        import run_upstream

        self.harness = run_upstream
        run_upstream.import_upstream(upstream)
        self.original = own_modules()
        self.datafree = self.original["datafree"]
        self.registry = self.original["registry"]
        self._use(self.ours)

    def _use(self, modules):
        for name in list(own_modules()):
            del sys.modules[name]
        sys.modules.update(modules)

    @contextlib.contextmanager
    def side(self, which):
        self._use(self.original if which == "original" else self.ours)
        try:
            yield
        finally:
            self._use(self.ours)


def max_difference(a, b):
    return max((x.detach() - y.detach()).abs().max().item() for x, y in zip(a, b))


def variant_flags(method):
    """The flags of the method's side-by-side variant rows: the original's behaviour, where ours differs."""
    return " ".join(extra for _, extra in side_by_side.VARIANTS.get(method, []))


def our_flags(method, config, opts):
    """datafree_kd.py's flags of the side-by-side budget with the variant rows' flags (no run folder)."""
    cmd = side_by_side.our_command(method, config, opts, "unused", opts.seed, variant_flags(method))
    output = cmd.index("--output")
    return cmd[2:output] + cmd[output + 2:]       # without the interpreter, the script and --output


class Streams:
    """Where each side draws its random numbers. By default both sides are reseeded alike before each part of
    a call (its synthesis, its KD steps), so a difference cannot carry over. With ``--as_run SEED`` each side
    keeps one stream from the state that the harness's initialisation for SEED leaves, never reseeded, as the
    harness's run draws: the original's side then replays that run of the side-by-side table."""

    def __init__(self, opts):
        self.carry = opts.as_run is not None
        start = torch.get_rng_state()
        self.states = {"ours": start, "original": start.clone()}

    @contextlib.contextmanager
    def side(self, which, seed):
        """Draw from ``which`` side's stream: its own carried on, or one reseeded with ``seed``."""
        if self.carry:
            torch.set_rng_state(self.states[which])
        else:
            torch.manual_seed(seed)
        try:
            yield
        finally:
            if self.carry:
                self.states[which] = torch.get_rng_state()


def original_split(projects, opts):
    """The harness's split of --dataset (its arrays, and the mean and std it normalises with)."""
    harness = projects.harness
    harness.DATA = harness.DATASETS[opts.dataset]
    return (harness.DATA.load_split(root=opts.data_root) if opts.dataset == "fashion_mnist"
            else harness.DATA.load_split(seed=0))


def probe(method, projects, opts):
    """Rows of the differences after each call (``--calls``), or after each epoch with both accuracies
    (``--epochs``)."""
    config, _ = side_by_side.harness_config(opts.harness, method, dataset=opts.dataset)
    args = datafree_kd.parse_args(our_flags(method, config, opts))
    device = torch.device("cpu")
    image_shape = (len(registry.NORMALIZE_DICT[opts.dataset]["mean"]), 32, 32)
    data = dataset_data(args, device) if opts.epochs else registered_data(args, image_shape)
    split = original_split(projects, opts) if opts.epochs or opts.as_run is not None else None
    their_loader = projects.harness.make_eval_loader(split, 256) if opts.epochs else None
    if opts.as_run is not None:
        # the harness normalises with the mean and std it computes from the training split (Fashion-MNIST's
        # registry holds the same numbers; digits' is rounded to 1e-4); both sides synthesise with those, so that
        # the original's side is the harness's run to the bit
        data = dataclasses.replace(data, normalization={"mean": split["mean"], "std": split["std"]})
    normalization = data.normalization
    if opts.as_run is None:
        teacher = frozen_teacher(args, data, device)
        torch.manual_seed(0)
        student = registry.get_model(opts.student, data.num_classes)
    else:   # the harness's order: seed, student, teacher, generator
        projects.harness.seed_all(opts.as_run)
        student = registry.get_model(opts.student, data.num_classes)
        teacher = frozen_teacher(args, data, device)
    ours = SYNTHESIZERS[method](teacher, student, synthesizer_config(args, data), device)
    precision, optimizer, scheduler = student_training(args, student, device)
    streams = Streams(opts)

    with projects.side("original"):
        datafree = projects.datafree
        their_teacher = projects.registry.get_model(opts.teacher, num_classes=data.num_classes).eval()
        their_teacher.load_state_dict(teacher.state_dict())
        their_student = projects.registry.get_model(opts.student, num_classes=data.num_classes)
        their_student.load_state_dict(student.state_dict())
        normalizer = datafree.utils.Normalizer(normalization["mean"], normalization["std"])
        theirs = projects.harness.build_synth(method, dict(config, synthesis_batch_size=config["batch_size"]),
                                              datafree, their_teacher, their_student, normalizer, None, None)
        theirs.generator.load_state_dict(ours.generator.state_dict())
        # the harness's optimiser and schedule
        their_optimizer = torch.optim.SGD(their_student.parameters(), config["lr"], momentum=0.9, weight_decay=1e-4)
        their_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(their_optimizer, config["cosine_T_max"],
                                                                     eta_min=2e-4)
        criterion = datafree.criterions.KLDiv()

    calls_per_epoch = config["ep_steps"] // config["kd_steps"]
    calls = opts.epochs * calls_per_epoch if opts.epochs else opts.calls
    rows = []
    for call in range(calls):
        with streams.side("ours", opts.seed + call):
            ours.synthesize()
        with streams.side("original", opts.seed + call), projects.side("original"):
            theirs.synthesize()
        with streams.side("ours", opts.seed + 10_000 + call):
            kd = distill_steps(ours, student, teacher, optimizer, precision, config["kd_steps"])
        with streams.side("original", opts.seed + 10_000 + call), projects.side("original"):
            their_student.train()
            their_loss = 0.0
            for _ in range(config["kd_steps"]):
                images, _ = theirs.sample()
                with torch.no_grad():
                    t_out, _ = their_teacher(images, return_features=True)
                loss = criterion(their_student(images.detach()), t_out.detach())
                their_optimizer.zero_grad()
                loss.backward()
                their_optimizer.step()
                their_loss += loss.item()
        epoch_ends = opts.epochs and (call + 1) % calls_per_epoch == 0
        if opts.epochs and not epoch_ends:
            continue        # with --epochs, rows (and their look at the next batch) are made at the epochs' ends
        with torch.random.fork_rng(devices=[]):     # a look at the next batch, drawing from neither side's stream
            torch.manual_seed(opts.seed + 20_000 + call)
            with torch.no_grad():
                our_next = ours.sample().images
            torch.manual_seed(opts.seed + 20_000 + call)
            with projects.side("original"):
                their_next, _ = theirs.sample()
        row = dict(call=call + 1,
                   generator=max_difference(ours.generator.parameters(), theirs.generator.parameters()),
                   batch=(our_next - their_next).abs().max().item(),
                   student=max_difference(student.parameters(), their_student.parameters()),
                   ours_loss=kd.loss_sum / kd.taken, their_loss=their_loss / config["kd_steps"])
        if epoch_ends:
            row.update(epoch=(call + 1) // calls_per_epoch, lr=optimizer.param_groups[0]["lr"],
                       their_lr=their_optimizer.param_groups[0]["lr"])
            with streams.side("ours", opts.seed + 30_000 + call):    # iterating a loader draws a seed from the stream
                row["ours_acc"] = evaluate(student, data.val_loader, device)["acc1"]
            student.train()
            with streams.side("original", opts.seed + 30_000 + call), projects.side("original"):
                row["their_acc"] = projects.harness.evaluate(datafree, their_student, their_loader)[0]
                their_student.train()
            scheduler.step()      # warm-up is 0 for these methods: every epoch trains
            their_scheduler.step()
        rows.append(row)
    return rows


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="a checkout of zju-vipa/Fast-Datafree (only read)")
    parser.add_argument("--harness", default=side_by_side.DEFAULT_HARNESS,
                        help="folder of run_upstream.py (default: %(default)s)")
    parser.add_argument("--methods", default=",".join(GENERATIVE), help="comma list from: " + ", ".join(GENERATIVE))
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted(side_by_side.DATASET_BUDGETS))
    parser.add_argument("--teacher", default="wrn16_2")
    parser.add_argument("--student", default="wrn16_1")
    parser.add_argument("--teacher_ckpt", default=None,
                        help="teacher file (default: the side-by-side's, checkpoints/pretrained/<dataset>_wrn16_2.pth);"
                             " random weights are never used, so the generator gets the teacher's real gradients")
    parser.add_argument("--data_root", default=None,
                        help="the dataset's folder (default: where each side looks); read only with --epochs")
    parser.add_argument("--calls", default=10, type=int, help="synthesis calls, each followed by its KD steps")
    parser.add_argument("--epochs", default=0, type=int,
                        help="run this many epochs of the budget instead of --calls, evaluating both students after "
                             "each and stepping both schedules")
    parser.add_argument("--seed", default=1000, type=int, help="base of the seeds both sides are reseeded with")
    parser.add_argument("--as_run", default=None, type=int, metavar="SEED",
                        help="initialise as the harness's run of SEED does (student, teacher, generator) and give each "
                             "side one stream, never reseeded: the original's side replays that side-by-side run")
    return parser


def main(argv=None):
    parser = build_parser()
    opts = parser.parse_args(argv)
    methods = [m.strip() for m in opts.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in GENERATIVE]
    if unknown:
        parser.error(f"--methods {','.join(unknown)}: this probe compares {', '.join(GENERATIVE)} only")
    if not os.path.isfile(os.path.join(opts.upstream, "registry.py")):
        parser.error(f"--upstream {opts.upstream} is not a Fast-Datafree checkout; clone zju-vipa/Fast-Datafree")
    if not os.path.isfile(os.path.join(opts.harness, "run_upstream.py")):
        parser.error(f"--harness {opts.harness} has no run_upstream.py; give the folder of ../shared/upstream_bench")
    opts.teacher_ckpt = os.path.abspath(opts.teacher_ckpt or side_by_side.DEFAULT_TEACHERS[opts.dataset])
    opts.ours_root, opts.ours_args = ROOT, ""
    torch.set_num_threads(1)
    projects = TwoProjects(os.path.abspath(opts.upstream), os.path.abspath(opts.harness))
    columns = ["method", "ours' flags beyond the budget", "epoch" if opts.epochs else "call", "generator max abs diff",
               "next batch max abs diff", "student max abs diff", "KD loss, ours", "KD loss, original"]
    if opts.epochs:
        columns += ["student lr, ours", "student lr, original", "top-1 %, ours", "top-1 %, original"]
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    verdicts = []
    for method in methods:
        rows = probe(method, projects, opts)
        extra = variant_flags(method) or "-"
        for row in rows:
            accuracies = (f" | {row['lr']:.6f} | {row['their_lr']:.6f} | {row['ours_acc']:.2f} | {row['their_acc']:.2f}"
                          if opts.epochs else "")
            print(f"| {method} | {extra} | {row['epoch'] if opts.epochs else row['call']} | {row['generator']:.2e} | "
                  f"{row['batch']:.2e} | {row['student']:.2e} | {row['ours_loss']:.6f} | {row['their_loss']:.6f}"
                  f"{accuracies} |")
        last = rows[-1]
        same = last["generator"] == last["student"] == 0.0
        verdict = (f"{method} {'bit-identical' if same else 'differs'} after {last['call']} calls "
                   f"(generator {last['generator']:.1e}, student {last['student']:.1e}")
        if opts.epochs:
            best = (max(r["ours_acc"] for r in rows), max(r["their_acc"] for r in rows))
            verdict += (f"; top-1 after {last['epoch']} epochs {last['ours_acc']:.2f} vs {last['their_acc']:.2f}, "
                        f"best {best[0]:.2f} vs {best[1]:.2f}")
        verdicts.append(verdict + ")")
    print("generative_probe: " + "; ".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
