"""Multi-resolution data (§4.1): one crop and one flip shared by all resolutions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from rsvision.constants import val_resize
from rsvision.data.datasets import SyntheticShapes, synthetic
from rsvision.data.mapped import MappedDataset
from rsvision.data.sampling import EpochSeeded
from rsvision.data.transforms import (
    EvalTransform,
    InputFormat,
    MultiResolutionTransform,
    batch_resolutions,
)

RAW = InputFormat(3, None, None)  # [0, 1] inputs, no normalisation


def _image() -> Image.Image:
    """Left-to-right ramp in red, top-to-bottom in green, a blob in blue: flips and crops show."""
    h, w = 60, 80
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx / w, yy / h, ((xx - 20) ** 2 + (yy - 15) ** 2 < 80).astype(float)], -1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def _down(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def test_one_crop_and_one_flip_for_all_resolutions():
    transform = MultiResolutionTransform([32, 24, 16], scale=(0.2, 1.0), input_format=RAW, per_sample=True)
    image = _image()
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        big, mid, small = (RAW.normalize(x) for x in transform(image)["images"])
        assert big.shape == (3, 32, 32) and mid.shape == (3, 24, 24) and small.shape == (3, 16, 16)
        # the same crop: the largest image downsized looks like the smallest one
        assert (_down(big, 16) - small).abs().mean() < 0.03
        assert (_down(mid, 16) - small).abs().mean() < 0.03
        # the same flip: the red ramp runs the same way at every resolution
        slopes = [torch.sign(x[0, :, -1].mean() - x[0, :, 0].mean()) for x in (big, mid, small)]
        assert len(set(s.item() for s in slopes)) == 1
        flips.add(slopes[0].item())
    assert flips == {-1.0, 1.0}  # both flipped and unflipped crops occurred


def test_multi_crop_draws_independent_crops():
    transform = MultiResolutionTransform([32, 16], scale=(0.1, 1.0), input_format=RAW, multi_crop=True)
    diffs = []
    for seed in range(8):
        torch.manual_seed(seed)
        big, small = (RAW.normalize(x) for x in transform(_image())["images"])
        diffs.append((_down(big, 16) - small).abs().mean().item())
    assert max(diffs) > 0.1


def test_eval_transform_resizes_then_centre_crops():
    (x,) = EvalTransform([32], RAW)(_image())["images"]
    assert x.shape == (3, 32, 32)
    # shorter side 60 → 36 = int(32 / 0.875), so the crop keeps 32/36 of the height, centred
    assert abs(x[1].mean().item() - 0.5) < 0.03


def test_validation_resize_truncates_as_the_protocol():
    """int(r / 0.875), not round(): they differ at 160, 96, 20, 12 (round gave 183, 110, 23, 14)."""
    from torchvision.transforms.v2 import functional as TF

    assert [val_resize(r) for r in (224, 160, 96, 20, 12)] == [256, 182, 109, 22, 13]
    ramp = np.tile(np.linspace(0, 255, 50).astype(np.uint8), (100, 1))[..., None].repeat(3, -1)  # 50 wide, 100 high
    (out,) = EvalTransform([12], RAW)(ramp)["images"]
    x = torch.from_numpy(ramp).permute(2, 0, 1)

    def protocol(short_side: int) -> torch.Tensor:
        return TF.center_crop(TF.resize(x, short_side, antialias=True), [12, 12]).float() / 255

    assert torch.equal(out, protocol(13))
    assert not torch.equal(out, protocol(14))


def _grey_images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (h, w), generator=g, dtype=torch.uint8).numpy() for h, w in sizes]


@pytest.mark.parametrize("sizes", [[(28, 28)] * 5, [(28, 28), (30, 24), (28, 28)]], ids=["one size", "mixed sizes"])
def test_evaluation_batches_equal_images_resized_one_at_a_time(sizes):
    """One pass: a batch of decoded images is resized per resolution at once, with the same result."""
    transform = EvalTransform([28, 20, 12], InputFormat(1, (0.3,), (0.35,)))
    images = _grey_images(sizes)
    batched = transform.many(images)
    for image, got in zip(images, batched):
        expected = transform(image)["images"]
        assert [g.shape for g in got["images"]] == [(1, 28, 28), (1, 20, 20), (1, 12, 12)]
        assert all(torch.equal(g, e) for g, e in zip(got["images"], expected))


def test_the_loader_fetches_labelled_evaluation_batches_at_once():
    from rsvision.tasks.classification import LabelledImage

    images = _grey_images([(28, 28)] * 6, seed=1)
    data = MappedDataset([(im, i % 3) for i, im in enumerate(images)], LabelledImage(EvalTransform([16, 8], InputFormat(1, None, None))))
    (batch,) = DataLoader(data, batch_size=6)
    assert batch["target"].tolist() == [0, 1, 2, 0, 1, 2]
    for i in range(6):
        assert all(torch.equal(b[i], e) for b, e in zip(batch["images"], data[i]["images"]))
    training = MappedDataset(data.base, LabelledImage(MultiResolutionTransform([16, 8], input_format=RAW)))
    assert training.__getitems__([0, 1])[1]["target"] == 1  # a transform without batches: one by one


def test_seeded_batches_equal_seeded_samples_and_leave_the_global_generators_alone():
    crops = MappedDataset([(im, 0) for im in _grey_images([(28, 28)] * 4)], lambda im, label: {"image": torch.rand(2), "flip": np.random.rand()})
    data = EpochSeeded(crops, seed=3)
    keys = [5, 2, 7, 0]  # epoch 1: 5, 7; epoch 0: 2, 0
    torch.manual_seed(0), np.random.seed(0)
    batch = data.__getitems__(keys)
    after = torch.rand(1), np.random.rand()
    torch.manual_seed(0), np.random.seed(0)
    assert after == (torch.rand(1), np.random.rand())  # restored, not consumed
    for key, got in zip(keys, batch):
        alone = data[key]
        assert torch.equal(got["image"], alone["image"]) and got["flip"] == alone["flip"]
    assert not torch.equal(batch[0]["image"], batch[1]["image"])
    assert not torch.equal(data[1]["image"], data[5]["image"])  # same sample, another epoch


def test_batched_resize_matches_the_per_sample_path():
    """Same crop and flip: S resizes per sample vs the r_1 crop resized as a batch on the device."""
    per_sample = MultiResolutionTransform([32, 24, 16], scale=(0.3, 1.0), input_format=RAW, per_sample=True)
    batched = MultiResolutionTransform([32, 24, 16], scale=(0.3, 1.0), input_format=RAW)
    for seed in range(6):
        torch.manual_seed(seed)
        expected = [RAW.normalize(x) for x in per_sample(_image())["images"]]
        torch.manual_seed(seed)
        sample = batched(_image())
        assert set(sample) == {"image"} and sample["image"].shape == (3, 32, 32)
        got = batch_resolutions({"image": sample["image"][None]}, [32, 24, 16], RAW)
        for e, g in zip(expected, got):
            assert g.shape[1:] == e.shape
            # the per-sample path resizes once from the crop (rounded to uint8); the batched path
            # resizes the 32 px crop again: equal up to interpolation rounding
            assert (g[0] - e).abs().mean() < 0.01 and (g[0] - e).abs().max() < 0.2


def test_synthetic_data_is_deterministic_rgb():
    ds = synthetic(split="train", train_size=5, image_size=24, num_classes=4)
    (a, ya), (b, yb) = ds[3], ds[3]
    assert a.mode == "RGB" and a.size == (24, 24)
    assert ya == yb and np.array_equal(np.asarray(a), np.asarray(b))
    assert ds.classes == ["disc_plus", "disc_x", "square_plus", "square_x"]
    again = synthetic(split="train", train_size=5, image_size=24, num_classes=4)[3]
    assert again[1] == ya and np.array_equal(np.asarray(again[0]), np.asarray(a))
    val = synthetic(split="val", val_size=5, image_size=24)
    assert not np.array_equal(np.asarray(val[3][0]), np.asarray(a))
    other_seed = synthetic(split="train", train_size=5, image_size=24, num_classes=4, seed=1)
    assert not np.array_equal(np.asarray(other_seed[3][0]), np.asarray(a))


def _kept_difference(draw_a: np.ndarray, draw_b: np.ndarray, size: int) -> float:
    """Energy of the difference of two images left after downsizing to ``size``, per unit area
    (1 = all of it; a difference of coarse regions keeps most, of fine detail little)."""
    a, b = (torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1) for x in (draw_a, draw_b))
    full = (a - b).pow(2).sum()
    low = (_down(a, size) - _down(b, size)).pow(2).sum() * (a.shape[-1] / size) ** 2
    return float(low / full)


def test_synthetic_fine_evidence_fades_with_resolution():
    """A "+" and an "x" (the fine half of a class) drawn with the same random draws differ
    only in their marks. Downsizing from 144 px wipes out that difference step by step: the
    smaller the image, the less is kept, and at 48 px marks of up to 3 pixels keep under 5 %
    of it, while 12-pixel marks keep most of it and a change of shape (the coarse half) a
    good part."""
    ds = SyntheticShapes(1, image_size=144)
    sizes = (128, 96, 64, 48)

    def kept(shape_b: int, mark_b: int, arm: float) -> list[float]:
        pairs = [(ds.draw(np.random.default_rng(s), 0, 0, arm / 144), ds.draw(np.random.default_rng(s), shape_b, mark_b, arm / 144)) for s in range(4)]
        return [np.mean([_kept_difference(a, b, size) for a, b in pairs]) for size in sizes]

    marks = {arm: kept(0, 1, arm) for arm in (1, 2, 3, 12)}
    for arm, by_size in marks.items():
        assert by_size == sorted(by_size, reverse=True), arm
    assert max(marks[arm][-1] for arm in (1, 2, 3)) < 0.05
    assert marks[12][-1] > 0.5
    assert kept(1, 0, 3)[-1] > 0.3
