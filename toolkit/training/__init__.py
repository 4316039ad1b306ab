"""Training: the Trainer as the toolkit uses it (trainer), the run's records (records) and one run end to
end (run)."""

from toolkit.training.run import train
from toolkit.training.trainer import TrainError, precision

__all__ = ["TrainError", "precision", "train"]
