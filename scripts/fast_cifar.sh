#!/usr/bin/env bash
# Table 1, Fast-2/5/10 rows: one line per cell (5 teacher/student pairs x CIFAR-10/100).
# Settings of the original release live in the configs; extra flags (e.g. --gpu 1) are passed on.
# Teachers are read from checkpoints/pretrained/{dataset}_{teacher}.pth.
set -euo pipefail
cd "$(dirname "$0")/.."

python datafree_kd.py --config configs/table1/cifar10/fast2-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast5-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast10-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast2-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast5-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast10-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast2-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast5-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast10-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast2-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast5-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast10-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast2-wrn40_2-wrn16_2.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast5-wrn40_2-wrn16_2.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/fast10-wrn40_2-wrn16_2.yaml "$@"

python datafree_kd.py --config configs/table1/cifar100/fast2-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast5-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast10-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast2-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast5-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast10-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast2-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast5-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast10-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast2-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast5-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast10-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast2-wrn40_2-wrn16_2.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast5-wrn40_2-wrn16_2.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/fast10-wrn40_2-wrn16_2.yaml "$@"
