"""Checkpoints of the official RS-Nets PyTorch code as rsvision models.

The official code (``non-quantization/imagenet.py`` and ``models/imagenet/parallel*.py``)
wraps every shared convolution and linear layer in a ``ModuleParallel`` (keys
``conv1.module.weight``) and every BatchNorm in a ``BatchNorm2dParallel`` with one child
per training size (``bn1.bn_0.running_mean`` ... ``bn1.bn_{S-1}.*``, child i for the i-th
size of ``--sizes``). The ensemble scores are a model parameter ``alpha``. The file is
``{'epoch', 'arch', 'state_dict', 'best_acc0', 'best_acc', 'optimizer'}`` with a
``module.`` prefix from DataParallel.

The official networks are the torchvision ResNets and a MobileNetV2 with the same layers
as torchvision's, so a conversion only renames keys: the rsvision model built from
:func:`official_recipe` computes the same logits at each trained resolution.


``rsvision convert --from rs-nets`` writes such a checkpoint as an rsvision run folder.

The run folder holds the converted weights with the ensemble scores as ``mred.alpha``, and
metadata like a finished training run's: task ``cls``, the recipe of
:func:`official_recipe` (ImageFolder data, inputs in [0, 1] without
mean/std, as the official loaders feed them), the sub-networks, class names (indices
unless a file names them), MAdds, ``complete: true`` and ``converted_from`` (file name,
architecture, SHA-256 and the checkpoint's own fields such as ``epoch``). ``rsvision
eval --checkpoint RUN_DIR --data IMAGENET`` then evaluates it like any run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

from rsvision.errors import UserError
from rsvision.io import file_sha256
from rsvision.models import build_model
from rsvision.models.backbones import TorchvisionMobileNetV2
from rsvision.nn.cost import subnet_madds
from rsvision.recipe import Recipe, validate_recipe
from rsvision.registry import TASKS, load_builtins
from rsvision.run.files import META
from rsvision.run.folder import save_run
from rsvision.run.metadata import run_metadata
from rsvision.training import method_for
from rsvision.training.ensemble import ALPHA_KEY

#: The official ``--arch`` names of the supported networks and their rsvision backbones.
OFFICIAL_ARCHS = {
    "parallel_resnet18": "resnet18",
    "parallel_resnet34": "resnet34",
    "parallel_resnet50": "resnet50",
    "parallel_resnet101": "resnet101",
    "parallel_mobilenetv2": "mobilenet_v2",
}
ALPHA = "alpha"
_DATA_PARALLEL = "module."
# torch.save writes a zip archive (PyTorch >= 1.6) or, in the legacy format, pickles (protocol >= 2).
_ZIP_MAGIC, _PICKLE_PROTO = b"PK\x03\x04", b"\x80"
_BN_CHILD = re.compile(r"\.bn_(\d+)\.")
# rsvision keys: a switchable BN tensor, or a plain (shared) tensor.
_RS_BN = re.compile(r"^body\.(?P<path>.+)\.groups\.(?P<res>\d+)\.(?P<name>\w+)$")
_RS_SHARED = re.compile(r"^body\.(?P<path>.+)\.(?P<name>\w+)$")
# torchvision InvertedResidual sub-path (and whether it is a BN) -> index in the official
# block's ``conv`` Sequential, whose ReLU6 entries take indices 2 and 5.
_MBV2_BLOCK = {
    ("conv.0.0", False): 0, ("conv.0.1", True): 1,
    ("conv.1", False): 3, ("conv.2", True): 4,  # expansion 1: dw conv, BN, pw-linear conv, BN
    ("conv.1.0", False): 3, ("conv.1.1", True): 4, ("conv.2", False): 6, ("conv.3", True): 7,
}


class OfficialCheckpoint(NamedTuple):
    """A state dict without the DataParallel prefix, and the ``arch`` the file names (if any)."""

    state: dict[str, Tensor]
    arch: str | None


def rsvision_arch(arch: str, source: str = "checkpoint") -> str:
    """The rsvision backbone for an official (``parallel_resnet18``) or rsvision name."""
    if arch in OFFICIAL_ARCHS:
        return OFFICIAL_ARCHS[arch]
    if arch in OFFICIAL_ARCHS.values():
        return arch
    known = ", ".join(OFFICIAL_ARCHS.values())
    raise UserError(f"{source}: unsupported architecture '{arch}' (supported: {known})")


def official_recipe(arch: str, num_classes: int, resolutions: Sequence[int], data_root: str = "data/imagenet") -> Recipe:
    """The recipe of an official ImageNet RS-Net: its backbone, a linear classifier, ImageFolder data.

    The official loaders feed images in [0, 1] without mean/std normalisation, so the
    recipe turns normalisation off; with it on the converted weights lose their accuracy.
    """
    return validate_recipe(
        {
            "task": "cls",
            "resolutions": [int(r) for r in resolutions],
            "model": {"backbone": rsvision_arch(arch), "head": "classifier", "num_classes": num_classes},
            "data": {"dataset": "imagefolder", "root": data_root, "normalize": False},
        },
        "official RS-Nets recipe",
    )


def read_official_checkpoint(path: str | Path) -> OfficialCheckpoint:
    """Read an official checkpoint (the training wrapper dict or a bare state dict) on the CPU."""
    return read_official_file(path)[0]


def read_official_file(path: str | Path) -> tuple[OfficialCheckpoint, dict[str, int | float | str]]:
    """:func:`read_official_checkpoint` and the wrapper's scalar fields (``epoch``, ``best_acc``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(_ZIP_MAGIC) or magic.startswith(_PICKLE_PROTO)):
        raise UserError(f"{path}: cannot read checkpoint (not a PyTorch file: neither a zip archive nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one holding arbitrary pickled objects
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot read checkpoint ({reason})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict of tensors or a training checkpoint, got {type(obj).__name__}")
    arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
    state = obj["state_dict"] if "state_dict" in obj else obj
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path}: the checkpoint holds no state dict")
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise UserError(f"{path}: '{key}' is a {type(value).__name__}, not a tensor; not an RS-Nets state dict")
    fields = {k: v for k, v in obj.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return OfficialCheckpoint(strip_data_parallel(state), arch), fields


def strip_data_parallel(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``module.`` prefix that (Distributed)DataParallel adds to every key."""
    return {k.removeprefix(_DATA_PARALLEL): v for k, v in state.items()}


def convert_rsnets(
    state: dict[str, Tensor],
    arch: str,
    resolutions: Sequence[int],
    source: str = "checkpoint",
) -> tuple[dict[str, Tensor], Tensor | None]:
    """The rsvision state dict and the ensemble scores ``alpha`` of an official RS-Nets state dict.

    ``resolutions`` are the run's ``--sizes`` in their order (largest first for the
    published weights): BN child ``bn_i`` becomes the group of ``resolutions[i]``. The
    state dict fits ``build_model(official_recipe(arch, num_classes, resolutions))``;
    ``alpha`` (None if the checkpoint has none) is reordered to the model's resolution
    order, largest first. ``source`` names the file in error messages.
    """
    arch = rsvision_arch(arch, source)
    state = strip_data_parallel(state)
    given = [int(r) for r in resolutions]
    if not given or len(set(given)) != len(given) or min(given) <= 0:
        raise UserError(f"{source}: resolutions must be distinct positive sizes, got {given}")
    _check_bn_copies(state, given, source)

    head = _official_path(arch, "head.fc")
    if f"{head}.module.weight" not in state:
        raise UserError(f"{source}: no '{head}.module.weight' (the classifier); not an official {arch} checkpoint")
    num_classes = state[f"{head}.module.weight"].shape[0]
    with torch.device("meta"):  # only the key names and shapes are needed
        expected = build_model(official_recipe(arch, num_classes, given)).state_dict()

    index = {r: i for i, r in enumerate(given)}
    out, used = {}, set()
    for key, like in expected.items():
        if key == "trained_resolutions":
            out[key] = torch.tensor(sorted(given, reverse=True), dtype=like.dtype)
            continue
        official = _official_key(arch, key, index)
        if official not in state:
            raise UserError(f"{source}: missing key '{official}' (needed for {key})")
        value = state[official]
        if value.shape != like.shape:
            raise UserError(
                f"{source}: '{official}' has shape {list(value.shape)}, but the rsvision {arch} "
                f"with {num_classes} classes needs {list(like.shape)} for {key}"
            )
        out[key] = value
        used.add(official)
    stray = sorted(set(state) - used - {ALPHA})
    if stray:
        more = f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""
        raise UserError(f"{source}: unexpected key '{stray[0]}'{more} for an official {arch}")
    return out, _alpha(state, given, source)


def _check_bn_copies(state: dict[str, Tensor], given: list[int], source: str) -> None:
    """The number of BN children (``bn_0`` .. ``bn_{S-1}``) must be the number of resolutions."""
    indices = {int(m.group(1)) for key in state for m in [_BN_CHILD.search(key)] if m}
    if not indices:
        raise UserError(f"{source}: no per-resolution BatchNorm keys ('*.bn_0.*'); not an official RS-Nets checkpoint")
    copies = max(indices) + 1
    if copies != len(given):
        sizes = " ".join(map(str, given))
        raise UserError(
            f"{source}: the checkpoint has {copies} BatchNorm copies per layer (bn_0..bn_{copies - 1}) "
            f"but {len(given)} resolutions were given ({sizes}); give the run's --sizes in their order"
        )


def _official_key(arch: str, key: str, index: dict[int, int]) -> str:
    """The official key holding the rsvision tensor ``key``."""
    bn = _RS_BN.match(key)
    if bn:
        path = _official_path(arch, bn["path"], is_bn=True)
        return f"{path}.bn_{index[int(bn['res'])]}.{bn['name']}"
    shared = _RS_SHARED.match(key)
    if shared is None:
        raise AssertionError(f"unexpected rsvision key {key}")
    return f"{_official_path(arch, shared['path'])}.module.{shared['name']}"


def _official_path(arch: str, path: str, is_bn: bool = False) -> str:
    """The official module path of an rsvision module path (under ``body.``)."""
    if path == "head.fc":
        return "classifier" if arch == "mobilenet_v2" else "fc"
    parts = path.split(".")
    if arch == "mobilenet_v2":
        return _mobilenet_v2_path(parts, is_bn)
    if parts[1] == "stem":  # torchvision ResNet: stem = conv1, bn1, relu, maxpool
        return {"0": "conv1", "1": "bn1"}[parts[2]]
    return ".".join([f"layer{int(parts[2]) + 1}", *parts[3:]])  # backbone.layers.i -> layer{i+1}


def _mobilenet_v2_path(parts: list[str], is_bn: bool) -> str:
    """rsvision ``backbone.stages.s.n.*`` -> official ``features.n.*`` or the last ``conv.*``.

    The stages are slices of torchvision's ``features``, which keep its indices ``n``.
    """
    n, rest = int(parts[3]), ".".join(parts[4:])
    if n == 0:  # first conv-BN-ReLU6: same layout in both
        return f"features.0.{rest}"
    if n == TorchvisionMobileNetV2._stage_ends[-1] - 1:  # the final 1x1 conv-BN-ReLU6 is ``conv`` officially
        return f"conv.{rest}"
    return f"features.{n}.conv.{_MBV2_BLOCK[(rest, is_bn)]}"


def _alpha(state: dict[str, Tensor], given: list[int], source: str) -> Tensor | None:
    """``alpha`` in the model's resolution order (largest first)."""
    alpha = state.get(ALPHA)
    if alpha is None:
        return None
    if alpha.shape != (len(given),):
        raise UserError(f"{source}: '{ALPHA}' has shape {list(alpha.shape)}, expected [{len(given)}] (one per resolution)")
    order = [given.index(r) for r in sorted(given, reverse=True)]
    return alpha.detach().float()[order]


#: The ``--sizes`` of the published ImageNet weights, in their order (bn_0 is 224).
PUBLISHED_SIZES = (224, 192, 160, 128, 96)


def read_classes(path: str | Path, num_classes: int) -> list[str]:
    """Class names, one per line (blank lines skipped); there must be one per output of the classifier."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read class names ({exc.__class__.__name__})") from None
    if len(names) != num_classes:
        raise UserError(f"{path}: {len(names)} class names, but the classifier has {num_classes} outputs")
    return names


def checked_arch(given: str | None, in_checkpoint: str | None, source: str) -> str:
    """The rsvision backbone: ``given`` (``--arch``) must agree with the checkpoint's own ``arch`` field."""
    if given is None and in_checkpoint is None:
        raise UserError(f"{source}: the checkpoint names no architecture; give --arch ({', '.join(OFFICIAL_ARCHS.values())})")
    ours = rsvision_arch(given, "--arch") if given is not None else None
    theirs = rsvision_arch(in_checkpoint, source) if in_checkpoint is not None else None
    if ours is not None and theirs is not None and ours != theirs:
        raise UserError(f"{source}: the checkpoint is a '{in_checkpoint}' ({theirs}), not --arch {given}")
    return ours or theirs  # type: ignore[return-value]


def _check_output(out_dir: Path) -> None:
    if (out_dir / META).exists():
        raise UserError(f"{out_dir}: already a run folder; convert into a new folder")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists and is not an empty folder")


def convert_official_run(
    checkpoint: str | Path,
    out_dir: str | Path,
    arch: str | None = None,
    resolutions: Sequence[int] = PUBLISHED_SIZES,
    classes_file: str | Path | None = None,
) -> dict[str, Any]:
    """Write the run folder ``out_dir`` from an official checkpoint; returns a summary.

    ``resolutions`` are the training run's ``--sizes`` in their order (BN child i belongs
    to the i-th); ``arch`` may be left out when the checkpoint names it.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    _check_output(out_dir)
    official, fields = read_official_file(checkpoint)
    arch = checked_arch(arch, official.arch, str(checkpoint))
    weights, alpha = convert_rsnets(official.state, arch, resolutions, source=str(checkpoint))
    num_classes = weights["body.head.fc.weight"].shape[0]
    classes = read_classes(classes_file, num_classes) if classes_file else [str(i) for i in range(num_classes)]

    load_builtins()
    recipe = official_recipe(arch, num_classes, resolutions)
    task = TASKS.get("cls")(recipe)
    task.classes = classes  # no ImageNet folder needed to name them
    model = task.build_model()
    model.load_state_dict(weights)
    model.eval()
    method = method_for(recipe)(model, task, recipe)
    tensors = {ALPHA_KEY: alpha} if alpha is not None else {}
    method.load_artifact_tensors(tensors)
    madds = {s.id: subnet_madds(model, s, task.example_input(s.resolution)) for s in model.subnets}
    epochs = fields.get("epoch")
    meta = run_metadata(task, method, recipe, [], madds, epochs if isinstance(epochs, int) else recipe.train.epochs)
    source = {"file": checkpoint.name, "arch": official.arch or arch, "sha256": file_sha256(checkpoint)}
    meta |= {"complete": True, "converted_from": {**source, **{k: v for k, v in fields.items() if k != "arch"}}}
    save_run(out_dir, model, tensors, meta)
    return {"run": str(out_dir), "arch": arch, "resolutions": recipe.resolutions, "num_classes": num_classes, "alpha": alpha is not None, **source}
