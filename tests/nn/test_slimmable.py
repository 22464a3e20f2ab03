"""Width-switchable layers and networks: a slimmed layer equals a plain layer holding the
sliced weights; a slimmed network equals its materialized plain network; MAdds per width;
structures that cannot be slimmed are refused naming the layer."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rsvision.errors import UserError
from rsvision.models import create_model
from rsvision.nn.cost import count_madds
from rsvision.nn.slimmable import (
    SlimmableConv2d,
    SlimmableLinear,
    channels_at,
    make_divisible,
    make_slimmable,
    slimmable_layers,
)
from rsvision.nn.switchable import (
    Switchable,
    SwitchableBatchNorm,
    at_subnet,
    materialize,
)
from rsvision.subnet import SubNet


@pytest.mark.parametrize(
    "v,divisor,expected",
    [
        (67.2, 8, 64),  # 0.7 x 96: the nearest multiple (rounding up gave 72)
        (153.6, 8, 152),  # 0.6 x 256
        (99, 8, 96),
        (100, 8, 104),
        (12, 8, 16),  # halves round up
        (10, 8, 16),  # 8 is below 90 % of 10: one divisor more
        (9.6, 4, 12),  # 8 < 8.64
        (3, 8, 8),  # at least one divisor
        (14.4, 1, 14),  # divisor 1: the nearest integer
        (14.5, 1, 15),
    ],
)
def test_make_divisible_rounds_as_the_official_code(v, divisor, expected):
    assert make_divisible(v, divisor) == expected


def test_channels_at_width():
    assert channels_at(0.7, 96, 8) == 64
    assert channels_at(0.25, 16, 4) == 4
    assert channels_at(1.0, 12, 8) == 12  # at most the layer's channels
    assert channels_at(0.29, 100, 2) == 30  # 0.29 * 100 is 28.999999999999996 in floating point


def _pin(layer: nn.Module, width: float) -> nn.Module:
    layer.subnet = SubNet(16, width)
    return layer


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_sliced_conv_equals_plain_conv_with_sliced_weights(padding_mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 3, stride=2, padding=1, bias=True, padding_mode=padding_mode)
    slim = _pin(SlimmableConv2d.from_conv(conv, divisor=8, width_range=(0.25, 1.0)), 0.5)
    x = torch.randn(2, 12, 9, 9)  # the previous layer's first 12 channels
    out = slim(x)
    c_out = channels_at(0.5, 40, 8)
    assert out.shape[1] == c_out == 24
    plain = nn.Conv2d(12, c_out, 3, stride=2, padding=1, bias=True, padding_mode=padding_mode)
    with torch.no_grad():
        plain.weight.copy_(conv.weight[:c_out, :12])
        plain.bias.copy_(conv.bias[:c_out])
    torch.testing.assert_close(out, plain(x), rtol=0, atol=0)
    torch.testing.assert_close(slim.materialize(SubNet(16, 0.5), 12)(x), out, rtol=0, atol=0)


def test_sliced_depthwise_conv_keeps_one_group_per_channel():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
    slim = _pin(SlimmableConv2d.from_conv(conv, divisor=8, width_range=(0.25, 1.0)), 0.3)
    x = torch.randn(2, 16, 7, 7)
    plain = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    with torch.no_grad():
        plain.weight.copy_(conv.weight[:16])
    torch.testing.assert_close(slim(x), plain(x), rtol=0, atol=0)
    mat = slim.materialize(SubNet(16, 0.3), 16)
    assert (mat.in_channels, mat.out_channels, mat.groups) == (16, 16, 16)


def test_sliced_linear_and_last_layer_keeps_its_outputs():
    torch.manual_seed(0)
    fc = nn.Linear(64, 10)
    hidden = _pin(SlimmableLinear.from_linear(nn.Linear(64, 48), 8, (0.25, 1.0)), 0.5)
    last = _pin(SlimmableLinear.from_linear(fc, 8, (0.25, 1.0), full_outputs=True), 0.5)
    x = torch.randn(3, 32)
    assert hidden(x).shape == (3, 24)
    torch.testing.assert_close(last(x), x @ fc.weight[:, :32].T + fc.bias, rtol=0, atol=1e-6)
    assert last.materialize(SubNet(16, 0.5), 32).out_features == 10


@pytest.mark.parametrize("training", [True, False])
def test_sliced_bn_equals_plain_bn_with_sliced_tensors(training):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(32)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    sbn = SwitchableBatchNorm(bn, [SubNet(16, 1.0), SubNet(16, 0.25)], shared=True).train(training)
    sbn.subnet = SubNet(16, 0.5)
    plain = sbn.materialize(SubNet(16, 0.5), 16).train(training)
    x = torch.randn(4, 16, 5, 5)
    torch.testing.assert_close(sbn(x), plain(x), rtol=1e-6, atol=1e-6)
    if training:  # the running statistics of the first 16 channels moved, the rest did not
        group = sbn.groups["shared"]
        torch.testing.assert_close(group.running_mean[:16], plain.running_mean)
        torch.testing.assert_close(group.running_mean[16:], bn.running_mean[16:])


BACKBONES = [
    ("resnet8", {"width": 16}),  # CIFAR-style basic blocks
    ("resnet18", {}),  # torchvision basic blocks
    ("resnet50", {}),  # torchvision bottlenecks with projection shortcuts
    ("mobilenet_v2", {}),  # depthwise convolutions, inverted residuals
]


@pytest.mark.parametrize("backbone,args", BACKBONES, ids=[b for b, _ in BACKBONES])
def test_slimmed_network_equals_its_materialized_plain_network(backbone, args):
    torch.manual_seed(0)
    model = create_model(backbone=backbone, num_classes=7, resolutions=[32, 24], widths=[1.0, 0.25], shared_bn=True, backbone_args=args)
    for bn in model.modules():  # statistics that differ per channel, so slicing errors show
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(2, 3, 24, 24)
    for width in (0.25, 0.6):
        subnet = SubNet(24, width)
        with at_subnet(model, subnet):
            expected = model(x)
        plain = materialize(model, subnet)
        assert not any(isinstance(m, Switchable) for m in plain.modules())
        torch.testing.assert_close(plain(x), expected, rtol=1e-4, atol=1e-5)
        convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
        assert convs[0].in_channels == 3  # the image keeps all its channels
        assert [m for m in plain.modules() if isinstance(m, nn.Linear)][-1].out_features == 7
        full = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        for c, f in zip(convs, full):  # every layer keeps channels_at of its outputs, or all of them
            assert c.out_channels == (f.out_channels if f.full_outputs else channels_at(width, f.out_channels, 8))


@pytest.mark.parametrize("full_last_conv", [True, False])
def test_mobilenet_v2_keeps_its_last_conv_at_1280_channels(full_last_conv):
    model = create_model(backbone="mobilenet_v2", num_classes=10, resolutions=[32], widths=[1.0, 0.35], shared_bn=True, backbone_args={"full_last_conv": full_last_conv})
    plain = materialize(model.eval(), SubNet(32, 0.35))
    last = [m for m in plain.modules() if isinstance(m, nn.Conv2d)][-1]
    fc = [m for m in plain.modules() if isinstance(m, nn.Linear)][-1]
    assert last.in_channels == channels_at(0.35, 320, 8) == 112
    assert last.out_channels == fc.in_features == (1280 if full_last_conv else channels_at(0.35, 1280, 8)) == (1280 if full_last_conv else 448)
    assert fc.out_features == 10


def test_timm_resnet_and_mobilenet_convert():
    """timm's BatchNormAct2d, squeeze-excitation and its Linear (MobileNetV3) slim like torchvision's layers."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    for name in ("resnet10t", "mobilenetv3_small_050"):
        net = timm.create_model(name, num_classes=5)
        make_slimmable(net, (0.5, 1.0), example_input=torch.zeros(2, 3, 32, 32))
        from rsvision.nn.switchable import RSNet

        model = RSNet(net, [SubNet(32, 1.0), SubNet(32, 0.5)], shared_bn=True).eval()
        x = torch.randn(2, 3, 32, 32)
        with at_subnet(model, SubNet(32, 0.5)):
            expected = model(x)
        torch.testing.assert_close(materialize(model, SubNet(32, 0.5))(x), expected, rtol=1e-4, atol=1e-5)
        assert slimmable_layers(net)[-1].full_outputs


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x), self.b(x)], dim=1).mean((2, 3)))


