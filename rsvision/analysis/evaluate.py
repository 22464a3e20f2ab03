"""Evaluating a trained artifact, with its rows kept in the run folder (:mod:`rsvision.run.evaluations`).

The network runs where the artifact's model is (:func:`rsvision.analysis.device.to_device`),
in the precision :func:`rsvision.analysis.device.inference_precision` picks there; rows
measured in autocast are kept apart from float32 ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from accelerate.utils import send_to_device

from rsvision.analysis.device import device_of, inference_precision, precision_name
from rsvision.engine.evaluate import evaluate
from rsvision.errors import UserError
from rsvision.nn.cost import subnet_madds
from rsvision.run.evaluations import EvaluationStore, data_key
from rsvision.run.folder import Artifact
from rsvision.subnet import SubNet, SubNetLike
from rsvision.training import method_for


def evaluate_artifact(artifact, subnets: Sequence[SubNetLike] | None = None, batch_size: int | None = None) -> list[dict[str, Any]]:
    """Evaluate a loaded run or packed file (:class:`rsvision.run.folder.Artifact`) at ``subnets``
    (default: its trained sub-networks and the method's combined rows); rows carry ``madds``."""
    task, model = artifact.task, artifact.model
    check_classes(artifact)
    method = method_for(task.recipe)(model, task, task.recipe).to(device_of(model))
    method.load_artifact_tensors(artifact.tensors)
    wanted = [SubNet.parse(s) for s in subnets] if subnets else method.eval_subnets()
    with inference_precision(task.recipe, model):
        rows = evaluate(model, task, wanted, method.combiners() if not subnets else None, batch_size)
    for row, s in zip(rows, wanted):
        row["madds"] = subnet_madds(model, s, send_to_device(task.example_input(s.resolution), device_of(model)))
    return method.annotate(rows)


def check_classes(artifact: Artifact) -> None:
    """Refuse evaluation data whose classes are not the run's, in the run's order: labels are
    compared by number, so another class set (``eval --data OTHER``) would score against the
    wrong names. Data naming the run's first classes only is taken (label i names the same
    class in both); a run whose class names are only numbers (a converted official
    checkpoint) is not checked."""
    trained, data = artifact.meta.get("class_names"), artifact.task.class_names()
    if not trained or trained == [str(i) for i in range(len(trained))]:
        return
    if data != trained[: len(data)]:
        d = artifact.task.recipe.data
        raise UserError(
            f"{d.root or d.dataset}: its classes ({', '.join(data)}) are not those {artifact.path} was trained on "
            f"({', '.join(trained)}); evaluate on data with the run's classes"
        )


def evaluation_key(artifact: Artifact) -> dict[str, Any]:
    """What kept rows are filed under: the data (:func:`rsvision.run.evaluations.data_key`), and
    the precision when it is not float32."""
    precision = precision_name(artifact.task.recipe, artifact.model)
    return data_key(artifact) | ({"precision": precision} if precision != "fp32" else {})


def store_of(artifact: Artifact) -> EvaluationStore | None:
    """The store of a run folder; None for other formats."""
    return EvaluationStore.open(artifact.path) if Path(artifact.path).is_dir() else None


def evaluate_and_record(artifact: Artifact, subnets: Sequence[SubNetLike] | None = None, batch_size: int | None = None) -> list[dict[str, Any]]:
    """:func:`evaluate_artifact`, its rows kept in the run folder."""
    store = store_of(artifact)
    rows = evaluate_artifact(artifact, subnets, batch_size)
    if store is not None:
        store.record(evaluation_key(artifact), rows)
    return rows


def cached_evaluation(artifact: Artifact, subnets: Sequence[SubNetLike], batch_size: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``subnets`` (in that order): kept ones reused, the others evaluated in one pass and kept."""
    wanted = [SubNet.parse(s) for s in subnets]
    store = store_of(artifact)
    data = evaluation_key(artifact)
    kept = store.rows(data) if store is not None else {}
    missing = [s for s in wanted if s.id not in kept]
    if missing:
        rows = evaluate_artifact(artifact, missing, batch_size)
        if store is not None:
            store.record(data, rows)
        kept = {**kept, **{row["subnet"]: row for row in rows}}
    return [kept[s.id] for s in wanted]

