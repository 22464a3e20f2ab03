"""create_model without a recipe, the backbone contract, one-channel inputs and picklable data."""

import pickle

import pytest
import torch
from conftest import tiny_recipe_dict
from torch import nn

import rsvision
from rsvision.errors import UserError
from rsvision.models import build_model
from rsvision.recipe import validate_recipe
from rsvision.registry import DATASETS, TASKS


def test_create_model_matches_the_recipe_builder(tmp_path):
    recipe = validate_recipe(tiny_recipe_dict(tmp_path))
    torch.manual_seed(0)
    from_recipe = build_model(recipe)
    torch.manual_seed(0)
    direct = rsvision.create_model(backbone="resnet8", num_classes=4, resolutions=[16, 12, 8], backbone_args={"width": 4})
    assert from_recipe.state_dict().keys() == direct.state_dict().keys()
    for key, value in from_recipe.state_dict().items():
        assert torch.equal(value, direct.state_dict()[key]), key
    assert direct.resolutions == [16, 12, 8] and [s.id for s in direct.subnets] == ["16", "12", "8"]


def test_one_channel_networks_take_grey_images():
    model = rsvision.create_model(backbone="resnet8", num_classes=3, resolutions=[16], in_channels=1, backbone_args={"width": 4})
    assert model.body.backbone.stem[0].in_channels == 1
    assert model.eval()(torch.zeros(2, 1, 16, 16)).shape == (2, 3)


def test_a_backbone_breaking_the_contract_is_named(clean_plugins):
    @rsvision.register_backbone("contractless")
    def contractless() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))

    with pytest.raises(UserError, match=r"backbone 'contractless' breaks the backbone contract: out_channels .* is None; output_stride .* is None"):
        rsvision.create_model(backbone="contractless", num_classes=2)


@pytest.mark.parametrize("task_name", ["cls", "seg"])
def test_datasets_pickle_for_spawned_workers(tmp_path, task_name):
    data = tiny_recipe_dict(tmp_path)
    if task_name == "seg":
        data.update(task="seg", resolutions=[32, 16])
        data["model"] = {"backbone": "resnet8", "head": "unet", "num_classes": 6}
        data["data"] = {"dataset": "synthetic_seg", "batch_size": 2, "args": {"train_size": 4, "val_size": 2}}
    task = TASKS.get(task_name)(validate_recipe(data))
    for dataset in (task.train_dataset(), task.eval_dataset([16, 12] if task_name == "cls" else [32, 16])):
        again = pickle.loads(pickle.dumps(dataset))
        torch.manual_seed(0)
        a = dataset[0]
        torch.manual_seed(0)
        b = again[0]
        assert a.keys() == b.keys()


def test_each_split_is_built_once(tmp_path, monkeypatch):
    built = []
    real_build = DATASETS.build

    def build(name, **kwargs):
        built.append(kwargs["split"])
        return real_build(name, **kwargs)

    monkeypatch.setattr(DATASETS, "build", build)
    task = TASKS.get("cls")(validate_recipe(tiny_recipe_dict(tmp_path)))
    task.train_dataset(), task.eval_dataset([16]), task.eval_dataset([12, 8]), task.class_names(), task.class_names()
    assert sorted(built) == ["train", "val"]


def test_cifar_resnet_he_initialisation():
    """``init: he`` draws every convolution from N(0, 2 / fan_out) (torchvision's ResNets);
    ``torch`` keeps PyTorch's default, uniform with std 1 / sqrt(3 fan_in)."""
    from rsvision.models.backbones import resnet14

    torch.manual_seed(0)
    he, default = resnet14(width=16, init="he"), resnet14(width=16)
    conv = he.layers[2][1].conv2  # 64 -> 64 channels, 3x3: fan_out = fan_in = 576
    assert abs(float(conv.weight.detach().std()) - (2 / 576) ** 0.5) < 0.002  # 0.0589
    assert abs(float(default.layers[2][1].conv2.weight.detach().std()) - 1 / (3 * 576) ** 0.5) < 0.001  # 0.0241
    with pytest.raises(ValueError, match="init must be"):
        resnet14(init="xavier")