class _Norm(nn.Module):
    def __init__(self, norm: nn.Module, conv: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = conv or nn.Conv2d(3, 8, 3)
        self.norm = norm
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)).mean((2, 3)))


class _Flatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, stride=4), nn.Linear(8 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


@pytest.mark.parametrize(
    "model,culprit",
    [
        (_Concat(), "_Concat: it concatenates"),
        (_Norm(nn.GroupNorm(2, 8)), "norm: GroupNorm has channel-sized parameters"),
        (_Norm(nn.ReLU()), None),
        (_Norm(nn.Identity(), nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=4))), "conv.1: grouped convolution"),
        (_Flatten(), "_Flatten: it reshapes"),
    ],
    ids=["concat", "groupnorm", "plain-ok", "grouped", "flatten"],
)
def test_structures_that_cannot_be_slimmed_are_named(model, culprit):
    x = torch.zeros(2, 3, 16, 16)
    if culprit is None:
        make_slimmable(model, (0.25, 1.0), example_input=x)
        return
    with pytest.raises(UserError) as err:
        make_slimmable(model, (0.25, 1.0), example_input=x)
    assert str(err.value).startswith(culprit) and "\n" not in str(err.value)


def _conv_madds(model: nn.Module, subnet: SubNet, x: torch.Tensor) -> int:
    """Multiply-adds of the plain materialized network by hand: H·W·C_out·C_in/groups·k² per conv, in·out per linear."""
    plain = materialize(model, subnet)
    total = 0

    def conv_hook(m, args, out):
        nonlocal total
        total += out.shape[2] * out.shape[3] * m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def fc_hook(m, args, out):
        nonlocal total
        total += m.in_features * m.out_features

    for m in plain.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(fc_hook)
    with torch.no_grad():
        plain(x)
    return total


