"""Synthesizers: one data-free method per module, registered under its ``--method`` name."""
from . import cmi, deepinv, fast, fast_imagenet, generative, nayer, noise, ssd  # importing registers the methods
from .base import SYNTHESIZERS, BaseSynthesizer, PoolSynthesizer, SynthesisConfig, register_synthesizer, require_task_support

__all__ = ["SYNTHESIZERS", "BaseSynthesizer", "PoolSynthesizer", "SynthesisConfig", "register_synthesizer", "require_task_support",
           "cmi", "deepinv", "fast", "fast_imagenet", "generative", "nayer", "noise", "ssd"]
