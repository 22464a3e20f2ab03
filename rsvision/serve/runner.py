"""The network side of the server: a loaded model's sub-networks, one batch at a time.

A :class:`Runner` wraps what :func:`rsvision.load` returns: for an ONNX export, one
onnxruntime session per sub-network; for a run folder or packed file, the one switchable
PyTorch model, each sub-network run from the shared weights with its own BN (and width)
switched in per batch (:class:`SharedWeights`), so the server holds the weights once rather
than a BN-folded copy per sub-network as ``load(...).at(r)`` builds. It owns three jobs:

- **Preparing** a request (in the request handler, off the worker): decode the body
  (:mod:`rsvision.serve.decode`) and bring the image to the model's channels as a uint8
  tensor. For a classifier, an image larger than the largest sub-network's view needs is
  resized down to that view's shorter side, ``int(r_max / 0.875)`` (a JPEG is drafted there
  as it is decoded), so the queue holds small images and the worker's time per image does
  not depend on the size of the file sent. At ``r_max`` the answer is then exactly
  ``rsvision.load(...).predict``'s; at a smaller ``r`` the view resizes from that image
  instead of the original, a second antialiased resize. Segmentation and detection keep the
  image at its own size: their answers are in its pixels.
- **Running** a batch: ``model.predict(images, subnet)``, the path :func:`rsvision.load`
  serves (the evaluation view, the network, the top class / class map / detections); the
  switched network computes what the folded one does, to float rounding.
- **The probe** the server's latency table is measured on (:meth:`probe`, an image the size
  the worker sees): the server times its executor's run of ``b`` copies of it (see
  :mod:`rsvision.serve.app`), decoding excluded, since decoding runs in the request handler
  before the request is queued and is paid out of the request's slack there.

Sub-networks are ranked by accuracy: the task's primary metric from the run's kept
evaluations (``rsvision eval``) or the metrics its training ended with, and for an export
the rows ``rsvision deploy`` wrote into its manifest or the metrics of the run it came
from. Ties go to the cheaper one (the choice rule of :mod:`rsvision.deploy.budget`). When
a sub-network has no score, all are ranked by resolution, then width, largest first.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from rsvision.analysis.device import autocast_dtype
from rsvision.analysis.evaluate import evaluation_key, store_of
from rsvision.constants import val_resize
from rsvision.data.transforms import BILINEAR
from rsvision.deploy.export import resolve_subnets
from rsvision.deploy.load import DeviceNetwork, Detections, LoadedModel, OnnxModel, Prediction, TorchModel
from rsvision.errors import UserError
from rsvision.nn.surgery import eval_mode
from rsvision.nn.switchable import SHARED, at_subnet, subnet_status
from rsvision.run.files import META
from rsvision.run.folder import read_meta
from rsvision.serve.decode import decode_image
from rsvision.subnet import SubNet, SubNetLike


@dataclass(frozen=True)
class Prepared:
    """A decoded request image, ready to queue: ``image`` (uint8 ``[C, H, W]``) and the size
    of the file's image (``height``, ``width``)."""

    image: torch.Tensor
    height: int
    width: int


class SwitchedNetwork(nn.Module):
    """The switchable model run as one sub-network: the weights every sub-network shares, its
    own BN (RS-Nets' private BN; calibrated or interpolated statistics alike) and width."""

    def __init__(self, model: nn.Module, subnet: SubNet) -> None:
        super().__init__()
        self.model, self.subnet = model, subnet

    def forward(self, x):
        with at_subnet(self.model, self.subnet):
            return self.model(x)


