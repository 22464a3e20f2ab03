"""rsvision: Resolution Switchable Networks (Wang et al., ECCV 2020) for PyTorch.

One network, shared convolution and linear weights, a private BatchNorm per input
resolution, trained with Multi-Resolution Ensemble Distillation (MRED).
"""

from typing import Any

from rsvision.constants import VERSION
from rsvision.errors import RegistryError, UserError

#: Public names and the module each comes from, imported on first use: ``import rsvision``
#: (and a plugin's ``from rsvision import register_backbone``) loads no model, task or
#: training code until it is asked for.
_LAZY = {
    **dict.fromkeys(
        ["RSNet", "SwitchableBatchNorm", "at_resolution", "at_subnet", "make_switchable", "materialize", "set_resolution", "trained_resolutions"],
        "rsvision.nn.switchable",
    ),
    **dict.fromkeys(["Recipe", "load_recipe"], "rsvision.recipe"),
    **dict.fromkeys(
        [
            "list_backbones", "list_datasets", "list_heads", "list_quantizers", "list_tasks", "load_plugins",
            "register_backbone", "register_dataset", "register_head", "register_method", "register_quantizer", "register_task",
        ],
        "rsvision.registry",
    ),  # fmt: skip
    "SubNet": "rsvision.subnet",
    **dict.fromkeys(["MREDLoss", "MREDOutput"], "rsvision.training.loss"),
    "create_model": "rsvision.models",
    "load": "rsvision.deploy.load",
    **dict.fromkeys(["Task", "Metrics"], "rsvision.tasks"),
}


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
