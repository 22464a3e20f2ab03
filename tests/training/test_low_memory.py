"""The low-memory step (train.memory: low) gives the standard step's gradients and moves
every BN group's running statistics (and the quantizer bases) exactly once."""

import copy
from contextlib import nullcontext

import pytest
import torch
from conftest import tiny_recipe_dict

from rsvision.models import build_model
from rsvision.nn.switchable import SwitchableBatchNorm
from rsvision.recipe import validate_recipe
from rsvision.registry import TASKS
from rsvision.training import MREDTraining, StepContext
from rsvision.training.rsnets import frozen_state

CTX = StepContext(lambda loss: loss.backward(), nullcontext)


def _batch(resolutions, n=6, classes=4):
    g = torch.Generator().manual_seed(0)
    return {"images": [torch.randn(n, 3, r, r, generator=g) for r in resolutions], "target": torch.randint(classes, (n,), generator=g)}


def _setup(tmp_path, mode="full", **overrides):
    recipe = validate_recipe(tiny_recipe_dict(tmp_path, mred={"mode": mode}, **overrides))
    torch.manual_seed(0)
    module = MREDTraining(build_model(recipe), TASKS.get("cls")(recipe), recipe)
    module.criterion.alpha.data = torch.tensor([0.3, -0.2, 0.1])
    return recipe, module.train()


def _run(low_memory, module, batch):
    module = copy.deepcopy(module)
    module.multi_backward = low_memory
    torch.manual_seed(1)
    out = module.step(batch, CTX)
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in module.named_buffers()}
    return out, grads, buffers, torch.rand(())


@pytest.mark.parametrize(
    "mode,overrides",
    [
        ("full", {}),
        ("topdown", {}),
        ("vanilla", {"model": {"backbone": "resnet8", "num_classes": 4, "backbone_args": {"width": 4}, "head_args": {"dropout": 0.5}}}),
        ("full", {"quant": {"method": "lq", "weight_bits": 2, "act_bits": 2}}),
    ],
    ids=["full", "topdown-no-prepass", "vanilla-dropout", "full-lq-quantized"],
)
def test_low_memory_step_matches_standard(tmp_path, mode, overrides):
    recipe, module = _setup(tmp_path, mode, **overrides)
    batch = _batch(recipe.resolutions)
    before = {n: b.clone() for n, b in module.named_buffers()}
    out_std, g_std, b_std, rng_std = _run(False, module, batch)
    out_low, g_low, b_low, rng_low = _run(True, module, batch)

    assert g_std.keys() == g_low.keys() and "criterion.alpha" in g_low
    for name in g_std:
        torch.testing.assert_close(g_low[name], g_std[name], rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(out_low.loss, out_std.loss.detach(), rtol=1e-5, atol=1e-6)
    assert out_low.log.keys() == out_std.log.keys()
    for name in b_std:  # running statistics / bases moved once, exactly as in the standard step
        torch.testing.assert_close(b_low[name], b_std[name], rtol=1e-5, atol=1e-6, msg=name)
    tracked = [n for n in before if n.endswith("num_batches_tracked")]
    assert tracked and all(int(b_low[n]) == int(before[n]) + 1 for n in tracked)
    assert rng_low == rng_std  # the random stream advanced as in the standard step


def test_teacher_pass_leaves_no_trace(tmp_path):
    _, module = _setup(tmp_path)
    bns = [m for m in module.modules() if isinstance(m, SwitchableBatchNorm)]
    before = [b.clone() for b in module.buffers()]
    x = _batch([16])["images"][0]
    with torch.no_grad(), frozen_state(module.model):
        module.model(x)
    assert bns and all(torch.equal(a, b) for a, b in zip(before, module.buffers()))
    assert module.training
