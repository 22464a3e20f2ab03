"""timm backbones (``backbone: timm/<name>``) and the registry's prefix families they use."""

import json
import math
import subprocess
import sys
import warnings

import pytest
import timm
import torch
from click.testing import CliRunner
from conftest import tiny_recipe_dict
from safetensors.torch import save_file
from timm.layers import BatchNormAct2d
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from rsvision.cli import cli
from rsvision.deploy.network import plain_subnet
from rsvision.engine import train
from rsvision.errors import RegistryError, UserError
from rsvision.models import check_backbone, create_model
from rsvision.nn.fold import fold_batchnorm
from rsvision.nn.switchable import (
    RSNet,
    at_resolution,
    materialize,
    subnet_status,
    switchable_bns,
)
from rsvision.recipe import validate_recipe
from rsvision.registry import BACKBONES, Registry, list_backbones
from rsvision.run.folder import load_artifact


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


SMALL = "resnet10t"  # a small timm ResNet (4.9M parameters) that timm has had for years


def test_timm_rsnet_trains_two_steps_and_its_run_folder_reloads(tmp_path):
    data = tiny_recipe_dict(tmp_path, train={"epochs": 1, "max_steps_per_epoch": 2})
    data["model"] = {"backbone": f"timm/{SMALL}", "num_classes": 4, "backbone_args": {"drop_rate": 0.1}}
    run_dir = train(validate_recipe(data), name="timm", quiet=True)
    (epoch,) = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert math.isfinite(epoch["loss"])
    model = load_artifact(run_dir).model
    for bn in switchable_bns(model):  # two training steps, every resolution in each
        assert sorted(bn.groups) == ["12", "16", "8"]
        assert all(int(g.num_batches_tracked) == 2 for g in bn.groups.values())
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(2, 3, 16, 16))).all()


