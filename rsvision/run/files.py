"""The names of the files in a run folder: the only place they are spelled.

A run folder holds the weights with the training method's tensors (``model.safetensors``),
the metadata (``rsvision.json``), the validated recipe (``recipe.json``), one line per epoch
(``log.jsonl``), the state ``--resume`` needs (``state/``, with ``progress.json``) and,
once written by later commands, the calibration file, the kept evaluations and the query
table. Training copies the plugin files it imported into ``plugins/``.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = "model.safetensors"
META = "rsvision.json"
RECIPE = "recipe.json"
LOG = "log.jsonl"
STATE = "state"
PROGRESS = "progress.json"
CALIBRATION = "calibration.safetensors"
EVALUATIONS = "evaluations.json"
QUERY = "query.json"
#: What ``train.log_with`` trackers write into the run folder (``rsvision.engine.tracking``).
TENSORBOARD = "tensorboard"
METRICS_CSV = "metrics.csv"
#: The run folder of the best epoch by ``train.keep_best``, inside the run folder.
BEST = "best"
#: The run folder of the averaged weights (``train.ema``), inside the run folder.
EMA = "ema"
PLUGINS = "plugins"


def progress_file(state_dir: Path) -> Path:
    """The training progress inside a state folder (``state/`` or the one being written)."""
    return Path(state_dir) / PROGRESS
