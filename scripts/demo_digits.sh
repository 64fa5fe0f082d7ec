#!/usr/bin/env bash
# Offline demo on the digits data, CPU friendly (about 6 minutes on 2 cores):
# 1. train a wrn16_2 teacher if checkpoints/pretrained/digits_wrn16_2.pth is missing;
# 2. distil it into a wrn16_1 student with real data (vanilla KD).
set -euo pipefail
cd "$(dirname "$0")/.."

TEACHER=checkpoints/pretrained/digits_wrn16_2.pth
if [ ! -f "$TEACHER" ]; then
  python train_scratch.py --model wrn16_2 --dataset digits --epochs 30 --lr 0.05 --batch-size 64
fi

KD_RUN=checkpoints/vanilla_kd/digits-digits-wrn16_2-wrn16_1
RESUME=()
[ -f "$KD_RUN/last.pth" ] && RESUME=(--resume)
python vanilla_kd.py --teacher wrn16_2 --student wrn16_1 --dataset digits \
  --epochs 20 --lr 0.05 --batch-size 64 --T 4 "${RESUME[@]}"
