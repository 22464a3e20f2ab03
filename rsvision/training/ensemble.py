"""The alpha-ensemble of MRED (§3.3), as the training methods that learn it share it.

A method that learns the ensemble (RS-Nets' MRED, MutualNet with the ensemble teacher)
has ``self.criterion`` (an :class:`~rsvision.training.loss.MREDLoss`, or None without one)
and ``self.resolutions``. It then gets the ``ensemble`` evaluation row (Eq. 5: the
softmax(alpha)-weighted sum of the S resolutions' logits), an ``alpha`` column on the rows
of the resolutions alpha weighs, alpha saved with the weights under :data:`ALPHA_KEY`, and
the epoch line's alpha.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

#: Learned ensemble scores of MRED, under this key in every file format.
ALPHA_KEY = "mred.alpha"


class AlphaEnsemble:
    """Mixin for :class:`~rsvision.training.base.TrainingMethod` subclasses with an MRED criterion."""

    criterion: Any
    resolutions: list[int]
    #: Method columns of the results table: row key → format.
    columns = {"alpha": ".3f"}

    def weighs(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` is one of the S outputs alpha weighs (default: every resolution row)."""
        return True

    def combiners(self) -> dict[str, Callable[[list[torch.Tensor]], torch.Tensor]]:
        """The alpha-ensemble z_0 = sum_s softmax(alpha)_s z_s (Eq. 5) of the first S evaluated outputs."""
        if self.criterion is None:
            return {}
        S = len(self.resolutions)
        return {"ensemble": lambda logits: self.criterion.ensemble(logits[:S])}

    def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.criterion is None:
            return rows
        weights = dict(zip(self.resolutions, self.criterion.weights.detach().tolist()))
        return [{**row, "alpha": weights[row["resolution"]]} if row.get("resolution") in weights and self.weighs(row) else row for row in rows]

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.criterion is None else {ALPHA_KEY: self.criterion.alpha.detach()}

    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.criterion is not None and ALPHA_KEY in tensors:
            with torch.no_grad():
                self.criterion.alpha.copy_(tensors[ALPHA_KEY])

    def ensemble_description(self) -> dict[str, Any]:
        """``ensemble_weights`` for ``rsvision.json`` and the epoch log."""
        return {} if self.criterion is None else {"ensemble_weights": [round(float(w), 6) for w in self.criterion.weights.detach()]}

    def epoch_text(self, log: dict[str, Any]) -> str:
        """The method's part of the epoch line."""
        weights = log.get("ensemble_weights")
        return "alpha " + " ".join(f"{w:.2f}" for w in weights) if weights else ""
