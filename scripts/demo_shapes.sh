#!/usr/bin/env bash
# Offline data-free segmentation demo on the generated shapes data (CPU, no download):
# 1. train a deeplabv3_tiny teacher if checkpoints/pretrained/shapes_deeplabv3_tiny.pth is missing
#    (30 epochs, about 3.5 minutes; 86% test mIoU here);
# 2. Fast-5 (fast_meta) distils it into deeplabv3_tiny_s from synthetic images only (about 5 minutes; 79% mIoU);
# 3. the same student and KD budget on Gaussian-noise images (--method noise), as a baseline (1 minute; 17%).
# Times measured on a 2-core CPU shared with other jobs (docs/segmentation.md).
# The untrained student's mIoU is the one logged for epoch 0 (no KD during warmup).
# Run it again after an interruption: finished steps are skipped, a killed run resumes.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/demo_lib.sh

ensure_teacher shapes deeplabv3_tiny --epochs 30 --lr 0.1 --batch-size 32
distil configs/shapes/fast_meta_5.yaml checkpoints/datafree-fast_meta/shapes-deeplabv3_tiny-deeplabv3_tiny_s "$@"
distil configs/shapes/noise.yaml checkpoints/datafree-noise/shapes-deeplabv3_tiny-deeplabv3_tiny_s "$@"

grep -h "Best mIoU" checkpoints/datafree-fast_meta/shapes-deeplabv3_tiny-deeplabv3_tiny_s/log.txt \
  checkpoints/datafree-noise/shapes-deeplabv3_tiny-deeplabv3_tiny_s/log.txt
