"""CPU cost of one training sample in a loader worker, before and after the uint8 data path.

    python benchmarks/loader_cost.py [--images 200] [--passes 5] [--size 224] [--gpu-rate 3000]

Writes ``--images`` JPEGs of 500x375 (ImageNet's most common size; smooth colour fields,
shapes and grain, quality 90, about 100 KB each) into a temporary image folder
(``train/<class>/*.jpg``) and loads them as a training run does: the ``imagefolder``
dataset, samples seeded by index (:class:`~rsvision.data.sampling.EpochSeeded`), the
classification transform, batches of ``--batch-size`` collated. Paths:

- before: Pillow decodes (:func:`~rsvision.data.datasets.read_rgb`), then random-resized
  crop + flip + resize to ``--size`` (uint8, antialiased bilinear) + normalisation to
  float32 in the worker: the data path up to commit 9f5b51b, reproduced here
  (:func:`float32_sample`, and the dataset's reader swapped back to Pillow);
- Pillow, uint8: the same decode, the crop handed over as uint8 (the training device
  normalises it, :func:`rsvision.data.transforms.batch_resolutions`);
- after: JPEGs decoded straight into a tensor (:func:`~rsvision.data.datasets.read_image`),
  the crop handed over as uint8: what a run does now;
- decode only: either reader alone.

Each path is measured two ways, one thread each: CPU time of this process
(``time.process_time``) and CPU time of one DataLoader worker process that loads every
sample (``getrusage`` of the reaped child: collation into shared memory included, and the
fork that starts it). Both paths crop and flip every image alike (seeded by its index); the
passes alternate the paths and each cell is the median pass. Images/s per worker is 1000 /
(worker ms per sample); the cores one GPU needs is ``--gpu-rate`` x (worker ms) / 1000
(3,000 images/s: a ResNet-18 RS-Net on one H100, estimated in issue 34).
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader, default_collate

from rsvision.data.datasets import imagefolder, read_rgb
from rsvision.data.mapped import MappedDataset
from rsvision.data.sampling import EpochSeeded
from rsvision.data.transforms import InputFormat, MultiResolutionTransform, resize
from rsvision.tasks.classification import LabelledImage

WIDTH, HEIGHT = 500, 375


def write_jpegs(root: Path, count: int, classes: int = 4, quality: int = 90, seed: int = 0, size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
    """``count`` JPEGs in ``root/train/class_<k>/`` (and one per class in ``root/val/``)."""
    rng = np.random.default_rng(seed)
    w, h = size
    for split, n in (("train", count), ("val", classes)):
        for i in range(n):
            folder = root / split / f"class_{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
            draw = ImageDraw.Draw(field)
            for _ in range(12):
                x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
                box = [x0, y0, x0 + 1 + int(rng.integers(w // 50, w // 3)), y0 + 1 + int(rng.integers(h // 50, h // 3))]
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
            grain = rng.normal(0, 22, (h, w, 3))
            image = np.clip(np.asarray(field.filter(ImageFilter.GaussianBlur(1)), dtype=np.float64) + grain, 0, 255)
            Image.fromarray(image.astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=quality)


def float32_sample(transform: MultiResolutionTransform, image: Any) -> dict[str, torch.Tensor]:
    """The former worker output: the crop at r_1, normalised to float32 in the worker."""
    fmt = transform.input_format
    crop = transform.crop_and_flip(fmt.image(image))
    return {"image": fmt.normalize(resize(crop, transform.resolutions[0]))}


def cpu_ms(dataset: Any, transform: Callable[[Any], dict[str, Any]], batch_size: int) -> float:
    """CPU milliseconds of this process per sample for what a loader worker does with a batch:
    the seeded samples (:class:`~rsvision.data.sampling.EpochSeeded`) read, transformed and
    labelled, then collated."""
    samples = EpochSeeded(MappedDataset(dataset, LabelledImage(transform)), seed=0)
    start = time.process_time()
    for first in range(0, len(samples), batch_size):
        default_collate(samples.__getitems__(list(range(first, min(first + batch_size, len(samples))))))
    return 1000 * (time.process_time() - start) / len(samples)


def worker_ms(dataset: Any, transform: Callable[[Any], dict[str, Any]], batch_size: int) -> float:
    """CPU milliseconds per sample of one DataLoader worker process that loads every sample
    (``getrusage`` of the reaped child: its collation into shared memory included, and its
    start, a fork, too)."""
    samples = EpochSeeded(MappedDataset(dataset, LabelledImage(transform)), seed=0)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in DataLoader(samples, batch_size=batch_size, num_workers=1, multiprocessing_context="fork"):
        pass  # the iterator joins its worker when it runs out
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return 1000 * seconds / len(samples)


#: The rows: (label, reader, what the worker hands over).
PATHS = {
    "decode-pil": ("decode only: Pillow image", "pil", "none"),
    "decode-tensor": ("decode only: JPEG to tensor", "tensor", "none"),
    "before": ("before: Pillow, float32", "pil", "float32"),
    "uint8": ("Pillow, uint8 (device normalises)", "pil", "uint8"),
    "after": ("after: JPEG to tensor, uint8", "tensor", "uint8"),
}


def measure(root: Path, size: int, passes: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Median CPU ms per sample of each of :data:`PATHS`, in this process and in a worker
    process, over ``passes`` passes, the paths alternating."""
    tensors = imagefolder(root=str(root), split="train")
    pillow = copy.copy(tensors)
    pillow.loader = read_rgb  # the dataset's read up to the JPEG path: a Pillow image
    datasets = {"pil": pillow, "tensor": tensors}
    transform = MultiResolutionTransform([size], input_format=InputFormat())
    transforms: dict[str, Callable[[Any], dict[str, Any]]] = {
        "none": lambda image: {},
        "float32": partial(float32_sample, transform),
        "uint8": transform,
    }
    cpu_ms(tensors, transform, batch_size)  # warm-up: file cache, allocator, lazy imports
    times: dict[str, dict[str, list[float]]] = {where: {name: [] for name in PATHS} for where in ("process", "worker")}
    for p in range(passes):
        for name in list(PATHS) if p % 2 == 0 else list(PATHS)[::-1]:
            _, decoder, kind = PATHS[name]
            times["process"][name].append(cpu_ms(datasets[decoder], transforms[kind], batch_size))
            times["worker"][name].append(worker_ms(datasets[decoder], transforms[kind], batch_size))
    return {where: {name: statistics.median(ms) for name, ms in by_path.items()} for where, by_path in times.items()}


