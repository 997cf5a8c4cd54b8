"""The training loop, and the command line's ``train()`` around it."""

from cnfax.train.loop import TrainingFailed, train
from cnfax.train.step import train_step

__all__ = ["TrainingFailed", "train", "train_step"]