def test_madds_of_each_subnetwork_as_the_flop_counter_measures_and_falling_with_width():
    model = create_model(backbone="mobilenet_v2", num_classes=10, resolutions=[16], widths=[1.0, 0.25], shared_bn=True).eval()
    x = torch.zeros(1, 3, 16, 16)
    madds = []
    for width in (1.0, 0.6, 0.25):
        subnet = SubNet(16, width)
        with at_subnet(model, subnet):
            counted = count_madds(model, x)
            with FlopCounterMode(display=False) as fc:
                model(x)
        assert counted == fc.get_total_flops() // 2 == _conv_madds(model, subnet, x)
        madds.append(counted)
    assert madds == sorted(madds, reverse=True) and len(set(madds)) == len(madds)
    assert madds[0] > 8 * madds[-1]


def test_segmentation_head_keeps_its_classifier_full_or_is_refused():
    model = create_model(backbone="resnet8", head="refinenet", num_classes=5, resolutions=[32], widths=[1.0, 0.5], shared_bn=True, backbone_args={"width": 16})
    last = [m for m in slimmable_layers(model) if m.full_outputs]
    assert len(last) == 1 and last[0].out_channels == 5
    with at_subnet(model.eval(), SubNet(32, 0.5)):
        assert model(torch.zeros(1, 3, 32, 32)).shape[1] == 5
    with pytest.raises(UserError, match=r"^widths: resnet18 with head unet cannot be made width-switchable: head\.decoder\.blocks\.0: it concatenates"):
        create_model(backbone="resnet18", head="unet", num_classes=5, resolutions=[32], widths=[1.0, 0.5], shared_bn=True)