def report(ms: dict[str, dict[str, float]], image_size: tuple[int, int], size: int, gpu_rate: float, jpeg_kb: float) -> str:
    """The table: per path, CPU ms per sample in this process and in a worker, and what follows from the worker's."""
    nbytes = {"float32": 3 * size * size * 4, "uint8": 3 * size * size}
    lines = [
        f"per-sample CPU ms, one thread: {image_size[0]}x{image_size[1]} JPEGs ({jpeg_kb:.0f} KB on average) -> {size} px crops",
        f"{'path':<36}{'process':>9}{'worker':>8}{'images/s/worker':>17}{f'cores @ {gpu_rate:,.0f}/s':>16}{'bytes out':>11}",
    ]
    for name, (label, _, kind) in PATHS.items():
        process, worker = ms["process"][name], ms["worker"][name]
        row = f"{label:<36}{process:>9.2f}{worker:>8.2f}"
        if kind in nbytes:
            row += f"{1000 / worker:>17.0f}{gpu_rate * worker / 1000:>16.1f}{nbytes[kind]:>11,}"
        lines.append(row)
    for name in ("uint8", "after"):
        for where in ("process", "worker"):
            ratio = ms[where][name] / ms[where]["before"]
            lines.append(f"{PATHS[name][0]} / before ({where}): {ratio:.2f}, {100 * (1 - ratio):.0f} % less CPU per sample")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--size", type=int, default=224, help="the largest training resolution")
    parser.add_argument("--batch-size", type=int, default=32, help="samples collated per batch")
    parser.add_argument("--gpu-rate", type=float, default=3000.0, help="images/s one GPU trains")
    parser.add_argument("--image-size", type=int, nargs=2, default=[WIDTH, HEIGHT], metavar=("W", "H"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    image_size = (args.image_size[0], args.image_size[1])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpegs(root, args.images, size=image_size)
        files = list((root / "train").rglob("*.jpg"))
        jpeg_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
        ms = measure(root, args.size, args.passes, args.batch_size)
    print(report(ms, image_size, args.size, args.gpu_rate, jpeg_kb))
    return ms


if __name__ == "__main__":
    main()
