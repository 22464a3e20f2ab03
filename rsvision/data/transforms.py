"""Multi-resolution inputs (RS-Nets §4.1) and the input format a network expects.

Training: ONE random-resized crop and ONE horizontal flip per image, then that crop at
every training resolution (bilinear, antialiased), so the S inputs differ only in
resolution (the "single crop" of Table 6). Two ways to make the S sizes:

- ``resize: batch`` (default): each worker resizes the crop to the largest resolution;
  :func:`batch_resolutions` resizes the whole batch to the others on the training device;
- ``resize: sample``: each worker resizes the crop to every resolution (S resizes per image).

``multi_crop=True`` draws a crop and a flip per resolution instead (the Table 6 ablation;
per-sample only). Either way the workers hand over uint8 crops and
:func:`batch_resolutions` normalises them on the training device, which saves a worker
17-25 % of its CPU time per 500x375 JPEG: the normalisation, and float32 batches of 4x the
bytes collated into shared memory and copied to the device (docs/benchmarks.md, "Loader
cost"). The values are those of normalising in the worker: the same operations on the
same uint8 crop, in the same order.

Validation at r: shorter side to ``int(r / 0.875)``, then a centre crop of r, each
resolution resized from the decoded image, which is decoded once for all of them; the
evaluation views hand over normalised float tensors (every consumer of evaluation batches,
calibration and export included, takes them as they are).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from rsvision.constants import IMAGENET_MEAN, IMAGENET_STD, val_resize

BILINEAR = InterpolationMode.BILINEAR
#: Full scale of the image modes that are not 8-bit: integer modes hold 16-bit values ("I" is how
#: PIL opens 16-bit PNGs and TIFFs, clipped at 65535), floating-point ones [0, 1] like float tensors.
_FULL_SCALE = {"I": 65535.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "F": 1.0}


def eight_bit(image: Any) -> Any:
    """``image`` with 8 bits per channel, each value on the [0, 1] scale of its own type.

    PIL images in a 16-bit, 32-bit integer or float mode become ``"L"`` images and uint16
    arrays uint8 arrays (``round(v / 65535 * 255)``: a 16-bit image and its 8-bit twin give
    the same values); anything else is returned as it is. Every image the toolkit reads
    passes here, so inputs are uint8 before they are resized.
    """
    if isinstance(image, Image.Image) and image.mode in _FULL_SCALE:
        values, scale = np.asarray(image, dtype=np.float64), _FULL_SCALE[image.mode]
    elif isinstance(image, np.ndarray) and image.dtype == np.uint16:
        values, scale = image.astype(np.float64), _FULL_SCALE["I;16"]
    else:
        return image
    out = np.clip(np.rint(values * (255 / scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(out) if isinstance(image, Image.Image) else out


def luma(x: torch.Tensor) -> torch.Tensor:
    """One channel from a ``3xHxW`` RGB tensor: ITU-R 601-2 luma, L = 0.299 R + 0.587 G + 0.114 B.

    uint8 images use Pillow's integer form, ``(19595 R + 38470 G + 7471 B + 32768) >> 16``, whose
    weights sum to 2^16, so a grey image stored as RGB (R = G = B) keeps its values exactly
    (torchvision's float weights sum to 0.9999 and truncate, turning every grey value v > 0 into v - 1).
    """
    if x.dtype != torch.uint8:
        return TF.rgb_to_grayscale(x)
    r, g, b = x.to(torch.int32).unbind(-3)
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).to(torch.uint8).unsqueeze(-3)


@dataclass(frozen=True)
class InputFormat:
    """What a network takes: ``channels`` and the normalisation ``(x - mean) / std`` of [0, 1] inputs.

    ``mean``/``std`` ``None`` means inputs stay in [0, 1]. Stored in a run's metadata, so
    evaluation, prediction and export feed the network as training did.
    """

    channels: int = 3
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "InputFormat":
        if not data:
            return cls()
        mean, std = data.get("mean"), data.get("std")
        return cls(int(data.get("channels", 3)), None if mean is None else tuple(mean), None if std is None else tuple(std))

    def as_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "mean": self.mean, "std": self.std}

    def image(self, image: Any) -> torch.Tensor:
        """A PIL image, ``HxW``/``HxWxC`` array or ``CxHxW`` tensor as a uint8 tensor of ``channels``
        (16-bit and float images through :func:`eight_bit`)."""
        if type(image) is torch.Tensor and image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == self.channels:
            return image  # already in this format (e.g. decoded once by data.cache)
        image = eight_bit(image)
        if self.channels == 1 and isinstance(image, Image.Image) and image.mode == "RGB":
            image = image.convert("L")  # Pillow's integer luma: the values of luma(), without the RGB tensor
        if isinstance(image, np.ndarray) and image.ndim == 2:
            image = image[..., None]
        x = TF.to_image(image).as_subclass(torch.Tensor)
        if x.shape[0] == self.channels:
            return x
        if x.shape[0] == 1:
            return x.expand(self.channels, -1, -1)
        if x.shape[0] == 3 and self.channels == 1:
            return luma(x)
        raise ValueError(f"cannot turn a {x.shape[0]}-channel image into {self.channels} channels")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float) ``[..., C, H, W]`` → normalised float."""
        fresh = x.dtype == torch.uint8
        x = x.float().div_(255) if fresh else x.float()
        if self.mean is None:
            return x
        mean, std = (t.to(x.device, x.dtype) for t in self._statistics)
        return x.sub_(mean).div_(std) if fresh else (x - mean) / std

    @cached_property
    def _statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and ``std`` as ``[C, 1, 1]`` tensors, made once."""
        return torch.tensor(self.mean).view(-1, 1, 1), torch.tensor(self.std).view(-1, 1, 1)

    def tensor(self, image: Any) -> torch.Tensor:
        """Any image → the normalised float tensor the network takes (at its own size)."""
        return self.normalize(self.image(image))


def resize(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear, antialiased resize of ``[..., C, H, W]`` (uint8 or float) to ``size``."""
    size = [size, size] if isinstance(size, int) else list(size)
    if list(x.shape[-2:]) == size:
        return x
    return TF.resize(x, size, interpolation=BILINEAR, antialias=True)


def batch_resolutions(batch: dict[str, Any], resolutions: Sequence[int], input_format: InputFormat) -> list[torch.Tensor]:
    """The network inputs of a training batch at ``resolutions``, in that order, on the batch's device.

    ``batch["image"]`` (the crops at the largest resolution) is resized to each resolution;
    ``batch["images"]`` (one tensor per training resolution, resized in the workers) gives
    the tensor of each size. uint8 tensors, which the training transforms hand over, are
    normalised here with ``input_format``; float tensors are taken as network inputs already
    (a task whose workers normalise). The batch is normalised once at r_1 and then resized:
    an antialiased bilinear resize takes convex combinations within each channel, so
    ``resize((x - mean) / std) = (resize(x) - mean) / std`` up to float rounding, and this
    order normalises r_1^2 pixels per image instead of r_1^2 + ... + r_S^2.
    """

    def network_input(x: torch.Tensor) -> torch.Tensor:
        return input_format.normalize(x) if x.dtype == torch.uint8 else x

    if "images" in batch:
        by_size = {x.shape[-1]: x for x in batch["images"]}
        missing = [r for r in resolutions if r not in by_size]
        if missing:
            raise ValueError(f"the batch holds images of sizes {sorted(by_size, reverse=True)}, not {missing}")
        return [network_input(by_size[r]) for r in resolutions]
    x = network_input(batch["image"])
    return [x if x.shape[-1] == r else F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True) for r in resolutions]


