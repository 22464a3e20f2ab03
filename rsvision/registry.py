"""Named registries for backbones, heads, tasks, datasets, quantizers and training methods.

A registry maps a name to a builder (a function or class returning the object).
Users register their own builders with the ``register_*`` decorators from their
code, from a module named in a recipe's ``plugins:`` list or the CLI's
``--plugin``, or from an installed package exposing the entry-point group
``rsvision.plugins`` (loaded lazily, the first time a name is looked up).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
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
    "rsvision.training",
    "rsvision.run.packed",
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
            if exc.name and module.startswith(exc.name):
                raise UserError(f"plugin '{module}': module not found ({exc.name}); is it on PYTHONPATH?") from None
            raise UserError(f"plugin '{module}': {_import_failure(exc, module)}") from None
        except UserError:
            raise
        except Exception as exc:  # the plugin's own code failed while being imported
            raise UserError(f"plugin '{module}': {_import_failure(exc, module)}") from None


def _import_failure(exc: BaseException, plugin: str) -> str:
    """``SyntaxError at my_parts.py:3: invalid syntax`` / ``raised ValueError at my_parts.py:7: ...``."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError at {Path(exc.filename or plugin).name}:{exc.lineno}: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"raised {type(exc).__name__}{where} while being imported: {exc}"


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"plugin '{path}': file not found")
    name = f"rsvision_plugin_{path.resolve().stem}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except UserError:
        del sys.modules[spec.name]
        raise
    except Exception as exc:  # the plugin's own code failed while being imported
        del sys.modules[spec.name]
        raise UserError(f"plugin '{path}': {_import_failure(exc, str(path))}") from None


class Registry:
    """A name → builder map with duplicate checks and helpful misses.

    Besides single names, a prefix can stand for a family of names built by one factory
    (``timm/<name>`` for any timm CNN): see :meth:`register_prefix`.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._prefixes: dict[str, tuple[Callable[..., Any], str]] = {}

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

    def register_prefix(
        self, prefix: str, factory: Callable[..., Any], *, placeholder: str = "<name>", override: bool = False
    ) -> None:
        """Resolve every name ``prefix + rest`` to ``factory`` with ``rest`` as its first argument.

        ``factory(rest, /, **kwargs)`` checks ``rest`` itself when building (the family's
        names are not known in advance). A name registered exactly wins over a prefix;
        :meth:`list` shows the family as ``prefix + placeholder`` (``timm/<any timm CNN>``).
        """
        if prefix in self._prefixes and not override and self._prefixes[prefix][0] is not factory:
            raise RegistryError(f"{self.kind} prefix '{prefix}' is already registered; pass override=True to replace it")
        self._prefixes[prefix] = (factory, placeholder)

    def get(self, name: str) -> Callable[..., Any]:
        load_builtins()
        if name in self._entries:
            return self._entries[name]
        for prefix, (factory, _) in self._prefixes.items():
            if name.startswith(prefix):
                return functools.partial(factory, name[len(prefix):])
        known = self._names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        if close:
            hint = f"did you mean {', '.join(repr(c) for c in close)}? (`rsvision list` shows all)"
        else:
            hint = f"known: {', '.join(sorted(known)) or 'none'}"
        raise RegistryError(f"unknown {self.kind} '{name}'; {hint}")

    def build(self, name: str, /, *, field: str | None = None, **kwargs: Any) -> Any:
        """Call the builder registered as ``name`` with ``kwargs`` (``None`` values dropped).

        Arguments the builder does not take are a :class:`UserError` naming ``field`` (the
        recipe field they came from), the builder and what it takes.
        """
        fn = self.get(name)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            inspect.signature(fn).bind(**kwargs)
        except TypeError:
            params = inspect.signature(fn).parameters.values()
            accepted = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
            unknown = [k for k in kwargs if k not in accepted]
            missing = [p.name for p in params if p.default is p.empty and p.kind == p.KEYWORD_ONLY and p.name not in kwargs]
            what = f"does not take {', '.join(repr(k) for k in unknown)}" if unknown else f"needs {', '.join(missing)}"
            raise UserError(f"{field or self.kind}: {self.kind} '{name}' {what} (it takes: {', '.join(accepted) or 'nothing'})") from None
        return fn(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching ``pattern``, each prefix family as ``prefix + placeholder``."""
        load_builtins()
        return sorted(n for n in self._names() if fnmatch.fnmatch(n, pattern))

    def _names(self) -> list[str]:
        return [*self._entries, *(prefix + placeholder for prefix, (_, placeholder) in self._prefixes.items())]


BACKBONES = Registry("backbone")
HEADS = Registry("head")
TASKS = Registry("task")
DATASETS = Registry("dataset")
QUANTIZERS = Registry("quantizer")
METHODS = Registry("training method")


def register_backbone(name: str, *, override: bool = False):
    """Register a backbone builder ``fn(*, pretrained=None, **kwargs) -> nn.Module``."""
    return BACKBONES.register(name, override=override)


def register_head(name: str, *, override: bool = False):
    """Register a head builder ``fn(*, backbone, num_classes, **kwargs) -> nn.Module``."""
    return HEADS.register(name, override=override)


def register_method(name: str, *, override: bool = False):
    """Register a training method (a :class:`rsvision.training.TrainingMethod` subclass)."""
    return METHODS.register(name, override=override)


def register_task(name: str, *, override: bool = False):
    """Register a task class (see :class:`rsvision.tasks.base.Task`)."""
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
