#!/usr/bin/env bash
# Every data-free method on the offline digits data with one shared budget (configs/digits/compare/),
# then a Markdown table of best accuracy, synthesis seconds and total seconds. About 25 minutes on
# 2 CPU cores. Needs the digits teacher (bash scripts/demo_digits.sh trains it).
set -euo pipefail
cd "$(dirname "$0")/.."
for method in fast_meta deepinv cmi dafl zskt dfq dfad; do
  run=checkpoints/datafree-$method/digits-wrn16_2-wrn16_1-compare
  resume=$([ -f "$run/last.pth" ] && echo --resume || true)
  python datafree_kd.py --config configs/digits/compare/$method.yaml $resume "$@"
done
python - <<'PY'
from datafree.checkpoint import load_checkpoint
print("| method | best top-1 (%) | synthesis (s) | KD (s) | total wall (s) |")
print("|---|---|---|---|---|")
for method in ["fast_meta", "deepinv", "cmi", "dafl", "zskt", "dfq", "dfad"]:
    c = load_checkpoint(f"checkpoints/datafree-{method}/digits-wrn16_2-wrn16_1-compare/last.pth")
    print(f"| {method} | {c['best_acc1']:.2f} | {c['synthesis_seconds']:.0f} | {c['kd_seconds']:.0f} | {c['wall_seconds']:.0f} |")
PY
