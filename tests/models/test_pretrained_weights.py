"""model.pretrained: true | TAG | FILE through timm's and torchvision's own loading, offline.

The weights are written by the tests into the folders the libraries read first (the Hugging
Face hub cache, torch hub's checkpoints); downloads are made to fail, so a test that passes
loaded from the cache.
"""

import json
import shutil
import urllib.error
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub.constants
import pytest
import timm
import torch
from conftest import tiny_recipe_dict
from safetensors.torch import save_file
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2, resnet18

import rsvision
from rsvision.engine import train
from rsvision.errors import UserError
from rsvision.models import create_model
from rsvision.models.pretrained import loaded_weights
from rsvision.nn.switchable import at_resolution
from rsvision.recipe import validate_recipe
from rsvision.run.folder import build_from_meta

TIMM = "test_resnet.r160_in1k"  # timm's tiny test network (0.47M parameters), weights on the hub as timm/test_resnet.r160_in1k


def _perturbed(model: nn.Module) -> nn.Module:
    """``model`` with BN statistics unlike a fresh one's, so a tensor left unloaded shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty hub caches under ``tmp_path`` and no network: HF_HUB_OFFLINE, and torch hub's download failing."""
    hf_cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))  # read at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"offline: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return hf_cache


def _cache_timm_weights(hf_cache: Path, name: str) -> nn.Module:
    """A fresh timm model's weights where the hub cache keeps ``timm/<name>``'s model.safetensors."""
    reference = _perturbed(timm.create_model(name))
    repo = hf_cache / f"models--timm--{name}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(snapshot / "model.safetensors"))
    return reference


def _features_and_logits(model, x: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad(), at_resolution(model.eval(), size):
        return model.body.backbone(x)[-1], model(x)


@pytest.mark.parametrize(
    ("backbone", "pretrained"),
    [(f"timm/{TIMM}", None), ("timm/test_resnet", True), ("timm/test_resnet", "r160_in1k"), (f"timm/{TIMM}", True)],
)
def test_timm_weights_from_the_hub_cache(offline, backbone, pretrained):
    """A tag in the backbone's name loads its weights; ``true`` loads timm's default; a tag selects."""
    reference = _cache_timm_weights(offline, TIMM)
    model = create_model(backbone=backbone, num_classes=1000, resolutions=[32], pretrained=pretrained)
    x = torch.randn(2, 3, 32, 32)
    features, logits = _features_and_logits(model, x, 32)
    with torch.no_grad():
        torch.testing.assert_close(features, reference.forward_features(x))
        torch.testing.assert_close(logits, reference(x))  # the classifier too: 1000 classes fit
    assert loaded_weights(model) == {
        "weights": f"timm/{TIMM} (Hugging Face hub timm/{TIMM})",
        "classifier": "loaded (1000 classes)",
    }


def test_timm_classifier_of_another_size_is_new_and_false_loads_nothing(offline):
    reference = _cache_timm_weights(offline, TIMM)
    model = create_model(backbone=f"timm/{TIMM}", num_classes=4, resolutions=[32])
    assert loaded_weights(model)["classifier"] == "new (the weights' classifier is (1000, 96), this model's (4, 96))"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_features_and_logits(model, x, 32)[0], reference.forward_features(x))
    fresh = create_model(backbone=f"timm/{TIMM}", num_classes=4, resolutions=[32], pretrained=False)
    assert loaded_weights(fresh) is None
    assert not torch.equal(fresh.body.backbone.model.conv1[0].weight, reference.conv1[0].weight)


def test_timm_offline_without_a_cache_names_the_weights_and_the_folder(offline):
    with pytest.raises(UserError) as err:
        create_model(backbone=f"timm/{TIMM}", resolutions=[32])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model.pretrained: the weights timm/{TIMM} are not in the Hugging Face hub cache ({offline})")
    assert f"https://huggingface.co/timm/{TIMM}/resolve/main/model.safetensors" in message


def test_timm_tags_are_checked(offline):
    with pytest.raises(UserError, match=r"model\.backbone: unknown pretrained tag 'r999' of timm model 'test_resnet' \(its tags: r160_in1k\)"):
        create_model(backbone="timm/test_resnet.r999", resolutions=[32])
    with pytest.raises(UserError, match=r"model\.pretrained: tag 'other' differs from the tag in model\.backbone 'timm/test_resnet\.r160_in1k'"):
        create_model(backbone=f"timm/{TIMM}", resolutions=[32], pretrained="other")


