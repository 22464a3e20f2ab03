"""model.pretrained: a local file loads into the backbone; a download fails with a clear message offline."""

import urllib.error

import pytest
import torch
from conftest import tiny_recipe_dict
from safetensors.torch import save_file
from torchvision.models import mobilenet_v2, resnet18

from rsvision.errors import UserError
from rsvision.models import build_model, create_model
from rsvision.nn.switchable import at_resolution
from rsvision.recipe import validate_recipe


def _recipe(tmp_path, pretrained):
    return validate_recipe(
        tiny_recipe_dict(tmp_path, model={"backbone": "resnet18", "num_classes": 5, "pretrained": pretrained})
    )


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_torchvision_weights_become_every_bn_group(tmp_path, suffix):
    torch.manual_seed(0)
    reference = resnet18()
    with torch.no_grad():
        reference.bn1.running_mean.uniform_()
    path = tmp_path / f"r18{suffix}"
    state = reference.state_dict()
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = build_model(_recipe(tmp_path, str(path)))
    backbone = model.body.backbone
    assert torch.equal(backbone.stem[0].weight, reference.conv1.weight)
    for group in backbone.stem[1].groups.values():  # copied into every resolution's BN
        assert torch.equal(group.running_mean, reference.bn1.running_mean)
    assert torch.equal(backbone.layers[3][1].conv2.weight, reference.layer4[1].conv2.weight)


def test_missing_or_mismatched_weights(tmp_path):
    with pytest.raises(UserError, match="weights file not found"):
        build_model(_recipe(tmp_path, str(tmp_path / "nope.pth")))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="does not fit backbone 'resnet18'"):
        build_model(_recipe(tmp_path, str(tmp_path / "bad.pth")))


def test_download_offline_gives_a_clear_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match="ResNet18_Weights.IMAGENET1K_V1 is not in the cache and could not be downloaded.*give a downloaded file's path"):
        build_model(_recipe(tmp_path, "IMAGENET1K_V1"))
    with pytest.raises(UserError, match="neither a file nor a torchvision weight name"):
        build_model(_recipe(tmp_path, "NOT_A_WEIGHT"))


def test_torchvision_mobilenet_v2_weights_give_torchvision_features(tmp_path):
    torch.manual_seed(0)
    reference = mobilenet_v2().eval()
    with torch.no_grad():  # statistics that differ from a fresh BN, so a skipped tensor shows
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "mnv2.pth"
    torch.save(reference.state_dict(), path)
    model = create_model(backbone="mobilenet_v2", resolutions=[32], pretrained=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), at_resolution(model, 32):
        features = model.body.backbone(x)
        expected = [reference.features[:end](x) for end in (4, 7, 14, 19)]
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want)
