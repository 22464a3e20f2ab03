"""MRED loss terms (Eq. 2, 5, 6, 8, 10) on hand-checkable numbers.

Two-class logits make every term a closed form. With z1=[2,0], z2=[0,0], z3=[0,2],
target 0 and alpha=0 (weights 1/3):
  CE:  log(1+e^-2)=0.126928, log 2=0.693147, log(1+e^2)=2.126928 → L_cls=2.947003
  z0 = [2/3, 2/3] → p0 uniform → L_ens = log 2 = 0.693147
  KL(u‖p1) = KL(u‖p3) = -log 2 + (0.126928 + 2.126928)/2 = 0.433781, KL(u‖p2) = 0
  KL(p1‖p2) = 0.880797·log(1.761594) + 0.119203·log(0.238406) = 0.327813
  KL(p1‖p3) = (0.880797 - 0.119203)·2 = 1.523188, KL(p2‖p3) = 0.433781
  vanilla (Eq. 8) = 0.867562; full (Eq. 10) = 2/(3+1)·3.152344 = 1.576172
"""

import math

import pytest
import torch

from rsvision.training.loss import MREDLoss, distillation_pairs, distillation_scale

Z = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2.0]])]
Y = torch.tensor([0])


def logits(requires_grad=False):
    return [z.clone().requires_grad_(requires_grad) for z in Z]


def test_s3_full_terms():
    out = MREDLoss(3, "full")(logits(), Y)
    assert out.cls.item() == pytest.approx(2.947003, abs=1e-5)
    assert out.ens.item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.dis.item() == pytest.approx(1.576172, abs=1e-5)
    assert out.total.item() == pytest.approx(2.947003 + 0.693147 + 1.576172, abs=1e-5)
    assert out.weights.tolist() == pytest.approx([1 / 3] * 3)


def test_s3_vanilla_and_off():
    assert MREDLoss(3, "vanilla")(logits(), Y).dis.item() == pytest.approx(0.867562, abs=1e-5)
    off = MREDLoss(3, "off")(logits(), Y)
    assert off.dis.item() == 0.0
    assert off.ens.item() == pytest.approx(math.log(2), abs=1e-6)  # alpha is still learned


def test_ablation_modes():
    # topdown: teachers p1, p2 → KL(p1‖p2)+KL(p1‖p3)+KL(p2‖p3), scaled by S/3 = 1
    assert MREDLoss(3, "topdown")(logits(), Y).dis.item() == pytest.approx(0.327813 + 1.523188 + 0.433781, abs=1e-5)
    # from_largest: teacher p1 only → (KL(p1‖p2)+KL(p1‖p3)) · S/2
    assert MREDLoss(3, "from_largest")(logits(), Y).dis.item() == pytest.approx(1.5 * (0.327813 + 1.523188), abs=1e-5)


def test_s1_terms():
    out = MREDLoss(1, "full")([torch.tensor([[1.0, 0.0]])], Y)
    ce = math.log(1 + math.exp(-1))  # 0.313262
    assert out.cls.item() == pytest.approx(ce, abs=1e-6)
    assert out.ens.item() == pytest.approx(ce, abs=1e-6)  # z0 = z1 when S = 1
    assert out.dis.item() == pytest.approx(0.0, abs=1e-7)  # KL(p0‖p1) = 0
    assert out.weights.tolist() == [1.0]


def test_full_mode_counts_and_factor():
    for S in (1, 3, 5):
        pairs = distillation_pairs(S, "full")
        assert len(pairs) == S * (S + 1) // 2
        assert all(t < s for t, s in pairs)
        assert distillation_scale(S, "full") == pytest.approx(2 / (S + 1))
    assert distillation_scale(3, "vanilla") == 1.0


def test_ensemble_weights_follow_alpha():
    crit = MREDLoss(3)
    with torch.no_grad():
        crit.alpha.copy_(torch.tensor([math.log(2.0), 0.0, 0.0]))  # softmax → [1/2, 1/4, 1/4]
    z0 = crit.ensemble(Z)
    assert z0[0].tolist() == pytest.approx([1.0, 0.5])  # 0.5·[2,0] + 0.25·[0,0] + 0.25·[0,2]


def test_ensemble_loss_reaches_alpha_only():
    crit = MREDLoss(3)
    z = logits(requires_grad=True)
    crit(z, Y).ens.backward()
    assert all(zi.grad is None or torch.all(zi.grad == 0) for zi in z)  # ∂L_ens/∂z_s = 0
    assert crit.alpha.grad is not None and crit.alpha.grad.abs().sum() > 0


def test_cls_and_dis_do_not_reach_alpha():
    crit = MREDLoss(3, "full")
    z = logits(requires_grad=True)
    out = crit(z, Y)
    (out.cls + out.dis).backward()
    assert crit.alpha.grad is None or torch.all(crit.alpha.grad == 0)  # ∂(L_cls+L_dis)/∂α = 0
    assert z[0].grad is None or z[0].grad.abs().sum() > 0


def test_teachers_are_detached():
    """In KL(p1‖p3) only the student p3 is trained: z1's gradient comes from CE and from
    being the student of p0 alone."""
    crit = MREDLoss(3, "full")
    z = logits(requires_grad=True)
    crit(z, Y).dis.backward()
    # z1 is a student only of p0 (uniform): grad = 0.5·(p1 - p0) = 0.5·[0.380797, -0.380797]
    assert z[0].grad[0].tolist() == pytest.approx([0.5 * 0.380797, -0.5 * 0.380797], abs=1e-5)


def test_segmentation_logits_ignore_void_pixels():
    """Per-pixel terms average over valid pixels; void pixels change nothing."""
    crit = MREDLoss(2, "full", ignore_index=255)
    a = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    b = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([[[0, 1], [255, 255]]])
    out = crit([a, b], target)
    # the same loss on only the two valid pixels, as a classification batch of 2
    flat = [z[0, :, 0, :].T for z in (a, b)]
    ref = MREDLoss(2, "full")(flat, torch.tensor([0, 1]))
    for name in ("cls", "ens", "dis", "total"):
        assert getattr(out, name).item() == pytest.approx(getattr(ref, name).item(), abs=1e-6)
    # void-pixel logits get no gradient
    a2 = a.clone().requires_grad_(True)
    crit([a2, b], target).total.backward()
    assert torch.all(a2.grad[0, :, 1, :] == 0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown MRED mode"):
        MREDLoss(3, "bogus")
    with pytest.raises(ValueError, match="expected 3 logits"):
        MREDLoss(3)(Z[:2], Y)
    with pytest.raises(ValueError, match="share one shape"):
        MREDLoss(2)([torch.zeros(1, 2), torch.zeros(1, 3)], Y)
