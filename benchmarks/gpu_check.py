"""A GPU machine's check of rsvision in one command: the paths a GPU run takes, and the numbers
that say whether one GPU is fed and fast.

    python benchmarks/gpu_check.py [--tiny] [--json PATH] [--workdir DIR]

Every check runs rsvision's real code (``rsvision.engine.train`` on a recipe dict, the
``rsvision`` command, ``rsvision.load``, the ONNX export) and prints one line,
``PASS``, ``FAIL`` or ``SKIP`` (with the reason), its seconds and its numbers:

  ddp-mutualnet-private   MutualNet, ``widths.bn: private``, under DDP in a 1-process group
                          (NCCL on CUDA, gloo on a CPU) for 3 steps (issue 34, item 1)
  ddp-detection-metrics   a Faster R-CNN run trained and evaluated in that group: COCO AP
                          computed, the metric states on the run's device (item 2)
  ddp-channels-last-auto  ``train.channels_last: auto`` in that group, with ``train.sync_bn``
                          on CUDA (item 5)
  recipe-widths-sync-bn   a recipe with ``widths`` and ``train.sync_bn`` refused when it is read (item 5)
  lq-autocast-bf16/-fp16  a network converted by ``quantize_model`` fits, in a training
                          forward under autocast, the activation basis that the same values
                          give in float32 (relative error of the fitted basis; item 3)
  compiled-run-loads      a ``train.compile: true`` run loads, evaluates and predicts (item 4)
  fp16-grad-scaler        a run in ``train.mixed_precision: fp16`` (CUDA only) ends with a
                          finite loss and loads
  rsnet-step              ResNet-18 RS-Net at 224, 192, 160, 128, 96, batch 256, in bf16:
                          images/s of rsvision's training step (the engine's loop on one
                          real batch) and of a plain PyTorch loop of the same backbone, a BN
                          per resolution and the MRED loss (benchmarks/plain_rsnet.py), their
                          ratio (FAIL below 0.8); the single-resolution step at 224 beside them
  loader                  images/s of one loader worker (rsvision's training dataset and
                          collation, one thread) on generated 500x375 JPEGs; the cores one
                          GPU needs to feed the RS-Net step and the 224 step
  cli-train-jpeg          ``rsvision train`` on those JPEGs (``imagefolder``), a few steps
  gpu-vs-cpu              the same recipe and seed, a few fp32 steps on the GPU and on the
                          CPU: the largest weight difference (relative to the tensor's scale)
  onnx-export             the GPU-trained run exported to ONNX (with onnxruntime's check) and predicting
  compile-step            the RS-Net step with ``train.compile: true`` (224 and 128): seconds
                          to the first step, images/s against eager

Without ``--tiny`` the checks use the sizes above, meant to take under 8 minutes on one GPU,
most of it Inductor compiling (not yet timed on a GPU). ``--tiny`` runs every check at tiny
sizes on whatever device is present, so the suite runs the script on a CPU
(tests/benchmarks/test_gpu_check.py) and it cannot rot: there the group is gloo, the steps
run in fp32 (a CPU without bf16 instructions emulates it, 20x slower), fp16 is skipped (it
needs CUDA), GPU vs CPU trains both runs on the CPU and says SKIP, and ``torch.compile``
wraps the network as always while dynamo is switched off (tracing takes a minute on two
cores, inductor's C++ several), so its timings mean nothing there. Exit status 1 when any
check fails; ``--json`` writes every result with its numbers after each check.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import gc
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch._dynamo
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import Metric

import rsvision
from rsvision.analysis.evaluate import evaluate_artifact
from rsvision.data.sampling import EpochSampler, EpochSeeded
from rsvision.deploy.export import export_onnx
from rsvision.engine import train, trainer
from rsvision.errors import UserError
from rsvision.quant import LQActQuantizer, quantize_model
from rsvision.recipe import Recipe, validate_recipe
from rsvision.registry import BACKBONES, TASKS
from rsvision.report import training_progress
from rsvision.run.folder import load_artifact
from rsvision.tasks.detection import DetectionTask

import plain_rsnet  # benchmarks/plain_rsnet.py, beside this script: the plain RS-Net's switchable BN and MRED loss


@dataclass(frozen=True)
class Sizes:
    """How big each check is: the GPU sizes, or ``--tiny``."""

    #: the RS-Net step: backbone, its arguments, resolutions, batch, warm-up and timed steps
    step_backbone: str
    step_args: dict
    step_resolutions: tuple[int, ...]
    step_batch: int
    warmup: int
    timed: int
    #: the compiled step's resolutions
    compile_resolutions: tuple[int, ...]
    #: generated JPEGs per class (4 classes) for training, and for validation
    jpegs_per_class: int
    val_per_class: int
    #: ``rsvision train`` on the JPEGs
    cli_backbone: str
    cli_args: dict
    cli_resolutions: tuple[int, ...]
    cli_batch: int
    cli_steps: int
    #: values through the LQ quantizer (a 2M-value ReLU map: the issue's measurement)
    lq_values: int
    #: seconds before the ``rsvision train`` process is stopped
    cli_timeout: int


FULL = Sizes(
    step_backbone="resnet18", step_args={}, step_resolutions=(224, 192, 160, 128, 96), step_batch=256, warmup=5, timed=20,
    compile_resolutions=(224, 128), jpegs_per_class=128, val_per_class=8,
    cli_backbone="resnet18", cli_args={}, cli_resolutions=(224, 192, 160, 128, 96), cli_batch=64, cli_steps=8,
    lq_values=2_000_000, cli_timeout=300,
)  # fmt: skip
TINY = Sizes(
    step_backbone="resnet8", step_args={"width": 8}, step_resolutions=(32, 28, 24, 20, 16), step_batch=8, warmup=1, timed=3,
    compile_resolutions=(32, 16), jpegs_per_class=6, val_per_class=2,
    cli_backbone="resnet8", cli_args={"width": 8}, cli_resolutions=(32, 24, 16), cli_batch=4, cli_steps=2,
    lq_values=1 << 18, cli_timeout=120,
)  # fmt: skip

#: A detector small enough to train in seconds (the detection tests' settings).
SMALL_DETECTOR = {
    "fpn_channels": 16, "anchor_sizes": [8, 16, 32, 64], "box_representation": 32, "rpn_pre_nms_top_n_train": 50,
    "rpn_post_nms_top_n_train": 20, "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20,
    "box_batch_size_per_image": 16, "box_score_thresh": 0.0,
}  # fmt: skip


@dataclass
class Result:
    name: str
    status: str
    detail: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        numbers = " ".join(f"{k}={_fmt(v)}" for k, v in self.numbers.items())
        return f"{self.status} {self.name:<24} {self.seconds:6.1f} s  {self.detail}" + (f"  [{numbers}]" if numbers else "")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class Context:
    """What the checks share: the device, the sizes, a scratch folder and earlier results."""

    device: torch.device
    sizes: Sizes
    tiny: bool
    work: Path
    found: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Recipes and runs


def cls_recipe(out: Path, **sections: Any) -> dict:
    """A tiny classification recipe on the built-in synthetic data; ``sections`` replace or extend its sections."""
    data = {
        "task": "cls",
        "resolutions": [16, 12, 8],
        # width 8: oneDNN 3.12's channels-last convolution backward corrupts the heap at width 4 on some x86 CPUs
        "model": {"backbone": "resnet8", "num_classes": 4, "backbone_args": {"width": 8}},
        "data": {"dataset": "synthetic", "batch_size": 8, "workers": 0, "args": {"train_size": 32, "val_size": 8, "image_size": 20, "num_classes": 4}},
        "train": {"epochs": 1, "lr": 0.05, "weight_decay": 0.0, "seed": 0, "max_steps_per_epoch": 3, "channels_last": False},
        "output_dir": str(out),
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) and isinstance(value, dict) else value
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def accelerate_env(env: dict[str, str]) -> Iterator[None]:
    """Accelerate's process-wide state rebuilt under the environment ``env`` (a process group's
    RANK, WORLD_SIZE, ...; ``ACCELERATE_USE_CPU``), then the process as it was."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        AcceleratorState._reset_state(reset_partial_state=True)


