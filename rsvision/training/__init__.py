"""Training methods: how the sub-networks of a switchable network are trained together.

Methods are registered by name (``@register_method``): ``rsnets`` (``MREDTraining``)
trains every resolution of each batch with multi-resolution ensemble distillation;
``mutualnet`` (``MutualTraining``) trains widths and resolutions with the sandwich rule and
in-place distillation; ``parallel`` (``ParallelTraining``) sums each sub-network's own task
loss, for tasks that name it (detection). :func:`method_for` looks up the method a recipe names
(:attr:`rsvision.recipe.Recipe.method`).
"""

from rsvision.recipe import Recipe
from rsvision.registry import METHODS
from rsvision.training.base import StepContext, StepOutput, TrainingMethod
from rsvision.training.mutual import MutualTraining
from rsvision.training.parallel import ParallelTraining
from rsvision.training.rsnets import MREDTraining


def method_for(recipe: Recipe) -> type[TrainingMethod]:
    """The registered training method ``recipe`` asks for."""
    return METHODS.get(recipe.method)


__all__ = ["MREDTraining", "MutualTraining", "ParallelTraining", "StepContext", "StepOutput", "TrainingMethod", "method_for"]
