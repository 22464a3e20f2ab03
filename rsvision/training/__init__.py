"""Training methods: how the sub-networks of a switchable network are trained together.

``MREDTraining`` (RS-Nets) trains every resolution of each batch with multi-resolution
ensemble distillation; ``MutualTraining`` (MutualNet) trains widths and resolutions with
the sandwich rule and in-place distillation. :func:`method_for` picks the method a recipe
asks for: ``MutualTraining`` when it has a ``widths`` section, else ``MREDTraining``.
"""

from rsvision.recipe import Recipe
from rsvision.training.base import StepContext, StepOutput, TrainingMethod
from rsvision.training.mred import MREDTraining
from rsvision.training.mutual import MutualTraining


def method_for(recipe: Recipe) -> type[TrainingMethod]:
    """The training method of ``recipe``."""
    return MutualTraining if recipe.widths is not None else MREDTraining


__all__ = ["MREDTraining", "MutualTraining", "StepContext", "StepOutput", "TrainingMethod", "method_for"]
