"""Built-in heads. Segmentation heads live with the segmentation task."""

from __future__ import annotations

import torch
from torch import nn

from rsvision.registry import register_head


class ClassifierHead(nn.Module):
    """Global average pooling → dropout → linear, on the deepest backbone feature (§3.1)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(features[-1]), 1)))


@register_head("classifier")
def classifier(*, backbone: nn.Module, num_classes: int, dropout: float = 0.0) -> nn.Module:
    return ClassifierHead(backbone.out_channels[-1], num_classes, dropout)
