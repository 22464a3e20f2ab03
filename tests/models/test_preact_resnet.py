"""Pre-activation ResNets (LQ-Nets layout) and quantized RS-Nets built from recipes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsvision.models import EncoderDecoder, build_model
from rsvision.models.heads import classifier
from rsvision.nn.switchable import SwitchableBatchNorm
from rsvision.quant import LQActQuantizer, QuantConv2d, QuantPoint
from rsvision.recipe import validate_recipe
from rsvision.registry import BACKBONES, QUANTIZERS


def _body(name: str) -> nn.Module:
    backbone = BACKBONES.build(name)
    return EncoderDecoder(backbone, classifier(backbone=backbone, num_classes=10))


def _count(model: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize(
    ("name", "channels", "stride", "points"),
    [
        # 8 blocks: 8 mid-block points + block inputs (group0: 2, later groups: 1 each) + 3 group ends
        ("preact_resnet18", [64, 128, 256, 512], 32, 8 + 5 + 3),
        ("preact_resnet20", [16, 32, 64], 4, 9 + 7 + 2),
    ],
)
def test_preact_contract_and_quant_points(name, channels, stride, points):
    net = BACKBONES.build(name)
    assert net.out_channels == channels and net.output_stride == stride
    assert _count(net, QuantPoint) == points
    features = net(torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in features] == channels
    assert features[-1].shape[-1] == 64 // stride


def test_preact_resnet50_layout():
    net = BACKBONES.build("preact_resnet50")
    assert net.out_channels == [256, 512, 1024, 2048]
    # 16 blocks x 2 mid-block points + block inputs (group0: 3, later: 3 + 5 + 2) + 3 group ends
    assert _count(net, QuantPoint) == 32 + 13 + 3
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(23.5e6, rel=0.01)


def test_quant_points_become_activation_quantizers():
    body = QUANTIZERS.build("lq", model=_body("preact_resnet20"), weight_bits=2, act_bits=2, example_input=torch.zeros(1, 3, 32, 32))
    assert _count(body, QuantPoint) == 0
    assert _count(body, LQActQuantizer) == 18
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    assert not isinstance(convs[0], QuantConv2d) and all(isinstance(c, QuantConv2d) for c in convs[1:])
    assert all(isinstance(c.input_quantizer, nn.Identity) for c in convs[1:])  # the points do it


def test_weight_only_keeps_points_as_identities():
    body = QUANTIZERS.build("lq", model=_body("preact_resnet8"), weight_bits=2)
    assert _count(body, LQActQuantizer) == 0 and _count(body, QuantPoint) == 3 + 1 + 2


def test_generic_backbone_quantizes_inputs_of_quantized_convs():
    body = QUANTIZERS.build("lq", model=_body("resnet8"), weight_bits=2, act_bits=2, example_input=torch.zeros(1, 3, 32, 32))
    convs = [m for m in body.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 8 and all(isinstance(c.input_quantizer, LQActQuantizer) for c in convs)


def test_recipe_builds_quantized_rsnet_sharing_quantizers():
    recipe = validate_recipe({
        "task": "cls",
        "resolutions": [32, 24],
        "model": {"backbone": "preact_resnet8", "num_classes": 10},
        "data": {"dataset": "synthetic"},
        "quant": {"weight_bits": 2, "act_bits": 2},
    })
    model = build_model(recipe).train()
    bns = _count(model, SwitchableBatchNorm)
    keys = model.state_dict().keys()
    assert bns > 0 and not any("groups" in k and "basis" in k for k in keys)
    assert any(k.endswith("weight_quantizer.basis") for k in keys)
    head = model.body.head.fc
    assert type(head) is nn.Linear  # last layer float
    out = model([torch.rand(4, 3, 32, 32), torch.rand(4, 3, 24, 24)])
    sum(o.sum() for o in out).backward()
    first_conv = next(m for m in model.modules() if isinstance(m, QuantConv2d))
    assert first_conv.weight.grad is not None
