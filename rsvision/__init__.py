"""rsvision: Resolution Switchable Networks (Wang et al., ECCV 2020) for PyTorch.

One network, shared convolution and linear weights, a private BatchNorm per input
resolution, trained with Multi-Resolution Ensemble Distillation (MRED).
"""

from rsvision.errors import RegistryError, UserError
from rsvision.mred import MREDLoss, MREDOutput
from rsvision.recipe import Recipe, load_recipe
from rsvision.registry import (
    list_backbones,
    list_datasets,
    list_heads,
    list_quantizers,
    list_tasks,
    load_plugins,
    register_backbone,
    register_dataset,
    register_head,
    register_quantizer,
    register_task,
)
from rsvision.switchable import (
    RSNet,
    SwitchableBatchNorm,
    at_resolution,
    make_switchable,
    set_resolution,
    trained_resolutions,
)

__version__ = "0.1.0"

__all__ = [
    "MREDLoss",
    "MREDOutput",
    "RSNet",
    "Recipe",
    "RegistryError",
    "SwitchableBatchNorm",
    "UserError",
    "at_resolution",
    "list_backbones",
    "list_datasets",
    "list_heads",
    "list_quantizers",
    "list_tasks",
    "load_plugins",
    "load_recipe",
    "make_switchable",
    "register_backbone",
    "register_dataset",
    "register_head",
    "register_quantizer",
    "register_task",
    "set_resolution",
    "trained_resolutions",
]
