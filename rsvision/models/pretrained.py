"""Starting weights of a backbone, and of the linear classifier when its shape fits: ``model.pretrained``.

- ``true``: the library's default weights of the backbone (timm's default tag, torchvision's
  ``DEFAULT``);
- a tag: timm's pretrained tag (``c3_in1k``) or a torchvision weights name (``IMAGENET1K_V1``);
- a file: safetensors or a torch checkpoint, unwrapped as timm's ``load_checkpoint`` does
  (``state_dict_ema``, ``model_ema``, ``state_dict``, ``model``; ``module.`` prefixes);
- unset: the tag in a timm backbone's name (``timm/resnet10t.c3_in1k``) if it has one, else
  none; ``false``: none.

Library weights come through the library's own loading, cache first (timm: the Hugging Face
hub cache, or torch hub's for weights behind a URL; torchvision: torch hub's,
``$TORCH_HOME/hub/checkpoints``). Without a network and a cached copy the error names the
weights and where to put the file. No network is touched at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from rsvision.errors import UserError

#: File suffixes that make ``model.pretrained`` a path even before the file exists.
WEIGHT_SUFFIXES = frozenset({".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar"})


@dataclass
class Weights:
    """A full model's state dict (backbone and classifier) and where it came from."""

    state: dict[str, torch.Tensor]
    #: What was loaded, as the run records it (``timm/resnet10t.c3_in1k from ...``, a file path).
    source: str
    #: Key prefix of the classifier in ``state`` (``fc``, ``classifier.1``); None when unknown.
    classifier: str | None = None


def is_file_spec(spec: str) -> bool:
    """Whether ``model.pretrained`` names a file rather than a tag."""
    path = Path(spec).expanduser()
    return path.suffix in WEIGHT_SUFFIXES or "/" in spec or path.exists()


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file, unwrapped by timm's ``load_state_dict`` (EMA weights first)."""
    from timm.models import load_state_dict

    if not path.is_file():
        raise UserError(f"model.pretrained: weights file not found: {path}")
    try:
        state = load_state_dict(str(path), use_ema=True)
    except Exception as exc:  # corrupt or foreign file
        raise UserError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise UserError(f"{path}: no tensors found (expected a state dict, or one under 'state_dict' or 'model')")
    return tensors


def resolve_weights(backbone: nn.Module, spec: bool | str | None, backbone_name: str) -> Weights | None:
    """The weights ``spec`` asks for ``backbone`` (see the module docstring); None for none.

    A backbone offers library weights through ``library_weights(tag)`` (tag None: the default
    or the tag in its name), a tag in its name through ``name_tag``, and its classifier's key
    in the library's full model through ``classifier_key``.
    """
    if spec is False or (spec is None and not getattr(backbone, "name_tag", None)):
        return None
    if isinstance(spec, str) and is_file_spec(spec):
        path = Path(spec).expanduser()
        return Weights(read_checkpoint(path), str(path), getattr(backbone, "classifier_key", None))
    library = getattr(backbone, "library_weights", None)
    if library is None:
        raise UserError(
            f"model.pretrained: backbone '{backbone_name}' has no library weights to name by {spec!r}; "
            "give the path of a weights file (safetensors or a torch state dict)"
        )
    return library(spec if isinstance(spec, str) else None)


def load_backbone_weights(backbone: nn.Module, weights: Weights, backbone_name: str) -> None:
    """Load ``weights`` into ``backbone`` through its ``load_pretrained_state_dict`` hook if it has one."""
    loader = getattr(backbone, "load_pretrained_state_dict", None)
    try:
        if loader is not None:
            loader(weights.state)
        else:
            load_exactly(backbone, weights.state)
    except RuntimeError as exc:
        raise UserError(f"model.pretrained: {weights.source} does not fit backbone '{backbone_name}': {exc}") from None


def load_exactly(module: nn.Module, state: dict[str, torch.Tensor], file_keys: dict[str, str] | None = None) -> None:
    """``module.load_state_dict(state)``, a failure said in one line: the counts of missing,
    mis-shaped and unused tensors and the first of each (``file_keys``: a renamed key's name in the file)."""
    named = (file_keys or {}).get
    own = module.state_dict()
    # BatchNorm fills a missing counter itself (checkpoints saved before it existed lack it).
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unused = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of the {len(own)} tensors are not in the file (first: this backbone's '{missing[0]}')")
    if shaped:
        k = shaped[0]
        problems.append(f"{len(shaped)} differ in shape (first: '{named(k, k)}' is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} here)")
    if unused:
        problems.append(f"{len(unused)} of the file's {len(state)} tensors have no place (first: '{named(unused[0], unused[0])}')")
    if problems:
        raise RuntimeError("; ".join(problems))
    module.load_state_dict(state, strict=False)


def load_classifier(head: nn.Module, weights: Weights) -> str:
    """Copy the weights' classifier into a linear classifier head (``head.fc``) when its shape fits;
    what happened, as the run records it."""
    fc = getattr(head, "fc", None)
    if not isinstance(fc, nn.Linear):
        return "not loaded (the head is not a linear classifier)"
    w = weights.state.get(f"{weights.classifier}.weight") if weights.classifier else None
    b = weights.state.get(f"{weights.classifier}.bias") if weights.classifier else None
    if w is None:
        return "not loaded (not in the weights)"
    if w.shape != fc.weight.shape or (b is None) != (fc.bias is None) or (b is not None and b.shape != fc.bias.shape):
        return f"new (the weights' classifier is {tuple(w.shape)}, this model's {tuple(fc.weight.shape)})"
    with torch.no_grad():
        fc.weight.copy_(w)
        if b is not None:
            fc.bias.copy_(b)
    return f"loaded ({fc.out_features} classes)"


def torchvision_weights(arch: str, tag: str | None, classifier: str) -> Weights:
    """torchvision's weights ``tag`` of ``arch`` (None or ``DEFAULT``: the default), from torch hub's
    cache (``$TORCH_HOME/hub/checkpoints/<file>``) or downloaded into it."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    names = [w.name for w in enum]
    if tag is not None and tag != "DEFAULT" and tag not in names:
        raise UserError(f"model.pretrained: '{tag}' is neither a file nor a torchvision weight name of '{arch}' (names: DEFAULT, {', '.join(names)})")
    weights = enum.DEFAULT if tag in (None, "DEFAULT") else enum[tag]
    label = f"torchvision {enum.__name__}.{weights.name}"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    try:
        state = weights.get_state_dict(progress=False, weights_only=True)
    except Exception as exc:  # offline (URLError), a truncated download, ...
        raise UserError(
            f"model.pretrained: {label} is not in the cache and could not be downloaded ({type(exc).__name__}); "
            f"put {weights.url} at {cached}, or give a downloaded file's path as model.pretrained"
        ) from None
    return Weights(state, f"{label} ({cached})", classifier)


def loaded_weights(model: nn.Module) -> dict[str, Any] | None:
    """What :func:`rsvision.models.create_model` loaded into ``model`` (``weights``, ``classifier``), or None."""
    return next((m.pretrained_record for m in model.modules() if getattr(m, "pretrained_record", None)), None)
