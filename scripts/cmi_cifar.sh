#!/usr/bin/env bash
# Table 1, CMI-500 row (the original script uses 200 steps; the paper reports 500): one line per cell (5 teacher/student pairs x CIFAR-10/100).
# Settings of the original release live in the configs; extra flags (e.g. --gpu 1) are passed on.
set -euo pipefail
cd "$(dirname "$0")/.."

python datafree_kd.py --config configs/table1/cifar10/cmi-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/cmi-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/cmi-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/cmi-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/cmi-wrn40_2-wrn16_2.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/cmi-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/cmi-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/cmi-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/cmi-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/cmi-wrn40_2-wrn16_2.yaml "$@"

# the tuned fast variant of the original scripts (5 steps, no contrastive term), for comparison
python datafree_kd.py --config configs/table1/cifar100/cmi5-wrn40_2-wrn16_1.yaml "$@"
