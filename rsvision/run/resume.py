"""What ``rsvision train --resume`` checks before it continues a run: that the run folder holds a
saved training state, where the run stands, and which recipe fields differ from the run's.

A resumed run must continue the run that was started: a changed field (``--set
train.epochs=...`` or an edited recipe) would, for example, stretch the cosine schedule and
lift the learning rate back up. The comparison is between the recipe the run saved
(the one in ``rsvision.json``, the last saved epoch's; else ``recipe.json``) and the one
given now, field by field, with the task's own data fields' defaults filled in on both
sides. Not counted as changes are where the run is written and read from
(:data:`NOT_TRAINING`) and fields the new recipe leaves out (``null``) that the run filled
in itself (the launcher's mixed precision, the class count taken from the data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsvision.errors import UserError
from rsvision.io import recover_dir
from rsvision.recipe import Recipe, apply_overrides, task_fields, validate_recipe
from rsvision.registry import TASKS
from rsvision.run.files import META, RECIPE, STATE, progress_file

#: Recipe fields that do not change what is trained: output places, loader processes, the
#: data's location, the plugins' paths (the run keeps its own copies), the starting weights
#: (the saved state replaces them).
NOT_TRAINING = frozenset({"output_dir", "name", "plugins", "data.root", "data.workers", "data.oversubscribe", "model.pretrained"})


@dataclass
class Resumable:
    """A run folder with a saved training state: where it stopped, and the recipe of its last save."""

    run_dir: Path
    epochs_done: int
    recipe: dict[str, Any]


def resumable(run_dir: str | Path) -> Resumable:
    """The run folder ``run_dir`` if ``--resume`` can continue it; else one line saying why."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such run folder")
    try:
        recover_dir(run_dir / STATE)
    except FileNotFoundError:  # another process of the same launch put it back first
        pass
    progress, recipe, meta = progress_file(run_dir / STATE), run_dir / RECIPE, run_dir / META
    if not progress.is_file() or not recipe.is_file():
        raise UserError(f"--resume {run_dir}: no saved training state (no {STATE}/{progress.name} or {RECIPE}); not a run folder, or it never finished an epoch")
    latest = json.loads(meta.read_text())["recipe"] if meta.is_file() else json.loads(recipe.read_text())
    return Resumable(run_dir, int(json.loads(progress.read_text())["epoch"]), latest)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` as ``{"train.lr": 0.1}``; lists, scalars and empty mappings are leaves."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def saved_recipe(run: Resumable, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """The run's own recipe with ``overrides`` (``--set``), for ``--resume RUN_DIR`` without a
    recipe file. ``recipe.json`` holds every field; only those that differ from their defaults
    count as given, as in the recipe the run was started from (unread fields are refused)."""
    source = str(run.run_dir / RECIPE)
    given = validate_recipe(run.recipe, source).model_dump(mode="json", exclude_defaults=True)
    return validate_recipe(apply_overrides(given, overrides), source)


def _as_trained(recipe: Recipe) -> dict[str, Any]:
    """``recipe`` as a run records it: with its task's own data fields, defaults included."""
    copy = recipe.model_copy(deep=True)
    task_fields(copy, TASKS.get(copy.task).data_fields)
    return copy.model_dump(mode="json")


def changed_fields(saved: dict[str, Any], recipe: Recipe) -> list[str]:
    """``field: old -> new`` for every training field of ``recipe`` that differs from ``saved``
    (read through today's recipe schema, as ``recipe`` is)."""
    old, new = _flat(_as_trained(validate_recipe(saved, "recipe.json"))), _flat(_as_trained(recipe))
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if key in NOT_TRAINING or any(key.startswith(f"{field}.") for field in NOT_TRAINING):
            continue
        before, after = old.get(key), new.get(key)
        filled_in = key in new and after is None and key in old  # left out now, set by the run
        if before != after and not filled_in:
            changes.append(f"{key}: {json.dumps(before)} -> {json.dumps(after)}")
    return changes


def check_resume(run: Resumable, recipe: Recipe, allow_changes: bool) -> list[str]:
    """The changed fields (:func:`changed_fields`); a :class:`UserError` listing them unless ``allow_changes``."""
    changes = changed_fields(run.recipe, recipe)
    if changes and not allow_changes:
        raise UserError(
            f"--resume {run.run_dir}: the recipe differs from the run's in {len(changes)} field(s): {'; '.join(changes)} "
            "(continue with --allow-changes, or drop the changes)"
        )
    return changes
