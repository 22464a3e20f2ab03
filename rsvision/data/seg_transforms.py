"""Joint image + mask transforms for segmentation (RS-Nets App. B).

Training: ONE augmentation per sample, applied to image and mask together: the image is
first squashed to the largest resolution r_1 (the view evaluation uses), randomly
rescaled, padded (mask with the void label) and cropped to r_1 x r_1, and flipped. The
crop is then brought to every training resolution (bilinear): by the whole batch on the
training device (``resize: batch``, see :func:`rsvision.data.transforms.batch_resolutions`,
which also normalises the uint8 crop there) or per sample (``resize: sample``: the
normalised crop resized in the worker, as float tensors). The label map stays at r_1,
where the upsampled logits of every resolution meet the loss.

Evaluation at r: the whole image resized to r x r, for every resolution from one decode;
the label map keeps the image's original size, since the logits are resized back to it
before scoring.
"""

from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from rsvision.constants import VOID
from rsvision.data.transforms import InputFormat, resize


class JointTrainTransform:
    """``(image, mask)`` → ``{"image": uint8 r_1 crop}`` or ``{"images": [S normalised crops]}``,
    and ``"target"`` at r_1."""

    def __init__(
        self,
        resolutions: Sequence[int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        input_format: InputFormat = InputFormat(),
        per_sample: bool = False,
    ) -> None:
        self.resolutions = sorted(resolutions, reverse=True)
        r1 = self.resolutions[0]
        self.input_format, self.per_sample = input_format, per_sample
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
        # Albumentations keeps its own generator: seeding it from torch's makes the
        # augmentation a function of the sample's seed (rsvision.data.sampling).
        self.augment.set_random_seed(int(torch.randint(0, 2**31 - 1, ())))
        out = self.augment(image=image, mask=mask.astype(np.int32))
        crop = self.input_format.image(out["image"])
        target = torch.from_numpy(out["mask"].astype(np.int64))
        if not self.per_sample:
            return {"image": crop, "target": target}
        # Resized from the normalised float crop, as this path always did (resizing the uint8
        # crop would round each resolution to 8 bits).
        crop = self.input_format.normalize(crop)
        return {"images": [resize(crop, r) for r in self.resolutions], "target": target}


class JointEvalTransform:
    """``(image, mask)`` → ``{"images": [r x r per resolution], "target": original-size mask}``."""

    def __init__(self, resolutions: Sequence[int], input_format: InputFormat = InputFormat()) -> None:
        self.resolutions, self.input_format = list(resolutions), input_format

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict:
        x = self.input_format.tensor(image)
        return {
            "images": [resize(x, r) for r in self.resolutions],
            "target": torch.from_numpy(np.asarray(mask, dtype=np.int64)),
        }
