#!/usr/bin/env bash
# Table 1, DeepInv-2k row (the original script uses 1000 steps; the paper reports 2k): one line per cell (5 teacher/student pairs x CIFAR-10/100).
# Settings of the original release live in the configs; extra flags (e.g. --gpu 1) are passed on.
set -euo pipefail
cd "$(dirname "$0")/.."

python datafree_kd.py --config configs/table1/cifar10/deepinv-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/deepinv-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/deepinv-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/deepinv-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/deepinv-wrn40_2-wrn16_2.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/deepinv-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/deepinv-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/deepinv-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/deepinv-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/deepinv-wrn40_2-wrn16_2.yaml "$@"

# the tuned fast variant of the original scripts (10 steps), for comparison
python datafree_kd.py --config configs/table1/cifar10/deepinv10-wrn40_2-wrn16_1.yaml "$@"
