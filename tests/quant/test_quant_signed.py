"""Signed LQ activation quantizers where the graph says a layer's input can be negative.

MobileNetV2's linear bottlenecks and RefineNet's fusion / chained-pooling / projection
convs see negative inputs, which LQ-Nets' unsigned {0,1}^K codes would zero.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rsvision.models import EncoderDecoder, build_model
from rsvision.models.refinenet import refinenet
from rsvision.quant import (
    LQActQuantizer,
    LQSignedActQuantizer,
    QuantConv2d,
    quantize_model,
)
from rsvision.quant.sign import inputs_can_be_negative
from rsvision.recipe import validate_recipe
from rsvision.registry import BACKBONES, QUANTIZERS

EXAMPLE = torch.zeros(1, 3, 32, 32)


# --- the signed quantizer by hand ---------------------------------------------------


def test_signed_initial_basis_levels_and_thresholds():
    # v = 0.6745 * (1/2, 1): levels ±0.33725, ±1.01175, thresholds 0 and ±0.6745 (quartiles of N(0, 1)).
    q = LQSignedActQuantizer(2).eval()
    assert torch.allclose(q.basis, torch.tensor([0.33725, 0.6745]))
    assert torch.allclose(q.levels().sort().values, torch.tensor([-1.01175, -0.33725, 0.33725, 1.01175]))
    x = torch.tensor([-0.7, -0.65, -0.01, 0.01, 0.65, 0.7])
    assert torch.allclose(q(x), torch.tensor([-1.01175, -0.33725, -0.33725, 0.33725, 0.33725, 1.01175]))
    assert torch.allclose(LQSignedActQuantizer(1).basis, torch.tensor([0.6745]))
    assert torch.allclose(LQSignedActQuantizer(3).basis, torch.tensor([0.6745 / 4, 0.6745 / 2, 0.6745]))


def test_signed_nearest_level_ties_go_down():
    q = LQSignedActQuantizer(2).eval()
    q.basis.copy_(torch.tensor([0.5, 1.0]))  # levels -1.5, -0.5, 0.5, 1.5; thresholds -1, 0, 1
    x = torch.tensor([-9.0, -1.0, -0.9, 0.0, 0.1, 1.0, 1.2, 9.0])
    assert q(x).tolist() == [-1.5, -1.5, -0.5, -0.5, 0.5, 0.5, 1.5, 1.5]


def test_signed_qem_step_by_hand():
    # v = (0.5, 1): levels -1.5, -0.5, 0.5, 1.5. x = [-2, -0.4, 0.6, 1.9] takes the codes
    # (-1,-1), (1,-1), (-1,1), (1,1): BᵀB = 4I, Bᵀx = (2.9, 4.9), v* = (0.725, 1.225),
    # then 0.9 v + 0.1 v* = (0.5225, 1.0225). The output uses the basis before the update.
    q = LQSignedActQuantizer(2).train()
    q.basis.copy_(torch.tensor([0.5, 1.0]))
    assert q(torch.tensor([-2.0, -0.4, 0.6, 1.9])).tolist() == [-1.5, -0.5, 0.5, 1.5]
    assert torch.allclose(q.basis, torch.tensor([0.5225, 1.0225]))


def test_signed_qem_keeps_basis_when_singular():
    q = LQSignedActQuantizer(2).train()
    q.basis.copy_(torch.tensor([0.5, 1.0]))
    q(torch.full((10,), -0.5))  # every value on code (1,-1): BᵀB = [[10, -10], [-10, 10]]
    assert q.basis.tolist() == [0.5, 1.0]


def test_signed_gradient_is_zero_outside_the_levels():
    q = LQSignedActQuantizer(2).eval()
    q.basis.copy_(torch.tensor([0.5, 1.0]))  # levels in [-1.5, 1.5]
    x = torch.tensor([-2.0, -1.5, -0.3, 0.0, 1.5, 1.6], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_signed_qem_statistics_are_summed_over_processes(monkeypatch):
    # Two processes, batches a and b: the all-reduce adds b's BᵀB and Bᵀx to a's, so
    # process a fits the basis of a and b together, as one process would on both.
    torch.manual_seed(0)
    a, b = torch.randn(500), 3 * torch.randn(700)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    sent = []
    monkeypatch.setattr(dist, "all_reduce", lambda stats: sent.append(stats.clone()))
    LQSignedActQuantizer(2).train()(b)
    monkeypatch.setattr(dist, "all_reduce", lambda stats: stats.add_(sent[0]))
    on_a = LQSignedActQuantizer(2).train()
    on_a(a)
    monkeypatch.undo()
    both = LQSignedActQuantizer(2).train()
    both(torch.cat([a, b]))
    assert torch.allclose(on_a.basis, both.basis)
    assert not torch.allclose(on_a.basis, LQSignedActQuantizer(2).basis)


# --- the sign rule ------------------------------------------------------------------


class _Probe(nn.Module):
    """``probe(fn(x))`` where ``x`` is the image or a conv output (both can be negative)."""

    def __init__(self, fn, after_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1) if after_conv else nn.Identity()
        self.fn = fn
        self.probe = nn.Identity()

    def forward(self, x):
        return self.probe(self.fn(self.conv(x)))


def _relu_inplace(x):
    return F.relu(x.clone(), inplace=True)


@pytest.mark.parametrize(
    ("fn", "negative"),
    [
        (lambda x: x, True),
        (F.relu, False),
        (_relu_inplace, False),
        (nn.ReLU6(inplace=True), False),
        (lambda x: F.hardtanh(x, -1.0, 1.0), True),
        (torch.sigmoid, False),
        (lambda x: x.softmax(1), False),
        (lambda x: x.clamp(min=0), False),
        (lambda x: x.clamp(max=1), True),
        (torch.abs, False),
        (F.leaky_relu, True),
        (F.hardswish, True),
        (lambda x: F.max_pool2d(F.relu(x), 3, 1, 1), False),
        (lambda x: F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1), False),
        (lambda x: F.interpolate(F.relu(x), scale_factor=2, mode="bilinear", align_corners=True), False),
        (lambda x: F.interpolate(F.relu(x), scale_factor=2, mode="bicubic", align_corners=True), True),
        (lambda x: torch.cat([F.relu(x), torch.sigmoid(x)], 1).permute(0, 2, 3, 1), False),
        (lambda x: torch.cat([F.relu(x), x], 1), True),
        (lambda x: F.relu(x) + torch.sigmoid(x) * 0.5, False),
        (lambda x: F.relu(x) - torch.sigmoid(x), True),
        (lambda x: F.relu(x) * -1.0, True),
        (lambda x: F.relu(x) + 1.0, True),  # an added constant is not saved: unknown
        (lambda x: F.relu(x).detach(), True),
    ],
)
def test_sign_rule(fn, negative):
    model = _Probe(fn)
    assert inputs_can_be_negative(model, ["probe"], EXAMPLE) == {"probe": negative}


def test_the_image_and_unreached_modules_can_be_negative():
    model = _Probe(lambda x: x, after_conv=False)
    model.unused = nn.Identity()
    assert inputs_can_be_negative(model, ["probe", "unused"], EXAMPLE) == {"probe": True, "unused": True}


def test_analysis_has_no_side_effects():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Conv2d(4, 4, 1)).train()
    model[3].eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.randn(2, 3, 8, 8)
    with torch.no_grad():  # the analysis turns gradients on by itself
        assert inputs_can_be_negative(model, ["4"], example) == {"4": False}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [m.training for m in model] == [True, True, True, False, True]
    assert not example.requires_grad and all(p.grad is None for p in model.parameters())


def test_activation_quantization_needs_an_example_input():
    with pytest.raises(ValueError, match="example_input"):
        quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), 2, 2)
    quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), 2)  # weights only: no input needed


# --- whole models ---------------------------------------------------------------------


def _cls_model(backbone: str) -> nn.Module:
    recipe = {
        "task": "cls",
        "resolutions": [32, 24],
        "model": {"backbone": backbone, "num_classes": 10},
        "data": {"dataset": "synthetic"},
        "quant": {"weight_bits": 2, "act_bits": 2},
    }
    return build_model(validate_recipe(recipe))


def _refinenet_body() -> nn.Module:
    backbone = BACKBONES.build("resnet18_cifar", width=8)
    body = EncoderDecoder(backbone, refinenet(backbone=backbone, num_classes=5, widths=[16, 16, 16, 32]))
    return QUANTIZERS.build("lq", model=body, weight_bits=2, act_bits=2, example_input=EXAMPLE)


def _negative_fraction_seen(model: nn.Module) -> dict[str, tuple[type, float]]:
    """Type of every activation quantizer and the fraction of negative values it gets on random images."""
    seen: dict[str, tuple[type, float]] = {}

    def hook(name):
        def record(module, args):
            seen[name] = (type(module), (args[0] < 0).float().mean().item())

        return record

    quantizers = [(n, m) for n, m in model.named_modules() if isinstance(m, (LQActQuantizer, LQSignedActQuantizer))]
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in quantizers]
    torch.manual_seed(0)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 32, 32))  # batch statistics: BN outputs are centred
    for handle in handles:
        handle.remove()
    assert len(seen) == len(quantizers)
    return seen


def _check_signs(model: nn.Module, signed: int, unsigned: int) -> None:
    seen = _negative_fraction_seen(model)
    counts = {cls: sum(c is cls for c, _ in seen.values()) for cls in (LQSignedActQuantizer, LQActQuantizer)}
    assert counts == {LQSignedActQuantizer: signed, LQActQuantizer: unsigned}
    negatives_on_unsigned = {n: f for n, (c, f) in seen.items() if c is LQActQuantizer and f > 0}
    assert negatives_on_unsigned == {}
    signed_without_negatives = {n: f for n, (c, f) in seen.items() if c is LQSignedActQuantizer and f == 0}
    assert signed_without_negatives == {}


def test_mobilenet_v2_signed_on_linear_bottlenecks():
    # 51 quantized layers (all but the stem conv and the classifier): the 16 expansion
    # convs and the final 1x1 conv read a linear bottleneck (BN output, or its residual sum).
    model = _cls_model("mobilenet_v2")
    _check_signs(model, signed=17, unsigned=34)
    signed = {n for n, m in model.body.named_modules() if isinstance(m, LQSignedActQuantizer)}
    assert "backbone.stages.3.18.0.input_quantizer" in signed
    assert "backbone.stages.0.2.conv.0.0.input_quantizer" in signed  # first expansion conv, after block 1's projection


def test_refinenet_signed_on_fusion_pooling_and_projection():
    # Head: 66 quantized convs; signed: 3 fusion convs (input: RCU sums), the 3 chained
    # pooling convs after the first in each of the 4 blocks (input: pooled conv outputs)
    # and 3 projections (input: RCU sums).
    # The ResNet backbone (19 quantized convs) and every RCU conv read a ReLU output.
    body = _refinenet_body()
    _check_signs(body, signed=18, unsigned=67)
    head = body.head
    kinds = {n.rsplit(".input_quantizer", 1)[0] for n, m in head.named_modules() if isinstance(m, LQSignedActQuantizer)}
    expected = {f"blocks.{b}.fuse" for b in (1, 2, 3)} | {f"blocks.{b}.project" for b in (0, 1, 2)}
    expected |= {f"blocks.{b}.crp.convs.{i}" for b in range(4) for i in (1, 2, 3)}
    assert kinds == expected


def test_resnet18_keeps_only_unsigned_quantizers():
    body = _cls_model("resnet18")
    layers = [n for n, m in body.named_modules() if isinstance(m, QuantConv2d)]
    basis_keys = {k for k in body.state_dict() if k.endswith(".basis")}
    expected = {f"{n}.input_quantizer.basis" for n in layers} | {f"{n}.weight_quantizer.basis" for n in layers}
    assert basis_keys == expected
    assert all(torch.equal(m.basis, LQActQuantizer(2).basis) for m in body.modules() if isinstance(m, LQActQuantizer))
    _check_signs(body, signed=0, unsigned=19)


def test_preact_resnet_quant_points_stay_unsigned():
    _check_signs(_cls_model("preact_resnet8"), signed=0, unsigned=6)
