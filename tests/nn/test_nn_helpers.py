"""The one home of each small job: module surgery, evaluation mode for a block, MAdds of a sub-network."""

import torch
from torch import nn

from rsvision.nn.cost import count_madds, subnet_madds
from rsvision.nn.surgery import eval_mode, replace_modules, set_submodule
from rsvision.nn.switchable import make_switchable
from rsvision.report import subnet_label


def test_eval_mode_restores_each_module_own_mode():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5))
    net.train()
    net[1].eval()  # a frozen BN inside a training network stays frozen afterwards
    with eval_mode(net) as same:
        assert same is net and not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, False, True]


def test_eval_mode_restores_on_error():
    net = nn.Sequential(nn.Linear(2, 2)).train()
    try:
        with eval_mode(net):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert net.training and net[0].training


def test_set_submodule_and_replace_modules():
    net = nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU()), nn.ReLU())
    set_submodule(net, "0.1", nn.Tanh())
    assert isinstance(net[0][1], nn.Tanh)
    seen = []
    replace_modules(net, lambda m, name: seen.append(name) or (nn.GELU() if isinstance(m, nn.ReLU) else None))
    assert isinstance(net[1], nn.GELU) and seen == ["0", "0.0", "0.1", "1"]


def test_subnet_madds_of_one_convolution_by_hand():
    # 3x3 conv, 2 -> 4 channels, padding 1: 4 * 2 * 9 = 72 multiply-adds per output pixel;
    # torch's FLOP counter gives BatchNorm none.
    net = make_switchable(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)), [8, 4])
    assert count_madds(nn.BatchNorm2d(4).eval(), torch.zeros(1, 4, 8, 8)) == 0
    assert subnet_madds(net, 8, torch.zeros(1, 2, 8, 8)) == 72 * 64
    assert subnet_madds(net, 4, torch.zeros(1, 2, 4, 4)) == 72 * 16


def test_one_label_for_a_sub_network():
    assert subnet_label({"subnet": "160w50", "resolution": 160, "width": 0.5}) == "0.50x @ 160x160"
    assert subnet_label({"subnet": "224", "resolution": 224}) == "224x224"
    assert subnet_label({"subnet": "ensemble"}) == "ensemble"