def test_timm_backbone_contract_default_stages_and_arguments():
    backbone = BACKBONES.build(f"timm/{SMALL}")
    assert backbone.out_channels == [64, 128, 256, 512]
    assert backbone.reductions == [4, 8, 16, 32] and backbone.output_stride == 32
    features = backbone(torch.randn(2, 3, 64, 64))
    assert [f.shape[1:] for f in features] == [(c, 64 // r, 64 // r) for c, r in zip(backbone.out_channels, backbone.reductions)]
    check_backbone(backbone, f"timm/{SMALL}")
    picked = BACKBONES.build(f"timm/{SMALL}", out_indices=[1, 2], output_stride=8)
    assert picked.out_channels == [64, 128] and picked.reductions == [4, 8] and picked.output_stride == 8


def test_timm_batchnorms_become_switchable_and_match_plain_timm_at_a_trained_resolution():
    torch.manual_seed(0)
    model = create_model(backbone="timm/mobilenetv3_small_050", resolutions=[32, 24], num_classes=3).eval()
    timm_model = model.body.backbone.model
    bare = [n for n, m in timm_model.named_modules() if isinstance(m, nn.BatchNorm2d) and ".groups." not in n]
    assert not bare  # every BN (BatchNormAct2d included) is a group of a SwitchableBatchNorm
    groups = [bn.groups["32"] for bn in switchable_bns(timm_model)]
    assert groups and any(type(g) is BatchNormAct2d for g in groups)
    plain = timm.create_model("mobilenetv3_small_050", features_only=True).eval()
    plain.load_state_dict(_one_group(timm_model.state_dict(), "32"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), at_resolution(model, 32):
        got = model.body.backbone(x)
    torch.testing.assert_close(got, plain(x)[1:])


def _one_group(state: dict, subnet_id: str) -> dict:
    """A switchable state dict as the plain model's: ``x.groups.<id>.t`` → ``x.t``."""
    marker = f".groups.{subnet_id}."
    return {k.replace(marker, "."): v for k, v in state.items() if ".groups." not in k or marker in k}


def test_a_timm_model_without_batchnorm_is_refused():
    with pytest.raises(UserError, match=r"^model\.backbone: timm model 'convnext_atto' has no BatchNorm \(it normalizes with LayerNorm2d\)"):
        create_model(backbone="timm/convnext_atto")


def test_unknown_or_remote_timm_names():
    with pytest.raises(RegistryError, match=r"unknown timm model 'resnet19t'; did you mean .*'timm/resnet18'"):
        create_model(backbone="timm/resnet19t")
    with pytest.raises(UserError, match="names a model source"):
        create_model(backbone="timm/hf-hub:timm/resnet18.a1_in1k")
    with pytest.raises(UserError, match=r"model\.backbone_args: 'pretrained' is set by rsvision"):
        create_model(backbone=f"timm/{SMALL}", backbone_args={"pretrained": True})
    with pytest.raises(UserError, match=r"model\.backbone_args: timm model 'resnet10t' rejects its arguments"):
        create_model(backbone=f"timm/{SMALL}", backbone_args={"no_such_argument": 1})


@pytest.mark.parametrize("arch", [SMALL, "cspresnet50"])  # cspresnet50: timm renames stages.0 → stages_0
def test_timm_weights_from_a_local_file(tmp_path, arch):
    torch.manual_seed(0)
    full = timm.create_model(arch, num_classes=7).eval()  # a classifier timm would drop for features_only
    with torch.no_grad():
        for m in full.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    path = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    model = create_model(backbone=f"timm/{arch}", resolutions=[32], pretrained=str(path)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), at_resolution(model, 32):
        got = model.body.backbone(x)[-1]
        torch.testing.assert_close(got, full.forward_features(x))
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "bad.pth")  # a classifier alone
    with pytest.raises(UserError, match=f"does not fit backbone 'timm/{arch}': .* tensors of timm/{arch} are not in the file"):
        create_model(backbone=f"timm/{arch}", pretrained=str(tmp_path / "bad.pth"))


def test_timm_backbone_under_unet_at_64_px():
    model = create_model(backbone=f"timm/{SMALL}", head="unet", num_classes=5, resolutions=[64, 32], head_args={"decoder_channels": [32, 16, 16]})
    for size in (64, 32):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 5, size // 4, size // 4)


def test_timm_is_imported_on_first_use_and_listed():
    code = "import sys, rsvision, rsvision.models; assert 'timm' not in sys.modules, 'timm imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "timm/<any timm CNN>" in list_backbones()
    result = CliRunner().invoke(cli, ["list", "--json"])
    assert "timm/<any timm CNN>" in json.loads(result.output)["backbones"]


def test_sync_bn_keeps_the_activation_of_timm_norm_act_layers():
    from timm.layers import SyncBatchNormAct

    from rsvision.engine.trainer import synchronized_bn

    model = create_model(backbone="timm/mobilenetv3_small_050", num_classes=3, resolutions=[32, 16])
    acts = [m for m in model.modules() if isinstance(m, BatchNormAct2d)]
    assert acts and any(not isinstance(m.act, nn.Identity) for m in acts)
    synced = synchronized_bn(model)
    converted = [m for m in synced.modules() if isinstance(m, SyncBatchNormAct)]
    assert len(converted) == len(acts)
    assert [type(m.act) for m in converted] == [type(m.act) for m in acts]


class _BatchNormOps(TorchDispatchMode):
    """Counts the batch-norm kernels a forward pass runs."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += "batch_norm" in func.__name__
        return func(*args, **(kwargs or {}))


def _batch_norm_ops(network: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), _BatchNormOps() as ops:
        network(x)
    return ops.count


@pytest.mark.parametrize("arch, bns", [("efficientnet_b0", 48), ("regnetx_002", 44), ("mobilenetv3_small_100", 34)])
def test_deployed_timm_networks_run_no_batch_norm(arch, bns):
    """BatchNormAct2d folds into its convolution and keeps its activation; nothing is left to normalise."""
    torch.manual_seed(0)
    model = create_model(backbone=f"timm/{arch}", resolutions=[32, 24], num_classes=3).eval()
    with torch.no_grad():
        for bn in switchable_bns(model):
            for group in bn.groups.values():
                group.running_mean.uniform_(-0.2, 0.2)
                group.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 32, 32)
    unfolded = materialize(model, 32)
    assert _batch_norm_ops(unfolded, x) == bns
    plain = plain_subnet(model, 32)
    assert (plain.fold.folded, plain.fold.left) == (bns, 0)
    assert _batch_norm_ops(plain.network, x) == 0
    with torch.no_grad():
        torch.testing.assert_close(plain.network(x), unfolded(x), atol=1e-4, rtol=1e-4)


def test_bn_left_counts_the_batch_norm_ops_that_run():
    """A norm-act layer after no convolution stays, with its activation, and is counted."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), BatchNormAct2d(4, act_layer=nn.ReLU), BatchNormAct2d(4, act_layer=nn.ReLU)).eval()
    x = torch.randn(2, 3, 8, 8)
    folded, report = fold_batchnorm(net)
    assert (report.folded, report.left) == (1, 1) and _batch_norm_ops(folded, x) == 1
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x))
        assert folded(x).min() >= 0
