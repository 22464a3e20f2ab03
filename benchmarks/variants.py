"""Train variants of one recipe and evaluate them at every resolution (shared by the benchmarks)."""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

import yaml

from rsvision.engine import evaluate, train
from rsvision.recipe import apply_overrides, validate_recipe
from rsvision.registry import TASKS
from rsvision.run.folder import load_artifact


def train_variant(base: dict, output_dir: str, name: str, top: dict | None = None, **overrides) -> Path:
    """Train ``base`` with top-level fields replaced by ``top`` and dotted ``overrides``."""
    data = yaml.safe_load(yaml.safe_dump(base))
    data.update(top or {})
    apply_overrides(data, [f"{k}={v}" for k, v in overrides.items()])
    data["output_dir"] = output_dir
    return train(validate_recipe(data, name), name=name, quiet=True)


def scores(run_dir: Path, resolutions: list[int], data_overrides: list[str] | None = None) -> dict[int, dict]:
    """Metrics per resolution; an I-Net tested away from its one resolution uses its only BN.
    ``data_overrides`` (``KEY=VALUE``) change the run's recipe for this evaluation only, e.g.
    to score on a validation split carved from the training set."""
    artifact = load_artifact(run_dir)
    task = artifact.task
    if data_overrides:
        recipe = apply_overrides(task.recipe.model_dump(mode="json"), data_overrides)
        task = TASKS.get(recipe["task"])(validate_recipe(recipe, str(run_dir)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = evaluate(artifact.model, task, resolutions)
    return {row["resolution"]: row for row in rows}


def cell(values: list[float]) -> str:
    """A table cell: the mean of the seeds' values, then each seed's (``87.6 (87.5 / 87.7)``)."""
    if not values:
        return "-"
    mean = f"{statistics.fmean(values):.1f}"
    return mean if len(values) == 1 else f"{mean} ({' / '.join(f'{v:.1f}' for v in values)})"


def load_combined(paths: list[Path]) -> tuple[list[dict], str, list[str]]:
    """The records of earlier ``--json`` files (one per seed, say), and the recipe and overrides they ran."""
    saved = [json.loads(Path(p).read_text()) for p in paths]
    return [rec for s in saved for rec in s["records"]], saved[0]["recipe"], saved[0]["overrides"]


def recipe_and_records(args: argparse.Namespace) -> tuple[dict, list[dict] | None]:
    """The recipe dict of ``--recipe`` with ``--set`` applied (those of the files with
    ``--combine``), and the combined files' records (None: train them)."""
    records = None
    if args.combine:
        records, args.recipe, args.overrides = load_combined(args.combine)
    with open(args.recipe) as f:
        return apply_overrides(yaml.safe_load(f), args.overrides), records


def validation_overrides(base: dict, given: list[str] | None) -> list[str]:
    """Recipe overrides that make the val split a validation split carved from the training set:
    ``given``, or for the ``mnist`` dataset 5,000 held-out images of the training file."""
    if given is not None:
        return given
    if base.get("data", {}).get("dataset") == "mnist":
        return ["data.args.val_from=train", "data.args.val_size=5000"]
    return []


def base_recipe(description: str, default: str, seeds: bool = False) -> tuple[str, list[str], dict] | tuple[str, list[str], dict, list[int]]:
    """``--recipe`` and ``--set`` from the command line: (path, overrides, recipe dict), and
    the ``--seeds`` list when ``seeds`` is true."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--recipe", default=default)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    if seeds:
        parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each repetition")
    args = parser.parse_args()
    with open(args.recipe) as f:
        base = apply_overrides(yaml.safe_load(f), args.overrides)
    return (args.recipe, args.overrides, base, args.seeds) if seeds else (args.recipe, args.overrides, base)