class SharedWeights(LoadedModel):
    """A loaded run (:class:`rsvision.deploy.load.TorchModel`) whose ``at(r)`` switches the one
    model to ``r`` instead of folding a copy of it: memory ~1x for any number of sub-networks."""

    def __init__(self, loaded: TorchModel) -> None:
        self.artifact, self.model, self.device = loaded.artifact, loaded.model, loaded.device
        self.source, self.task, self.kind = loaded.source, loaded.task, loaded.kind
        self.class_names, self.input_format, self.subnets = loaded.class_names, loaded.input_format, loaded.subnets
        self._networks: dict[SubNet, nn.Module] = {}

    def at(self, subnet: SubNetLike) -> nn.Module:
        subnet = resolve_subnets(self.model, [subnet], self.source)[0]
        if subnet_status(self.model, subnet) == SHARED:  # as TorchModel.at: never the training-time shared statistics
            raise UserError(
                f"{self.source}: sub-network {subnet.id} has no BN statistics of its own (post-hoc BN); "
                f"run `rsvision calibrate {self.source} --res {subnet.id}` first"
            )
        if subnet not in self._networks:
            network: nn.Module = SwitchedNetwork(self.model, subnet)
            if self.device.type != "cpu":
                network = DeviceNetwork(network, self.device, autocast_dtype(self.artifact.task.recipe.train.mixed_precision, self.device))
            self._networks[subnet] = self._with_predict(network, subnet)
        return self._networks[subnet]

    @torch.no_grad()
    def predict(self, images, resolution: SubNetLike | None = None):
        with eval_mode(self.model):
            return super().predict(images, resolution)


def _png_base64(array: np.ndarray) -> str:
    """A 2-D integer array as a base64 PNG (8-bit when it fits, else 16-bit)."""
    image = Image.fromarray(array.astype(np.uint8)) if array.max(initial=0) <= 255 else Image.fromarray(array.astype(np.uint16))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def answer_fields(result: Any) -> dict[str, Any]:
    """One prediction of ``rsvision.load(...).predict`` as JSON fields: a classifier's ``index``,
    ``name``, ``probability``; a class map as a base64 PNG with its ``height`` and ``width``;
    detections as lists (``boxes`` x1, y1, x2, y2 in the image's pixels, ``labels``, ``names``,
    ``scores``, ``masks`` as base64 PNGs or None)."""
    if isinstance(result, Prediction):
        return {"index": result.index, "name": result.name, "probability": result.probability}
    if isinstance(result, Detections):
        return {
            "boxes": [[float(v) for v in box] for box in result.boxes.tolist()],
            "labels": list(result.labels),
            "names": list(result.names),
            "scores": [float(v) for v in result.scores.tolist()],
            "masks": None if result.masks is None else [_png_base64(m.numpy().astype(np.uint8) * 255) for m in result.masks],
        }
    class_map = np.asarray(result)
    return {"height": int(class_map.shape[0]), "width": int(class_map.shape[1]), "class_map": _png_base64(class_map)}


