"""ONNX export: one graph per sub-network, BN folded, with a manifest, checked with onnxruntime.

Each sub-network becomes a plain network (:func:`rsvision.nn.fold.plain_subnet`: its BN group,
or calibrated or interpolated statistics; quantized weights as their float values; BN
folded into the preceding convolutions) exported with PyTorch's ``torch.export``-based
exporter (``dynamo=True``; the TorchScript exporter is deprecated) at opset
:data:`OPSET`, batch dimension dynamic, weights inside the ``.onnx`` file. The export
directory holds one ``model_<id>.onnx`` per sub-network and ``manifest.json``:

- ``task``, ``class_names``, ``input`` (name, NCHW float32, channels, mean, std: feed
  ``(x / 255 - mean) / std``), ``view`` (how evaluation brings an image to r x r),
  ``output`` (classification: logits ``[N, C]``; dense tasks: logits at the head's stride,
  to be upsampled to the image);
- per sub-network: id, resolution, width, file, SHA-256, MAdds, parameters, BN status
  (trained, calibrated, interpolated), BNs folded and left, and the check's largest
  difference from PyTorch;
- ``quantization``: for quantized runs, what the float graph holds instead;
- ``opset``, ``rsvision`` version, the source run.

Sub-networks with no BN statistics of their own (post-hoc BN of a width run: the
training-time "shared" statistics) get them recomputed first, as ``rsvision eval`` does
(:func:`rsvision.analysis.calibrate.calibrate_missing`, stored in the run's calibration file); widths
outside the trained range are refused. That runs where the model is (``device``); the graphs
are traced and checked on the CPU, in float32, whatever the device.

The output folder is written whole or not at all: the export is built in a folder beside
it and swapped in when complete. It may be new or empty; an earlier export there is
replaced only with ``overwrite`` (``--overwrite``), and only if it holds nothing but its
manifest and the files it lists; any other non-empty folder is refused.

The check runs a few validation images of the run's task through onnxruntime and through
the switchable PyTorch model at the same sub-network, and fails the export (nothing is
written) when an output differs by more than ``1e-4 x max(1, |output|)``. A detector is
also checked on the first image resized to the non-square sizes :data:`PHOTO_CHECK_SIZES`,
where a graph that resizes photos differently from PyTorch shows.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from rsvision.analysis.calibrate import calibrate_missing
from rsvision.analysis.device import AUTO, on_device, resolve_device, to_device
from rsvision.analysis.latency import REPEATS, WARMUP, check_threads
from rsvision.deploy.manifest import (
    MANIFEST,
    build_manifest,
    read_manifest,
    subnet_file,
    write_manifest,
)
from rsvision.deploy.network import plain_subnet
from rsvision.deploy.onnx import (
    OPSET,
    detection_outputs,
    export_detector,
    export_network,
    has_onnxruntime,
    onnx_ms,
    require,
    run_detector_session,
    run_session,
    session,
)
from rsvision.errors import UserError
from rsvision.io import atomic_dir, file_sha256
from rsvision.nn.bn_stats import calibrated_subnets, unservable
from rsvision.nn.cost import subnet_madds
from rsvision.nn.surgery import eval_mode
from rsvision.nn.switchable import (
    at_subnet,
    subnet_status,
    trained_resolutions,
    trained_subnets,
)
from rsvision.quant.dequantize import compare_quantized
from rsvision.run.folder import load_artifact
from rsvision.subnet import MAX_SCALE, SubNet, SubNetLike, subnets_of

TOLERANCE = 1e-4
CHECK_IMAGES = 4
#: Check images of a quantized run: one flipped activation level shows on few images, so check many.
QUANT_CHECK_IMAGES = 256
#: Sizes (height x width) a detector's export is also checked on: landscape and portrait phone
#: photos and a 4:3 camera's, a quarter of 1080 x 1920 and 3000 x 4000 (a float32 resize rule
#: made them 47 x 85 and 47 x 63 at 48, against PyTorch's 48 x 85 and 48 x 64).
PHOTO_CHECK_SIZES = ((270, 480), (480, 270), (750, 1000))


def resolve_subnets(model: nn.Module, requested: Sequence[SubNetLike] | None, source: str) -> list[SubNet]:
    """The sub-networks to serve: ``requested`` (checked), or the trained (and calibrated) ones.

    A sub-network the run cannot serve is refused in one line: an id that does not parse,
    a width on a run without a width axis, outside the trained width range or without BN
    parameters, a resolution outside the trained range (its BN would be extrapolated)
    unless calibrated statistics exist for it: the line advises ``rsvision calibrate``, or,
    above the size calibration takes (:data:`rsvision.subnet.MAX_SCALE` x the largest trained
    resolution), states that limit.
    """
    if not requested:
        found = trained_subnets(model) + calibrated_subnets(model)
        return subnets_of(found) if found else []
    out = []
    trained = trained_resolutions(model)
    for value in requested:
        try:
            subnet = SubNet.parse(value)
        except ValueError as exc:
            raise UserError(f"{source}: sub-network {value}: {exc}") from None
        reason = unservable(model, subnet)
        if reason:
            raise UserError(f"{source}: sub-network {subnet.id}: {reason}")
        if subnet_status(model, subnet) == "nearest":
            limit = MAX_SCALE * trained[0]  # calibration refuses sizes above it too (rsvision.subnet.check_scale)
            if subnet.resolution > limit:
                raise UserError(
                    f"{source}: resolution {subnet.resolution} is outside the trained range {trained[-1]}..{trained[0]} and more than "
                    f"{MAX_SCALE}x its largest; the limit is {limit}: choose a resolution in range, or one up to {limit} after "
                    f"`rsvision calibrate {source} --res SIZE`"
                )
            raise UserError(
                f"{source}: resolution {subnet.resolution} is outside the trained range {trained[-1]}..{trained[0]} "
                f"(its BN statistics would be extrapolated); run `rsvision calibrate {source} --res {subnet.id}` first or choose a resolution in range"
            )
        out.append(subnet)
    return list(dict.fromkeys(out))


def check_inputs(task, resolutions: Sequence[int], count: int = CHECK_IMAGES) -> tuple[dict[int, torch.Tensor], str]:
    """The first ``count`` validation images of ``task`` at every resolution, or seeded noise when the data is missing."""
    resolutions = sorted(set(resolutions), reverse=True)
    try:
        data = task.eval_dataset(resolutions)
        n = min(count, len(data))
        batch = task.eval_collate([data[i] for i in range(n)])
        return dict(zip(resolutions, batch["images"])), f"{n} validation images"
    except UserError as exc:
        g = torch.Generator().manual_seed(0)
        channels = task.input_format.channels
        inputs = {r: torch.randn(count, channels, r, r, generator=g) for r in resolutions}
        return inputs, f"{count} random inputs (validation data unavailable: {exc})"


def photo_check_images(images: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]] = PHOTO_CHECK_SIZES) -> list[torch.Tensor]:
    """The first of ``images`` (``[C, H, W]``) resized to each of ``sizes`` (bilinear)."""
    first = images[0][None].float()
    return [torch.nn.functional.interpolate(first, size=size, mode="bilinear", align_corners=False)[0] for size in sizes]


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def within_tolerance(diff: float, scale: float) -> bool:
    """``diff`` within ``TOLERANCE x max(1, scale)``, ``scale`` the largest |output|."""
    return diff <= TOLERANCE * max(1.0, scale)


def export_artifact(
    artifact,
    out_dir: str | Path,
    subnets: Sequence[SubNetLike] | None = None,
    *,
    opset: int = OPSET,
    check: int = CHECK_IMAGES,
    overwrite: bool = False,
    on_subnet: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Export ``subnets`` of a loaded run (:class:`rsvision.run.folder.Artifact`) to ``out_dir``; returns the manifest.

    ``check`` images per sub-network go through onnxruntime when it is installed (0: no check).
    ``overwrite`` lets the export replace an earlier one in ``out_dir`` (module docstring).
    ``on_subnet`` is called with each sub-network's manifest entry as it is written. The
    model's mode and device are restored afterwards.
    """
    require("onnx", "onnxscript")
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)
    task, model = artifact.task, artifact.model
    source = str(artifact.path)
    chosen = resolve_subnets(model, subnets, source)
    if not chosen:
        raise UserError(f"{source}: the model has no switchable sub-networks to export")
    calibrate_missing(artifact, chosen)
    checking = check > 0 and has_onnxruntime()
    count = max(check, QUANT_CHECK_IMAGES) if task.recipe.quant is not None else check
    inputs, inputs_text = check_inputs(task, [s.resolution for s in chosen], count) if checking else ({}, "")
    entries, quantization = [], None
    with on_device(model, "cpu"), eval_mode(model):
        with output_folder(out_dir, overwrite) as target:
            for subnet in chosen:
                entry, plain = _export_subnet(model, task, subnet, target, opset, source)
                quantization = plain.quantization
                if checking:
                    entry.update(check_subnet(model, subnet, plain, target / entry["file"], inputs[subnet.resolution]))
                entries.append(entry)
                if on_subnet is not None:
                    on_subnet(entry)
            if checking:
                check_info = {"inputs": inputs_text, "tolerance": f"{TOLERANCE} x max(1, |output|)",
                              **({"non_square": "the first resized to " + ", ".join(f"{h}x{w}" for h, w in PHOTO_CHECK_SIZES)} if any(isinstance(x, list) for x in inputs.values()) else {}),
                              **({"reference": "the folded network, on the images without a near tie at a quantization threshold"} if quantization else {})}
            else:
                check_info = {"inputs": "not checked" + ("" if check <= 0 else ": onnxruntime is not installed")}
            manifest = build_manifest(artifact, entries, quantization, opset, check_info)
            write_manifest(target, manifest)
    return manifest


