#!/usr/bin/env bash
# The paper's ImageNet rows, Fast-50: ResNet-50 -> ResNet-50 / ResNet-18 / MobileNetV2, with the
# settings of the original release (configs/imagenet/: Reptile, 50 synthesis steps, 100 KD steps
# per call, 1000 per epoch, 400 epochs, batch 100, T 5, bn 0.1, oh 0.1, bn_mmt 0.9, lr_g 2e-4,
# lr_z 0.01, lr_g_meta 1e-4, lr_z_meta 5e-3, reinit 50, rand_label 1; adv 1.0 for ResNet-18, 0.1
# for the other two, as in the released logs).
#
# Needs: data/ILSVRC2012/{train,val}/<wnid>/*.JPEG (only val/ is read: it evaluates the student),
# and torchvision's ResNet-50 weights (https://download.pytorch.org/models/resnet50-0676ba61.pth)
# saved as checkpoints/pretrained/imagenet_resnet50_imagenet.pth (or add --teacher_ckpt PATH).
#
#   bash scripts/fast_imagenet.sh                  # one GPU per run (GPU 0), the three runs in turn
#   NPROC=8 bash scripts/fast_imagenet.sh          # each run on 8 GPUs of this machine (torchrun)
#   bash scripts/fast_imagenet.sh --precision bf16 --channels_last   # extra flags are passed on
#
# --batch_size 100 is the total over the GPUs of one node: with NPROC=8 each GPU takes 12 images.
# To keep 100 per GPU, pass --batch_size 800. Two machines: see docs/imagenet-and-torchrun.md, "Several GPUs and machines".
set -euo pipefail
cd "$(dirname "$0")/.."

NPROC=${NPROC:-1}

run() {
  if [ "$NPROC" -gt 1 ]; then
    torchrun --standalone --nproc_per_node="$NPROC" datafree_kd.py "$@"
  else
    python datafree_kd.py "$@"
  fi
}

run --config configs/imagenet/fast50-resnet50_imagenet-resnet50_imagenet.yaml "$@"
run --config configs/imagenet/fast50-resnet50_imagenet-resnet18_imagenet.yaml "$@"
run --config configs/imagenet/fast50-resnet50_imagenet-mobilenetv2_imagenet.yaml "$@"
