"""Named registries for backbones, heads, tasks, datasets and quantizers.

A registry maps a name to a builder (a function or class returning the object).
Users register their own builders with the ``register_*`` decorators from their
code, from a module named in a recipe's ``plugins:`` list or the CLI's
``--plugin``, or from an installed package exposing the entry-point group
``rsvision.plugins`` (loaded lazily, the first time a name is looked up).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from rsvision.errors import RegistryError, UserError

ENTRY_POINT_GROUP = "rsvision.plugins"
_BUILTIN_MODULES = (
    "rsvision.models",
    "rsvision.data.datasets",
    "rsvision.data.idx",
    "rsvision.data.segmentation",
    "rsvision.quant",
    "rsvision.tasks",
)
_loaded = False


def load_builtins() -> None:
    """Import the built-in plugins and the installed ``rsvision.plugins`` entry points."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def load_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import user modules whose decorators register backbones, heads, tasks or datasets.

    A plugin is a module name (looked up from the current folder too) or a ``.py`` path.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        if module.endswith(".py"):
            _import_file(Path(module))
            continue
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise UserError(f"plugin '{module}': module not found ({exc.name}); is it on PYTHONPATH?") from None


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"plugin '{path}': file not found")
    name = f"rsvision_plugin_{path.resolve().stem}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


class Registry:
    """A name → builder map with duplicate checks and helpful misses."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, *, override: bool = False) -> Callable[[Callable], Callable]:
        """Decorator registering ``fn`` under ``name``; a taken name is an error unless ``override``."""

        def decorator(fn: Callable) -> Callable:
            if name in self._entries and not override and self._entries[name] is not fn:
                raise RegistryError(
                    f"{self.kind} '{name}' is already registered; pass override=True to replace it"
                )
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            if close:
                hint = f"did you mean {', '.join(repr(c) for c in close)}? (`rsvision list` shows all)"
            else:
                hint = f"known: {', '.join(sorted(self._entries)) or 'none'}"
            raise RegistryError(f"unknown {self.kind} '{name}'; {hint}") from None

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Call the builder registered as ``name`` with ``kwargs`` (``None`` values dropped)."""
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def list(self, pattern: str = "*") -> list[str]:
        load_builtins()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))


BACKBONES = Registry("backbone")
HEADS = Registry("head")
TASKS = Registry("task")
DATASETS = Registry("dataset")
QUANTIZERS = Registry("quantizer")


def register_backbone(name: str, *, override: bool = False):
    """Register a backbone builder ``fn(*, pretrained=None, **kwargs) -> nn.Module``."""
    return BACKBONES.register(name, override=override)


def register_head(name: str, *, override: bool = False):
    """Register a head builder ``fn(*, backbone, num_classes, **kwargs) -> nn.Module``."""
    return HEADS.register(name, override=override)


def register_task(name: str, *, override: bool = False):
    """Register a task class (see :class:`rsvision.task.Task`)."""
    return TASKS.register(name, override=override)


def register_dataset(name: str, *, override: bool = False):
    """Register a dataset builder ``fn(*, root, split, **kwargs) -> Dataset``."""
    return DATASETS.register(name, override=override)


def register_quantizer(name: str, *, override: bool = False):
    """Register a quantizer recipe ``fn(model, **quant_cfg) -> nn.Module``."""
    return QUANTIZERS.register(name, override=override)


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONES.list(pattern)


def list_heads(pattern: str = "*") -> list[str]:
    return HEADS.list(pattern)


def list_tasks(pattern: str = "*") -> list[str]:
    return TASKS.list(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


def list_quantizers(pattern: str = "*") -> list[str]:
    return QUANTIZERS.list(pattern)
