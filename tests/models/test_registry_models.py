"""Tests generated from the registries: every backbone under every head it fits, at two resolutions.

Each case builds an RS-Net with :func:`rsvision.models.create_model` and checks the output
shape, that backward reaches every parameter the sub-network uses (and none of the other
sub-network's BN), that neither resolution's BN statistics move when the other trains, and
that a state-dict round trip into a fresh model gives identical outputs. A new backbone is
tested as soon as it is registered; a new head needs a line in ``HEADS``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsvision.models import create_model
from rsvision.nn.switchable import RSNet, SwitchableBatchNorm
from rsvision.registry import BACKBONES, list_backbones, list_heads

#: Small widths where the builder takes them, so the file stays fast.
BACKBONE_ARGS = {
    "mobilenet_v2": {"width_mult": 0.25},
    "resnet8": {"width": 4},
    "resnet14": {"width": 4},
    "resnet20": {"width": 4},
    "resnet18_cifar": {"width": 8, "stem_stride": 4},  # stem stride 4: stages at 4..32, so the seg heads fit
    "preact_resnet8": {"width": 4},
    "preact_resnet20": {"width": 4},
}
#: A concrete name for each prefix family that ``list_backbones()`` shows.
STAND_INS = {"timm/<any timm CNN>": "timm/resnet10t"}
#: Every registered head: (resolutions, needs 4 stages at strides 4..32, small head arguments).
HEADS = {
    "classifier": ((32, 16), False, {}),
    "refinenet": ((64, 32), True, {"widths": [8, 8, 8, 16], "crp_stages": 2}),
    "deeplabv3plus": ((64, 32), True, {"channels": 16}),
    "fpn": ((64, 32), True, {"pyramid_channels": 16, "segmentation_channels": 32}),
    "unet": ((64, 32), True, {"decoder_channels": [16, 8, 8]}),
}
NUM_CLASSES = 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: at batch 2 and 32-64 px a second thread gains little, and on a
    shared, oversubscribed machine two threads made this file about 10x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _backbone_names() -> list[str]:
    return [STAND_INS.get(name, name) for name in list_backbones()]


def _cases() -> list:
    cases = []
    for name in _backbone_names():
        backbone = BACKBONES.build(name, **BACKBONE_ARGS.get(name, {}))
        four_stages = len(backbone.out_channels) == 4 and backbone.output_stride == 32
        for head, (_, needs_four_stages, _) in HEADS.items():
            if four_stages or not needs_four_stages:
                cases.append(pytest.param(name, head, id=f"{name}-{head}"))
    return cases


def _build(backbone: str, head: str) -> RSNet:
    resolutions, _, head_args = HEADS[head]
    return create_model(
        backbone=backbone,
        head=head,
        num_classes=NUM_CLASSES,
        resolutions=resolutions,
        backbone_args=BACKBONE_ARGS.get(backbone),
        head_args=head_args,
    )


def _expected_shape(model: RSNet, head: str, r: int) -> tuple[int, ...]:
    if head == "classifier":
        return (2, NUM_CLASSES)
    backbone = model.body.backbone
    first_stride = backbone.output_stride // 2 ** (len(backbone.out_channels) - 1)
    return (2, NUM_CLASSES, r // first_stride, r // first_stride)


def _statistics(model: nn.Module, subnet_id: str) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{buf}": t.clone()
        for name, m in model.named_modules()
        if isinstance(m, SwitchableBatchNorm)
        for buf, t in m.groups[subnet_id].named_buffers()
    }


def test_every_registered_head_has_a_case():
    assert sorted(HEADS) == list_heads()


@pytest.mark.parametrize(("backbone", "head"), _cases())
def test_backbone_under_head(backbone, head):
    torch.manual_seed(0)
    model = _build(backbone, head).train()
    resolutions = HEADS[head][0]
    for r, other in (resolutions, resolutions[::-1]):
        mine, theirs = _statistics(model, str(r)), _statistics(model, str(other))
        model.zero_grad(set_to_none=True)
        out = model(torch.randn(2, 3, r, r))
        assert out.shape == _expected_shape(model, head, r)
        out.square().mean().backward()

        unchanged = _statistics(model, str(other))
        assert all(torch.equal(unchanged[k], v) for k, v in theirs.items()), f"training at {r} moved BN statistics of {other}"
        moved = _statistics(model, str(r))
        assert all(not torch.equal(moved[k], v) for k, v in mine.items() if k.endswith("num_batches_tracked"))

        other_bn = f".groups.{other}."
        no_grad = [n for n, p in model.named_parameters() if p.grad is None and other_bn not in n]
        assert not no_grad, f"backward at {r} does not reach {no_grad[:3]}"
        leaked = [n for n, p in model.named_parameters() if p.grad is not None and other_bn in n]
        assert not leaked, f"backward at {r} reaches the BN of {other}: {leaked[:3]}"

    model.eval()
    torch.manual_seed(1)
    fresh = _build(backbone, head).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        for r in resolutions:
            x = torch.randn(2, 3, r, r)
            assert torch.equal(model(x), fresh(x)), f"a state-dict round trip changes the output at {r}"
