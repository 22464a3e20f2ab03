"""Values shared across the package: data splits, the void label, defaults of runs and inputs."""

from __future__ import annotations

from rsvision.errors import UserError

#: Dataset splits every built-in dataset provides (``val`` is the test split where one exists).
SPLITS = ("train", "val")
#: Label of unlabelled pixels in segmentation masks; excluded from losses and metrics.
VOID = 255
#: Where runs are written and looked up by default.
RUNS_DIR = "runs"
#: Default random seed of recipes and synthetic datasets.
DEFAULT_SEED = 0
#: Input normalisation used when a recipe does not give its own (ImageNet statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Validation protocol (RS-Nets §4.1): resize the shorter side to int(r / 0.875), centre-crop r.
VAL_CROP_FRACTION = 0.875


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}' (expected one of {', '.join(SPLITS)})")


def split_seed(seed: int, split: str) -> int:
    """Seed of a generated dataset's split: train and val never share samples."""
    return seed * 2 + (split == "val") * 1_000_003


def val_resize(resolution: int) -> int:
    """Shorter side before the centre crop: ``int(r / 0.875)``, as the paper's protocol and its loader."""
    return int(resolution / VAL_CROP_FRACTION)


#: The library version (``rsvision.__version__``), for source trees without installed metadata.
VERSION = "0.1.0"

#: The MRED variants (``mred.mode``): Eq. 10, Eq. 9, none, and two ablations (:mod:`rsvision.training.loss`).
MRED_MODES = ("full", "vanilla", "off", "topdown", "from_largest")
