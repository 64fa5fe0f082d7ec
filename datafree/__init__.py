"""Data-free knowledge distillation: models, synthesizers and training machinery.

``datafree.distill(teacher, student, ...)`` distils any classifier from Python (datafree/api.py).
"""
from datafree.api import distill

__all__ = ["distill"]
