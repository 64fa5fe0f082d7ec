"""Name -> factory registries (models, datasets, and later synthesizers).

A ``Registry`` is a dict, so ``MODEL_DICT[name](num_classes=10)`` keeps working, with a
decorator to add entries and a lookup whose error lists every valid name.
"""
from datafree.errors import UnknownNameError


class Registry(dict):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def register(self, name, obj=None):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""
        def add(target):
            if name in self:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self[name] = target
            return target
        return add if obj is None else add(obj)

    def lookup(self, name):
        if name not in self:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; choose one of: {', '.join(sorted(self))}")
        return self[name]
