"""Multi-resolution transforms (RS-Nets §4.1).

Training: ONE random-resized crop and ONE horizontal flip per image, then that crop
resized (bilinear, antialiased) to every training resolution, so the S inputs differ only
in resolution (the "single-crop" of Table 6). ``multi_crop=True`` draws a crop and a flip
per resolution instead (the ablation). Validation at r: shorter side to r / 0.875, then a
centre crop of r.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VAL_CROP_FRACTION = 0.875


def _to_float(normalize: bool) -> v2.Transform:
    steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)


class MultiResolutionTransform:
    """PIL image → list of S tensors, largest resolution first, all from one crop and flip."""

    def __init__(
        self,
        resolutions: Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        multi_crop: bool = False,
        normalize: bool = True,
    ) -> None:
        self.resolutions = sorted(resolutions, reverse=True)
        self.scale, self.ratio, self.multi_crop = scale, ratio, multi_crop
        self.to_float = _to_float(normalize)

    def _crop_flip(self, image):
        top, left, h, w = v2.RandomResizedCrop.get_params(image, self.scale, self.ratio)
        crop = TF.crop(image, top, left, h, w)
        return TF.horizontal_flip(crop) if torch.rand(()) < 0.5 else crop

    def __call__(self, image) -> list[torch.Tensor]:
        crop = self._crop_flip(image)
        out = []
        for r in self.resolutions:
            if self.multi_crop and out:
                crop = self._crop_flip(image)
            resized = TF.resize(crop, [r, r], interpolation=InterpolationMode.BILINEAR, antialias=True)
            out.append(self.to_float(resized))
        return out


def eval_transform(resolution: int, normalize: bool = True) -> v2.Compose:
    """Shorter side to ``resolution / 0.875``, centre crop ``resolution`` (§4.1)."""
    return v2.Compose(
        [
            v2.Resize(int(round(resolution / VAL_CROP_FRACTION)), interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(resolution),
            _to_float(normalize),
        ]
    )
