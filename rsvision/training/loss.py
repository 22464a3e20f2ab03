"""Multi-Resolution Ensemble Distillation (RS-Nets §3.3, Eq. 2 and 4-10).

``MREDLoss`` takes the logits ``z_1 .. z_S`` of one batch at S resolutions (largest
first) and returns ``L = L_cls + L_ens + L_dis`` (Eq. 9) with its parts. It owns the
ensemble scores ``alpha``; the ensemble weights are ``softmax(alpha)``.

Classification logits are ``[N, C]``; segmentation logits ``[N, C, H, W]`` (already
resized to one size by the task), where every per-pixel term is averaged over the
pixels whose label is not ``ignore_index``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsvision.constants import MRED_MODES


@dataclass
class MREDOutput:
    """The loss terms of one step; ``total`` is what ``backward()`` is called on."""

    total: torch.Tensor
    cls: torch.Tensor
    ens: torch.Tensor
    dis: torch.Tensor
    weights: torch.Tensor
    cls_per_resolution: list[torch.Tensor] = field(default_factory=list)
    ensemble_logits: torch.Tensor | None = None


def distillation_pairs(num_resolutions: int, mode: str) -> list[tuple[int, int]]:
    """The (teacher t, student s) index pairs of L_dis; index 0 is the ensemble p_0.

    ``full`` is Eq. 10 (every t < s, S(S+1)/2 pairs), ``vanilla`` Eq. 8 (t = 0 only),
    ``topdown`` and ``from_largest`` the Table 5 ablations (teachers p_1..p_{S-1}, or p_1).
    """
    S = num_resolutions
    if mode == "full":
        return [(t, s) for t in range(S) for s in range(t + 1, S + 1)]
    if mode == "vanilla":
        return [(0, s) for s in range(1, S + 1)]
    if mode == "topdown":
        return [(t, s) for t in range(1, S) for s in range(t + 1, S + 1)]
    if mode == "from_largest":
        return [(1, s) for s in range(2, S + 1)]
    if mode == "off":
        return []
    raise ValueError(f"unknown MRED mode '{mode}' (expected one of {', '.join(MRED_MODES)})")


def distillation_scale(num_resolutions: int, mode: str) -> float:
    """Rescale L_dis to the size of S terms, the range of L_cls: S / (number of pairs).

    This is 2/(S+1) for ``full`` (Eq. 10) and 1 for ``vanilla`` (Eq. 8); the ablations
    follow the same rule.
    """
    n = len(distillation_pairs(num_resolutions, mode))
    return num_resolutions / n if n else 0.0


def _valid_mask(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor | None:
    return None if ignore_index is None else target != ignore_index


def _mean_over(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp_min(1)


def kl_divergence(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """D_kl(p_t || p_s) of Eq. 7, averaged over samples (and valid pixels). No gradient to the teacher."""
    log_pt = F.log_softmax(teacher_logits.detach().float(), dim=1)
    log_ps = F.log_softmax(student_logits.float(), dim=1)
    per_item = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
    return _mean_over(per_item, mask)


class MREDLoss(nn.Module):
    """L = L_cls + L_ens + L_dis (Eq. 9) with learned ensemble scores ``alpha``.

    Args:
        num_resolutions: S.
        mode: ``full`` (Eq. 10), ``vanilla`` (Eq. 8), ``off`` (parallel training: no L_dis;
            L_ens still learns alpha), ``topdown`` or ``from_largest`` (Table 5 ablations).
        ignore_index: label excluded from every term (segmentation's void label).
        label_smoothing: beyond the paper, epsilon of label smoothing in L_cls only: each
            cross-entropy of Eq. 2 against (1 - epsilon) * one-hot + epsilon / C. L_ens (Eq. 6)
            and L_dis (Eq. 7-10) stay the paper's.
    """

    def __init__(self, num_resolutions: int, mode: str = "full", ignore_index: int | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_resolutions = num_resolutions
        self.mode = mode
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.alpha = nn.Parameter(torch.ones(num_resolutions))
        #: (teacher, student) pairs of L_dis, index 0 being the ensemble; the rescaling of L_dis.
        self.pairs = distillation_pairs(num_resolutions, mode)
        self.scale = distillation_scale(num_resolutions, mode)
        #: Whether z_0 teaches: then every logit must exist before any student term is known.
        self.ensemble_teaches = any(t == 0 for t, _ in self.pairs)

    def extra_repr(self) -> str:
        return f"num_resolutions={self.num_resolutions}, mode={self.mode!r}, ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}"

    @property
    def weights(self) -> torch.Tensor:
        """Ensemble weights softmax(alpha): non-negative, summing to one (§3.3)."""
        return self.alpha.softmax(dim=0)

    def ensemble(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """z_0 = sum_s softmax(alpha)_s * z_s with the z_s detached (Eq. 5)."""
        w = self.weights
        shape = (-1,) + (1,) * logits[0].dim()
        return (w.view(shape) * torch.stack([z.detach().float() for z in logits])).sum(dim=0)

    def ensemble_loss(self, logits: Sequence[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L_ens (Eq. 6) and z_0 (Eq. 5). The z_s enter detached, so only alpha gets its gradient."""
        ce_kwargs = {} if self.ignore_index is None else {"ignore_index": self.ignore_index}
        z0 = self.ensemble(logits)
        return F.cross_entropy(z0, target, **ce_kwargs), z0

    def student_loss(
        self, s: int, student: torch.Tensor, teachers: Sequence[torch.Tensor], target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The terms of L that reach the network through z_s (``s`` in 1..S): its L_cls term
        (Eq. 2) and the scaled D_kl(p_t || p_s) of every pair where it is the student (Eq. 7).

        ``teachers`` is ``[z_0, z_1, ..., z_S]`` (only the t < s entries are read, detached).
        Teachers carry no gradient, so L = L_ens + sum_s (ce_s + dis_s): the per-resolution
        split behind the low-memory training step. Returns ``(ce_s, dis_s)``.
        """
        ce_kwargs = {} if self.ignore_index is None else {"ignore_index": self.ignore_index}
        ce = F.cross_entropy(student.float(), target, label_smoothing=self.label_smoothing, **ce_kwargs)
        mask = _valid_mask(target, self.ignore_index)
        kl = [kl_divergence(teachers[t], student, mask) for t, u in self.pairs if u == s]
        dis = self.scale * torch.stack(kl).sum() if kl else ce.new_zeros(())
        return ce, dis

    def forward(self, logits: Sequence[torch.Tensor], target: torch.Tensor) -> MREDOutput:
        if len(logits) != self.num_resolutions:
            raise ValueError(f"expected {self.num_resolutions} logits (one per resolution), got {len(logits)}")
        shapes = {tuple(z.shape) for z in logits}
        if len(shapes) != 1:
            raise ValueError(f"all logits must share one shape (resize them first), got {sorted(shapes)}")
        loss_ens, z0 = self.ensemble_loss(logits, target)  # Eq. 5-6, reaches alpha only
        teachers = [z0, *logits]
        terms = [self.student_loss(s, z, teachers, target) for s, z in enumerate(logits, start=1)]
        cls_terms = [ce for ce, _ in terms]
        loss_cls = torch.stack(cls_terms).sum()  # Eq. 2
        loss_dis = torch.stack([dis for _, dis in terms]).sum()  # Eq. 8 / 10
        return MREDOutput(
            total=loss_cls + loss_ens + loss_dis,
            cls=loss_cls,
            ens=loss_ens,
            dis=loss_dis,
            weights=self.weights.detach(),
            cls_per_resolution=[t.detach() for t in cls_terms],
            ensemble_logits=z0.detach(),
        )
