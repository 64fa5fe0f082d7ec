"""Same numbers before and after a change: run a fixed set of seeded presets at two checkouts and compare.

    python scripts/compare_runs.py run --checkout /path/to/before --out runs/before
    python scripts/compare_runs.py run --checkout . --out runs/after
    python scripts/compare_runs.py compare runs/before runs/after

Every case is a short data-free run (4 epochs, --precision fp32, one thread, the preset's seed) of one
method on the offline data, with the teacher files given (the same files on both sides). ``compare``
checks that every epoch's accuracy and logged loss term agree to the printed digit (4 decimals) and that
the students' weights in last.pth are bit-identical; it prints one line per case and a summary last.
"""
import argparse
import json
import math
import os
import subprocess
import sys

import torch

CASES = {
    "fast_meta": ["--config", "configs/digits/fast_meta_5.yaml"],
    "deepinv": ["--config", "configs/digits/mini/deepinv.yaml"],
    "cmi": ["--config", "configs/digits/mini/cmi.yaml"],
    "dafl": ["--config", "configs/digits/mini/dafl.yaml"],
    "ssd": ["--config", "configs/digits/ssd.yaml"],
    "nayer": ["--config", "configs/digits/nayer.yaml"],
    "segmentation": ["--config", "configs/shapes/fast_meta_5.yaml"],
}
EPOCHS = 4
DECIMALS = 4


def teacher_flag(case, args):
    return ["--teacher_ckpt", os.path.abspath(args.shapes_teacher if case == "segmentation" else args.digits_teacher)]


def run(args):
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for case in args.cases or CASES:
        folder = os.path.join(out, case)
        if os.path.isfile(os.path.join(folder, "summary.json")):
            print(f"[skip] {case}: done", flush=True)
            continue
        cmd = [sys.executable, "datafree_kd.py", *CASES[case], *teacher_flag(case, args), "--epochs", str(EPOCHS),
               "--precision", "fp32", "--gpu", "-1", "--output", folder]
        print(f"[run] {case}: {' '.join(cmd)}", flush=True)
        code = subprocess.run(cmd, cwd=args.checkout, env=env, stdout=subprocess.DEVNULL).returncode
        if code:
            print(f"[failed] {case}: exit code {code}", flush=True)


def numbers(folder):
    with open(os.path.join(folder, "summary.json")) as f:
        history = json.load(f)["history"]
    keep = lambda k: k == "acc1" or k.startswith("loss") or k in ("kd_loss", "train_loss")   # noqa: E731
    # an unmeasured value (no KD step in a warm-up epoch: None, or NaN in older runs) equals itself here
    return [{k: "none" if v is None or math.isnan(v) else round(v, DECIMALS) for k, v in h.items() if keep(k)}
            for h in history]


def weights(folder):
    return torch.load(os.path.join(folder, "last.pth"), map_location="cpu", weights_only=True)["state_dict"]


def compare(args):
    same = 0
    cases = [c for c in CASES if os.path.isdir(os.path.join(args.before, c))]
    for case in cases:
        before, after = os.path.join(args.before, case), os.path.join(args.after, case)
        if not os.path.isfile(os.path.join(after, "summary.json")):
            print(f"{case}: no run after")
            continue
        nb, na = numbers(before), numbers(after)
        wb, wa = weights(before), weights(after)
        equal_weights = wb.keys() == wa.keys() and all(torch.equal(wb[k], wa[k]) for k in wb)
        ok = nb == na and equal_weights
        same += ok
        print(f"{case}: {'same' if ok else 'DIFFERENT'} (per-epoch numbers {'equal' if nb == na else 'differ'}, "
              f"student weights {'bit-identical' if equal_weights else 'differ'}); acc1 per epoch "
              f"{[h['acc1'] for h in na]}")
        if nb != na:
            for e, (x, y) in enumerate(zip(nb, na)):
                if x != y:
                    print(f"  epoch {e}: before {x}\n           after  {y}")
    print(f"summary: {same}/{len(cases)} cases give the same numbers and bit-identical students")
    return 0 if same == len(cases) else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the cases at one checkout")
    r.add_argument("--checkout", default=".", help="the project checkout to run (default: this folder)")
    r.add_argument("--out", required=True, help="folder of the cases' run folders")
    r.add_argument("--digits_teacher", default="checkpoints/pretrained/digits_wrn16_2.pth")
    r.add_argument("--shapes_teacher", default="checkpoints/pretrained/shapes_deeplabv3_tiny.pth")
    r.add_argument("--cases", nargs="+", choices=sorted(CASES), help="only these cases")
    c = sub.add_parser("compare", help="compare the runs of two checkouts")
    c.add_argument("before")
    c.add_argument("after")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
