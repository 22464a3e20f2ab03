"""Joint image + mask transforms for segmentation (RS-Nets App. B).

Training: ONE augmentation per sample, applied to image and mask together: the image is
first squashed to the largest resolution r_1 (the view evaluation uses), randomly
rescaled, padded (mask with the void label) and cropped to r_1 x r_1, and flipped. The
crop is then resized (bilinear) to every training resolution; the label map stays at
r_1, where the upsampled logits of every resolution meet the loss.

Evaluation at r: the whole image resized to r x r; the label map keeps the image's
original size, since the logits are resized back to it before scoring.
"""

from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from rsvision.data.transforms import IMAGENET_MEAN, IMAGENET_STD

VOID = 255


def to_tensor(image: np.ndarray, normalize: bool = True) -> torch.Tensor:
    """``HxWx3`` uint8 → ``3xHxW`` float in [0, 1], ImageNet-normalized when ``normalize``."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
    if normalize:
        x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x


def resize_image(x: torch.Tensor, size: int) -> torch.Tensor:
    """``3xHxW`` → ``3 x size x size``, bilinear with antialiasing (as the classification inputs)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


class JointTrainTransform:
    """``(image, mask)`` → ``{"images": [S tensors, largest first], "target": LongTensor [r_1, r_1]}``."""

    def __init__(
        self,
        resolutions: Sequence[int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        normalize: bool = True,
    ) -> None:
        self.resolutions = sorted(resolutions, reverse=True)
        r1 = self.resolutions[0]
        self.normalize = normalize
        self.augment = A.Compose(
            [
                A.Resize(r1, r1, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
                A.RandomScale(
                    scale_limit=(scale_range[0] - 1, scale_range[1] - 1),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    p=1.0,
                ),
                A.PadIfNeeded(r1, r1, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=VOID),
                A.RandomCrop(r1, r1),
                A.HorizontalFlip(p=0.5),
            ]
        )

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict:
        # Albumentations keeps its own generator; drawing its seed from torch makes the
        # augmentation follow the run's seed and differ between DataLoader workers.
        self.augment.set_random_seed(int(torch.randint(0, 2**31 - 1, ())))
        out = self.augment(image=image, mask=mask.astype(np.int32))
        crop = to_tensor(out["image"], self.normalize)
        return {
            "images": [resize_image(crop, r) for r in self.resolutions],
            "target": torch.from_numpy(out["mask"].astype(np.int64)),
        }


class EvalTransform:
    """``(image, mask)`` at resolution r → ``{"image": 3 x r x r, "target": original-size mask}``."""

    def __init__(self, resolution: int, normalize: bool = True) -> None:
        self.resolution, self.normalize = resolution, normalize

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict:
        return {
            "image": resize_image(to_tensor(image, self.normalize), self.resolution),
            "target": torch.from_numpy(np.asarray(mask, dtype=np.int64)),
        }
