"""Backbones and heads, registered by name, and :func:`create_model` (see :mod:`rsvision.models.factory`)."""

from rsvision.models import (  # noqa: F401  (register the built-ins
    backbones,
    heads,
    preact_resnet,
    refinenet,
    smp_heads,
    timm_backbones,
)
from rsvision.models.factory import (
    EncoderDecoder,
    build_model,
    check_backbone,
    create_model,
)
from rsvision.models.heads import ClassifierHead

__all__ = ["ClassifierHead", "EncoderDecoder", "build_model", "check_backbone", "create_model"]
