"""Synthesizers: one data-free method per module, registered under its ``--method`` name."""
from .base import SYNTHESIZERS, BaseSynthesizer, register_synthesizer
from . import fast  # noqa: F401  (registers fast and fast_meta)

__all__ = ["SYNTHESIZERS", "BaseSynthesizer", "register_synthesizer"]
