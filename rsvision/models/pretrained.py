"""Loading backbone weights: a local file (safetensors or a torch state dict) or torchvision's names.

No network is touched at import. A torchvision weight name needs a download; offline it
fails with a message that says to pass a local file instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rsvision.errors import UserError


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise UserError(f"{path}: cannot read weights ({exc})") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_pretrained(backbone: nn.Module, spec: str, backbone_name: str) -> None:
    """Load ``spec`` into ``backbone`` through its ``load_pretrained_state_dict`` hook if it has one."""
    path = Path(spec).expanduser()
    if path.suffix in {".safetensors", ".pth", ".pt", ".bin"} or path.exists():
        if not path.is_file():
            raise UserError(f"model.pretrained: weights file not found: {path}")
        state = _read_state_dict(path)
    else:
        state = _download_torchvision(spec, backbone_name)
    loader = getattr(backbone, "load_pretrained_state_dict", None)
    try:
        if loader is not None:
            loader(state)
        else:
            backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"model.pretrained: {spec} does not fit backbone '{backbone_name}': {exc}") from None


def _download_torchvision(name: str, backbone_name: str) -> dict[str, torch.Tensor]:
    from torchvision.models import get_model_weights

    tv_name = backbone_name  # the built-in backbones carry torchvision's names
    try:
        enum = get_model_weights(tv_name)
        weights = enum[name] if name != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError):
        raise UserError(
            f"model.pretrained: '{name}' is neither a file nor a torchvision weight name of '{backbone_name}'"
        ) from None
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:
        raise UserError(
            f"model.pretrained: could not download {tv_name} {name} ({type(exc).__name__}); "
            "offline, download the weights elsewhere and pass the local file path instead"
        ) from None

