"""The deployable network of one sub-network, and its latency.

:func:`plain_subnet` takes a switchable network to the fixed network of one sub-network
(:func:`rsvision.nn.switchable.materialize`: its BN group, or calibrated or interpolated
statistics), replaces quantized layers by float layers holding their quantized values
(:func:`rsvision.quant.dequantize.dequantize`) and folds BatchNorm into the convolutions
(:func:`rsvision.nn.fold.fold_batchnorm`): what export, deployment and ``rsvision.load`` run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rsvision.analysis.latency import REPEATS, WARMUP, eager_ms, network_ms
from rsvision.deploy.onnx import onnx_ms
from rsvision.nn.fold import FoldReport, batch_norm_ops, fold_batchnorm
from rsvision.nn.switchable import materialize
from rsvision.quant.dequantize import dequantize
from rsvision.subnet import SubNet, SubNetLike


@dataclass
class PlainSubnet:
    """The deployable network of one sub-network, how it was made, and its parameters before folding."""

    subnet: SubNet
    network: nn.Module
    fold: FoldReport
    parameters: int
    quantization: dict | None = None


@torch.no_grad()
def plain_subnet(model: nn.Module, subnet: SubNetLike, fold: bool = True, channels_last: bool = False) -> PlainSubnet:
    """``model`` as ``subnet``: materialized, de-quantized if quantized, BN folded (eval mode, ``model`` untouched).

    ``channels_last`` stores the convolution weights in channels-last memory format (values
    unchanged): PyTorch then picks faster CPU kernels for small feature maps at batch 1
    (ResNet-18 at 96 px: 16 instead of 29 ms of CPU, ``benchmarks/latency.py``).
    """
    subnet = SubNet.parse(subnet)
    network = materialize(model, subnet)
    parameters = sum(p.numel() for p in network.parameters())
    quantization = dequantize(network)
    if fold:
        network, report = fold_batchnorm(network)
    else:
        report = FoldReport(left=batch_norm_ops(network))
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    return PlainSubnet(subnet, network.eval(), report, parameters, quantization)


def measure_subnet(
    model: nn.Module,
    subnet: SubNetLike,
    example: torch.Tensor,
    onnx_path: str | Path | None = None,
    threads: int | None = None,
    repeats: int = REPEATS,
    warmup: int = WARMUP,
) -> dict[str, float]:
    """``eager``, ``folded`` and (given its exported file) ``onnxruntime`` latency of one sub-network, in ms."""
    subnet = SubNet.parse(subnet)
    out = {
        "eager": eager_ms(model, subnet, example, threads, repeats, warmup),
        "folded": network_ms(plain_subnet(model, subnet, channels_last=True).network, example, threads, repeats, warmup),
    }
    if onnx_path is not None:
        out["onnxruntime"] = onnx_ms(onnx_path, example, threads, repeats, warmup)
    return out

