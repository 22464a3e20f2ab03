"""Files written whole or not at all, their digests, and safetensors writes.

Every file the toolkit writes goes through :func:`atomic_write` (a temporary file renamed
over the target) or :func:`atomic_dir` (a folder swapped in whole), so an interrupted
command never leaves half a file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import save_file

from rsvision.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``.

    The file gets the permissions of a plainly created one (mkstemp's are owner-only).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A new folder beside ``path`` to fill inside the block; then it takes the place of ``path``.

    An earlier folder at ``path`` is removed only once the new one is complete; if the block
    fails, the new folder is removed and ``path`` stays as it was. Between the two renames
    of the swap the earlier folder waits in ``.<name>.*.old`` beside it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    except OSError as exc:
        raise UserError(f"{path}: cannot write there ({exc.strerror or exc})") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if not path.exists():
            tmp.rename(path)
            return
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        path.rename(old / path.name)
        try:
            tmp.rename(path)
        except BaseException:
            (old / path.name).rename(path)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str) + "\n"))


def write_cache(path: Path, data: Any) -> None:
    """:func:`write_json` for a file that only saves recomputing (kept evaluations): where it
    cannot be written (a read-only run folder), a warning says so and the command goes on."""
    import warnings

    try:
        write_json(path, data)
    except OSError as exc:
        warnings.warn(f"{path}: not kept ({exc.strerror or exc}); the results are shown but not cached", stacklevel=2)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata or {"format": "rsvision"}))


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    out = {}
    for pkg in ("rsvision", "torch", "torchvision", "accelerate", "timm", "segmentation-models-pytorch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder ``tmp`` in for ``final`` (``final.old`` holds the previous one meanwhile)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(final: Path) -> None:
    """Undo a swap interrupted between its two renames: ``final.old`` becomes ``final`` again."""
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        old.rename(final)

