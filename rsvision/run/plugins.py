"""The plugins a run was trained with, recorded in its folder so that every later command finds them.

A plugin file (``my_parts.py``) is copied into the run folder (``plugins/my_parts.py``) with
its SHA-256 when the run is first saved; a plugin module (``my_pkg.parts``) is recorded by
its import path. Loading a run (:func:`rsvision.run.folder.build_from_meta`) imports the
copies and the modules before it builds the network, so ``eval``, ``export``, ``deploy``,
``rsvision.load`` ... need no ``--plugin``. A ``--plugin`` given to a later command is
imported first and wins over the run's copy (of the same file name, or registering the same
names).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from rsvision.errors import RegistryError, UserError
from rsvision.io import atomic_write, file_sha256
from rsvision.registry import load_plugins
from rsvision.run.files import PLUGINS


def resolve_plugins(plugins: list[str] | tuple[str, ...], base: Path) -> list[str]:
    """Plugins as a run records them: a ``.py`` path relative to ``base`` (the recipe's folder,
    or the current one for ``--plugin``) made absolute (relative to the current folder when
    only there, as before recipes resolved them), a module that is a file in ``base``
    (``my_parts`` for ``base/my_parts.py``) that file; other module names as given."""
    resolved = []
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin).expanduser()
            if not path.is_absolute():
                path = path if path.is_file() and not (base / path).is_file() else base / path
            resolved.append(str(path.resolve()))
            continue
        as_file = base / (plugin.replace(".", "/") + ".py")
        resolved.append(str(as_file.resolve()) if as_file.is_file() else plugin)
    return resolved


def record_plugins(run_dir: Path, plugins: list[str]) -> list[dict[str, Any]]:
    """Copy each plugin file into ``run_dir/plugins/`` (once: the file the run started with is
    kept) and describe every plugin: ``{"file", "source", "sha256"}`` or ``{"module", "source"}``."""
    records: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for plugin in plugins:
        if not plugin.endswith(".py"):
            records.append({"module": plugin, "source": getattr(sys.modules.get(plugin), "__file__", None)})
            continue
        source = Path(plugin).resolve()
        if names.setdefault(source.name, str(source)) != str(source):
            raise UserError(f"plugins: {names[source.name]} and {source} have the same file name; rename one of them")
        copy = Path(run_dir) / PLUGINS / source.name
        if not copy.is_file():
            if not source.is_file():
                raise UserError(f"plugin '{plugin}': file not found")
            atomic_write(copy, lambda tmp: shutil.copyfile(source, tmp))
        records.append({"file": f"{PLUGINS}/{source.name}", "source": str(source), "sha256": file_sha256(copy)})
    return records


def load_recorded_plugins(meta: dict[str, Any], run_dir: Path | None) -> None:
    """Import the plugins ``meta`` records: the copies in ``run_dir`` (else the original files,
    where they still are: a packed file holds no copies), then the modules. A run saved before
    plugins were recorded imports its recipe's ``plugins:`` as given."""
    records = meta.get("plugins")
    if records is None:
        load_plugins(meta.get("recipe", {}).get("plugins", []))
        return
    for record in records:
        if "module" in record:
            load_plugins([record["module"]])
            continue
        copy = Path(run_dir) / record["file"] if run_dir is not None else None
        path = copy if copy is not None and copy.is_file() else Path(record["source"])
        if not path.is_file():
            continue  # an unknown name then says which plugin the run was trained with (plugin_hint)
        if file_sha256(path) != record["sha256"]:
            warnings.warn(f"plugin {path}: differs from the file the run was trained with (SHA-256 {record['sha256'][:12]}...)", stacklevel=2)
        try:
            load_plugins([str(path)])
        except RegistryError as exc:  # a --plugin of another file name registered these names first: it wins
            warnings.warn(f"plugin {path}: not imported, a --plugin registered its names first ({exc})", stacklevel=2)


def plugin_hint(meta: dict[str, Any]) -> str:
    """What to add to an unknown name in a run: the plugins it was trained with, or how to pass one."""
    records = meta.get("plugins")
    if records is None:
        given = meta.get("recipe", {}).get("plugins", [])
        names = list(given)
    else:
        names = [r.get("module") or r["source"] for r in records]
    if not names:
        return "the run records no plugin: if it was trained with --plugin FILE, pass the same --plugin FILE"
    return f"the run was trained with plugin {', '.join(names)}: pass it with --plugin"
