"""CIL-SPL training: the methods, the loop, evaluation on the chip, the experiment and the CLI."""

from chiploop.training.config import METHOD_NAMES, TrainConfig

__all__ = ["METHOD_NAMES", "TrainConfig"]
