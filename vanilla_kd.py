"""KD with real data or a transfer set (`datafree-vanilla-kd`): datafree/commands/vanilla_kd.py.

This file keeps the command lines running unchanged from a checkout:
    python vanilla_kd.py --teacher wrn16_2 --student wrn16_1 --dataset digits --T 4 --epochs 20
"""
import sys

import registry  # noqa: F401  (this checkout's registrations, yours included)
from datafree.commands import vanilla_kd as _command
from datafree.commands.vanilla_kd import *  # noqa: F401,F403  (the command's names, for code that loads this file by its path)

if __name__ == "__main__":
    _command.cli()
else:   # `import vanilla_kd` is the command module itself (what a test patches is what runs)
    sys.modules[__name__] = _command
