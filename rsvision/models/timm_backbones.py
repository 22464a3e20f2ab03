"""Any timm CNN as a backbone: ``backbone: timm/<name>`` (e.g. ``timm/resnet18``, ``timm/efficientnet_b0``).

timm builds the network as a feature extractor (``features_only=True``). Weights
(``model.pretrained``, :mod:`rsvision.models.pretrained`) come through timm's own loading:
``timm.create_model(name, pretrained=True)`` reads the Hugging Face hub cache (or torch hub's)
first; a tag in the name (``timm/resnet10t.c3_in1k``) or in ``model.pretrained`` selects
them, and a local file holding the state dict of the same timm model works too. timm's
BatchNorms (``BatchNormAct2d`` included, a ``nn.BatchNorm2d`` subclass) become switchable
like any other; a model without BatchNorm has nothing to switch and is refused. timm is
imported on first use, not with rsvision.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import torch
from torch import nn

from rsvision.errors import RegistryError, UserError
from rsvision.models.pretrained import Weights
from rsvision.nn.switchable import BN_TYPES
from rsvision.registry import BACKBONES

PREFIX = "timm/"
#: Arguments rsvision sets itself (weights go in ``model.pretrained``): passing them would change the output.
_RESERVED = ("pretrained", "features_only", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")


class TimmBackbone(nn.Module):
    """A timm features model under the backbone contract.

    Returns the stages at ``keep`` (positions in timm's feature list), shallowest first;
    ``out_channels`` and ``output_stride`` come from timm's ``feature_info``.
    """

    def __init__(self, name: str, model: nn.Module, keep: Sequence[int]) -> None:
        from timm.models import get_pretrained_cfg

        super().__init__()
        self.timm_name = name
        arch, _, tag = name.partition(".")
        #: The pretrained tag in the backbone's name: its weights load unless ``model.pretrained: false``.
        self.name_tag = tag or None
        #: The classifier's key in timm's full model (loaded into the classifier head when it fits).
        cfg = get_pretrained_cfg(arch)  # None for an architecture without weights
        self.classifier_key = cfg.classifier if cfg is not None else None
        self.model = model
        self.keep = list(keep)
        channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
        self.out_channels = [int(channels[i]) for i in self.keep]
        self.reductions = [int(reductions[i]) for i in self.keep]
        self.output_stride = self.reductions[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(x)
        return [features[i] for i in self.keep]

    def load_pretrained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load the state dict of the full timm model (``timm.create_model(name).state_dict()``).

        Keys the features model lacks (the classifier, stages past the last output) are
        dropped. timm's feature wrappers flatten ``stages.0`` into ``stages_0``; both
        spellings are accepted.
        """
        own = self.model.state_dict()
        mapped, missing = {}, []
        for key, tensor in own.items():
            source = next((k for k in _source_keys(key) if k in state), None)
            if source is None:
                missing.append(key)
            elif state[source].shape != tensor.shape:
                raise RuntimeError(f"'{source}' has shape {tuple(state[source].shape)}, timm/{self.timm_name} needs {tuple(tensor.shape)}")
            else:
                mapped[key] = state[source]
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(own)} tensors of timm/{self.timm_name} are not in the file (first: '{missing[0]}')")
        self.model.load_state_dict(mapped)

    def library_weights(self, tag: str | None) -> Weights:
        """timm's weights ``tag`` (None: the tag in the name, else timm's default), loaded by
        ``timm.create_model(pretrained=True)``: the hub cache first, a download otherwise."""
        import timm
        from timm.models import get_pretrained_cfg

        arch = self.timm_name.split(".", 1)[0]
        if tag and self.name_tag and tag != self.name_tag:
            raise UserError(f"model.pretrained: tag '{tag}' differs from the tag in model.backbone '{PREFIX}{self.timm_name}'; give one of them")
        name = f"{arch}.{tag or self.name_tag}" if (tag or self.name_tag) else arch
        _check_name(name, "model.pretrained")
        cfg = get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise UserError(f"model.pretrained: timm has no pretrained weights for '{name}' (timm.list_pretrained('{arch}*') lists those it has)")
        full_name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
        try:
            full = timm.create_model(name, pretrained=True)
        except Exception as exc:  # offline without a cached copy: huggingface_hub's or urllib's error
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise UserError(f"model.pretrained: {_not_cached(full_name, cfg)} ({type(exc).__name__}: {detail})") from None
        where = f"Hugging Face hub {cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url or cfg.file
        return Weights(full.state_dict(), f"{PREFIX}{full_name} ({where})", cfg.classifier)


