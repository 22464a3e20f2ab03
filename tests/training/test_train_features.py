"""Training features beyond the papers, each off by default: label smoothing in L_cls, a
validation split of one image folder, keeping the best epoch, an EMA of the weights, mixup."""

import math

import pytest
import torch
from conftest import tiny_recipe_dict

from rsvision.errors import UserError
from rsvision.recipe import validate_recipe
from rsvision.training.loss import MREDLoss


def test_label_smoothing_changes_l_cls_only():
    """C = 2, z = (ln 3, 0): p = (3/4, 1/4). With epsilon 0.2 the target is (0.9, 0.1), so
    L_cls = -(0.9 ln 3/4 + 0.1 ln 1/4) = 0.39755; L_ens keeps the hard label: -ln 3/4."""
    z = torch.tensor([[math.log(3.0), 0.0]])
    target = torch.tensor([0])
    out = MREDLoss(1, mode="off", label_smoothing=0.2)([z], target)
    assert out.cls.item() == pytest.approx(-(0.9 * math.log(0.75) + 0.1 * math.log(0.25)), abs=1e-6)
    assert out.cls.item() == pytest.approx(0.39755, abs=1e-5)
    assert out.ens.item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_label_smoothing_leaves_l_ens_and_l_dis_as_the_paper():
    torch.manual_seed(0)
    logits = [torch.randn(4, 5) for _ in range(3)]
    target = torch.tensor([0, 1, 2, 3])
    plain = MREDLoss(3, mode="full")(logits, target)
    smoothed = MREDLoss(3, mode="full", label_smoothing=0.1)(logits, target)
    assert torch.equal(plain.ens, smoothed.ens) and torch.equal(plain.dis, smoothed.dis)
    assert not torch.isclose(plain.cls, smoothed.cls)


def test_the_recipes_label_smoothing_reaches_the_criterion(tmp_path):
    from rsvision.registry import TASKS
    from rsvision.training import method_for

    recipe = validate_recipe(tiny_recipe_dict(tmp_path, train={"label_smoothing": 0.1}))
    task = TASKS.get(recipe.task)(recipe)
    method = method_for(recipe)(task.build_model(), task, recipe)
    assert method.criterion.label_smoothing == 0.1
    with pytest.raises(UserError, match="train.label_smoothing"):
        validate_recipe(tiny_recipe_dict(tmp_path, train={"label_smoothing": 1.0}))