class Runner:
    """A loaded model's sub-networks, prepared requests and batches (module docstring)."""

    def __init__(self, model: LoadedModel, name: str | None = None, threads: int | None = None) -> None:
        """Hold every sub-network of ``model`` (a sub-network it cannot serve is a one-line
        :class:`UserError` here, before any request); an export's onnxruntime sessions get
        ``threads`` intra-op threads (PyTorch's are set by the thread that runs the batches)."""
        if isinstance(model, OnnxModel):
            model.threads = threads
        self.model = SharedWeights(model) if isinstance(model, TorchModel) else model
        self.name = name or Path(model.source).name
        self.kind = model.kind
        self.subnets = {s.id: s for s in model.subnets}
        for subnet in model.subnets:
            self.model.at(subnet)
        largest = max(s.resolution for s in model.subnets)
        #: The shorter side a classifier's images are brought down to before they are queued.
        self.shorter_side = val_resize(largest) if self.kind == "classification" else None
        #: The primary metric of each sub-network where the run or export records one.
        self.accuracy = self._accuracy()

    @property
    def backend(self) -> str:
        return "onnxruntime" if isinstance(self.model, OnnxModel) else "pytorch"

    def prepare(self, body: bytes, max_pixels: int) -> Prepared:
        """A request body as the image the worker takes (module docstring)."""
        return self.prepare_image(decode_image(body, max_pixels, self.shorter_side))

    def prepare_pixels(self, pixels: np.ndarray) -> Prepared:
        """A uint8 ``[H, W, C]`` array (C: 1 grey, 3 RGB, 4 RGBA) as the image the worker takes."""
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        return self.prepare_image(image.convert("RGB"))

    def prepare_image(self, decoded: Image.Image) -> Prepared:
        """An 8-bit RGB image in the model's channels, a classifier's brought down to its view."""
        x = self.model.input_format.image(decoded)
        height, width = x.shape[-2:]
        if self.shorter_side is not None and min(height, width) > self.shorter_side:
            x = TF.resize(x, self.shorter_side, interpolation=BILINEAR, antialias=True)
        return Prepared(x, int(height), int(width))

    def run(self, subnet: str, images: Sequence[torch.Tensor]) -> list[Any]:
        """The predictions of one batch on ``subnet``, one per image."""
        return self.model.predict(list(images), self.subnets[subnet])

    def samples(self) -> list[bytes]:
        """A small PNG and JPEG file, to decode once before the first request."""
        height, width = self.probe().shape[-2:]
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
        out = []
        for fmt in ("PNG", "JPEG"):
            buffer = io.BytesIO()
            image.save(buffer, format=fmt)
            out.append(buffer.getvalue())
        return out

    def probe(self) -> torch.Tensor:
        """An image the size the worker sees: a classifier's prepared view (4:3 at the view's
        shorter side), else 640 x 480."""
        height, width = (self.shorter_side, round(self.shorter_side * 4 / 3)) if self.shorter_side else (480, 640)
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (self.model.input_format.channels, height, width), dtype=torch.uint8, generator=generator)

    def _accuracy(self) -> dict[str, float | None]:
        rows: dict[str, dict[str, Any]] = {}
        metric = None
        if isinstance(self.model, SharedWeights):
            artifact = self.model.artifact
            metric = artifact.meta.get("primary_metric") or artifact.task.primary_metric
            rows = {str(r.get("subnet")): r for r in artifact.meta.get("metrics", [])}
            store = store_of(artifact)
            if store is not None:
                rows.update(store.rows(evaluation_key(artifact)))
        elif isinstance(self.model, OnnxModel):
            manifest = self.model.manifest
            source = Path(str(manifest.get("source", "")))
            if (source / META).is_file():
                meta = read_meta(source)
                metric = meta.get("primary_metric")
                rows = {str(r.get("subnet")): r for r in meta.get("metrics", [])}
            deploy = manifest.get("deploy") or {}
            metric = deploy.get("metric", metric)
            rows.update({str(r.get("subnet")): r for r in deploy.get("candidates", [])})
        out = {}
        for s in self.subnets:
            value = rows.get(s, {}).get(metric) if metric else None
            out[s] = float(value) if isinstance(value, (int, float)) else None
        return out

    def ranked(self, table: dict[str, dict[int, float]]) -> list[str]:
        """Sub-network ids, most accurate first (module docstring); ``table`` breaks ties."""
        accuracy = self.accuracy
        if all(v is not None for v in accuracy.values()):
            return sorted(self.subnets, key=lambda s: (-accuracy[s], min(table[s].values())))
        return sorted(self.subnets, key=lambda s: (-self.subnets[s].resolution, -(self.subnets[s].width or 1.0)))

    def describe(self) -> dict[str, Any]:
        """What is served, for ``/info`` and the model metadata."""
        accuracy = self.accuracy
        return {
            "name": self.name,
            "source": self.model.source,
            "task": self.model.task,
            "kind": self.kind,
            "backend": self.backend,
            "class_names": list(self.model.class_names),
            "subnets": [{"id": s.id, "resolution": s.resolution, **({"width": s.width} if s.width is not None else {}), "accuracy": accuracy[s.id]}
                        for s in self.subnets.values()],
        }
