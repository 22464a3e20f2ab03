"""Switchable BN (Eq. 3) and BN interpolation for untrained resolutions (§4.3)."""

import warnings

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet18

from rsvision import (
    RSNet,
    SwitchableBatchNorm,
    at_resolution,
    make_switchable,
    set_resolution,
)
from rsvision.nn.cost import bn_affine_parameters, count_parameters
from rsvision.nn.switchable import interpolation_weights
from rsvision.subnet import SubNet

RES = [32, 24, 16]


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2), nn.BatchNorm1d(2))


def test_groups_copy_the_original_bn():
    net = small_net()
    with torch.no_grad():
        net[1].weight.fill_(2.0)
        net[1].running_mean.fill_(0.5)
    make_switchable(net, RES)
    assert isinstance(net[1], SwitchableBatchNorm) and isinstance(net[6], SwitchableBatchNorm)
    assert list(net[1].groups) == ["32", "24", "16"]
    for g in net[1].groups.values():
        assert torch.all(g.weight == 2.0) and torch.all(g.running_mean == 0.5)
    # groups are independent copies
    assert net[1].groups["32"].weight.data_ptr() != net[1].groups["16"].weight.data_ptr()


def test_running_stats_change_only_for_the_active_resolution():
    net = make_switchable(small_net(), RES).train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running_mean" in k}
    with at_resolution(net, 24):
        net(torch.randn(4, 3, 24, 24))
    after = net.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        assert changed == (".24." in key), key


def test_interpolation_at_midpoint_is_the_neighbours_mean():
    net = make_switchable(small_net(), [32, 16]).eval()
    bn = net[1]
    with torch.no_grad():
        for r, v in (("32", 1.0), ("16", 3.0)):
            g = bn.groups[r]
            g.weight.fill_(v)
            g.bias.fill_(-v)
            g.running_mean.fill_(v / 2)
            g.running_var.fill_(v)
    x = torch.randn(2, 4, 5, 5)
    bn.subnet = SubNet(24)  # halfway: every tensor is the mean (2, -2, 1, 2)
    expected = (x - 1.0) / torch.sqrt(torch.tensor(2.0) + bn.groups["32"].eps) * 2.0 - 2.0
    assert torch.allclose(bn(x), expected, atol=1e-6)
    assert interpolation_weights([32, 16], 24) == (32, 16, 0.5)
    assert interpolation_weights([32, 24, 16], 28) == (32, 24, 0.5)


def test_untrained_resolution_is_refused_in_training_mode():
    net = make_switchable(small_net(), RES).train()
    with at_resolution(net, 20), pytest.raises(ValueError, match="not trained"):
        net(torch.randn(2, 3, 20, 20))


def test_outside_the_trained_range_uses_the_nearest_group_with_a_warning():
    net = make_switchable(small_net(), RES).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="outside the trained range"):
        with at_resolution(net, 8):
            y8 = net(x)
    with at_resolution(net, 16):
        y16 = net(x)
    assert torch.equal(y8, y16)


def test_at_resolution_restores_the_previous_choice():
    net = make_switchable(small_net(), RES)
    set_resolution(net, 32)
    with at_resolution(net, 16):
        assert net[1].subnet == SubNet(16)
    assert net[1].subnet == SubNet(32)


def test_rsnet_picks_the_group_from_the_input_size():
    model = RSNet(small_net(), RES).train()
    model([torch.randn(4, 3, r, r) for r in RES])
    for r in RES:
        assert model.body[1].groups[str(r)].num_batches_tracked.item() == 1
    assert model.resolutions == RES
    assert model.state_dict()["trained_resolutions"].tolist() == RES
    assert "body.1.groups.24.running_var" in model.state_dict()


def test_shared_bn_keeps_one_group():
    model = RSNet(small_net(), RES, shared_bn=True)
    assert list(model.body[1].groups) == ["shared"]
    assert count_parameters(model) == count_parameters(small_net())


def _check_rsnet(net: nn.Module, resolutions, make_input):
    base = count_parameters(net)
    affine = bn_affine_parameters(net)
    model = RSNet(net, resolutions)
    assert count_parameters(model) == base + (len(resolutions) - 1) * affine
    model.eval()
    with torch.no_grad():
        for r in resolutions:
            assert torch.isfinite(model(make_input(r))).all()
    return affine


def test_torchvision_resnet18():
    affine = _check_rsnet(resnet18(num_classes=10), [64, 48, 32], lambda r: torch.randn(1, 3, r, r))
    assert affine == 9600  # S = 5 would add 4 x 9,600 = 38,400 parameters


def test_torchvision_mobilenet_v2():
    _check_rsnet(mobilenet_v2(num_classes=10), [64, 32], lambda r: torch.randn(1, 3, r, r))


def test_smp_unet():
    net = smp.Unet("resnet18", encoder_weights=None, classes=3, encoder_depth=3, decoder_channels=(32, 16, 8))
    _check_rsnet(net, [64, 32], lambda r: torch.randn(1, 3, r, r))


def test_interpolated_forward_after_sync_bn_conversion():
    model = RSNet(small_net(), RES)
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert all(isinstance(g, nn.SyncBatchNorm) for g in model.body[1].groups.values())
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model(torch.randn(2, 3, 20, 20)).shape == (2, 2)