def test_torchvision_weights_from_the_torch_hub_cache(offline, tmp_path):
    """``true``: torchvision's DEFAULT weights, read from $TORCH_HOME/hub/checkpoints/<file>."""
    reference = _perturbed(mobilenet_v2())
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(urlparse(MobileNet_V2_Weights.DEFAULT.url).path).name
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model = create_model(backbone="mobilenet_v2", num_classes=1000, resolutions=[32], pretrained=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_features_and_logits(model, x, 32)[1], reference(x))
    assert loaded_weights(model) == {
        "weights": f"torchvision MobileNet_V2_Weights.IMAGENET1K_V2 ({cached})",
        "classifier": "loaded (1000 classes)",
    }


def test_the_run_records_the_weights_a_tag_in_the_name_loaded(offline, tmp_path):
    """``timm/<arch>.<tag>`` with ``model.pretrained`` and ``model.num_classes`` unset: the tag's
    weights, named in rsvision.json, and the data's 4 classes; the run then loads without them."""
    _cache_timm_weights(offline, TIMM)
    recipe = tiny_recipe_dict(tmp_path, resolutions=[32], model={"backbone": f"timm/{TIMM}"}, train={"epochs": 1, "max_steps_per_epoch": 1})
    recipe["data"]["args"]["image_size"] = 32
    run = train(validate_recipe(recipe), name="tagged", quiet=True)
    meta = json.loads((run / "rsvision.json").read_text())
    assert meta["pretrained"] == {
        "weights": f"timm/{TIMM} (Hugging Face hub timm/{TIMM})",
        "classifier": "new (the weights' classifier is (1000, 96), this model's (4, 96))",
    }
    assert meta["recipe"]["model"]["num_classes"] == 4
    shutil.rmtree(offline)  # the run's own weights are all it needs from now on
    assert len(rsvision.load(run).class_names) == 4


def test_checkpoints_are_unwrapped_and_their_classifier_loaded(tmp_path):
    """``{"model": ...}`` with DDP's ``module.`` prefixes, and EMA weights before the plain ones, as timm's load_checkpoint."""
    torch.manual_seed(0)
    reference = _perturbed(resnet18(num_classes=5))
    other = resnet18(num_classes=5)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in reference.state_dict().items()}}, wrapped)
    ema = tmp_path / "ema.pth"
    torch.save({"state_dict": other.state_dict(), "state_dict_ema": reference.state_dict()}, ema)
    x = torch.randn(2, 3, 32, 32)
    for path in (wrapped, ema):
        model = create_model(backbone="resnet18", num_classes=5, resolutions=[32], pretrained=str(path))
        with torch.no_grad():
            torch.testing.assert_close(_features_and_logits(model, x, 32)[1], reference(x))
        assert loaded_weights(model) == {"weights": str(path), "classifier": "loaded (5 classes)"}


def test_a_checkpoint_that_does_not_fit_is_one_line(tmp_path):
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": timm.create_model("test_resnet").state_dict()}, path)
    with pytest.raises(UserError) as err:
        create_model(backbone="resnet18", resolutions=[32], pretrained=str(path))
    message = str(err.value)
    assert "\n" not in message and len(message) < 400
    assert message.startswith(f"model.pretrained: {path} does not fit backbone 'resnet18': ")
    assert "of the 120 tensors are not in the file (first: this backbone's 'stem.0.weight')" in message
    assert "have no place (first: 'conv1.0.weight')" in message


def test_a_run_with_a_tag_in_its_backbone_name_loads_offline_without_the_weights(offline, tmp_path):
    """Rebuilding a trained run's network (eval, export, deploy) starts from nothing: its own weights follow."""
    recipe = tiny_recipe_dict(tmp_path, model={"backbone": f"timm/{TIMM}", "num_classes": 4})
    task, model = build_from_meta({"recipe": recipe}, "rsvision.json")
    assert loaded_weights(model) is None and "pretrained" not in task.describe()


def test_a_backbone_without_library_weights_takes_a_file_only():
    with pytest.raises(UserError, match=r"^model\.pretrained: backbone 'resnet8' has no library weights to name by True; give the path of a weights file"):
        create_model(backbone="resnet8", resolutions=[16], pretrained=True)