def _export_subnet(model: nn.Module, task, subnet: SubNet, out_dir: Path, opset: int, source: str):
    """Write one sub-network's graph; returns its manifest entry and the plain network exported
    (:class:`rsvision.nn.fold.PlainSubnet`, with what de-quantization did)."""

    example = task.example_input(subnet.resolution)
    detector = isinstance(example, list)  # a list of images of any size: a detector
    try:
        madds = subnet_madds(model, subnet, example)
        with torch.no_grad(), at_subnet(model, subnet):
            output = model(example)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{source}: the network cannot run at {subnet.resolution}x{subnet.resolution} ({str(exc).splitlines()[0]})") from None
    plain = plain_subnet(model, subnet)
    path = out_dir / f"model_{subnet.id}.onnx"
    if detector:
        masks = "masks" in output[0]
        export_detector(plain.network, example[0], path, masks, opset)
        output_shape = detection_outputs(masks)
    else:
        export_network(plain.network, torch.cat([example, example]), path, opset)
        output_shape = ["N", *list(output.shape)[1:]]
    entry: dict[str, Any] = {"id": subnet.id, "resolution": subnet.resolution}
    if subnet.width is not None:
        entry["width"] = subnet.width
    entry.update(
        file=path.name,
        sha256=file_sha256(path),
        bytes=path.stat().st_size,
        madds=madds,
        parameters=plain.parameters,
        bn_status=subnet_status(model, subnet),
        **plain.fold.as_dict(),
        output_shape=output_shape,
    )
    return entry, plain