class MultiResolutionTransform:
    """Image → ``{"image": uint8 crop at r_1}`` (batch resizing) or ``{"images": [S uint8 crops]}``,
    one crop and flip; :func:`batch_resolutions` makes the network inputs from them.

    With ``crop_on_batch`` the image is handed over whole with its drawn crop and flip
    (``{"image": uint8 image, "crop": (top, left, h, w, flip)}``, the same draws as
    :meth:`crop_and_flip`), and :func:`crop_batch` crops the batch at once.
    """

    def __init__(
        self,
        resolutions: Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        multi_crop: bool = False,
        input_format: InputFormat = InputFormat(),
        per_sample: bool = False,
        crop_on_batch: bool = False,
    ) -> None:
        self.resolutions = sorted(resolutions, reverse=True)
        self.scale, self.ratio, self.multi_crop = scale, ratio, multi_crop
        self.input_format = input_format
        self.per_sample = per_sample or multi_crop
        self.crop_on_batch = crop_on_batch and not self.per_sample

    def crop_box(self, x: torch.Tensor) -> torch.Tensor:
        """One random-resized crop and flip of ``x``, drawn: ``(top, left, h, w, flip)``."""
        top, left, h, w = v2.RandomResizedCrop.get_params(x, self.scale, self.ratio)
        return torch.tensor([top, left, h, w, int(torch.rand(()) < 0.5)])

    def crop_and_flip(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` cut to the box of :meth:`crop_box` and flipped where drawn."""
        top, left, h, w, flip = self.crop_box(x).tolist()
        crop = x[..., top : top + h, left : left + w]
        return crop.flip(-1) if flip else crop

    def __call__(self, image: Any) -> dict[str, Any]:
        x = self.input_format.image(image)
        if self.crop_on_batch:
            return {"image": x, "crop": self.crop_box(x)}
        crop = self.crop_and_flip(x)
        if not self.per_sample:
            return {"image": resize(crop, self.resolutions[0])}
        out = []
        for r in self.resolutions:
            if self.multi_crop and out:
                crop = self.crop_and_flip(x)
            out.append(resize(crop, r))
        return {"images": out}


def crop_batch(images: torch.Tensor, crops: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images ``[B, C, H, W]`` cropped to their boxes ``crops`` (``[B, 5]``: top, left, h, w,
    flip, from :meth:`MultiResolutionTransform.crop_box`), resized to ``size`` x ``size`` and
    flipped where drawn, as uint8, in one call.

    ``torchvision.ops.roi_align`` with ``aligned=True`` samples each output pixel bilinearly at
    its centre mapped into the box, the point an ``align_corners=False`` resize of the crop
    reads; a box wider than ``size`` averages ``ceil(w / size)`` samples per output pixel and
    axis (an antialiasing filter). The crop distribution is the per-sample path's: the same
    draws; only the interpolation near the box edges and the antialiasing filter differ.
    """
    top, left, h, w, flip = crops.to(images.device).unbind(1)
    index = torch.arange(len(images), device=images.device)
    boxes = torch.stack([index, left, top, left + w, top + h], 1).float()
    out = roi_align(images.float(), boxes, output_size=size, aligned=True).round_().clamp_(0, 255).to(torch.uint8)
    flipped = flip.bool()
    out[flipped] = out[flipped].flip(-1)
    return out


class EvalTransform:
    """Image → ``{"images": [one per resolution]}``: shorter side to int(r / 0.875), centre crop r (§4.1)."""

    def __init__(self, resolutions: Sequence[int], input_format: InputFormat = InputFormat()) -> None:
        self.resolutions = list(resolutions)
        self.input_format = input_format

    def one(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """``x`` (``[..., C, H, W]``, one image or a batch of one size) at resolution ``r``."""
        resized = TF.resize(x, val_resize(r), interpolation=BILINEAR, antialias=True)
        return self.input_format.normalize(TF.center_crop(resized, [r, r]))

    def __call__(self, image: Any) -> dict[str, Any]:
        x = self.input_format.image(image)
        return {"images": [self.one(x, r) for r in self.resolutions]}

    def many(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        """``[self(image) for image in images]``, with images of one size resized as one batch
        (each image's result is the same as alone)."""
        xs = [self.input_format.image(image) for image in images]
        if len({x.shape for x in xs}) > 1:
            return [{"images": [self.one(x, r) for r in self.resolutions]} for x in xs]
        per_resolution = [self.one(torch.stack(xs), r).unbind(0) for r in self.resolutions]
        return [{"images": list(sample)} for sample in zip(*per_resolution)]
