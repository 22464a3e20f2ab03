"""timm backbones (``backbone: timm/<name>``) and the registry's prefix families they use."""

import warnings

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from rsvision.errors import RegistryError
from rsvision.registry import Registry
from rsvision.switchable import RSNet, materialize, subnet_status


def test_a_prefix_resolves_a_family_of_names():
    reg = Registry("thing")
    reg.register("plain")(lambda: "plain")
    reg.register_prefix("fam/", lambda name, /, **kw: (name, kw), placeholder="<any member>")
    assert reg.build("fam/a.b", size=3) == ("a.b", {"size": 3})
    assert reg.list() == ["fam/<any member>", "plain"]
    assert reg.list("p*") == ["plain"]
    reg.register("fam/special")(lambda: "exact")  # an exact name wins over the prefix
    assert reg.build("fam/special") == "exact"
    with pytest.raises(RegistryError, match="did you mean 'fam/<any member>'"):
        reg.get("fan/<any member>")
    with pytest.raises(RegistryError, match="prefix 'fam/' is already registered"):
        reg.register_prefix("fam/", lambda name: name)


def test_timm_batchnorm_act_keeps_its_activation_between_trained_resolutions():
    """BatchNormAct2d (BN + activation in one module) at an interpolated resolution (§4.3)."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 1), BatchNormAct2d(4, act_layer=nn.ReLU))
    model = RSNet(body, [16, 8]).eval()
    assert type(model.body[1].groups["16"]) is BatchNormAct2d
    x = torch.randn(2, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 12 is inside the trained range: no nearest-resolution warning
        y = model(x)
    assert subnet_status(model, 12) == "interpolated"
    assert y.min() >= 0  # the ReLU ran
    torch.testing.assert_close(y, materialize(model, 12)(x))
