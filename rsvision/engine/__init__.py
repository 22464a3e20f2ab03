"""The engine: one training loop and one evaluation pass for every task and training method."""

from rsvision.engine.evaluate import evaluate
from rsvision.engine.trainer import TrainingDiverged, train

__all__ = ["TrainingDiverged", "evaluate", "train"]
