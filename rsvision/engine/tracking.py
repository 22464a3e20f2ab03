"""Experiment tracking through Accelerate's trackers (``train.log_with``).

Each epoch the engine logs one dictionary (:func:`epoch_values`): the run's numbers under
plain keys (``loss``, ``lr``, ``epoch_seconds``) and one value per sub-network under
``metric/subnet`` keys (``top1/16``, ``train_ce/16``), at step = the epoch. TensorBoard groups
the ``metric/subnet`` tags into one chart per metric; :class:`CSVTracker` (Accelerate has no
CSV tracker) writes them as one row per epoch and sub-network. TensorBoard writes into the run
folder; the others (``wandb``, ``mlflow``, ...) take the run's name as their project.
"""

from __future__ import annotations

import csv
from numbers import Real
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, TensorBoardTracker, get_available_trackers
from accelerate.utils import LoggerType

from rsvision.errors import UserError
from rsvision.io import atomic_write
from rsvision.run.files import METRICS_CSV, TENSORBOARD

#: Trackers rsvision writes itself (the others are Accelerate's, by name).
OWN = ("csv",)
#: Keys of an evaluation row that describe the sub-network rather than measure it.
ROW_LABELS = frozenset({"subnet", "resolution", "width", "status", "madds"})


class CSVTracker(GeneralTracker):
    """``metrics.csv`` in the run folder: one row per logged step and sub-network (the
    ``metric/subnet`` keys), the run's own numbers repeated on each; a column that appears
    later (an evaluated epoch after unevaluated ones) rewrites the file with it."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, logging_dir: str | Path) -> None:
        super().__init__()
        self.path = Path(logging_dir) / METRICS_CSV

    @property
    def tracker(self) -> Path:
        return self.path

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        shared = {k: v for k, v in values.items() if "/" not in k}
        per_subnet: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if "/" in key:
                metric, subnet = key.rsplit("/", 1)
                per_subnet.setdefault(subnet, {})[metric] = value
        new = [{"epoch": step, "subnet": subnet, **shared, **metrics} for subnet, metrics in per_subnet.items()]
        rows = self._rows() + (new or [{"epoch": step, "subnet": "", **shared}])
        fields = list(dict.fromkeys(k for row in rows for k in row))

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path, write)

    def _rows(self) -> list[dict[str, Any]]:
        """The rows written so far (by this run before a ``--resume`` too)."""
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))


def trackers(names: list[str], run_dir: Path, source: str) -> list[GeneralTracker | str]:
    """Accelerate's ``log_with`` for ``train.log_with``: a CSV and a TensorBoard tracker writing
    into ``run_dir``, the other names as Accelerate spells them. A tracker whose package is
    missing is an error (Accelerate would leave it out without a word)."""
    available = {str(t) for t in get_available_trackers()}
    known = set(LoggerType.list()) - {"all"}
    out: list[GeneralTracker | str] = []
    for name in names:
        if name in OWN:
            out.append(CSVTracker(run_dir))
        elif name not in known:
            raise UserError(f"{source}: train.log_with: unknown tracker '{name}' (expected csv or one of {', '.join(sorted(known))})")
        elif name not in available:
            hint = " (pip install 'rsvision[tracking]')" if name == "tensorboard" else ""
            raise UserError(f"{source}: train.log_with: {name} is not installed{hint}")
        elif name == "tensorboard":
            out.append(TensorBoardTracker(TENSORBOARD, run_dir))
        else:
            out.append(name)
    return out


def epoch_values(log: dict[str, Any], subnets: set[str]) -> dict[str, float]:
    """What one epoch's ``log.jsonl`` line sends to the trackers: its numbers under their own
    keys, a training number per sub-network (``ce/16``, a key ending in one of ``subnets``'
    ids) as ``train_ce/16``, other keys with ``/`` as ``students_weight``, and each evaluation
    row's measurements as ``metric/subnet`` (``ema_metric/subnet`` for the averaged weights')."""
    values: dict[str, float] = {}
    for key, value in log.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, Real):
            continue
        head, _, tail = key.rpartition("/")
        values[f"train_{key}" if head and tail in subnets else key.replace("/", "_")] = float(value)
    for rows, prefix in ((log.get("val", []), ""), (log.get("val_ema", []), "ema_")):
        for row in rows:
            for key, value in row.items():
                if key not in ROW_LABELS and isinstance(value, Real) and not isinstance(value, bool):
                    values[f"{prefix}{key}/{row['subnet']}"] = float(value)
    return values


def tracker_config(recipe_dump: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The recipe as the flat ``section.field`` hyperparameters trackers store (numbers,
    strings, booleans; lists and nulls as text)."""
    flat: dict[str, Any] = {}
    for key, value in recipe_dump.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(tracker_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
