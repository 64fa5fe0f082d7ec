"""Data-free knowledge distillation, every method (`datafree-kd`): datafree/commands/kd.py.

This file keeps the original release's command lines running unchanged from a checkout:
    python datafree_kd.py --config configs/digits/fast_meta_5.yaml
"""
import sys

import registry  # noqa: F401  (this checkout's registrations, yours included)
from datafree.commands import kd as _command
from datafree.commands.kd import *  # noqa: F401,F403  (the command's names, for code that loads this file by its path)

if __name__ == "__main__":
    _command.cli()
else:   # `import datafree_kd` is the command module itself (what a test patches is what runs)
    sys.modules[__name__] = _command
