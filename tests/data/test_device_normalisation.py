"""Workers hand over uint8 crops; the training device normalises them after (or with) the batched resize.

The reference is the path the loader took before: normalise to float in the worker, resize
the float batch on the device. The new path must give the same network inputs.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from rsvision.data.seg_transforms import JointTrainTransform
from rsvision.data.transforms import InputFormat, MultiResolutionTransform, batch_resolutions, resize
from rsvision.recipe import validate_recipe
from rsvision.registry import TASKS
from conftest import tiny_recipe_dict

SIZES = [32, 24, 16]
IMAGENET = InputFormat()  # ImageNet's mean and std


def _images(n: int = 4) -> list[Image.Image]:
    g = np.random.default_rng(0)
    return [Image.fromarray(g.integers(0, 256, (40 + 3 * i, 50, 3), dtype=np.uint8)) for i in range(n)]


def _worker_float_path(transform: MultiResolutionTransform, image: Image.Image) -> list[torch.Tensor]:
    """The former worker output: the crop normalised to float32 in the worker (r_1 only for batch resizing)."""
    fmt = transform.input_format
    x = fmt.image(image)
    crop = transform.crop_and_flip(x)
    sizes = transform.resolutions if transform.per_sample else transform.resolutions[:1]
    return [fmt.normalize(resize(crop, r)) for r in sizes]


def test_training_transforms_hand_over_uint8_crops():
    image = _images(1)[0]
    sample = MultiResolutionTransform(SIZES, scale=(0.3, 1.0))(image)
    assert set(sample) == {"image"} and sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 32, 32)
    for kind in ({"per_sample": True}, {"multi_crop": True}):
        images = MultiResolutionTransform(SIZES, scale=(0.3, 1.0), **kind)(image)["images"]
        assert [(x.dtype, tuple(x.shape)) for x in images] == [(torch.uint8, (3, r, r)) for r in SIZES]
    seg = JointTrainTransform(SIZES)(np.asarray(image), np.zeros((40, 50), dtype=np.uint8))
    assert seg["image"].dtype == torch.uint8 and seg["image"].shape == (3, 32, 32)


def test_the_loader_batches_of_a_classification_run_are_uint8(tmp_path):
    task = TASKS.get("cls")(validate_recipe(tiny_recipe_dict(tmp_path)))
    batch = next(iter(DataLoader(task.train_dataset(), batch_size=4, collate_fn=task.collate)))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, 16, 16)
    inputs = batch_resolutions(batch, task.resolutions, task.input_format)
    assert [(x.dtype, x.shape[-1]) for x in inputs] == [(torch.float32, 16), (torch.float32, 12), (torch.float32, 8)]


@pytest.mark.parametrize("per_sample", [False, True], ids=["resize: batch", "resize: sample"])
def test_device_normalisation_equals_normalising_in_the_worker(per_sample):
    """Same seeds, same network inputs: the same operations run on the same uint8 crops."""
    transform = MultiResolutionTransform(SIZES, scale=(0.2, 1.0), input_format=IMAGENET, per_sample=per_sample)
    images = _images()
    torch.manual_seed(0)
    old = [_worker_float_path(transform, image) for image in images]
    torch.manual_seed(0)
    new = [transform(image) for image in images]
    key = "images" if per_sample else "image"
    batch = torch.utils.data.default_collate(new)
    got = batch_resolutions(batch, SIZES, IMAGENET)
    stacked = [torch.stack(xs) for xs in zip(*old)]  # per resolution (one tensor when batch resizing)
    if not per_sample:
        r1 = stacked[0]
        stacked = [r1] + [F.interpolate(r1, size=(r, r), mode="bilinear", align_corners=False, antialias=True) for r in SIZES[1:]]
    assert key in batch and [x.dtype for x in got] == [torch.float32] * 3
    assert all(torch.equal(g, e) for g, e in zip(got, stacked))  # on one device; across devices up to float rounding


def test_normalising_before_the_resize_equals_normalising_after_it():
    """An antialiased 2 -> 1 px resize averages the four pixels; (x - 0.5) / 0.25 commutes with it.

    Pixels 0, 51, 102, 255 are 0, 0.2, 0.4, 1 on [0, 1]: normalised -2, -1.2, -0.4, 2, mean -0.4;
    the mean pixel 0.4 normalised is -0.4 too.
    """
    fmt = InputFormat(1, (0.5,), (0.25,))
    x = torch.tensor([[[[0, 51], [102, 255]]]], dtype=torch.uint8)
    full, one = batch_resolutions({"image": x}, [2, 1], fmt)
    torch.testing.assert_close(full, torch.tensor([[[[-2.0, -1.2], [-0.4, 2.0]]]]))
    torch.testing.assert_close(one, torch.tensor([[[[-0.4]]]]))
    after = fmt.normalize(F.interpolate(x.float() / 255, size=(1, 1), mode="bilinear", align_corners=False, antialias=True))
    torch.testing.assert_close(one, after)


def test_normalisation_agrees_with_the_other_order_on_images():
    """Normalise-then-resize (what :func:`batch_resolutions` does) against resize-then-normalise."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    got = batch_resolutions({"image": x}, SIZES, IMAGENET)
    for r, g in zip(SIZES, got):
        resized = F.interpolate(x.float() / 255, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(g, IMAGENET.normalize(resized), rtol=0, atol=1e-5)


def test_float_batches_are_taken_as_network_inputs_and_sizes_are_picked_from_images():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    assert batch_resolutions({"image": x}, [32], IMAGENET)[0] is x
    per_size = [torch.randint(0, 256, (2, 3, r, r), dtype=torch.uint8) for r in SIZES]
    small, big = batch_resolutions({"images": per_size}, [16, 32], IMAGENET)
    assert torch.equal(small, IMAGENET.normalize(per_size[2])) and torch.equal(big, IMAGENET.normalize(per_size[0]))
    with pytest.raises(ValueError, match=r"sizes \[32, 24, 16\], not \[20\]"):
        batch_resolutions({"images": per_size}, [20], IMAGENET)


def test_segmentation_crops_normalised_on_the_device_equal_the_worker_path():
    image = np.asarray(_images(1)[0])
    mask = np.random.default_rng(1).integers(0, 5, image.shape[:2]).astype(np.uint8)
    transform = JointTrainTransform(SIZES)
    torch.manual_seed(3)
    sample = transform(image, mask)
    torch.manual_seed(3)
    per_sample = JointTrainTransform(SIZES, per_sample=True)(image, mask)  # still normalised in the worker
    expected = IMAGENET.normalize(sample["image"])
    got = batch_resolutions({"image": sample["image"][None]}, SIZES, IMAGENET)
    assert torch.equal(got[0][0], expected) and torch.equal(per_sample["images"][0], expected)
    assert torch.equal(per_sample["target"], sample["target"])
