"""Learning-rate schedules, evaluated per iteration as in the paper (§4.1).

``cosine`` anneals from the base rate to 0 (ResNets, MobileNetV2); ``step`` multiplies it
by ``gamma`` at each milestone epoch (LQ-Nets: 30, 60, 85, 95, 105); ``warmup_epochs``
ramps linearly from 0 first.
"""

from __future__ import annotations

import bisect
import math

from rsvision.recipe import TrainConfig


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based)."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.schedule == "step":
        epoch = step / steps_per_epoch
        return cfg.lr * cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), epoch)
    return cfg.lr
