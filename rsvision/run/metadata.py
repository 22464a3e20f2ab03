"""The metadata of a run folder (``rsvision.json``): what a trained network is and how it was trained."""

from __future__ import annotations

from rsvision.nn.cost import count_parameters
from rsvision.recipe import Recipe
from rsvision.tasks.base import Task
from rsvision.training.base import TrainingMethod


def run_metadata(task: Task, method: TrainingMethod, recipe: Recipe, rows: list[dict], madds: dict, epochs_done: int) -> dict:
    model = method.model
    return {
        "task": recipe.task,
        "resolutions": recipe.resolutions,
        "subnets": [s.id for s in model.subnets],
        "class_names": task.class_names(),
        "input": task.input_format.as_dict(),
        "recipe": recipe.model_dump(mode="json"),
        "metrics": rows,
        "primary_metric": task.primary_metric,
        "parameters": count_parameters(model),
        "madds": madds,
        "epochs_done": epochs_done,
        "complete": epochs_done == recipe.train.epochs,
        **method.describe(),
        **task.describe(),
    }