def check_subnet(model: nn.Module, subnet: SubNet, plain, path: Path, x: torch.Tensor) -> dict[str, Any]:
    """Largest |onnxruntime - PyTorch| on ``x`` (``check_max_abs_diff``); raises when above the tolerance.

    A float network is compared with the switchable model at ``subnet``. A quantized one is
    compared with the folded network it was exported from, on the images without a near
    tie at a quantization threshold (:func:`rsvision.quant.dequantize.compare_quantized`): a
    value within rounding of a threshold may take the other level in another runtime.
    """
    sess = session(path)
    result: dict[str, Any] = {}
    if isinstance(x, list):
        return {"check_max_abs_diff": check_detector(model, subnet, sess, [*x, *photo_check_images(x)])}
    if plain.quantization is not None:
        compared = compare_quantized(plain.network, lambda z: run_session(sess, z), x)
        diff, scale = compared["max_abs_diff"], compared["max_abs_output"]
        result.update(check_compared=compared["compared"], check_near_ties=compared["near_ties"])
    else:
        with torch.no_grad(), at_subnet(model, subnet):
            reference = model(x)
        diff, scale = max_difference(run_session(sess, x), reference), float(reference.abs().max())
    if not within_tolerance(diff, scale):
        raise RuntimeError(
            f"sub-network {subnet.id}: onnxruntime's output differs from PyTorch's by {diff:.3g} "
            f"(tolerance {TOLERANCE} x max(1, |output|)); nothing was written"
        )
    return {"check_max_abs_diff": diff, **result}


