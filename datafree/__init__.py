"""Data-free knowledge distillation: models, synthesizers and training machinery."""
