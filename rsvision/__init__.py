"""rsvision: Resolution Switchable Networks (Wang et al., ECCV 2020) for PyTorch.

One network, shared convolution and linear weights, a private BatchNorm per input
resolution, trained with Multi-Resolution Ensemble Distillation (MRED).
"""

from typing import Any

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
from rsvision.subnet import SubNet
from rsvision.switchable import (
    RSNet,
    SwitchableBatchNorm,
    at_resolution,
    at_subnet,
    make_switchable,
    materialize,
    set_resolution,
    trained_resolutions,
)

#: Public functions imported on first use (they pull in torchvision, timm, smp).
_LAZY = {"create_model": "rsvision.models", "load": "rsvision.inference"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rsvision' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "MREDLoss",
    "MREDOutput",
    "RSNet",
    "Recipe",
    "RegistryError",
    "SubNet",
    "SwitchableBatchNorm",
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
    "register_quantizer",
    "register_task",
    "set_resolution",
    "trained_resolutions",
]
