"""Training methods: how the sub-networks of a switchable network are trained together.

``MREDTraining`` (RS-Nets) trains every resolution of each batch with multi-resolution
ensemble distillation. :func:`method_for` picks the method a recipe asks for.
"""

from rsvision.recipe import Recipe
from rsvision.training.base import StepContext, StepOutput, TrainingMethod
from rsvision.training.mred import MREDTraining


def method_for(recipe: Recipe) -> type[TrainingMethod]:
    """The training method of ``recipe``."""
    return MREDTraining


__all__ = ["MREDTraining", "StepContext", "StepOutput", "TrainingMethod", "method_for"]