def group_env(device: torch.device) -> dict[str, str]:
    """A process group of one process: NCCL on CUDA, gloo on a CPU (Accelerate's choice)."""
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    if device.type == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads())))
    return env


@contextmanager
def watching_prepare() -> Iterator[dict[str, Any]]:
    """What ``Accelerator.prepare`` made of the training method (DDP or not), and the group it ran in."""
    seen: dict[str, Any] = {}
    real = Accelerator.prepare

    def prepare(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        seen["wrapper"] = type(out[0]).__name__
        weight = next(p for p in out[0].parameters() if p.dim() == 4)
        seen["layout_at_wrap"] = "channels_last" if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous() else "contiguous"
        if dist.is_initialized():
            seen["backend"], seen["world_size"] = dist.get_backend(), dist.get_world_size()
        return out

    Accelerator.prepare = prepare
    try:
        yield seen
    finally:
        Accelerator.prepare = real


def in_group(ctx: Context, recipe: Recipe, name: str) -> tuple[Path, dict[str, Any]]:
    """``train(recipe)`` in a 1-process group, with what prepare made of the method."""
    with accelerate_env(group_env(ctx.device)), watching_prepare() as seen:
        run = train(recipe, name=name, quiet=True)
    if seen.get("wrapper") != "DistributedDataParallel" or seen.get("world_size") != 1:
        raise RuntimeError(f"the run was not data-parallel in a 1-process group: {seen}")
    return run, seen


def progress_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "state" / "progress.json").read_text())


