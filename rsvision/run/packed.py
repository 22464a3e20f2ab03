"""Packed export of an LQ-quantized RS-Net, and the loader that rebuilds it.

An RS-Net stores its K-bit weights once for all S resolutions (RS-Nets §4.2, Table 3:
S separately quantized I-Nets would need ``log2(2^K · S)`` bits per weight). The packed
file (safetensors) holds:

- ``<layer>.weight.codes``: the code index (0 .. 2^K - 1) of every quantized weight,
  K bits each, packed into bytes (``<layer>.weight_quantizer.basis`` holds the basis);
- everything else (BN groups of every resolution, the float first conv and classifier,
  activation bases, alpha, ...) as tensors, in float32 or, with ``remainder="float16"``,
  in float16 (bases always stay float32);
- with ``linear_bits=8``, the weights of the float linear layers (the classifier) as int8
  with a power-of-two scale per row.

Float16 and 8-bit rows change the model: :func:`compact_` applies the same rounding in
place, so a compacted model and its reloaded file give identical predictions. Without
those options the file reproduces the trained model exactly. :func:`load_packed_run`
rebuilds the float-simulated model (the recipe is stored in the file) with the
quantized weights decoded from codes and bases, exactly as the model computed them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from rsvision.errors import UserError
from rsvision.io import save_tensors
from rsvision.quant.modules import QUANT_LAYERS
from rsvision.run.folder import (
    Artifact,
    build_from_meta,
    load_artifact,
    register_format,
)
from rsvision.training.ensemble import ALPHA_KEY

FORMAT = "rsvision-lq-packed"
#: Where files written before alpha had one name in every format kept it.
LEGACY_ALPHA_KEY = "__alpha__"
REMAINDERS = {"float32": torch.float32, "float16": torch.float16}


def pack_codes(index: torch.Tensor, bits: int) -> torch.Tensor:
    """K-bit fields (lowest bit first) packed into ``ceil(numel · K / 8)`` bytes."""
    planes = (index.flatten().cpu()[:, None] >> torch.arange(bits)) & 1
    return torch.from_numpy(np.packbits(planes.to(torch.uint8).numpy().ravel(), bitorder="little"))


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``count`` code indices (int64)."""
    stream = np.unpackbits(packed.numpy(), bitorder="little", count=count * bits)
    planes = torch.from_numpy(stream.reshape(count, bits).astype(np.int64))
    return (planes << torch.arange(bits)).sum(1)


