"""``rsvision.load``: a trained or exported RS-Net, ready to predict.

``load(path)`` reads a run folder or a packed ``.lq`` file (through
:func:`rsvision.run.folder.load_artifact`; PyTorch) or an ONNX export directory (through
its ``manifest.json``; onnxruntime). Either way the model has ``resolutions``,
``subnets``, ``class_names``, ``input_format``, ``at(r)`` (a callable fixed at one
sub-network: a BN-folded PyTorch network in eval mode, or an onnxruntime session
wrapper; ``at(r).predict(images)`` is ``predict(images, r)``) and
``predict(images, resolution=None)``, which takes PIL images, file paths, uint8 (or
16-bit) arrays or tensors, decodes every image to 8 bits
(:func:`rsvision.data.transforms.eight_bit`), takes arrays, tensors and PIL images with an
alpha channel (RGBA, grey + alpha) as it reads such files (:func:`read_rgb`: alpha dropped),
refuses float arrays and tensors with values outside [0, 1] (a float image is taken as
[0, 1]: 0..255 values would be read as nearly all white), applies the stored input format and the evaluation view
(classification: shorter side to int(r / 0.875), centre crop r; segmentation: the image
resized to r x r, logits upsampled back to the image's size; detection: the image as it
is, resized inside the detector) and returns, per image, the top class (index, name,
probability), a class map of the image's size, or the detections (:class:`Detections`).
Without ``resolution`` it predicts at the largest one. No model's mode is changed.

``load(path, device=...)`` puts a run folder's or packed file's model on ``device``
(:func:`rsvision.analysis.device.resolve_device`; default ``auto``: CUDA when present, else
the CPU). On the CPU ``at(r)`` is the plain network itself; on another device it is that
network wrapped (:class:`DeviceNetwork`) so that inputs are moved there and outputs come back
in float32 on the input's device, run in the precision the rule of
:mod:`rsvision.analysis.device` picks (autocast on CUDA for a run trained in bf16 / fp16).
An ONNX export runs in onnxruntime's CPU session.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import convert_to_fp32, send_to_device
from PIL import Image, ImageOps
from torch import nn

from rsvision.analysis.device import AUTO, autocast_dtype, device_of, is_auto, resolve_device, to_device
from rsvision.data.datasets import read_rgb
from rsvision.data.detection import float_image
from rsvision.data.transforms import EvalTransform, InputFormat, eight_bit, resize
from rsvision.deploy.export import resolve_subnets
from rsvision.deploy.manifest import MANIFEST, read_manifest, subnet_file
from rsvision.deploy.network import plain_subnet
from rsvision.deploy.onnx import require, run_detector_session, session
from rsvision.errors import UserError
from rsvision.nn.bn_stats import calibrated_subnets
from rsvision.nn.surgery import eval_mode
from rsvision.nn.switchable import SHARED, at_subnet, subnet_status, trained_subnets
from rsvision.run.files import META
from rsvision.run.folder import load_artifact
from rsvision.subnet import SubNet, SubNetLike, subnets_of
from rsvision.tasks.detection import MASK_THRESHOLD


@dataclass(frozen=True)
class Prediction:
    """The top class of one image."""

    index: int
    name: str
    probability: float


@dataclass(frozen=True)
class Detections:
    """The detections of one image, most confident first: ``boxes`` ``[D, 4]`` (x1, y1, x2, y2
    in the image's pixels), ``labels`` (1..K), their ``names``, ``scores``, and ``masks``
    (``[D, H, W]`` bool, Mask R-CNN) or None."""

    boxes: torch.Tensor
    labels: list[int]
    names: list[str]
    scores: torch.Tensor
    masks: torch.Tensor | None = None


def _is_batch(images: Any) -> bool:
    return isinstance(images, (list, tuple)) or (isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4)


def _read(image: Any, channels: int, name: str = "the image") -> Any:
    """``image`` as ``predict`` takes it: a file decoded (:func:`read_rgb`); a PIL image turned
    upright by its EXIF orientation as a file is (``Image.open`` leaves a phone's portrait
    photo sideways), and in another mode than RGB or L, and an array (``HxWxC``) or tensor (``CxHxW``) with an alpha
    channel the model does not take (2 or 4 channels), converted as a file of that kind is
    read (alpha dropped); a float image outside [0, 1] refused, naming ``name``."""
    if isinstance(image, (str, Path)):
        return read_rgb(image)
    if isinstance(image, Image.Image):
        image = eight_bit(ImageOps.exif_transpose(image))
        return image if image.mode in ("RGB", "L") or (image.mode == "RGBA" and channels == 4) else image.convert("RGB")
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] in (2, 4) and image.shape[-1] != channels:
        image = image[..., :-1]
    elif isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] in (2, 4) and image.shape[0] != channels:
        image = image[:-1]
    if isinstance(image, (np.ndarray, torch.Tensor)) and (image.dtype.is_floating_point if isinstance(image, torch.Tensor) else image.dtype.kind == "f"):
        low, high = float(image.min()), float(image.max())
        if low < 0 or high > 1:
            raise UserError(
                f"{name}: a float image with values in [{low:g}, {high:g}]; float images are taken as [0, 1] "
                "(divide 0..255 values by 255, or pass uint8)"
            )
    if isinstance(image, np.ndarray) and not image.flags.writeable:
        return image.copy()
    return image


class LoadedModel:
    """What :func:`load` returns (see the module docstring); subclasses supply the networks."""

    source: str
    task: str
    kind: str  # "classification", "dense" or "detection"
    class_names: list[str]
    input_format: InputFormat
    subnets: list[SubNet]

    @property
    def resolutions(self) -> list[int]:
        """Resolutions this model serves directly, largest first."""
        return sorted({s.resolution for s in self.subnets}, reverse=True)

    def at(self, subnet: SubNetLike):
        """A callable taking a normalised ``[N, C, r, r]`` float batch and returning the logits;
        its ``predict(images)`` is :meth:`predict` at this sub-network."""
        raise NotImplementedError

    def _with_predict(self, network, subnet: SubNet):
        network.predict = partial(self.predict, resolution=subnet)
        return network

    def _default_subnet(self) -> SubNet:
        return self.subnets[0]

    def _parse(self, subnet: SubNetLike) -> SubNet:
        try:
            return SubNet.parse(subnet)
        except ValueError as exc:
            raise UserError(f"{self.source}: {exc}") from None

    def preprocess(self, image: Any, resolution: int) -> torch.Tensor:
        """One image as the ``[C, r, r]`` float tensor evaluation feeds the network."""
        image = _read(image, self.input_format.channels)
        if self.kind == "detection":
            return float_image(image, self.input_format.channels)
        if self.kind == "classification":
            return EvalTransform([resolution], self.input_format).one(self.input_format.image(image), resolution)
        return resize(self.input_format.tensor(image), resolution)

    @torch.no_grad()
    def predict(self, images: Any, resolution: SubNetLike | None = None):
        """Top class per image (classification) or a class map per image (segmentation).

        ``images``: one image or a list (a 4-D array or tensor is a batch). Returns one
        result for one image, a list for a list.
        """
        subnet = self._default_subnet() if resolution is None else self._parse(resolution)
        network = self.at(subnet)
        batch = list(images) if _is_batch(images) else [images]
        if not batch:
            return []
        channels = self.input_format.channels
        decoded = [_read(image, channels, f"images[{i}]" if _is_batch(images) else "the image") for i, image in enumerate(batch)]
        if self.kind == "detection":
            out = [self._detections(network, self.preprocess(image, subnet.resolution)) for image in decoded]
            return out if _is_batch(images) else out[0]
        x = torch.stack([self.preprocess(image, subnet.resolution) for image in decoded])
        logits = torch.as_tensor(network(x)).float()
        if self.kind == "classification":
            probs = logits.softmax(1)
            top = probs.max(1)
            out = [Prediction(int(i), self.class_names[int(i)] if int(i) < len(self.class_names) else str(int(i)), float(p)) for p, i in zip(top.values, top.indices)]
        else:
            out = []
            for z, image in zip(logits, decoded):
                h, w = self.input_format.image(image).shape[-2:]
                up = F.interpolate(z[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                out.append(up.argmax(0).numpy().astype(np.uint8 if z.shape[0] <= 255 else np.int64))
        return out if _is_batch(images) else out[0]

    def _detections(self, network, x: torch.Tensor) -> Detections:
        out = network.detect(x) if isinstance(network, OnnxSubnet) else network([x])[0]
        labels = [int(v) for v in out["labels"]]
        masks = out["masks"][:, 0] > MASK_THRESHOLD if "masks" in out else None
        names = [self.class_names[v - 1] if 0 < v <= len(self.class_names) else str(v) for v in labels]
        return Detections(torch.as_tensor(out["boxes"]), labels, names, torch.as_tensor(out["scores"]), None if masks is None else torch.as_tensor(masks))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, task={self.task!r}, subnets={[s.id for s in self.subnets]})"


class DeviceNetwork(nn.Module):
    """A network on ``device``: inputs (a tensor, or a detector's list of images) are moved
    there, it runs in autocast of ``dtype`` (None: float32), and outputs come back in float32
    on the input's device."""

    def __init__(self, network: nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.network = network.to(device)
        self.device, self.dtype = device, dtype

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> Any:
        home = (x[0] if isinstance(x, (list, tuple)) else x).device
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.network(send_to_device(x, self.device))
        return send_to_device(convert_to_fp32(out), home)


class TorchModel(LoadedModel):
    """A run folder or packed file in PyTorch on ``device``; ``at(r)`` is the BN-folded plain
    network of ``r`` (cached; off the CPU, wrapped in a :class:`DeviceNetwork`).

    Its convolution weights are stored channels-last (faster CPU kernels at batch 1; see
    :func:`rsvision.nn.fold.plain_subnet`); inputs may be in either memory format.
    """

    def __init__(self, artifact, device: str | torch.device | None = AUTO) -> None:
        self.artifact = to_device(artifact, device, "device")
        self.model = artifact.model
        self.device = device_of(self.model)
        self.source = str(artifact.path)
        self.task = artifact.meta.get("task", artifact.task.recipe.task)
        self.input_format = artifact.task.input_format
        num_classes = artifact.task.recipe.model.num_classes
        self.class_names = list(artifact.meta.get("class_names") or [str(i) for i in range(num_classes)])
        self.subnets = subnets_of(trained_subnets(self.model) + calibrated_subnets(self.model))
        smallest = min(self.subnets, key=lambda s: s.resolution)
        with eval_mode(self.model):
            with torch.no_grad(), at_subnet(self.model, smallest):
                output = self.model(send_to_device(artifact.task.example_input(smallest.resolution), self.device))
        self.kind = "detection" if isinstance(output, list) else "classification" if output.dim() == 2 else "dense"
        self._networks: dict[SubNet, nn.Module] = {}

    def at(self, subnet: SubNetLike) -> nn.Module:
        subnet = resolve_subnets(self.model, [subnet], self.source)[0]
        if subnet_status(self.model, subnet) == SHARED:
            raise UserError(
                f"{self.source}: sub-network {subnet.id} has no BN statistics of its own (post-hoc BN); "
                f"run `rsvision calibrate {self.source} --res {subnet.id}` first"
            )
        if subnet not in self._networks:
            network = plain_subnet(self.model, subnet, channels_last=True).network
            if self.device.type != "cpu":
                network = DeviceNetwork(network, self.device, autocast_dtype(self.artifact.task.recipe.train.mixed_precision, self.device))
            self._networks[subnet] = self._with_predict(network, subnet)
        return self._networks[subnet]

    @torch.no_grad()
    def predict(self, images: Any, resolution: SubNetLike | None = None):
        network = self.at(self._default_subnet() if resolution is None else resolution)
        with eval_mode(network):
            return super().predict(images, resolution)


class OnnxSubnet:
    """One exported sub-network in an onnxruntime session: ``net(x)`` for a ``[N, C, r, r]`` float batch.

    Returns a tensor for a tensor and an array for an array.
    """

    def __init__(self, subnet: SubNet, path: Path, threads: int | None = None) -> None:
        self.subnet, self.path = subnet, path
        self.session = session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x):
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        out = self.session.run(None, {self.input_name: array.astype(np.float32, copy=False)})[0]
        return torch.from_numpy(out) if isinstance(x, torch.Tensor) else out

    def detect(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """An exported detector's outputs for one ``[C, H, W]`` image."""
        return run_detector_session(self.session, image)

    def __repr__(self) -> str:
        return f"OnnxSubnet({self.subnet.id}, {self.path})"


class OnnxModel(LoadedModel):
    """An ONNX export directory; ``at(r)`` opens (once) the session of an exported sub-network."""

    def __init__(self, export_dir: str | Path, threads: int | None = None) -> None:
        require("onnxruntime")
        self.dir = Path(export_dir)
        self.source = str(export_dir)
        self.manifest = read_manifest(self.dir)
        self.task = str(self.manifest.get("task"))
        view = self.manifest.get("view", {}).get("name")
        self.kind = "classification" if view == "center_crop" else "detection" if view == "detector" else "dense"
        self.class_names = [str(c) for c in self.manifest.get("class_names", [])]
        self.input_format = InputFormat.from_dict(self.manifest.get("input"))
        self._entries = {SubNet.parse(e["id"]): e for e in self.manifest["subnets"]}
        self.subnets = subnets_of(list(self._entries))
        self.threads = threads
        self._sessions: dict[SubNet, OnnxSubnet] = {}

    def at(self, subnet: SubNetLike) -> OnnxSubnet:
        key = self._parse(subnet)
        if key not in self._entries:
            exported = ", ".join(s.id for s in self.subnets)
            raise UserError(f"{self.source}: sub-network {key.id} is not in this export (exported: {exported})")
        if key not in self._sessions:
            self._sessions[key] = self._with_predict(OnnxSubnet(key, subnet_file(self.dir, self._entries[key]), self.threads), key)
        return self._sessions[key]


def load(path: str | Path, device: str | torch.device | None = AUTO) -> LoadedModel:
    """A ready model from a run folder, a packed ``.lq`` file (on ``device``) or an ONNX export
    directory (onnxruntime's CPU session)."""
    path = Path(path)
    chosen = resolve_device(device, "device")
    if path.is_dir() and (path / MANIFEST).is_file():
        if chosen.type != "cpu" and not is_auto(device):
            raise UserError(f"{path}: an ONNX export runs in onnxruntime's CPU session; device={device!s} applies to run folders and packed files")
        return OnnxModel(path)
    if path.is_dir() and not (path / META).is_file():
        raise UserError(f"{path}: neither a run folder (no {META}) nor an ONNX export directory (no {MANIFEST})")
    return TorchModel(load_artifact(path), chosen)

