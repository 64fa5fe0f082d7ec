"""The one registry mechanism: name -> factory or record (models, datasets, synthesizers).

A ``Registry`` is a dict, so ``MODEL_DICT[name](num_classes=10)`` keeps working, with a
decorator to add entries and a lookup whose error lists every valid name.
"""
from collections.abc import Mapping

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


class FieldView(Mapping):
    """Read-only ``name -> field`` over a registry of records, for code that reads one field of
    every entry (``NORMALIZE_DICT[name]``); names whose field is None are left out."""

    def __init__(self, registry, field):
        self.registry, self.field = registry, field

    def __getitem__(self, name):
        value = self.field(self.registry[name])
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self):
        return (name for name, record in self.registry.items() if self.field(record) is not None)

    def __len__(self):
        return sum(1 for _ in self)

    def __repr__(self):
        return repr(dict(self))
