#!/usr/bin/env bash
# Offline data-free demo on the digits data (about 14 minutes on 2 CPU cores, no GPU needed):
# 1. train a wrn16_2 teacher if checkpoints/pretrained/digits_wrn16_2.pth is missing (~4 min);
# 2. Fast-5 data-free distillation into a wrn16_1 student: the student never sees a digit
#    image, only images synthesised from the teacher (~10 min, >= 95% test accuracy).
# Run it again after an interruption: finished steps are skipped, a killed run resumes.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/demo_lib.sh

ensure_teacher digits wrn16_2 --epochs 30 --lr 0.05 --batch-size 64
distil configs/digits/fast_meta_5.yaml checkpoints/datafree-fast_meta/digits-wrn16_2-wrn16_1 "$@"
