"""Method flags: every flag a data-free method reads is declared once, with ``method_flag``, in
the module of the method that introduces it (the flags several methods share, in base.py).

From these declarations come datafree_kd.py's command-line flags (with their help), the keys a
YAML config may set, and the check that refuses a method flag set for a method that does not
read it (each synthesizer names the flags it reads in its ``flags``).
"""
from typing import Any, NamedTuple

from datafree.utils.registry import Registry

# Help-page groups of the method flags.
TERMS = "data-free method"
SYNTHESIS = "synthesis"


class MethodFlag(NamedTuple):
    name: str
    default: Any
    help: str
    type: Any = None
    choices: Any = None
    metavar: Any = None
    group: str = SYNTHESIS

    def add_to(self, group):
        """Declare this flag (``--name``) in an argparse group."""
        group.add_argument(f"--{self.name}", default=self.default, type=self.type, choices=self.choices,
                           metavar=self.metavar, help=self.help)


METHOD_FLAGS = Registry("method flag")


def method_flag(name, default, help, *, type=None, choices=None, metavar=None, group=SYNTHESIS):
    """Declare the method flag ``--name``; its type is that of ``default`` unless given."""
    if type is None and default is not None:
        type = default.__class__
    return METHOD_FLAGS.register(name, MethodFlag(name, default, help, type, choices, metavar, group))


def add_method_flags(parser, groups):
    """Add every declared method flag to ``parser``, each in its help group; ``groups`` maps
    titles to the argparse groups already made (new titles get a group of their own)."""
    for flag in METHOD_FLAGS.values():
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        flag.add_to(groups[flag.group])
    return groups


def flags_not_read(flags):
    """The declared method flags that a method reading ``flags`` ignores: it refuses them on its command
    line, and a resume does not compare them."""
    return [name for name in METHOD_FLAGS if name not in flags]


def check_declared(method, flags):
    """Stop at import time if a synthesizer names a flag nobody declared."""
    undeclared = sorted(set(flags) - set(METHOD_FLAGS))
    if undeclared:
        raise ValueError(f"method '{method}' reads undeclared flags {', '.join(undeclared)}; declare each with "
                         f"datafree.synthesis.flags.method_flag")