def _not_cached(name: str, cfg: Any) -> str:
    """Which weights are missing, and where to put them so timm finds them offline."""
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        repo = cfg.hf_hub_id.split("@", 1)[0]
        return (
            f"the weights {PREFIX}{name} are not in the Hugging Face hub cache ({constants.HF_HUB_CACHE}) and could not be "
            f"downloaded; fetch them into it where there is a network (hf download {repo}), or download "
            f"https://huggingface.co/{repo}/resolve/main/model.safetensors and give its path as model.pretrained"
        )
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
    return f"the weights {PREFIX}{name} are not in the cache and could not be downloaded; put {cfg.url} at {cached}, or give a downloaded file's path as model.pretrained"


def _source_keys(key: str) -> list[str]:
    """``key`` and the spellings it had before timm flattened a Sequential (``stages_0.x`` → ``stages.0.x``)."""
    head, dot, rest = key.partition(".")
    unflattened = [f"{head[:i]}.{head[i + 1:]}{dot}{rest}" for i, c in enumerate(head) if c == "_"]
    return [key, *unflattened]


def _check_name(name: str, field: str = "model.backbone") -> None:
    import timm

    if ":" in name:  # hf-hub:..., local-dir:...: timm would fetch or read a model config
        raise UserError(
            f"model.backbone: '{PREFIX}{name}' names a model source; give a timm architecture name "
            "(weights come from model.pretrained: true, a tag or a local file)"
        )
    arch, _, tag = name.partition(".")  # a pretrained tag (resnet50.a1_in1k)
    if timm.is_model(arch) and tag:
        if name in timm.list_pretrained(f"{arch}.*"):
            return
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise UserError(f"{field}: unknown pretrained tag '{tag}' of timm model '{arch}' (its tags: {', '.join(tags) or 'none'})")
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(PREFIX + c) for c in close)}?" if close else "no close match (timm.list_models('*resnet*') lists timm's names)"
    raise RegistryError(f"unknown timm model '{name}'; {hint}")


def timm_backbone(name: str, /, *, out_indices: Sequence[int] | int | None = None, **kwargs: Any) -> nn.Module:
    """The timm model ``name`` as a backbone; ``kwargs`` go to ``timm.create_model`` (e.g. ``drop_rate``).

    By default the stages at reduction ≥ 4 are returned (strides 4..32 for a timm ResNet,
    what the segmentation heads need); ``out_indices`` picks timm's feature indices instead
    (a list, or n for the last n).
    """
    import timm

    _check_name(name)
    reserved = [k for k in kwargs if k in _RESERVED]
    if reserved:
        raise UserError(
            f"model.backbone_args: {', '.join(repr(k) for k in reserved)} is set by rsvision for timm models "
            "(give weights in model.pretrained: true, a tag or a local file)"
        )
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices) if isinstance(out_indices, (list, tuple)) else out_indices
    try:
        model = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
    except TypeError as exc:  # an argument the model's constructor does not take
        raise UserError(f"model.backbone_args: timm model '{name}' rejects its arguments: {exc}") from None
    if not any(isinstance(m, BN_TYPES) for m in model.modules()):
        norms = sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__})
        uses = f" (it normalizes with {', '.join(norms)})" if norms else ""
        raise UserError(
            f"model.backbone: timm model '{name}' has no BatchNorm{uses}, so there is nothing to keep per "
            "resolution; pick a timm CNN with BatchNorm (e.g. timm/resnet18, timm/efficientnet_b0)"
        )
    reductions = model.feature_info.reduction()
    keep = range(len(reductions)) if out_indices is not None else [i for i, r in enumerate(reductions) if r >= 4]
    if not keep:
        raise UserError(f"model.backbone: timm model '{name}' has no stage at stride 4 or more (strides {reductions})")
    return TimmBackbone(name, model, keep)


BACKBONES.register_prefix(PREFIX, timm_backbone, placeholder="<any timm CNN>")
