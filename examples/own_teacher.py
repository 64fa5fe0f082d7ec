"""Your own teacher, distilled without data.

Trains a small CNN (a stand-in for any nn.Module classifier with BatchNorm layers) on the offline
digits, then distils it into a CNN half as wide with ``datafree.distill``, from synthetic
images only: the student never sees a digit. The test set only measures it.

    pip install -e . && python examples/own_teacher.py
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

import datafree
from datafree import registry
from datafree.datasets.digits import DIGITS_MEAN, DIGITS_STD


def small_cnn(width, num_classes=10):
    """Three conv-BN-ReLU blocks and a linear classifier."""
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(3, width), *block(width, 2 * width), *block(2 * width, 4 * width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))


def train(model, train_set, epochs):
    """Plain supervised training: how you made your teacher does not matter to distill()."""
    loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, data):
    loader = torch.utils.data.DataLoader(data, batch_size=256)
    correct = sum((model(images).argmax(1) == labels).sum().item() for images, labels in loader)
    return 100.0 * correct / len(data)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher_epochs", type=int, default=15, help="supervised epochs of the teacher")
    parser.add_argument("--epochs", type=int, default=30, help="data-free epochs of the student")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    _, train_set, test_set = registry.get_dataset("digits")
    teacher = train(small_cnn(width=32), train_set, args.teacher_epochs)

    student, summary = datafree.distill(
        teacher, small_cnn(width=16), method="fast_meta",
        input_shape=(3, 32, 32), mean=DIGITS_MEAN, std=DIGITS_STD, num_classes=10,
        epochs=args.epochs, val_data=test_set, synthesis_channels=1,
        g_steps=5, lr_g=3e-3, lr_z=0.01, bn=10.0, oh=0.4, adv=1.1, bn_mmt=0.9, T=20,
        batch_size=128, lr=0.1, kd_steps=20, ep_steps=20)

    teacher_acc = accuracy(teacher, test_set)
    print(f"teacher: {teacher_acc:.2f}% test accuracy; student, from synthetic images only: "
          f"{accuracy(student, test_set):.2f}% (best epoch {summary['best_acc1']:.2f}%), "
          f"{summary['synthesis_seconds']:.0f} s of synthesis, {summary['wall_seconds']:.0f} s in all")
    return teacher_acc, summary


if __name__ == "__main__":
    main()
