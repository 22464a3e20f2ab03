"""segmentation_models_pytorch decoders as heads on rsvision backbones: ``deeplabv3plus``, ``fpn``, ``unet``.

smp decoders read an encoder's feature list ``[input, stride 2, stride 4, ..., stride 32]``
(encoder depth 5). Our backbones return the four stages at strides 4..32 (relative to
their first stage), so the two leading slots are filled with the first stage's feature:
the decoders used here never read those slots' content (UNet drops slot 0 and, with 3
blocks, stops at the stride-4 skip; FPN reads the last four; DeepLabV3+ reads slot 2
and the last; its
ASPP output is resized to the skip's size rather than by smp's fixed 4x). Logits come out at the first stage's stride, like RefineNet's. The
decoders' BatchNorms become switchable with the rest of the body.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsvision.errors import UserError
from rsvision.registry import register_head


class SmpHead(nn.Module):
    """An smp decoder and a classifier conv on the backbone's four stage features."""

    #: Stage features must halve exactly from stage to stage (FPN upsamples by fixed 2x
    #: steps): input sizes divisible by 32 for a stride-4..32 backbone.
    exact_halving = False

    def __init__(self, decoder: nn.Module, decoder_channels: int, num_classes: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.decoder = decoder
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size, padding=kernel_size // 2)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        first = features[0]
        if self.exact_halving and any(f.shape[-1] * 2**i != first.shape[-1] for i, f in enumerate(features)):
            sizes = "x".join(str(f.shape[-1]) for f in features)
            raise UserError(f"this head needs input sizes divisible by 32 (stage sizes {sizes} do not halve exactly)")
        return self.classifier(self.decoder([first, first, *features]))


class DeepLabV3PlusHead(SmpHead):
    """smp's DeepLabV3+ modules with the ASPP output resized to the stride-4 skip's size.

    smp's forward upsamples by a fixed 4x (a stride-16 encoder); ours ends at stride 32
    and, for inputs that are not multiples of 32, at a size no fixed factor reaches.
    """

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        d = self.decoder
        skip = d.block1(features[0])
        context = F.interpolate(d.aspp(features[-1]), size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(d.block2(torch.cat([context, skip], dim=1)))


def _encoder_channels(backbone: nn.Module, head: str) -> list[int]:
    channels = list(backbone.out_channels)
    if len(channels) != 4:
        raise UserError(f"model.head '{head}' needs a backbone with 4 stages (strides 4..32), this one has {len(channels)}")
    return [channels[0], channels[0], *channels]


@register_head("deeplabv3plus")
def deeplabv3plus(
    *,
    backbone: nn.Module,
    num_classes: int,
    channels: int = 256,
    atrous_rates: Sequence[int] = (3, 6, 9),
    separable: bool = True,
    dropout: float = 0.5,
) -> nn.Module:
    """DeepLabV3+ (Chen et al. 2018): ASPP on the stride-32 stage, fused with the stride-4 stage.

    The backbone is not dilated (output stride 32, not 16), so the atrous rates default to
    half of the OS-16 rates (6, 12, 18) and the ASPP output is upsampled 8x, not 4x.
    """
    from segmentation_models_pytorch.decoders.deeplabv3.decoder import (
        DeepLabV3PlusDecoder,
    )

    decoder = DeepLabV3PlusDecoder(
        encoder_channels=_encoder_channels(backbone, "deeplabv3plus"),
        encoder_depth=5,
        out_channels=channels,
        atrous_rates=tuple(atrous_rates),
        output_stride=16,
        aspp_separable=separable,
        aspp_dropout=dropout,
    )
    return DeepLabV3PlusHead(decoder, channels, num_classes)


@register_head("fpn")
def fpn(
    *,
    backbone: nn.Module,
    num_classes: int,
    pyramid_channels: int = 256,
    segmentation_channels: int = 128,
    dropout: float = 0.2,
) -> nn.Module:
    """FPN (Kirillov et al. 2019 panoptic-FPN head): pyramid on strides 4..32, merged at stride 4."""
    from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder

    if segmentation_channels % 32:
        raise UserError(f"model.head_args.segmentation_channels: must be a multiple of 32 (GroupNorm), got {segmentation_channels}")
    decoder = FPNDecoder(
        encoder_channels=_encoder_channels(backbone, "fpn"),
        encoder_depth=5,
        pyramid_channels=pyramid_channels,
        segmentation_channels=segmentation_channels,
        dropout=dropout,
        merge_policy="add",
    )
    head = SmpHead(decoder, segmentation_channels, num_classes)
    head.exact_halving = True
    return head


@register_head("unet")
def unet(
    *,
    backbone: nn.Module,
    num_classes: int,
    decoder_channels: Sequence[int] = (256, 128, 64),
) -> nn.Module:
    """U-Net decoder (Ronneberger et al. 2015): three upsampling blocks with skips, stride 32 → 4."""
    from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

    if len(decoder_channels) != 3:
        raise UserError(f"model.head_args.decoder_channels: expected 3 widths (strides 16, 8, 4), got {list(decoder_channels)}")
    decoder = UnetDecoder(
        encoder_channels=_encoder_channels(backbone, "unet"),
        decoder_channels=list(decoder_channels),
        n_blocks=3,
    )
    return SmpHead(decoder, decoder_channels[-1], num_classes, kernel_size=3)
