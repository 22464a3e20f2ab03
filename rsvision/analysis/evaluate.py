"""Evaluating a trained artifact, with its rows kept in the run folder (:mod:`rsvision.run.evaluations`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rsvision.engine.evaluate import evaluate
from rsvision.nn.cost import subnet_madds
from rsvision.run.evaluations import EvaluationStore, data_key
from rsvision.run.folder import Artifact
from rsvision.subnet import SubNet, SubNetLike
from rsvision.training import method_for


def evaluate_artifact(artifact, subnets: Sequence[SubNetLike] | None = None, batch_size: int | None = None) -> list[dict[str, Any]]:
    """Evaluate a loaded run or packed file (:class:`rsvision.run.folder.Artifact`) at ``subnets``
    (default: its trained sub-networks and the method's combined rows); rows carry ``madds``."""
    task, model = artifact.task, artifact.model
    method = method_for(task.recipe)(model, task, task.recipe)
    method.load_artifact_tensors(artifact.tensors)
    wanted = [SubNet.parse(s) for s in subnets] if subnets else method.eval_subnets()
    rows = evaluate(model, task, wanted, method.combiners() if not subnets else None, batch_size)
    for row, s in zip(rows, wanted):
        row["madds"] = subnet_madds(model, s, task.example_input(s.resolution))
    return method.annotate(rows)


def store_of(artifact: Artifact) -> EvaluationStore | None:
    """The store of a run folder; None for other formats."""
    return EvaluationStore.open(artifact.path) if Path(artifact.path).is_dir() else None


def evaluate_and_record(artifact: Artifact, subnets: Sequence[SubNetLike] | None = None, batch_size: int | None = None) -> list[dict[str, Any]]:
    """:func:`evaluate_artifact`, its rows kept in the run folder."""
    store = store_of(artifact)
    rows = evaluate_artifact(artifact, subnets, batch_size)
    if store is not None:
        store.record(data_key(artifact), rows)
    return rows


def cached_evaluation(artifact: Artifact, subnets: Sequence[SubNetLike], batch_size: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``subnets`` (in that order): kept ones reused, the others evaluated in one pass and kept."""
    wanted = [SubNet.parse(s) for s in subnets]
    store = store_of(artifact)
    data = data_key(artifact)
    kept = store.rows(data) if store is not None else {}
    missing = [s for s in wanted if s.id not in kept]
    if missing:
        rows = evaluate_artifact(artifact, missing, batch_size)
        if store is not None:
            store.record(data, rows)
        kept = {**kept, **{row["subnet"]: row for row in rows}}
    return [kept[s.id] for s in wanted]

