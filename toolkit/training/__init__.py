"""Training: the Trainer as the toolkit uses it (trainer), distillation from a teacher (distill), the run's
manifest, model card and curves (reports) and one run end to end (run)."""

from toolkit.training.run import train
from toolkit.training.trainer import TrainError, precision

__all__ = ["TrainError", "precision", "train"]
