"""Predictions drawn from a trained run, at one or several resolutions: colour-coded
segmentation masks, or a detection run's boxes and masks (:mod:`rsvision.deploy.boxes`).

``predict_mask`` is the inference step of App. B: the image resized to r x r, the
logits resized back to the image's size, the arg-max per pixel. ``predict_files``
writes ``<name>_r<res>.png`` per image and resolution, and with ``compare`` one
``<name>_compare.png``: the image and its predictions side by side, largest resolution first.
``<name>`` is the image's file name without its extension, made distinct where inputs share
one (:func:`output_names`), so that no output overwrites another.
The network runs on ``device``, in the precision :mod:`rsvision.analysis.device` picks there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from rsvision.analysis.device import AUTO, inference_precision, resolve_device, to_device
from rsvision.constants import VOID
from rsvision.data.datasets import read_rgb
from rsvision.data.transforms import InputFormat, resize
from rsvision.deploy.boxes import draw_detections, predict_detections
from rsvision.errors import UserError
from rsvision.nn.switchable import RSNet
from rsvision.run.folder import load_artifact
from rsvision.subnet import check_scale

_GAP = 4  # pixels between panels of a comparison image


def palette(num_classes: int) -> np.ndarray:
    """``[256, 3]`` uint8 colours: class i spreads the bits of i over R, G, B (high bits first); void is black."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for i in range(min(num_classes, VOID)):
        c, label = [0, 0, 0], i + 1  # + 1: class 0 is not black, so it differs from void
        for bit in range(7, -1, -1):
            for channel in range(3):
                c[channel] |= ((label >> channel) & 1) << bit
            label >>= 3
        colours[i] = c
    return colours


@torch.no_grad()
def predict_mask(model: RSNet, image: np.ndarray, resolution: int, input_format: InputFormat = InputFormat()) -> np.ndarray:
    """Class index per pixel of ``image`` (``HxWx3`` uint8), the model run at ``resolution``."""
    x = resize(input_format.tensor(image), resolution)[None]
    x = x.to(next(model.parameters()).device)
    logits = model(x).float()
    logits = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].cpu().numpy().astype(np.uint8 if logits.shape[1] <= VOID else np.int64)


def colourize(mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    return colours[np.clip(mask, 0, 255)]


def side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels of one height joined left to right with white gaps."""
    h = panels[0].shape[0]
    gap = np.full((h, _GAP, 3), 255, dtype=np.uint8)
    parts = [p for panel in panels for p in (panel, gap)][:-1]
    return np.concatenate(parts, axis=1)


def output_names(images: Sequence[str | Path]) -> list[str]:
    """One distinct output name per image: its file name without the extension; where several
    images share that name, it is prefixed with as many parent folders as tell them apart
    (``a/photo.png``, ``b/photo.png``: ``a_photo``, ``b_photo``); a name still taken (one file
    given twice, ``photo.png`` beside ``photo.jpg``) gets ``_2``, ``_3``, ... in the order given."""
    paths = [Path(p).resolve() for p in images]
    names = [p.stem for p in paths]
    for stem in {n for n in names if names.count(n) > 1}:
        group = [i for i, n in enumerate(names) if n == stem]
        for depth in range(1, max(len(paths[i].parent.parts) for i in group)):
            qualified = ["_".join([*paths[i].parent.parts[1:][-depth:], stem]) for i in group]
            if len(set(qualified)) == len(group):
                for i, name in zip(group, qualified):
                    names[i] = name
                break
    preferred, taken = set(names), set()
    out = []
    for name in names:
        unique, k = name, 1
        while unique in taken or (unique != name and unique in preferred):
            k += 1
            unique = f"{name}_{k}"
        taken.add(unique)
        out.append(unique)
    return out


def predict_files(
    run_dir: str | Path,
    images: Sequence[str | Path],
    resolutions: Sequence[int],
    out_dir: str | Path,
    compare: bool = False,
    device: str | torch.device | None = AUTO,
) -> list[Path]:
    """Write colour masks of ``images`` at each resolution, computed on ``device`` (see the module docstring); returns the files."""
    device = resolve_device(device)
    artifact = to_device(load_artifact(run_dir), device)
    task, model = artifact.task, artifact.model
    if task.recipe.task not in ("seg", "det"):
        raise UserError(f"{run_dir}: a '{task.recipe.task}' run; predict draws segmentation ('seg') and detection ('det') runs")
    if not resolutions:
        resolutions = model.resolutions
    check_scale(resolutions, model.resolutions, str(run_dir))
    resolutions = sorted(resolutions, reverse=True)
    colours = palette(task.recipe.model.num_classes)
    if task.recipe.task == "det":
        names, channels = task.class_names(), task.input_format.channels

        def drawn(image: np.ndarray, r: int) -> np.ndarray:
            return draw_detections(image, predict_detections(model, image, r, channels), names, colours)
    else:

        def drawn(image: np.ndarray, r: int) -> np.ndarray:
            return colourize(predict_mask(model, image, r, task.input_format), colours)

    decoded = [(path, np.array(read_rgb(path))) for path in map(Path, images)]  # a bad image stops before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (path, image) in zip(output_names([path for path, _ in decoded]), decoded):
        with inference_precision(task.recipe, model):
            masks = [drawn(image, r) for r in resolutions]
        for r, mask in zip(resolutions, masks):
            written.append(out / f"{name}_r{r}.png")
            Image.fromarray(mask).save(written[-1])
        if compare:
            written.append(out / f"{name}_compare.png")
            Image.fromarray(side_by_side([image, *masks])).save(written[-1])
    return written
