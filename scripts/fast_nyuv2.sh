#!/usr/bin/env bash
# NYUv2 semantic segmentation (13 classes): DeepLabV3-ResNet50 teacher -> DeepLabV3-MobileNetV2 student.
# Needs data/NYUv2 in the original release's layout (docs/segmentation.md) and a GPU.
# Settings live in configs/nyuv2/ (the paper publishes none for NYUv2; the presets say what was chosen).
# Extra flags (e.g. --gpu 1) are passed on to the data-free runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. The teacher (skipped when checkpoints/pretrained/nyuv2_deeplabv3_resnet50.pth exists): ImageNet-initialised
#    backbone (--pretrained downloads torchvision's ResNet-50 weights), 128x128 crops, SGD + cosine schedule.
if [ ! -f checkpoints/pretrained/nyuv2_deeplabv3_resnet50.pth ]; then
  python train_scratch.py --model deeplabv3_resnet50 --dataset nyuv2 --pretrained \
    --epochs 200 --lr 0.01 --batch-size 16 --wd 1e-4 -j 4
fi

# 2. Fast-2 / Fast-5 / Fast-10.
python datafree_kd.py --config configs/nyuv2/fast2-deeplabv3_resnet50-deeplabv3_mobilenet.yaml "$@"
python datafree_kd.py --config configs/nyuv2/fast5-deeplabv3_resnet50-deeplabv3_mobilenet.yaml "$@"
python datafree_kd.py --config configs/nyuv2/fast10-deeplabv3_resnet50-deeplabv3_mobilenet.yaml "$@"

# 3. The slow baseline: DeepInversion with 2,000 steps per batch.
python datafree_kd.py --config configs/nyuv2/deepinv-deeplabv3_resnet50-deeplabv3_mobilenet.yaml "$@"

# 4. References with real data: the student trained from scratch, and KD on the NYUv2 training images.
python train_scratch.py --model deeplabv3_mobilenet --dataset nyuv2 --pretrained --epochs 200 --lr 0.01 \
  --batch-size 16 -j 4 --save_teacher checkpoints/pretrained/nyuv2_deeplabv3_mobilenet_scratch.pth
python vanilla_kd.py --teacher deeplabv3_resnet50 --student deeplabv3_mobilenet --dataset nyuv2 --T 4 \
  --epochs 200 --lr 0.01 --batch-size 16 -j 4
