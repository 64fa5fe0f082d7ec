"""Supervised training of a teacher or a from-scratch student (`datafree-train`): datafree/commands/train.py.

This file keeps the original release's command lines running unchanged from a checkout:
    python train_scratch.py --model wrn16_2 --dataset digits --epochs 30 --lr 0.05 --batch-size 64
"""
import sys

import registry  # noqa: F401  (this checkout's registrations, yours included)
from datafree.commands import train as _command
from datafree.commands.train import *  # noqa: F401,F403  (the command's names, for code that loads this file by its path)

if __name__ == "__main__":
    _command.cli()
else:   # `import train_scratch` is the command module itself (what a test patches is what runs)
    sys.modules[__name__] = _command
