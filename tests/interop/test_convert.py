"""Official RS-Nets checkpoints → rsvision: same logits at every resolution, one-line errors.

The networks below re-create the official code's layout (``ModuleParallel`` around shared
layers, ``BatchNorm2dParallel`` with children ``bn_0 .. bn_{S-1}``, a list of S inputs in
and S logits out, ``alpha`` registered on the model, DataParallel's ``module.`` prefix and
the training script's checkpoint dict), so the conversion is checked against the format
and the forward semantics it reads.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsvision.errors import UserError
from rsvision.interop.official import (
    convert_rsnets,
    official_recipe,
    read_official_checkpoint,
)
from rsvision.models import build_model

NUM_CLASSES = 10


class Shared(nn.Module):
    """One layer applied to each of the S inputs (keys ``<name>.module.*``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.module(x) for x in xs]


class PrivateBN(nn.Module):
    """BatchNorm ``bn_i`` for the i-th input (keys ``<name>.bn_i.*``)."""

    def __init__(self, channels: int, copies: int) -> None:
        super().__init__()
        for i in range(copies):
            self.add_module(f"bn_{i}", nn.BatchNorm2d(channels))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [getattr(self, f"bn_{i}")(x) for i, x in enumerate(xs)]


def add(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    return [x + y for x, y in zip(a, b)]


def conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> Shared:
    return Shared(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))


class ResBlock(nn.Module):
    """Basic (2 convs) or bottleneck (3 convs, stride on the 3x3) block, official names."""

    def __init__(self, cin: int, planes: int, stride: int, bottleneck: bool, s: int) -> None:
        super().__init__()
        cout = planes * (4 if bottleneck else 1)
        if bottleneck:
            specs = [(cin, planes, 1, 1), (planes, planes, 3, stride), (planes, cout, 1, 1)]
        else:
            specs = [(cin, planes, 3, stride), (planes, planes, 3, 1)]
        for j, (a, b, k, st) in enumerate(specs, 1):
            self.add_module(f"conv{j}", conv(a, b, k, st))
            self.add_module(f"bn{j}", PrivateBN(b, s))
        self.n = len(specs)
        self.relu = Shared(nn.ReLU())
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv(cin, cout, 1, stride), PrivateBN(cout, s))

    def forward(self, xs):
        out = xs
        for j in range(1, self.n + 1):
            out = getattr(self, f"bn{j}")(getattr(self, f"conv{j}")(out))
            if j < self.n:
                out = self.relu(out)
        identity = xs if self.downsample is None else self.downsample(xs)
        return self.relu(add(out, identity))


class OfficialResNet(nn.Module):
    def __init__(self, blocks: list[int], bottleneck: bool, s: int) -> None:
        super().__init__()
        self.conv1 = conv(3, 64, 7, 2)
        self.bn1 = PrivateBN(64, s)
        self.relu = Shared(nn.ReLU())
        self.maxpool = Shared(nn.MaxPool2d(3, 2, 1))
        cin = 64
        for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), 1):
            layer = []
            for b in range(n):
                layer.append(ResBlock(cin, planes, 2 if i > 1 and b == 0 else 1, bottleneck, s))
                cin = planes * (4 if bottleneck else 1)
            self.add_module(f"layer{i}", nn.Sequential(*layer))
        self.avgpool = Shared(nn.AdaptiveAvgPool2d(1))
        self.fc = Shared(nn.Linear(cin, NUM_CLASSES))

    def forward(self, xs):
        xs = self.maxpool(self.relu(self.bn1(self.conv1(xs))))
        xs = self.layer4(self.layer3(self.layer2(self.layer1(xs))))
        return self.fc([t.flatten(1) for t in self.avgpool(xs)])


class InvertedResidual(nn.Module):
    """``conv`` = [pw, BN, ReLU6,] dw, BN, ReLU6, pw-linear, BN: the ReLU6s take indices."""

    def __init__(self, cin: int, cout: int, stride: int, t: int, s: int) -> None:
        super().__init__()
        hidden = cin * t
        layers = [conv(cin, hidden, 1), PrivateBN(hidden, s), Shared(nn.ReLU6())] if t != 1 else []
        layers += [conv(hidden, hidden, 3, stride, groups=hidden), PrivateBN(hidden, s), Shared(nn.ReLU6())]
        layers += [conv(hidden, cout, 1), PrivateBN(cout, s)]
        self.conv = nn.Sequential(*layers)
        self.identity = stride == 1 and cin == cout

    def forward(self, xs):
        out = self.conv(xs)
        return add(xs, out) if self.identity else out


class OfficialMobileNetV2(nn.Module):
    def __init__(self, s: int) -> None:
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
        layers, cin = [nn.Sequential(conv(3, 32, 3, 2), PrivateBN(32, s), Shared(nn.ReLU6()))], 32
        for t, c, n, stride in cfg:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, stride if i == 0 else 1, t, s))
                cin = c
        self.features = nn.Sequential(*layers)
        self.conv = nn.Sequential(conv(cin, 1280, 1), PrivateBN(1280, s), Shared(nn.ReLU6()))
        self.avgpool = Shared(nn.AdaptiveAvgPool2d(1))
        self.classifier = Shared(nn.Linear(1280, NUM_CLASSES))

    def forward(self, xs):
        xs = self.avgpool(self.conv(self.features(xs)))
        return self.classifier([t.flatten(1) for t in xs])


