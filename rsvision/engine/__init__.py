"""The engine: one training loop and one evaluation for every task, and the run folder."""

from rsvision.engine.checkpoint import find_latest_run, load_run, read_meta
from rsvision.engine.evaluate import ENSEMBLE, evaluate_model
from rsvision.engine.trainer import train

__all__ = ["ENSEMBLE", "evaluate_model", "find_latest_run", "load_run", "read_meta", "train"]
