"""Register your own models and datasets here (or import the module that does): every command run from
this checkout (datafree_kd.py, train_scratch.py, vanilla_kd.py) imports this file first, so their
``--help`` and choices then list your names. The registry itself is ``datafree.registry`` (installed with
the package); ``import registry`` gives that module::

    from datafree.registry import register_model, register_dataset

    @register_model('mynet')
    def mynet(num_classes):
        return MyNet(num_classes)
"""
import sys

from datafree import registry as _registry
from datafree.registry import *  # noqa: F401,F403

sys.modules[__name__] = _registry
