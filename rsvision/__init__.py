"""rsvision: Resolution Switchable Networks (Wang et al., ECCV 2020) for PyTorch.

One network, shared convolution and linear weights, a private BatchNorm per input
resolution, trained with Multi-Resolution Ensemble Distillation (MRED).
"""

from typing import Any

from rsvision.constants import VERSION
from rsvision.errors import RegistryError, UserError
from rsvision.nn.switchable import (
    RSNet,
    SwitchableBatchNorm,
    at_resolution,
    at_subnet,
    make_switchable,
    materialize,
    set_resolution,
    trained_resolutions,
)
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
    register_method,
    register_quantizer,
    register_task,
)
from rsvision.subnet import SubNet
from rsvision.training.loss import MREDLoss, MREDOutput

#: Public functions imported on first use (they pull in torchvision, timm, smp).
_LAZY = {"create_model": "rsvision.models", "load": "rsvision.deploy.load", "Task": "rsvision.tasks", "Metrics": "rsvision.tasks"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rsvision' has no attribute {name!r}")


__version__ = VERSION

__all__ = [
    "MREDLoss",
    "MREDOutput",
    "Metrics",
    "RSNet",
    "Recipe",
    "RegistryError",
    "SubNet",
    "SwitchableBatchNorm",
    "Task",
    "UserError",
    "at_resolution",
    "at_subnet",
    "create_model",
    "list_backbones",
    "list_datasets",
    "list_heads",
    "list_quantizers",
    "list_tasks",
    "load",
    "load_plugins",
    "load_recipe",
    "make_switchable",
    "materialize",
    "register_backbone",
    "register_dataset",
    "register_head",
    "register_method",
    "register_quantizer",
    "register_task",
    "set_resolution",
    "trained_resolutions",
]
