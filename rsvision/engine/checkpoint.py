"""Run folders: ``model.safetensors`` + ``rsvision.json``, written atomically.

``rsvision.json`` binds the weights to what is needed to use them: the task, the recipe,
the resolutions, class names, the learned ensemble weights, metrics and library versions.
``state/`` holds the full training state for ``--resume`` (Accelerate's ``save_state``
plus ``progress.json``), replaced as a whole so that a crash never leaves half of it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from rsvision.errors import UserError
from rsvision.recipe import validate_recipe

WEIGHTS = "model.safetensors"
META = "rsvision.json"
STATE = "state"
ALPHA_KEY = "mred.alpha"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str) + "\n"))


def library_versions() -> dict[str, str]:
    out = {}
    for pkg in ("rsvision", "torch", "torchvision", "accelerate", "timm", "segmentation-models-pytorch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def save_weights(run_dir: Path, model: torch.nn.Module, alpha: torch.Tensor) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state[ALPHA_KEY] = alpha.detach().float().cpu()
    atomic_write(run_dir / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "rsvision"}))


def save_run(run_dir: Path, model: torch.nn.Module, alpha: torch.Tensor, meta: dict[str, Any]) -> None:
    """Write the weights, then the metadata that describes them."""
    save_weights(run_dir, model, alpha)
    meta = {**meta, "versions": library_versions(), "saved": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(run_dir / META, meta)


def read_meta(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / META
    if not path.is_file():
        raise UserError(f"{run_dir}: not an rsvision run folder (no {META})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt metadata ({exc})") from None


def build_from_meta(meta: dict[str, Any], source: str, data_root: str | None = None):
    """The task and the (untrained) model that a run's metadata describes."""
    from rsvision.registry import TASKS, load_plugins

    recipe = validate_recipe(meta["recipe"], source)
    if data_root is not None:
        recipe.data.root = data_root
    load_plugins(recipe.plugins)
    recipe.model.pretrained = None  # the run's own weights replace any starting point
    task = TASKS.get(recipe.task)(recipe)
    return task, task.build_model()


def load_run(run_dir: str | Path, data_root: str | None = None):
    """Rebuild a trained run: ``(task, model, alpha, meta)`` with the model in eval mode.

    ``run_dir`` is a run folder, or a packed file written by ``rsvision export``.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        from rsvision.quant.export import is_packed, load_packed_run

        if not is_packed(run_dir):
            raise UserError(f"{run_dir}: neither a run folder nor a packed file from `rsvision export`")
        return load_packed_run(run_dir, data_root)
    meta = read_meta(run_dir)
    task, model = build_from_meta(meta, str(run_dir / META), data_root)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{run_dir}: no {WEIGHTS} (did the run finish an epoch?)")
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise UserError(f"{weights}: cannot read weights ({exc})") from None
    alpha = state.pop(ALPHA_KEY, torch.zeros(len(task.resolutions)))
    model.load_state_dict(state)
    model.eval()
    return task, model, alpha, meta


def find_latest_run(root: str | Path = "runs", task: str | None = None) -> Path:
    """The most recently saved run folder under ``root`` (of ``task`` when given)."""
    root = Path(root)
    runs = []
    for meta_path in root.glob(f"*/{META}"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if task is None or meta.get("task") == task:
            runs.append((meta_path.stat().st_mtime, meta_path.parent))
    if not runs:
        which = f" of task '{task}'" if task else ""
        raise UserError(f"no trained run{which} under {root}/; train one first or pass --checkpoint RUN_DIR")
    return max(runs)[1]


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder ``tmp`` in for ``final``."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
