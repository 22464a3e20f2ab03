"""Evaluation results kept in the run folder (``evaluations.json``), so a plot reuses what ``eval`` measured.

Rows are filed under the data they were measured on (the recipe's data section, with the
root as an absolute path, without the fields that cannot change a result: batch sizes,
workers, caching) and under their sub-network id (``ensemble`` for the α-ensemble). The
file records the SHA-256 of ``model.safetensors`` and of ``calibration.safetensors``: when
either changes (more training, a new calibration), every kept row is dropped. Packed files
keep nothing. The file is rewritten atomically; a missing or unreadable one is empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rsvision.io import file_sha256, write_cache
from rsvision.run.files import CALIBRATION, EVALUATIONS, WEIGHTS
from rsvision.run.folder import Artifact

FORMAT = "rsvision-evaluations"
#: Data fields that change how fast an evaluation runs, not what it measures.
_SPEED_ONLY = ("batch_size", "eval_batch_size", "workers", "cache")


def data_key(artifact: Artifact) -> dict[str, Any]:
    """What the rows of ``artifact``'s evaluation were measured on."""
    data = artifact.task.recipe.data.model_dump(mode="json")
    for name in _SPEED_ONLY:
        data.pop(name, None)
    if data.get("root") is not None:
        data["root"] = str(Path(data["root"]).expanduser().resolve())
    return data


def fingerprint(run_dir: Path) -> dict[str, str | None]:
    """SHA-256 of the weights and of the calibration (None without one) of a run folder."""
    calibration = run_dir / CALIBRATION
    return {
        "weights": file_sha256(run_dir / WEIGHTS),
        "calibration": file_sha256(calibration) if calibration.is_file() else None,
    }


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=str)


@dataclass
class EvaluationStore:
    """The kept rows of one run folder: ``entries`` is a list of ``{"data": ..., "rows": {id: row}}``."""

    run_dir: Path
    fingerprint: dict[str, str | None]
    entries: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, run_dir: Path) -> "EvaluationStore":
        """The store of ``run_dir``, emptied when its weights or calibration changed."""
        current = fingerprint(run_dir)
        try:
            saved = json.loads((run_dir / EVALUATIONS).read_text())
        except (OSError, ValueError):
            saved = {}
        if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("fingerprint") != current:
            return cls(run_dir, current)
        return cls(run_dir, current, [e for e in saved.get("entries", []) if isinstance(e, dict) and "data" in e])

    def rows(self, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Kept rows measured on ``data``, by sub-network id."""
        key = _canonical(data)
        return next((e["rows"] for e in self.entries if _canonical(e["data"]) == key), {})

    def record(self, data: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
        """Keep ``rows`` (replacing those of the same sub-networks) and rewrite the file."""
        kept = self.rows(data)
        if not kept:
            self.entries.append({"data": data, "rows": kept})
        kept.update({str(row["subnet"]): dict(row) for row in rows})
        write_cache(self.run_dir / EVALUATIONS, {"format": FORMAT, "fingerprint": self.fingerprint, "entries": self.entries})


