"""The synthesizer interface shared by every data-free method.

A synthesizer is built from ``(teacher, student, config, device)`` where ``config`` is the
run's argument namespace plus ``num_classes``, ``img_size``, ``nc``, ``mean`` and ``std``.
"""
from datafree.utils.registry import Registry

SYNTHESIZERS = Registry("method")


def register_synthesizer(name):
    """Class decorator: make a synthesizer available as ``--method name``."""
    def add(cls):
        cls.method = name
        return SYNTHESIZERS.register(name, cls)
    return add


class BaseSynthesizer:
    """One data-free method.

    ``flags``: the method-specific command-line flags this method reads; datafree_kd.py
    refuses other method flags set away from their defaults.
    """

    method = None
    flags = frozenset()

    def __init__(self, teacher, student, config, device):
        self.teacher, self.student, self.config, self.device = teacher, student, config, device

    def synthesize(self):
        """One round of synthesis. Returns at least ``{'images': (N, C, H, W) in [0, 1]}``
        and the loss terms (floats) for logging."""
        raise NotImplementedError

    def sample(self):
        """One normalised, augmented batch for a KD step."""
        raise NotImplementedError

    def state_dict(self):
        """Everything needed to resume (tensors and plain containers only)."""
        raise NotImplementedError

    def load_state_dict(self, state):
        raise NotImplementedError