def losses_of(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def a_picture(size: tuple[int, int] = (40, 30)) -> np.ndarray:
    return (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The fixes of issue 34, in a 1-process group


def check_mutualnet_private(ctx: Context) -> Result:
    """Item 1: with private BN a step trains only the drawn sub-networks' BN groups; DDP must
    be told parameters may go without a gradient, or the second step stops."""
    recipe = validate_recipe(
        cls_recipe(ctx.folder("private"), resolutions=[16, 12], widths={"list": [1.0, 0.5], "divisor": 2, "bn": "private", "sample": 2})
    )
    run, seen = in_group(ctx, recipe, "private")
    steps = progress_of(run)["step"]
    status = "PASS" if steps >= 2 else "FAIL"
    return Result("ddp-mutualnet-private", status, f"{steps} steps under DDP over {seen['backend']}", {"steps": steps})


def check_detection_metrics(ctx: Context) -> Result:
    """Item 2: COCO AP computed in the group (NCCL cannot gather CPU tensors), its states on the run's device."""
    made: list[Any] = []
    real = DetectionTask.metrics

    def metrics(self):
        m = real(self)
        made.append(m)
        return m

    data = {
        "task": "det", "resolutions": [64, 32],
        "model": {"backbone": "resnet8", "backbone_args": {"width": 4, "stem_stride": 4}, "head": "fasterrcnn", "num_classes": 3, "head_args": SMALL_DETECTOR},
        "data": {"dataset": "synthetic_det", "normalize": False, "batch_size": 2, "workers": 0,
                 "args": {"train_size": 4, "val_size": 2, "canvas": 64, "min_item": 10, "max_item": 30}},
        "train": {"epochs": 1, "lr": 0.01, "seed": 0, "channels_last": False, "max_steps_per_epoch": 1},
        "output_dir": str(ctx.folder("det")),
    }  # fmt: skip
    DetectionTask.metrics = metrics
    try:
        run, seen = in_group(ctx, validate_recipe(data), "det")
    finally:
        DetectionTask.metrics = real
    rows = json.loads((run / "rsvision.json").read_text())["metrics"]
    states = {str(m.device) for made_one in made for m in vars(made_one).values() if isinstance(m, Metric)}
    on_device = bool(states) and all(torch.device(s).type == ctx.device.type for s in states)
    aps = {row["subnet"]: row["ap"] for row in rows if "ap" in row}
    ok = set(aps) == {"64", "32"} and on_device
    detail = f"AP computed under {seen['backend']}; metric states on {sorted(states) or 'no device'}"
    return Result("ddp-detection-metrics", "PASS" if ok else "FAIL", detail, {f"ap_{k}": v for k, v in aps.items()})


def check_channels_last_auto(ctx: Context) -> Result:
    """Item 5: the timed layout choice trains in the group (with SyncBatchNorm on CUDA), and
    is made before DDP wraps the network (its gradient buckets keep the wrapped layout)."""
    train_section = {"channels_last": "auto", "max_steps_per_epoch": 6, "sync_bn": ctx.cuda}
    recipe = validate_recipe(cls_recipe(ctx.folder("layout"), train=train_section))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run, seen = in_group(ctx, recipe, "layout")
    layout = json.loads((run / "rsvision.json").read_text())["memory_layout"]
    buckets = any("bucket view strides" in str(w.message) for w in caught)
    timed = "ms a step" in layout["reason"]
    ok = timed and seen["layout_at_wrap"] == layout["layout"] and not buckets
    bn = "SyncBatchNorm" if ctx.cuda else "BatchNorm (train.sync_bn is CUDA only)"
    detail = f"{layout['layout']} ({layout['reason']}), {bn}, {seen['backend']}; DDP wrapped a {seen['layout_at_wrap']} network"
    if buckets:
        detail += "; DDP warned its gradient buckets have the other layout"
    return Result("ddp-channels-last-auto", "PASS" if ok else "FAIL", detail)


def check_widths_sync_bn_refused(ctx: Context) -> Result:
    """Item 5: a width recipe with sync_bn is refused when the recipe is read, not at the first narrower forward."""
    data = cls_recipe(ctx.folder("refused"), widths={"range": [0.5, 1.0]}, train={"sync_bn": True})
    try:
        validate_recipe(data)
    except UserError as exc:
        ok = "sync_bn" in str(exc)
        return Result("recipe-widths-sync-bn", "PASS" if ok else "FAIL", f"refused: {str(exc).splitlines()[0]}")
    return Result("recipe-widths-sync-bn", "FAIL", "validate_recipe accepted widths with train.sync_bn")


def lq_network(device: torch.device) -> tuple[nn.Module, LQActQuantizer]:
    """A network converted by ``quantize_model`` (2-bit weights and activations) whose
    activation quantizer sees the input's values themselves: a 1x1 convolution of weight 1
    (the first layer stays float), a ReLU, the quantized convolution, and a last, float one.
    Under autocast the quantizer gets the values in half precision, the rounded input exactly."""
    first = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.ones_(first.weight)
    layers = nn.Sequential(first, nn.ReLU(), nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(), nn.Conv2d(1, 1, 1))
    net = quantize_model(layers, 2, 2, example_input=torch.rand(1, 1, 4, 4))
    (quantizer,) = [m for m in net.modules() if isinstance(m, LQActQuantizer)]
    return net.to(device).train(), quantizer


def check_lq_autocast(ctx: Context, dtype: torch.dtype) -> Result:
    """Item 3: the activation basis a quantized network fits in a training forward under
    autocast (the quantizer's input in half precision) equals the basis fitted from the
    same values in float32."""
    name = f"lq-autocast-{'bf16' if dtype is torch.bfloat16 else 'fp16'}"
    side = int(math.sqrt(ctx.sizes.lq_values))
    g = torch.Generator().manual_seed(0)
    values = torch.randn(1, 1, side, side, generator=g).to(dtype).float().to(ctx.device)  # representable in ``dtype``
    fitted = {}
    for label, autocast in (("fp32", False), ("half", True)):
        net, quantizer = lq_network(ctx.device)
        before = quantizer.basis.clone()
        with torch.autocast(ctx.device.type, dtype=dtype, enabled=autocast):
            net(values)
        fitted[label] = (quantizer.basis - 0.9 * before) / 0.1  # v* of the moving average v <- 0.9 v + 0.1 v*
        if label == "fp32" and torch.allclose(quantizer.basis, before):
            return Result(name, "FAIL", "the float32 network's activation basis did not move in a training forward")
    error = float(((fitted["half"] - fitted["fp32"]).abs().max() / fitted["fp32"].abs().max()).cpu())
    detail = f"{side * side} ReLU values: fitted basis {fitted['half'].tolist()} vs float32 {fitted['fp32'].tolist()}"
    return Result(name, "PASS" if error <= 1e-3 else "FAIL", detail, {"relative_error": error})


def check_compiled_run_loads(ctx: Context) -> Result:
    """Item 4: a ``train.compile: true`` run folder loads, evaluates and predicts."""
    recipe = validate_recipe(cls_recipe(ctx.folder("compiled"), resolutions=[16, 8], train={"compile": True}))
    run = train(recipe, name="compiled", quiet=True)
    rows = evaluate_artifact(load_artifact(run))
    top1 = {row["subnet"]: row["top1"] for row in rows if row["subnet"] in ("16", "8")}
    predicted = rsvision.load(run).predict(a_picture())
    ok = set(top1) == {"16", "8"} and 0 <= predicted.index < 4
    return Result("compiled-run-loads", "PASS" if ok else "FAIL", f"evaluated and predicted ({compile_backend(ctx)})", {f"top1_{k}": v for k, v in top1.items()})


def check_fp16(ctx: Context) -> Result:
    if not ctx.cuda:
        return Result("fp16-grad-scaler", "SKIP", "train.mixed_precision: fp16 needs CUDA")
    recipe = validate_recipe(cls_recipe(ctx.folder("fp16"), train={"mixed_precision": "fp16", "max_steps_per_epoch": 6}))
    run = train(recipe, name="fp16", quiet=True)
    losses = losses_of(run)
    predicted = rsvision.load(run).predict(a_picture())
    ok = all(math.isfinite(v) for v in losses) and 0 <= predicted.index < 4
    return Result("fp16-grad-scaler", "PASS" if ok else "FAIL", "trained with a grad scaler, loaded and predicted", {"loss": losses[-1]})


# ---------------------------------------------------------------------------------------------
# Throughput: the RS-Net step, the loader


def step_recipe(ctx: Context, resolutions: tuple[int, ...], **train_fields: Any) -> Recipe:
    s = ctx.sizes
    image = max(resolutions) * 8 // 7  # the crop is taken from a larger image, as from a photo
    mp = "bf16" if ctx.cuda else "no"  # CPUs without bf16 instructions emulate it, 20x slower
    return validate_recipe(
        cls_recipe(
            ctx.folder("step"),
            resolutions=list(resolutions),
            model={"backbone": s.step_backbone, "num_classes": 10, "backbone_args": s.step_args},
            data={"batch_size": s.step_batch, "args": {"train_size": s.step_batch, "val_size": 2, "image_size": image, "num_classes": 10}},
            train={"lr": 0.1, "weight_decay": 1e-4, "mixed_precision": mp, "channels_last": "device", "max_steps_per_epoch": None, **train_fields},
        )
    )


def engine_images_per_s(recipe: Recipe, warmup: int, timed: int) -> tuple[float, float]:
    """Images/s of the engine's training step (rsvision.engine.trainer: the prepared method,
    backward, the finiteness check, the optimiser, the logs) on one real batch of the
    recipe's loader, repeated; and the seconds of the first step."""
    loop = trainer._prepare(recipe, "step", resume=False, quiet=True)
    batch = next(iter(loop.loader))
    bar = training_progress(disable=True)
    device = loop.accelerator.device

    def run(steps: int) -> float:
        loop.loader, loop.steps_per_epoch = [batch] * steps, steps
        loop.updates_per_epoch = math.ceil(steps / recipe.train.grad_accum)
        synchronize(device)
        start = time.perf_counter()
        trainer._train_epoch(loop, 0, bar)
        synchronize(device)
        return time.perf_counter() - start

    first = run(1)
    run(warmup)
    images_per_s = timed * recipe.data.batch_size / run(timed)
    del loop, batch
    gc.collect()  # the next measurement gets the device's memory
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return images_per_s, first


def plain_images_per_s(ctx: Context, resolutions: tuple[int, ...], warmup: int, timed: int) -> float:
    """Images/s of a plain PyTorch loop: the backbone rsvision builds, a BN per resolution
    and a linear classifier (benchmarks/plain_rsnet.py's ``Net``), the MRED loss, SGD; the
    same batch, precision and layout as rsvision's step (bf16 and channels-last on CUDA)."""
    s, device = ctx.sizes, ctx.device
    torch.manual_seed(0)
    layout = torch.channels_last if ctx.cuda else torch.contiguous_format
    backbone = BACKBONES.get(s.step_backbone)(**s.step_args)
    model = plain_rsnet.Net(backbone, 10, len(resolutions)).to(device, memory_format=layout)
    alpha = nn.Parameter(torch.ones(len(resolutions), device=device))
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": rest + [alpha], "weight_decay": 0.0}], lr=0.1, momentum=0.9)
    images = torch.randn(s.step_batch, 3, resolutions[0], resolutions[0], device=device)
    target = torch.randint(0, 10, (s.step_batch,), device=device)

    def step() -> None:
        xs = [images] + [F.interpolate(images, size=(r, r), mode="bilinear", antialias=True) for r in resolutions[1:]]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.cuda):
            logits = [z.float() for z in model([x.contiguous(memory_format=layout) for x in xs])]
            loss = plain_rsnet.mred_loss(logits, alpha, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # fixed sizes: what a careful user sets
    try:
        for _ in range(warmup + 1):
            step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(timed):
            step()
        synchronize(device)
        return timed * s.step_batch / (time.perf_counter() - start)
    finally:
        torch.backends.cudnn.benchmark = benchmark


def check_rsnet_step(ctx: Context) -> Result:
    s = ctx.sizes
    res = s.step_resolutions
    ours, _ = engine_images_per_s(step_recipe(ctx, res), s.warmup, s.timed)
    plain = plain_images_per_s(ctx, res, s.warmup, s.timed)
    single, _ = engine_images_per_s(step_recipe(ctx, res[:1]), s.warmup, s.timed)
    ctx.found["step"] = {"rsnet": ours, "single": single}
    ratio = ours / plain
    numbers = {"rsvision_images_per_s": ours, "plain_images_per_s": plain, "ratio": ratio, f"single_{res[0]}_images_per_s": single}
    detail = f"{s.step_backbone} RS-Net at {','.join(map(str, res))}, batch {s.step_batch}, {precision(ctx)}: rsvision / plain loop"
    if ctx.tiny:  # a few tiny steps time the machine's other work as much as the step
        return Result("rsnet-step", "PASS", detail + " (timings not judged at tiny sizes)", numbers)
    # rsvision's step may cost a little more than the bare loop (logs, the finiteness check); much more is a regression
    return Result("rsnet-step", "PASS" if ratio >= 0.8 else "FAIL", detail, numbers)


def write_jpegs(root: Path, per_class: int, val_per_class: int) -> Path:
    """``root/{train,val}/<class>/*.jpg``: 500x375 JPEGs (quality 90) of smooth colour fields
    with grain, about the size and content statistics of an ImageNet photo's file."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c in range(4):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((500, 375), Image.BICUBIC)
                pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 8, (375, 500, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


def jpeg_recipe(ctx: Context, root: Path, out: Path, **train_fields: Any) -> dict:
    s = ctx.sizes
    return cls_recipe(
        out,
        resolutions=list(s.cli_resolutions),
        model={"backbone": s.cli_backbone, "num_classes": 4, "backbone_args": s.cli_args},
        data={"dataset": "imagefolder", "root": str(root), "batch_size": s.cli_batch, "args": {}, "crop_scale": [0.08, 1.0]},
        train={"max_steps_per_epoch": s.cli_steps, **train_fields},
    )


def check_loader(ctx: Context) -> Result:
    s = ctx.sizes
    root = write_jpegs(ctx.folder("jpegs"), s.jpegs_per_class, s.val_per_class)
    ctx.found["jpegs"] = root
    recipe = validate_recipe(jpeg_recipe(ctx, root, ctx.folder("loader"), channels_last=False), "loader")
    task = TASKS.get("cls")(recipe)
    dataset = EpochSeeded(task.train_dataset(), 0)
    loader = DataLoader(dataset, batch_size=4, sampler=EpochSampler(len(dataset), 0), collate_fn=task.collate, num_workers=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        start = time.perf_counter()
        images = sum(len(batch["target"]) for batch in loader)
        per_worker = images / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    numbers: dict[str, Any] = {"images_per_s_per_worker": per_worker, "ms_per_image": 1000 / per_worker}
    step = ctx.found.get("step")
    detail = f"{images} JPEGs of 500x375, crop to {s.cli_resolutions[0]}"
    if step:
        numbers["cores_for_rsnet_step"] = step["rsnet"] / per_worker
        numbers["cores_for_single_step"] = step["single"] / per_worker
        detail += "; cores = the step's images/s / one worker's"
    else:
        detail += "; no step measurement, so no core count"
    return Result("loader", "PASS", detail, numbers)


def check_cli_train(ctx: Context) -> Result:
    s = ctx.sizes
    root = ctx.found.get("jpegs") or write_jpegs(ctx.folder("jpegs"), s.jpegs_per_class, s.val_per_class)
    out = ctx.folder("cli")
    workers = 0 if ctx.tiny else max(1, min(8, (os.cpu_count() or 1) - 2))
    data = jpeg_recipe(ctx, root, out / "runs", channels_last="device", mixed_precision="bf16" if ctx.cuda else "no")
    data["data"]["workers"] = workers
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rsvision.cli", "train", str(path), "--quiet"], capture_output=True, text=True, timeout=s.cli_timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return Result("cli-train-jpeg", "FAIL", f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    (run,) = (out / "runs").iterdir()
    rows = json.loads((run / "rsvision.json").read_text())["metrics"]
    evaluated = sorted(int(r["subnet"]) for r in rows if r["subnet"].isdigit())
    ok = evaluated == sorted(s.cli_resolutions)
    detail = f"{s.cli_backbone}, {s.cli_steps} steps of {s.cli_batch}, {workers} workers, then evaluated at {evaluated}"
    return Result("cli-train-jpeg", "PASS" if ok else "FAIL", detail, {"seconds_end_to_end": seconds})


# ---------------------------------------------------------------------------------------------
# The GPU against the CPU; export; compile


def check_gpu_vs_cpu(ctx: Context) -> Result:
    def weights(env: dict[str, str], name: str) -> tuple[Path, dict[str, torch.Tensor]]:
        recipe = validate_recipe(cls_recipe(ctx.folder(f"vs-{name}")))
        with accelerate_env(env):
            run = train(recipe, name=name, quiet=True)
        return run, load_file(str(run / "model.safetensors"))

    run, here = weights({}, "device")
    ctx.found["device_run"] = run
    _, cpu = weights({"ACCELERATE_USE_CPU": "true"}, "cpu")
    worst, worst_key = 0.0, ""
    for key, a in here.items():
        if not a.is_floating_point():
            continue
        diff = float((a - cpu[key]).abs().max() / max(1.0, float(cpu[key].abs().max())))
        if diff > worst:
            worst, worst_key = diff, key
    numbers = {"max_abs_diff_over_scale": worst, "worst_tensor": worst_key or "none"}
    if not ctx.cuda:
        return Result("gpu-vs-cpu", "SKIP", "no CUDA device: both runs trained on the CPU", numbers)
    tf32 = torch.backends.cudnn.allow_tf32
    detail = f"3 fp32 steps of resnet8 on {torch.cuda.get_device_name(ctx.device)} and on the CPU (cuDNN TF32 convolutions: {tf32})"
    return Result("gpu-vs-cpu", "PASS" if worst <= 1e-3 else "FAIL", detail, numbers)


def check_onnx_export(ctx: Context) -> Result:
    run = ctx.found.get("device_run")
    if run is None:
        return Result("onnx-export", "FAIL", "no run trained on the device (gpu-vs-cpu failed first)")
    out = ctx.work / "onnx"
    manifest = export_onnx(run, out, [16] if ctx.tiny else None)  # --tiny: the largest only (each takes seconds to trace on a CPU)
    diffs = [e["check_max_abs_diff"] for e in manifest["subnets"] if "check_max_abs_diff" in e]
    predicted = rsvision.load(out).predict(a_picture())
    ok = bool(manifest["subnets"]) and len(diffs) == len(manifest["subnets"]) and 0 <= predicted.index < 4
    count = len(manifest["subnets"])
    detail = f"run trained on {ctx.device.type}: {count} sub-network{'s' if count != 1 else ''} exported, checked by onnxruntime, predicting"
    return Result("onnx-export", "PASS" if ok else "FAIL", detail, {"max_abs_diff": max(diffs) if diffs else float("nan")})


def compile_backend(ctx: Context) -> str:
    return "dynamo off: --tiny on a CPU runs the compiled module eagerly" if ctx.tiny and not ctx.cuda else "inductor"


def precision(ctx: Context) -> str:
    return "bf16" if ctx.cuda else "fp32 (bf16 is emulated on a CPU)"


def check_compile_step(ctx: Context) -> Result:
    s = ctx.sizes
    res = s.compile_resolutions
    eager, _ = engine_images_per_s(step_recipe(ctx, res), s.warmup, s.timed)
    compiled, first = engine_images_per_s(step_recipe(ctx, res, compile=True), s.warmup, s.timed)
    numbers = {"first_step_s": first, "compiled_images_per_s": compiled, "eager_images_per_s": eager, "speedup": compiled / eager}
    detail = f"{s.step_backbone} RS-Net at {','.join(map(str, res))}, {precision(ctx)} ({compile_backend(ctx)})"
    return Result("compile-step", "PASS", detail, numbers)


CHECKS: list[tuple[str, Callable[[Context], Result]]] = [
    ("ddp-mutualnet-private", check_mutualnet_private),
    ("ddp-detection-metrics", check_detection_metrics),
    ("ddp-channels-last-auto", check_channels_last_auto),
    ("recipe-widths-sync-bn", check_widths_sync_bn_refused),
    ("lq-autocast-bf16", functools.partial(check_lq_autocast, dtype=torch.bfloat16)),
    ("lq-autocast-fp16", functools.partial(check_lq_autocast, dtype=torch.float16)),
    ("compiled-run-loads", check_compiled_run_loads),
    ("fp16-grad-scaler", check_fp16),
    ("rsnet-step", check_rsnet_step),
    ("loader", check_loader),
    ("cli-train-jpeg", check_cli_train),
    ("gpu-vs-cpu", check_gpu_vs_cpu),
    ("onnx-export", check_onnx_export),
    ("compile-step", check_compile_step),
]


def run_check(name: str, check: Callable[[Context], Result], ctx: Context) -> Result:
    start = time.perf_counter()
    try:
        result = check(ctx)
    except Exception as exc:  # a check that raises fails with its one-line reason; the others still run
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = (str(exc).strip().splitlines() or [""])[0][:300]
        result = Result(name, "FAIL", f"{type(exc).__name__}: {message} ({Path(where.filename).name}:{where.lineno})")
    result.seconds = time.perf_counter() - start
    return result


@contextmanager
def tiny_compile(ctx: Context) -> Iterator[None]:
    """For ``--tiny`` on a CPU, ``train.compile`` compiles the network as always (the run
    folder and its loading see what a compiled run writes) but dynamo runs it eagerly:
    tracing alone takes a minute on two cores, inductor's C++ several."""
    if ctx.tiny and not ctx.cuda:
        with torch._dynamo.config.patch(disable=True):
            yield
    else:
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on whatever device is present (the suite's dry run)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--workdir", type=Path, help="keep the runs and JPEGs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"gpu_check: {card}, {cores} CPU cores, torch {torch.__version__}, {'tiny sizes' if args.tiny else 'GPU sizes'}", flush=True)
    faulthandler.enable()  # a native crash still says where it happened
    results: list[Result] = []

    def report() -> None:  # after every check, so a crash keeps the results before it
        if args.json:
            done = {"device": card, "cpu_cores": cores, "torch": torch.__version__, "tiny": args.tiny, "seconds": sum(r.seconds for r in results)}
            args.json.write_text(json.dumps({**done, "checks": [asdict(r) for r in results]}, indent=2, default=str))

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        ctx = Context(device, TINY if args.tiny else FULL, args.tiny, args.workdir or Path(tmp))
        with tiny_compile(ctx):
            for name, check in CHECKS:
                results.append(run_check(name, check, ctx))
                print(results[-1].line(), flush=True)
                report()
    failed = [r.name for r in results if r.status == "FAIL"]
    total = sum(r.seconds for r in results)
    print(f"gpu_check: {len(results) - len(failed)} of {len(results)} passed or skipped in {total:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
