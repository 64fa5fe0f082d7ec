"""The registry lives in datafree/registry.py (``from datafree import registry``); this file keeps
``import registry`` working from a checkout, as the original release's scripts and older code use it."""
import sys

from datafree import registry as _registry
from datafree.registry import *  # noqa: F401,F403

sys.modules[__name__] = _registry