OFFICIAL = {
    "resnet18": ("parallel_resnet18", lambda s: OfficialResNet([2, 2, 2, 2], False, s)),
    "resnet50": ("parallel_resnet50", lambda s: OfficialResNet([3, 4, 6, 3], True, s)),
    "mobilenet_v2": ("parallel_mobilenetv2", OfficialMobileNetV2),
}


def official_checkpoint(arch: str, sizes: list[int], path, seed: int = 0) -> nn.Module:
    """Save an official-format checkpoint with random BN statistics and alpha; return the net."""
    torch.manual_seed(seed)
    official_arch, make = OFFICIAL[arch]
    net = make(len(sizes))
    net.register_parameter("alpha", nn.Parameter(torch.randn(len(sizes))))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # every copy different, so a swapped bn_i shows
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(1000)
    wrapped = nn.DataParallel(net)  # on the CPU it only adds the ``module.`` prefix
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9)
    torch.save(
        {"epoch": 120, "arch": official_arch, "state_dict": wrapped.state_dict(),
         "best_acc0": 73.1, "best_acc": 80.5, "optimizer": optimizer.state_dict()},
        path,
    )
    return net.eval()


def converted_model(path, arch: str, sizes: list[int]):
    state, ckpt_arch = read_official_checkpoint(path)
    weights, alpha = convert_rsnets(state, ckpt_arch, sizes, source=str(path))
    assert ckpt_arch == OFFICIAL[arch][0]
    model = build_model(official_recipe(arch, NUM_CLASSES, sizes))
    model.load_state_dict(weights)
    return model.eval(), alpha


@pytest.mark.parametrize(
    "arch, sizes",
    [
        ("resnet18", [64, 48, 32]),
        ("mobilenet_v2", [64, 48, 32]),
        ("mobilenet_v2", [48, 64, 32]),  # --sizes in another order: bn_i follows that order
        ("resnet50", [32, 24]),
    ],
)
def test_same_logits_at_every_resolution(tmp_path, arch, sizes):
    path = tmp_path / "checkpoint.pth.tar"
    official = official_checkpoint(arch, sizes, path)
    model, alpha = converted_model(path, arch, sizes)
    torch.manual_seed(1)
    xs = [torch.rand(2, 3, r, r) for r in sizes]  # the official loaders give [0, 1] images
    with torch.no_grad():
        expected = official(xs)
        for x, want in zip(xs, expected):
            torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
    order = [sizes.index(r) for r in model.resolutions]
    assert model.resolutions == sorted(sizes, reverse=True)
    torch.testing.assert_close(alpha, official.alpha.detach()[order])


@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "model_best.pth.tar"
    official_checkpoint("resnet18", [64, 48, 32], path)
    return read_official_checkpoint(path).state


def one_line_error(state, sizes, arch="resnet18") -> str:
    with pytest.raises(UserError) as err:
        convert_rsnets(dict(state), arch, sizes, source="best.pth.tar")
    message = str(err.value)
    assert "\n" not in message and message.startswith("best.pth.tar: ")
    return message


def test_bare_state_dict_and_prefix(tmp_path, resnet18_state):
    assert not any(k.startswith("module.") for k in resnet18_state)
    bare = {k: v for k, v in resnet18_state.items() if k != "alpha"}
    torch.save(bare, tmp_path / "bare.pth")
    state, arch = read_official_checkpoint(tmp_path / "bare.pth")
    weights, alpha = convert_rsnets(state, "resnet18", [64, 48, 32])
    assert arch is None and alpha is None
    torch.testing.assert_close(weights["body.backbone.layers.1.0.downsample.1.groups.32.running_var"],
                               state["layer2.0.downsample.1.bn_2.running_var"])


def test_wrong_number_of_resolutions(resnet18_state):
    message = one_line_error(resnet18_state, [64, 48])
    assert "3 BatchNorm copies" in message and "2 resolutions" in message
    assert "4 resolutions" in one_line_error(resnet18_state, [64, 48, 32, 16])


def test_stray_missing_and_misshapen_keys(resnet18_state):
    stray = dict(resnet18_state, **{"layer1.0.se.module.weight": torch.zeros(1)})
    assert "unexpected key 'layer1.0.se.module.weight'" in one_line_error(stray, [64, 48, 32])
    missing = {k: v for k, v in resnet18_state.items() if k != "layer3.1.bn2.bn_1.running_var"}
    assert "missing key 'layer3.1.bn2.bn_1.running_var'" in one_line_error(missing, [64, 48, 32])
    misshapen = dict(resnet18_state, **{"layer1.0.conv1.module.weight": torch.zeros(64, 64, 1, 1)})
    assert "'layer1.0.conv1.module.weight' has shape [64, 64, 1, 1]" in one_line_error(misshapen, [64, 48, 32])
    assert "[64, 64, 3, 3]" in one_line_error(misshapen, [64, 48, 32])


def test_wrong_or_unsupported_arch(resnet18_state):
    assert "unsupported architecture 'parallel_resnext50_32x4d'" in one_line_error(
        resnet18_state, [64, 48, 32], arch="parallel_resnext50_32x4d"
    )
    assert "no 'classifier.module.weight'" in one_line_error(resnet18_state, [64, 48, 32], arch="mobilenet_v2")
    # ResNet-34 has the same key names but more blocks
    assert "missing key 'layer1.2.conv1.module.weight'" in one_line_error(resnet18_state, [64, 48, 32], arch="resnet34")


def test_unreadable_file(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    for path in (tmp_path / "notes.txt", tmp_path / "absent.pth"):
        with pytest.raises(UserError) as err:
            read_official_checkpoint(path)
        assert "\n" not in str(err.value) and str(err.value).startswith(str(path))
