"""``data.cache``: when ``auto`` decodes once, and that a cached sample trains exactly as a decoded one."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from rsvision.tasks.classification import ClassificationTask
from torch.utils.data import Dataset

import rsvision.data.cache as cache
from rsvision.data.cache import InMemory, cache_choice, decoded_sample, sample_bytes
from rsvision.data.sampling import EpochSeeded
from rsvision.recipe import validate_recipe
from tests.conftest import tiny_recipe_dict


class Images(Dataset):
    """Eight 10x10 RGB images (300 bytes decoded each); ``fixed`` says whether they never change."""

    def __init__(self, fixed: bool) -> None:
        self.fixed_samples = fixed
        self.reads = 0

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        self.reads += 1
        return Image.fromarray(np.full((10, 10, 3), i, np.uint8)), i % 2


def test_explicit_settings_are_kept():
    assert cache_choice("memory", Images(False), decoded_sample, 1) == (True, "data.cache: memory")
    assert cache_choice("none", Images(True), decoded_sample, 5) == (False, "data.cache: none")


def test_auto_decodes_once_only_what_cannot_change():
    assert cache_choice("auto", Images(True), decoded_sample, 2) == (True, "data.cache: auto -> memory: 8 samples, about 0.0 MiB decoded")
    keep, reason = cache_choice("auto", Images(False), decoded_sample, 2)
    assert not keep and "does not declare fixed_samples" in reason
    keep, reason = cache_choice("auto", Images(True), decoded_sample, 1)
    assert not keep and "one epoch" in reason
    held = Images(True)
    held.in_memory = True  # decoding is a copy: worth it for one epoch too
    assert cache_choice("auto", held, decoded_sample, 1)[0]


def test_auto_leaves_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(cache, "physical_memory", lambda: 8 * 8 * 300 - 1)  # an eighth holds 299 bytes < 8 x 300
    keep, reason = cache_choice("auto", Images(True), decoded_sample, 2)
    assert not keep and "8 samples" in reason
    monkeypatch.setattr(cache, "physical_memory", lambda: 8 * 8 * 300)
    assert cache_choice("auto", Images(True), decoded_sample, 2)[0]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on this machine: a copy each
    keep, reason = cache_choice("auto", Images(True), decoded_sample, 2)
    assert not keep and reason.endswith("over 0 MiB (0.125 of memory over 2 processes)")


def test_a_split_off_part_keeps_fixed_samples():
    from rsvision.data.sampling import split_off

    part = split_off(Images(True), "val", 0.25, seed=0)
    assert len(part) == 2 and cache_choice("auto", part, decoded_sample, 2)[0]


def test_the_estimate_reads_three_samples_and_counts_arrays_and_tensors():
    data = Images(True)
    cache_choice("auto", data, decoded_sample, 2)
    assert data.reads == 3
    assert sample_bytes((np.zeros((2, 3), np.uint8), torch.zeros(4, dtype=torch.int16), 7)) == 6 + 8


def test_in_memory_decodes_each_sample_once():
    data = Images(True)
    kept = InMemory(data)
    assert data.reads == 8 and len(kept) == 8
    assert isinstance(kept[3][0], np.ndarray) and kept[3][1] == 1 and data.reads == 8


@pytest.mark.parametrize("channels", [1, 3])
def test_cached_classification_batches_equal_decoded_ones(tmp_path, channels):
    """The default (auto) keeps images in the network's input format; the training samples,
    seeded per (seed, epoch, index), are the same tensors as without the cache."""
    batches = {}
    for setting in ("auto", "none"):
        data = tiny_recipe_dict(tmp_path)
        data["data"]["cache"] = setting
        data["data"]["crop"] = "sample"  # the per-sample crop of both (data.crop: batch cuts differently)
        data["model"]["in_channels"] = channels
        data["data"]["mean"], data["data"]["std"] = [0.5] * channels, [0.25] * channels
        task = ClassificationTask(validate_recipe(data, "test"))
        train = EpochSeeded(task.train_dataset(), seed=3)
        batches[setting] = [train[key] for key in (0, 5, 48 + 7)]
        assert task.cache_reasons["train"].startswith(f"data.cache: {setting}")
    for cached, decoded in zip(batches["auto"], batches["none"]):
        assert cached["target"] == decoded["target"]
        assert torch.equal(cached["image"], decoded["image"])


def test_the_run_records_what_was_decoded_once(tmp_path):
    from rsvision.engine import train

    run = train(validate_recipe(tiny_recipe_dict(tmp_path, train={"epochs": 2, "max_steps_per_epoch": 1})), name="cache", quiet=True)
    reasons = json.loads((run / "rsvision.json").read_text())["data_cache"]
    assert reasons == {
        "train": "data.cache: auto -> memory: 48 samples, about 0.1 MiB decoded",
        "val": "data.cache: auto -> memory: 16 samples, about 0.0 MiB decoded",
    }