def _pow2_rows(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric ``bits``-bit integers per row with a power-of-two scale (rounding is idempotent)."""
    top = 2 ** (bits - 1) - 1
    amax = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    scale = torch.exp2(torch.ceil(torch.log2(amax / top)))
    q = torch.round(weight / scale[:, None]).clamp(-top, top)
    return q.to(torch.int8 if bits <= 8 else torch.int32), scale


def _float_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, QUANT_LAYERS)]


def _quant_weight_keys(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)}


@torch.no_grad()
def compact_(model: nn.Module, *, remainder: str = "float16", linear_bits: int | None = 8) -> nn.Module:
    """Round ``model`` in place to the values a packed file with these options stores.

    Float tensors other than quantized weights and bases are rounded through ``remainder``;
    float linear layers' weights to ``linear_bits`` integers per row (power-of-two scales).
    """
    skip = _quant_weight_keys(model)
    if linear_bits is not None:
        for name, linear in _float_linears(model):
            q, scale = _pow2_rows(linear.weight, linear_bits)
            linear.weight.copy_(q.float() * scale[:, None])
            skip.add(f"{name}.weight")
    if remainder != "float32":
        for key, t in model.state_dict().items():
            if t.is_floating_point() and key not in skip and not key.endswith(".basis"):
                t.copy_(t.to(REMAINDERS[remainder]).float())
    return model


@torch.no_grad()
def export_packed(
    model: nn.Module,
    path: str | Path,
    meta: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
    *,
    remainder: str = "float32",
    linear_bits: int | None = None,
) -> int:
    """Write the packed file of ``model`` (an RS-Net quantized with ``lq``); returns its size in bytes.

    ``meta`` is the run's metadata (``rsvision.json``; its ``recipe`` rebuilds the model);
    ``extra`` the training method's tensors (``mred.alpha``), stored as they are.
    """
    if remainder not in REMAINDERS:
        raise UserError(f"remainder: expected one of {', '.join(REMAINDERS)}, got '{remainder}'")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    for name, layer in model.named_modules():
        if isinstance(layer, QUANT_LAYERS):
            quantizer = layer.weight_quantizer
            if not hasattr(quantizer, "encode"):
                raise UserError(f"{name}: its weight quantizer {type(quantizer).__name__} has no codes to pack")
            tensors[f"{name}.weight.codes"] = pack_codes(quantizer.encode(layer.weight), quantizer.bits)
            layers[f"{name}.weight"] = {"shape": list(layer.weight.shape), "bits": quantizer.bits}
            del state[f"{name}.weight"]
    integer_rows: dict[str, int] = {}
    if linear_bits is not None:
        for name, linear in _float_linears(model):
            q, scale = _pow2_rows(linear.weight.detach().cpu(), linear_bits)
            tensors[f"{name}.weight.int"], tensors[f"{name}.weight.scale"] = q, scale
            integer_rows[f"{name}.weight"] = linear_bits
            del state[f"{name}.weight"]
    for key, t in state.items():
        keep = not t.is_floating_point() or key.endswith(".basis")
        tensors[key] = t.contiguous() if keep else t.to(REMAINDERS[remainder]).contiguous()
    for key, t in (extra or {}).items():
        tensors[key] = t.detach().float().cpu().contiguous()
    header = {
        "format": FORMAT,
        "rsvision": json.dumps(meta),
        "layers": json.dumps(layers),
        "integer_rows": json.dumps(integer_rows),
        "remainder": remainder,
    }
    path = Path(path)
    save_tensors(path, tensors, header)
    return path.stat().st_size


def read_header(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        raise UserError(f"{path}: cannot read a packed model ({exc})") from None
    if header.get("format") != FORMAT:
        raise UserError(f"{path}: not an rsvision packed model (export one with `rsvision export --format lq`)")
    return header


def is_packed(path: str | Path) -> bool:
    """True when ``path`` is a packed file written by :func:`export_packed`."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        read_header(path)
    except UserError:
        return False
    return True


@torch.no_grad()
def decode_state(path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Load a packed file into ``model`` (built from the same recipe); returns the extra tensors (alpha)."""
    header = read_header(path)
    tensors = load_file(str(path))
    if LEGACY_ALPHA_KEY in tensors:
        tensors[ALPHA_KEY] = tensors.pop(LEGACY_ALPHA_KEY)
    layers, integer_rows = json.loads(header["layers"]), json.loads(header["integer_rows"])
    own = set(model.state_dict())
    extra = {k: v for k, v in tensors.items() if k not in own and not k.endswith((".codes", ".int", ".scale"))}
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k in own}
    for key in integer_rows:
        state[key] = tensors[f"{key}.int"].float() * tensors[f"{key}.scale"][:, None]
    for key, info in layers.items():
        state[key] = torch.zeros(info["shape"])
    model.load_state_dict(state)
    for key, info in layers.items():
        layer = model.get_submodule(key.removesuffix(".weight"))
        count = math.prod(info["shape"])
        index = unpack_codes(tensors[f"{key}.codes"], info["bits"], count).view(info["shape"][0], -1)
        layer.weight.copy_(layer.weight_quantizer.decode(index.to(layer.weight.device), layer.weight.shape))
    return extra


def load_packed_run(path: str | Path, data_root: str | None = None) -> Artifact:
    """Rebuild the float-simulated model of a packed file (the recipe is stored in it)."""
    path = Path(path)
    meta = json.loads(read_header(path)["rsvision"])
    task, model = build_from_meta(meta, f"{path} (recipe)", data_root)
    extra = decode_state(path, model)
    model.eval()
    return Artifact(path, task, model, meta, extra)


register_format("lq-packed", is_packed, load_packed_run)


def _bytes(t: torch.Tensor, dtype: torch.dtype) -> int:
    return t.numel() * (torch.finfo(dtype).bits // 8 if t.is_floating_point() else t.element_size())


def size_report(model: nn.Module, packed_bytes: int, *, remainder: str = "float32", linear_bits: int | None = None) -> dict[str, Any]:
    """Sizes in bytes: the packed file, the float32 RS-Net, one float32 network, and S packed I-Nets.

    S I-Nets (one network per resolution, quantized separately) store S codes, bases and
    float remainders, each with one BN group; their codes alone amount to ``log2(2^K · S)``
    bits per weight when merged (RS-Nets footnote 4), against K for the RS-Net.
    """
    dtype = REMAINDERS[remainder]
    state = model.state_dict()
    resolutions = [int(r) for r in state.get("trained_resolutions", torch.tensor([0]))]
    first_group = f".groups.{resolutions[0]}."
    quant = _quant_weight_keys(model)
    linears = {f"{n}.weight" for n, _ in _float_linears(model)} if linear_bits is not None else set()
    codes = sum(math.ceil(state[k].numel() * model.get_submodule(k.removesuffix(".weight")).weight_quantizer.bits / 8) for k in quant)
    one_net = codes
    for key, t in state.items():
        if key in quant or ".calibrated." in key or (".groups." in key and first_group not in key):
            continue
        if key in linears:
            one_net += t.numel() * linear_bits // 8 + t.shape[0] * 4
        else:
            one_net += _bytes(t, torch.float32 if key.endswith(".basis") else dtype)
    float32 = sum(_bytes(t, torch.float32) for t in state.values())
    single = sum(_bytes(t, torch.float32) for k, t in state.items() if ".groups." not in k or first_group in k)
    s = len(resolutions)
    bits = sorted({model.get_submodule(k.removesuffix(".weight")).weight_quantizer.bits for k in quant})
    quantized_weights = sum(state[k].numel() for k in quant)
    return {
        "packed_bytes": packed_bytes,
        "float32_rsnet_bytes": float32,
        "float32_single_net_bytes": single,
        "inets_packed_bytes": s * one_net,
        "resolutions": s,
        "weight_bits": bits,
        "quantized_weights": quantized_weights,
        "bits_per_weight_rsnet": bits[-1] if bits else None,
        "bits_per_weight_inets": math.log2(2 ** bits[-1] * s) if bits else None,
        "ratio_vs_float32_rsnet": float32 / packed_bytes,
        "ratio_vs_float32_single_net": single / packed_bytes,
        "ratio_vs_inets": s * one_net / packed_bytes,
    }


def pack_run(run_dir: str | Path, path: str | Path, *, remainder: str = "float32", linear_bits: int | None = None) -> dict[str, Any]:
    """Pack a trained run folder into ``path``; returns :func:`size_report`'s sizes.

    With ``remainder="float16"`` or ``linear_bits`` the file holds :func:`compact_`'s rounding
    of the run's model (its reload matches that, not the float32 run exactly).
    """
    artifact = load_artifact(run_dir)
    model = artifact.model
    if not any(isinstance(m, QUANT_LAYERS) for m in model.modules()):
        raise UserError(f"{run_dir}: the model is not quantized (its recipe has no quant: section); export it with --format onnx")
    compact_(model, remainder=remainder, linear_bits=linear_bits)
    size = export_packed(model, path, artifact.meta, artifact.tensors, remainder=remainder, linear_bits=linear_bits)
    return size_report(model, size, remainder=remainder, linear_bits=linear_bits)