def check_detector(model: nn.Module, subnet: SubNet, sess, images: Sequence[torch.Tensor]) -> float:
    """Largest |onnxruntime - PyTorch| over the detections of ``images``; raises when the two
    keep different detections or differ by more than the tolerance."""
    worst = 0.0
    for image in images:
        with torch.no_grad(), at_subnet(model, subnet):
            reference = model([image])[0]
        exported = run_detector_session(sess, image)
        for name, value in exported.items():
            if value.shape != reference[name].shape:
                raise RuntimeError(f"sub-network {subnet.id}: onnxruntime keeps {len(exported['boxes'])} detections, PyTorch {len(reference['boxes'])}; nothing was written")
            if not value.numel():
                continue
            diff = max_difference(value, reference[name])
            if not within_tolerance(diff, float(reference[name].float().abs().max())):
                raise RuntimeError(f"sub-network {subnet.id}: onnxruntime's {name} differ from PyTorch's by {diff:.3g}; nothing was written")
            worst = max(worst, diff)
    return worst


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """The output folder rule (module docstring): a one-line :class:`UserError` when ``out_dir`` may not be written."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    names = {p.name for p in out_dir.iterdir()}
    if not names:
        return
    try:
        earlier = read_manifest(out_dir)
    except UserError:
        raise UserError(f"{out_dir}: not empty and not an rsvision export; choose a new or empty folder") from None
    others = sorted(names - {MANIFEST} - {e.get("file") for e in earlier["subnets"]})
    if others:
        raise UserError(f"{out_dir}: holds an earlier export and other files ({', '.join(others[:3])}); choose a new or empty folder")
    if not overwrite:
        ids = ", ".join(str(e.get("id")) for e in earlier["subnets"])
        raise UserError(f"{out_dir}: holds an earlier export ({ids}); pass --overwrite to replace it, or choose another folder")


@contextmanager
def output_folder(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A folder to write an export into that replaces ``out_dir`` when the block succeeds
    (:func:`rsvision.io.atomic_dir`), after :func:`check_output_dir`."""
    check_output_dir(out_dir, overwrite)
    with atomic_dir(out_dir) as target:
        yield target


def copy_export(
    source_dir: Path, manifest: dict[str, Any], keep: Sequence[str], out_dir: str | Path, extra: dict[str, Any] | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Copy the entries ``keep`` (ids) of an export into ``out_dir`` with their own manifest (``extra`` added to it),
    under the output folder rule (module docstring)."""
    entries = [e for e in manifest["subnets"] if e["id"] in keep]
    selected = {**manifest, "subnets": entries, **(extra or {})}
    with output_folder(Path(out_dir), overwrite) as target:
        for entry in entries:
            shutil.copyfile(Path(source_dir) / entry["file"], target / entry["file"])
        write_manifest(target, selected)
    return selected


def export_onnx(
    run: str | Path,
    out_dir: str | Path,
    subnets: Sequence[SubNetLike] | None = None,
    *,
    check: int = CHECK_IMAGES,
    overwrite: bool = False,
    on_subnet: Callable[[dict[str, Any]], None] | None = None,
    device: str | torch.device | None = AUTO,
) -> dict[str, Any]:
    """Load a run folder or packed file on ``device`` and export it (see :func:`export_artifact`)."""
    require("onnx", "onnxscript")
    device = resolve_device(device)
    return export_artifact(to_device(load_artifact(run), device), out_dir, subnets, check=check, overwrite=overwrite, on_subnet=on_subnet)


def profile_export(export_dir: str | Path, threads: int | None = None, repeats: int = REPEATS, warmup: int = WARMUP) -> dict[str, Any]:
    """onnxruntime latency at batch 1 and the manifest's MAdds for every sub-network of an export directory.

    Ratios are to the largest resolution of the export.
    """
    check_threads(threads)
    require("onnxruntime")
    manifest = read_manifest(export_dir)
    channels = int(manifest["input"].get("channels", 3))
    rows = []
    for entry in manifest["subnets"]:
        r = int(entry["resolution"])
        path = subnet_file(export_dir, entry)
        example = torch.zeros(channels, r, r) if manifest.get("task") == "det" else torch.zeros(1, channels, r, r)
        rows.append({**{k: entry[k] for k in ("id", "resolution", "madds") if k in entry}, "latency_ms": onnx_ms(path, example, threads, repeats, warmup)})
    largest = max(rows, key=lambda row: row["resolution"])
    for row in rows:
        row["madds_ratio"] = row["madds"] / largest["madds"] if largest.get("madds") else None
        row["latency_ratio"] = row["latency_ms"] / largest["latency_ms"]
    return {
        "export": str(export_dir),
        "task": manifest.get("task"),
        "backend": "onnxruntime (CPU)",
        "threads": threads or os.cpu_count(),
        "batch": 1,
        "rows": rows,
    }

