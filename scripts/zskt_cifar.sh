#!/usr/bin/env bash
# Table 1, ZSKT row: one line per cell (5 teacher/student pairs x CIFAR-10/100).
# Settings of the original release live in the configs; extra flags (e.g. --gpu 1) are passed on.
set -euo pipefail
cd "$(dirname "$0")/.."

python datafree_kd.py --config configs/table1/cifar10/zskt-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/zskt-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/zskt-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/zskt-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/zskt-wrn40_2-wrn16_2.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/zskt-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/zskt-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/zskt-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/zskt-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/zskt-wrn40_2-wrn16_2.yaml "$@"
