#!/usr/bin/env bash
# NAYER rows (CVPR 2024, --method nayer): one line per cell (5 teacher/student pairs x CIFAR-10/100), 120 epochs
# as the paper's main table, then the 220- and 320-epoch rows of NAYER's scripts/nayer_200.sh and nayer_300.sh.
# Settings of NAYER's release live in the configs; extra flags (e.g. --gpu 1) are passed on.
# Teachers are read from checkpoints/pretrained/{dataset}_{teacher}.pth; the label embedding needs pip install .[clip].
set -euo pipefail
cd "$(dirname "$0")/.."

python datafree_kd.py --config configs/table1/cifar10/nayer-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer-wrn40_2-wrn16_2.yaml "$@"

python datafree_kd.py --config configs/table1/cifar10/nayer220-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer220-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer220-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer220-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer220-wrn40_2-wrn16_2.yaml "$@"

python datafree_kd.py --config configs/table1/cifar10/nayer320-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer320-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer320-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer320-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar10/nayer320-wrn40_2-wrn16_2.yaml "$@"

python datafree_kd.py --config configs/table1/cifar100/nayer-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer-wrn40_2-wrn16_2.yaml "$@"

python datafree_kd.py --config configs/table1/cifar100/nayer220-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer220-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer220-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer220-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer220-wrn40_2-wrn16_2.yaml "$@"

python datafree_kd.py --config configs/table1/cifar100/nayer320-resnet34-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer320-vgg11-resnet18.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer320-wrn40_2-wrn16_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer320-wrn40_2-wrn40_1.yaml "$@"
python datafree_kd.py --config configs/table1/cifar100/nayer320-wrn40_2-wrn16_2.yaml "$@"
