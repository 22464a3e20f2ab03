"""Trained artifacts: run folders and other formats, each read by a registered loader.

A run folder holds ``model.safetensors`` (the network's state and the training method's
tensors, e.g. ``mred.alpha``), ``rsvision.json`` (the task, the recipe, the sub-networks,
class names, input format, metrics, MAdds, the plugins, library versions and whether training
finished), optionally ``calibration.safetensors`` (BN statistics recomputed after
training), ``state/`` (everything ``--resume`` needs) and ``plugins/`` (copies of the plugin
files the run was trained with). Files are written atomically.

Other formats (``rsvision export``'s packed files) register a loader with
:func:`register_format`; :func:`load_artifact` tries each.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from rsvision.constants import RUNS_DIR
from rsvision.data.transforms import InputFormat
from rsvision.errors import RegistryError, UserError
from rsvision.io import library_versions, save_tensors, write_json
from rsvision.recipe import validate_recipe
from rsvision.registry import TASKS, load_builtins
from rsvision.run.calibration import load_calibration
from rsvision.run.files import CALIBRATION, META, WEIGHTS
from rsvision.run.plugins import load_recorded_plugins, plugin_hint, record_plugins
from rsvision.subnet import SubNet
from rsvision.training.ensemble import ALPHA_KEY


@dataclass
class Artifact:
    """A trained network, ready to evaluate: its task, model (eval mode), extra tensors and metadata."""

    path: Path
    task: Any
    model: torch.nn.Module
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def alpha(self) -> torch.Tensor | None:
        return self.tensors.get(ALPHA_KEY)

    @property
    def subnets(self) -> list[SubNet]:
        return list(self.model.subnets)

    @property
    def input_format(self) -> InputFormat:
        return self.task.input_format

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete", True))


@dataclass
class _Format:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, str | None], Artifact]


_FORMATS: list[_Format] = []


def register_format(name: str, detect: Callable[[Path], bool], load: Callable[[Path, str | None], Artifact]) -> None:
    """Register a loader for files ``detect`` recognises (run folders are built in)."""
    _FORMATS[:] = [f for f in _FORMATS if f.name != name] + [_Format(name, detect, load)]


def load_artifact(path: str | Path, data_root: str | None = None) -> Artifact:
    """Load a run folder or any registered format; the model comes back in eval mode."""
    load_builtins()
    path = Path(path)
    if path.is_dir():
        return load_run_folder(path, data_root)
    for fmt in _FORMATS:
        if fmt.detect(path):
            return fmt.load(path, data_root)
    if not path.exists():
        raise UserError(f"{path}: no such run folder or file")
    raise UserError(f"{path}: neither a run folder nor a file of a known format ({', '.join(f.name for f in _FORMATS) or 'none'})")


def save_run(run_dir: Path, model: torch.nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write the weights (with the method's tensors), then the metadata that describes them,
    with the plugins of its recipe recorded (:mod:`rsvision.run.plugins`)."""
    save_tensors(run_dir / WEIGHTS, {**model.state_dict(), **tensors})
    plugins = record_plugins(run_dir, meta.get("recipe", {}).get("plugins", []))
    meta = {**meta, "plugins": plugins, "versions": library_versions(), "saved": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(run_dir / META, meta)


def read_meta(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / META
    if not path.is_file():
        raise UserError(f"{run_dir}: not an rsvision run folder (no {META})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt metadata ({exc})") from None


def build_from_meta(meta: dict[str, Any], source: str, data_root: str | None = None, run_dir: Path | None = None):
    """The task and the (untrained) model that a run's metadata describes, after importing the
    plugins it records (their copies in ``run_dir``); an unknown name says which plugin the run
    was trained with."""
    recipe = validate_recipe(meta["recipe"], source)
    if data_root is not None:
        recipe.data.root = data_root
    load_recorded_plugins(meta, run_dir)
    recipe.model.pretrained = False  # the run's own weights replace any starting point (a tag in the backbone name too)
    try:
        task = TASKS.get(recipe.task)(recipe)
        return task, task.build_model()
    except RegistryError as exc:
        raise RegistryError(f"{source}: {exc}; {plugin_hint(meta)}") from None


#: What ``torch.compile``'s wrapper adds to the keys of the module it wraps: runs saved with
#: ``train.compile: true`` before the body was compiled in place carry it.
COMPILED_PREFIX = "_orig_mod."


def split_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The network's part of a saved state, and the rest (the training method's tensors)."""
    own = set(model.state_dict())
    return {k: v for k, v in state.items() if k in own}, {k: v for k, v in state.items() if k not in own}


def load_run_folder(run_dir: Path, data_root: str | None = None) -> Artifact:
    meta = read_meta(run_dir)
    task, model = build_from_meta(meta, str(run_dir / META), data_root, run_dir)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{run_dir}: no {WEIGHTS} (did the run finish an epoch?)")
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise UserError(f"{weights}: cannot read weights ({exc})") from None
    network, tensors = split_state(model, {k.replace(COMPILED_PREFIX, ""): v for k, v in state.items()})
    try:
        model.load_state_dict(network)
    except RuntimeError as exc:
        raise UserError(f"{weights}: does not fit the model its {META} describes ({exc})") from None
    if (run_dir / CALIBRATION).is_file():
        load_calibration(model, run_dir / CALIBRATION, weights)
    model.eval()
    return Artifact(run_dir, task, model, meta, tensors)


def find_latest_run(root: str | Path = RUNS_DIR, task: str | None = None) -> Path:
    """The most recently saved finished run folder under ``root`` (of ``task`` when given)."""
    root = Path(root)
    runs = []
    for meta_path in root.glob(f"*/{META}"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if meta.get("complete", True) and (task is None or meta.get("task") == task):
            runs.append((meta_path.stat().st_mtime, meta_path.parent))
    if not runs:
        which = f" of task '{task}'" if task else ""
        raise UserError(f"no finished run{which} under {root}/; train one first or pass --checkpoint RUN_DIR")
    return max(runs)[1]


