"""The engine: one training loop and one evaluation for every task and training method."""

from rsvision.engine.evaluate import evaluate, evaluate_artifact
from rsvision.engine.trainer import TrainingDiverged, train

__all__ = ["TrainingDiverged", "evaluate", "evaluate_artifact", "train"]
