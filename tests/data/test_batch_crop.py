"""``data.crop: batch``: each image's crop drawn in the loader, the batch cut at once."""

import pytest
import torch
import torch.nn.functional as F
from rsvision.tasks.classification import ClassificationTask
from tests.conftest import tiny_recipe_dict

from rsvision.data.sampling import EpochSeeded
from rsvision.data.transforms import InputFormat, MultiResolutionTransform, crop_batch
from rsvision.errors import UserError
from rsvision.recipe import validate_recipe


def test_a_whole_box_at_its_own_size_is_the_image_and_flips():
    images = torch.arange(2 * 16, dtype=torch.uint8).view(2, 1, 4, 4)
    crops = torch.tensor([[0, 0, 4, 4, 0], [0, 0, 4, 4, 1]])
    out = crop_batch(images, crops, 4)
    assert out.dtype == torch.uint8
    assert torch.equal(out[0], images[0]) and torch.equal(out[1], images[1].flip(-1))


def test_a_box_at_its_own_size_is_the_sub_block():
    images = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6)
    out = crop_batch(images, torch.tensor([[1, 2, 3, 3, 0]]), 3)  # rows 1..3, columns 2..4
    assert torch.equal(out[0, 0], images[0, 0, 1:4, 2:5])


def test_inside_the_box_it_reads_what_a_resize_of_the_crop_reads():
    """Upsampling a 2x2 box to 4x4: output pixel centres map to 0.25 and 0.75 inside the box
    (align_corners=False); at the border the resize clamps to the crop, the box reads its neighbours."""
    images = (torch.arange(36) * 7 % 251).to(torch.uint8).view(1, 1, 6, 6)
    out = crop_batch(images, torch.tensor([[2, 2, 2, 2, 0]]), 4)
    resized = F.interpolate(images[..., 2:4, 2:4].float(), size=(4, 4), mode="bilinear", align_corners=False).round()
    assert torch.equal(out[0, 0, 1:3, 1:3].float(), resized[0, 0, 1:3, 1:3])


def test_the_drawn_box_is_the_per_sample_crop():
    transform = MultiResolutionTransform([8, 6], (0.3, 1.0), input_format=InputFormat(1, None, None))
    x = (torch.arange(100) * 13 % 256).to(torch.uint8).view(1, 10, 10)
    for seed in range(20):
        torch.manual_seed(seed)
        crop = transform.crop_and_flip(x)
        torch.manual_seed(seed)
        top, left, h, w, flip = transform.crop_box(x).tolist()
        expected = x[..., top : top + h, left : left + w]
        assert torch.equal(crop, expected.flip(-1) if flip else expected)


def _task(tmp_path, **data):
    recipe = tiny_recipe_dict(tmp_path, train={"epochs": 2})
    recipe["data"].update(data)
    return ClassificationTask(validate_recipe(recipe, "test"))


def test_auto_cuts_the_batch_where_images_are_decoded_once_and_of_one_size(tmp_path):
    task = _task(tmp_path)
    train = EpochSeeded(task.train_dataset(), seed=0)
    assert task.crop_reason == "data.crop: auto -> batch"
    batch = task.collate(train.__getitems__(list(range(4))))
    top = max(task.resolutions)
    assert batch["image"].shape == (4, 3, top, top) and batch["image"].dtype == torch.uint8
    assert batch["target"].dtype == torch.int64 and batch["target"].shape == (4,)


def test_auto_cuts_per_sample_otherwise_and_batch_says_why_it_cannot(tmp_path):
    task = _task(tmp_path, cache="none")
    task.train_dataset()
    assert task.crop_reason == "data.crop: auto -> sample: the training images are not decoded once (data.cache: none)"
    with pytest.raises(UserError, match="data.crop: batch needs training images decoded once and of one size; the training"):
        _task(tmp_path, cache="none", crop="batch").train_dataset()
    assert _task(tmp_path, crop="sample").train_dataset() is not None
