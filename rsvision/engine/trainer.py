"""The training loop, on HF Accelerate, for every task and training method.

The engine prepares the training method (network + criterion, see :mod:`rsvision.training`),
the optimiser and the data; accumulates gradients over ``train.grad_accum`` micro-batches;
calls backward, steps the optimiser with the learning rate of the schedule (per update);
evaluates through the task's metrics after each epoch (inside the method's
``evaluation`` context, e.g. recomputed BN statistics); and writes the run folder
atomically. It knows nothing of labels, logits, ensembles or sub-network axes.

Exactness: the data order and every sample's augmentation are functions of (seed, epoch,
index) (:mod:`rsvision.data.sampling`), and the training state is saved after every epoch,
so ``--resume`` after a crash (even SIGKILL mid-epoch, with any number of workers) ends
with the weights of an uninterrupted run. Each epoch's last accumulation window is
stepped even when shorter than ``grad_accum`` (its gradient is the mean over its
micro-batches), so no micro-batch leaks into the next epoch, and the schedule counts
exactly the optimiser updates that happen.

Host synchronisations: reading a number computed on a GPU (``float()``, ``.item()``) makes
the host wait until the device has finished all its queued work, so a step that reads its
losses leaves the GPU idle while the next batch is being set up. The steps' logged numbers
therefore stay on the device (:class:`StepLog`) and are read, with every unread step's loss
checked for finiteness, in one copy every :data:`READ_EVERY` steps and at the end of each
epoch; a non-finite loss stops the run there, naming the first step whose loss was
non-finite (the optimiser has stepped on it and on the steps up to the reading, but the
run folder keeps the last finished epoch).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType, broadcast_object_list, parse_flag_from_env, send_to_device, set_seed,
)
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from rsvision.data.sampling import EpochSampler, EpochSeeded
from rsvision.data.workers import loader_workers
from rsvision.engine.evaluate import evaluate
from rsvision.engine.layout import LayoutChoice, to_layout
from rsvision.engine.schedule import learning_rate
from rsvision.engine.tracking import epoch_values, tracker_config, trackers
from rsvision.errors import UserError
from rsvision.io import recover_dir, replace_dir, write_json
from rsvision.nn.cost import subnet_madds
from rsvision.recipe import Recipe, check_unused
from rsvision.registry import TASKS, load_plugins
from rsvision.report import console, training_progress
from rsvision.run.files import BEST, EMA, LOG, META, RECIPE, STATE, progress_file
from rsvision.run.folder import save_run
from rsvision.run.metadata import run_metadata
from rsvision.tasks.base import Task
from rsvision.training import StepContext, StepOutput, TrainingMethod, method_for
from rsvision.training.base import frozen_state


#: Training steps between two readings of the logged numbers from the device (module docstring).
READ_EVERY = 25


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run folder keeps the last finished epoch."""


@dataclass
class RunProgress:
    """What a resumed run needs besides the tensors: where it stopped and what it logged."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    layout: str | None = None
    layout_reason: str | None = None
    #: The best evaluated epoch by ``train.keep_best``: ``{"epoch", "value"}``.
    best: dict[str, Any] | None = None


def synchronized_bn(model: nn.Module) -> nn.Module:
    """Every BN (each switchable group included) as a SyncBatchNorm; timm's conversion also
    keeps the activation of its norm + activation layers (``BatchNormAct2d``)."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def build_optimizer(method: TrainingMethod, recipe: Recipe) -> torch.optim.Optimizer:
    """``train.optimizer`` over the method's parameter groups (the network with weight decay)."""
    t = recipe.train
    groups = method.param_groups(t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)


#: The environment variable through which ``accelerate launch`` passes its ``--mixed_precision``
#: (or the one saved with ``accelerate config``) to the processes it starts.
LAUNCHER_PRECISION = "ACCELERATE_MIXED_PRECISION"
PRECISIONS = ("no", "fp16", "bf16")


def mixed_precision(recipe: Recipe) -> tuple[str, str]:
    """The run's mixed precision and where it comes from: ``train.mixed_precision`` when the
    recipe sets it, else the launcher's (:data:`LAUNCHER_PRECISION`), else ``no``."""
    launcher = os.environ.get(LAUNCHER_PRECISION, "").strip().lower()
    if recipe.train.mixed_precision is not None:
        mp, source = recipe.train.mixed_precision, "recipe (train.mixed_precision)"
        if launcher and launcher != mp:
            source += f"; the launcher's {launcher} is not used"
    elif launcher:
        if launcher not in PRECISIONS:
            raise UserError(f"{LAUNCHER_PRECISION}={launcher} (accelerate launch --mixed_precision): rsvision trains in {', '.join(PRECISIONS)}")
        mp, source = launcher, f"launcher ({LAUNCHER_PRECISION})"
    else:
        mp, source = "no", "default (neither the recipe nor the launcher sets one)"
    if mp == "fp16" and not torch.cuda.is_available():
        raise UserError(f"{recipe.source}: mixed precision fp16 (from the {source.split(' ')[0]}) needs a GPU; use bf16 on CPU")
    return mp, source


def make_accelerator(recipe: Recipe, method: TrainingMethod, run_dir: Path | None = None) -> Accelerator:
    """Accelerate for ``recipe``'s precision (resolved by :func:`mixed_precision`) and its
    trackers (``train.log_with``, writing into ``run_dir``); its DDP looks for parameters
    without a gradient only when ``method`` says its step can leave some."""
    mp = mixed_precision(recipe)[0]
    # Accelerate keeps its settings process-wide; forget the previous run's (the process
    # group, if any, stays) so that several runs in one process can differ in precision.
    AcceleratorState._reset_state()
    # Accumulation is done here (see the module docstring), so Accelerate steps on every call.
    # No duplicated evaluation samples; training drops the last partial batch, so every
    # process gets the same number of steps. The order comes from EpochSampler.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=method.leaves_unused_parameters)
    # Batches come from pinned memory on CUDA (below), so their copies to the device need not
    # make the host wait.
    loading = DataLoaderConfiguration(even_batches=False, non_blocking=True)
    log_with = trackers(recipe.train.log_with, run_dir, recipe.source) if run_dir is not None and recipe.train.log_with else None
    return Accelerator(
        mixed_precision=mp, dataloader_config=loading, kwargs_handlers=[ddp], log_with=log_with,
        project_dir=str(run_dir) if log_with else None,
    )


def new_run_dir(recipe: Recipe, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(recipe.output_dir) / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(recipe.output_dir) / f"{name}-{stamp}-{suffix}"
    return run_dir


def latest_resumable(recipe: Recipe, name: str) -> Path:
    for run in Path(recipe.output_dir).glob(f"{name}-*"):
        recover_dir(run / STATE)
    candidates = sorted(
        (p for p in Path(recipe.output_dir).glob(f"{name}-*") if progress_file(p / STATE).is_file()),
        key=lambda p: progress_file(p / STATE).stat().st_mtime,
    )
    if not candidates:
        raise UserError(f"--resume: no run of '{name}' with a saved training state under {recipe.output_dir}/")
    return candidates[-1]


@dataclass
class Loop:
    """What one training run's epochs share: the prepared pieces and where the run stands."""

    recipe: Recipe
    task: Task
    method: TrainingMethod
    prepared: Any
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    sampler: EpochSampler
    accelerator: Accelerator
    layouts: LayoutChoice
    state: RunProgress
    run_dir: Path
    steps_per_epoch: int
    updates_per_epoch: int
    quiet: bool
    workers: tuple[int, str]
    autotuning: tuple[bool, str]
    precision: tuple[str, str]
    #: The sub-networks' multiply-adds, once a ``best/`` folder needs them before the last epoch.
    best_madds: dict[str, int] | None = None
    #: The exponential moving average of the network's weights and buffers (``train.ema``).
    ema: AveragedModel | None = None


def train(recipe: Recipe, *, name: str = "run", resume: bool | Path = False, quiet: bool = False) -> Path:
    """Train ``recipe`` and return its run folder (``model.safetensors`` + ``rsvision.json``);
    ``resume``: continue the latest run of ``name`` (True) or the run folder given."""
    benchmark = torch.backends.cudnn.benchmark
    try:
        loop = _prepare(recipe, name, resume, quiet)
        rows: list[dict] = loop.state.history[-1].get("val", []) if loop.state.history else []
        bar = training_progress(disable=quiet or not loop.accelerator.is_main_process)
        with bar:
            for epoch in range(loop.state.epoch, recipe.train.epochs):
                rows = _run_epoch(loop, epoch, bar, rows)
    finally:
        torch.backends.cudnn.benchmark = benchmark  # the run's choice stays with the run
    loop.accelerator.wait_for_everyone()
    loop.accelerator.end_training()
    return loop.run_dir


def _prepare(recipe: Recipe, name: str, resume: bool | Path, quiet: bool) -> Loop:
    """The task, the method, the data and the optimiser, prepared by Accelerate; the run
    folder created (or found and its state loaded, with ``resume``)."""
    load_plugins(recipe.plugins)
    precision = mixed_precision(recipe)
    # The run's recipe records the precision it trained in, wherever it came from: inference
    # follows it (rsvision.analysis.device).
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"mixed_precision": precision[0]})})
    task: Task = TASKS.get(recipe.task)(recipe)
    method_cls = method_for(recipe)
    check_unused(recipe, set(task.recipe_fields) | set(method_cls.recipe_fields))
    t = recipe.train
    if t.sync_bn and not torch.cuda.is_available():
        raise UserError(f"{recipe.source}: train.sync_bn: SyncBatchNorm runs on CUDA only; set it to false on CPU")
    train_set = EpochSeeded(task.train_dataset(), t.seed)  # the data checked before the model's weights are downloaded
    set_seed(t.seed)
    model = task.build_model()
    method = method_cls(synchronized_bn(model) if t.sync_bn else model, task, recipe)
    # The processes agree on the run folder before Accelerate starts, whose trackers write into
    # it: the process group started as Accelerate starts it (on the CPU where the launcher says so).
    run_dir = _agreed_run_dir(PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")), recipe, name, resume)
    accelerator = make_accelerator(recipe, method, run_dir)
    sampler = EpochSampler(len(train_set), t.seed)
    workers = loader_workers(recipe.data.workers, accelerator.device, recipe.data.oversubscribe)
    loader = DataLoader(
        train_set, batch_size=recipe.data.batch_size, sampler=sampler, drop_last=True,
        num_workers=workers[0], collate_fn=task.collate, persistent_workers=workers[0] > 0,
        pin_memory=accelerator.device.type == "cuda",
    )
    if len(loader) == 0:
        raise UserError(f"{recipe.source}: data.batch_size {recipe.data.batch_size} is larger than the training set ({len(train_set)} samples); no full batch")
    state = RunProgress(**json.loads(progress_file(run_dir / STATE).read_text())) if resume else RunProgress()
    autotuning = cudnn_autotuning(method, accelerator.device)  # before the layout trial, whose warm-up steps absorb it
    torch.backends.cudnn.benchmark = autotuning[0]
    layouts = LayoutChoice(t.channels_last, state.layout, method, accelerator, state.layout_reason)  # a resumed run keeps its layout
    if layouts.trial and accelerator.distributed_type != DistributedType.NO:  # DDP will wrap it, one process or more
        first = next(iter(DataLoader(train_set, batch_size=recipe.data.batch_size, collate_fn=task.collate)))
        choose_layout_unwrapped(layouts, method, first, accelerator)
    optimizer = build_optimizer(method, recipe)
    if t.compile:
        # In place: torch.compile(module) would wrap the body, and every key of the saved
        # state would carry the wrapper's "_orig_mod." (a run folder nothing could load).
        method.model.body.compile()
    prepared, optimizer, loader = accelerator.prepare(method, optimizer, loader)
    steps = min(len(loader), t.max_steps_per_epoch or len(loader))  # per process, once sharded
    loop = Loop(
        recipe, task, accelerator.unwrap_model(prepared), prepared, optimizer, loader, sampler, accelerator,
        layouts, state, run_dir, steps, math.ceil(steps / t.grad_accum), quiet, workers, autotuning, precision,
    )
    if t.ema:
        # BN statistics are averaged with the weights (use_buffers), so the average is a network
        # that evaluates as it is; its state is saved and resumed with the others.
        loop.ema = AveragedModel(loop.method.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True)
        accelerator.register_for_checkpointing(loop.ema)
    if resume:
        accelerator.load_state(str(run_dir / STATE))
        if accelerator.is_main_process:
            console.print(f"resuming {run_dir} at epoch {state.epoch + 1}")
    elif accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / RECIPE, recipe.model_dump(mode="json"))
    if t.log_with:
        accelerator.init_trackers(name, config=tracker_config(recipe.model_dump(mode="json")))
    if accelerator.is_main_process and not quiet:
        console.print(f"mixed precision: {precision[0]} ({precision[1]})")
    if accelerator.is_main_process and not quiet and workers[0] != recipe.data.workers:
        console.print(workers[1])
    _note_layout(loop)
    return loop


def cudnn_autotuning(method: TrainingMethod, device: torch.device) -> tuple[bool, str]:
    """Whether cuDNN times its algorithms for each new convolution shape and keeps the fastest
    (``torch.backends.cudnn.benchmark``), and why: on CUDA when the method's steps see a fixed
    set of shapes (:attr:`~rsvision.training.TrainingMethod.fixed_shapes`), unless the
    process asks for deterministic algorithms (the choice follows a timing)."""
    if device.type != "cuda":
        return False, f"no cuDNN on {device.type}"
    if torch.are_deterministic_algorithms_enabled() or torch.backends.cudnn.deterministic:
        return False, "deterministic algorithms requested"
    if not method.fixed_shapes:
        return False, f"{type(method).__name__}'s steps do not see a fixed set of input shapes"
    return True, f"{type(method).__name__}'s steps see a fixed set of input shapes"


def _note_layout(loop: Loop) -> None:
    """Keep the memory layout in the run's state and say it, once it is known."""
    state, layouts = loop.state, loop.layouts
    if state.layout is None and layouts.name is not None:
        state.layout, state.layout_reason = layouts.name, layouts.reason
        if loop.accelerator.is_main_process and not loop.quiet:
            console.print(f"memory layout: {state.layout} ({state.layout_reason})")


def _run_epoch(loop: Loop, epoch: int, bar, rows: list[dict]) -> list[dict]:
    """Train one epoch, evaluate when due, save the run folder; returns the latest evaluation
    rows (``rows``, the earlier ones, when this epoch is not evaluated)."""
    method, t = loop.method, loop.recipe.train
    loop.sampler.set_epoch(epoch)
    if hasattr(loop.loader, "set_epoch"):
        loop.loader.set_epoch(epoch)
    start = time.perf_counter()
    stats = _train_epoch(loop, epoch, bar)
    _note_layout(loop)
    log = {"epoch": epoch + 1, **stats, **method.describe()}
    if (epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs:
        sync_buffers(method)
        subnets = method.eval_subnets()
        with method.evaluation(subnets):
            rows = evaluate(method.model, loop.task, subnets, method.combiners(), accelerator=loop.accelerator, progress=bar)
        rows = log["val"] = method.annotate(rows)
        if loop.ema is not None:
            log["val_ema"] = _evaluate_ema(loop, subnets, bar)
    log["epoch_seconds"] = round(time.perf_counter() - start, 3)  # training and evaluation
    log["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    loop.state.epoch = epoch + 1
    loop.state.history.append(log)
    if t.keep_best and "val" in log:
        value = best_value(rows, t.keep_best, {s.id for s in method.eval_subnets()}, loop.recipe.source)
        if loop.state.best is None or value > loop.state.best["value"]:
            loop.state.best = {"epoch": epoch + 1, "value": value}
    _save_epoch(loop, rows)
    if t.log_with:
        loop.accelerator.log(epoch_values(log, {s.id for s in method.model.subnets}), step=epoch + 1)
    if loop.accelerator.is_main_process and not loop.quiet:
        console.print(_epoch_line(log, loop.task.primary_metric, method.epoch_text(log)))
    return rows


class StepLog:
    """One epoch's logged numbers, summed where they are computed: the device's tensors on the
    device, host numbers on the host; and each unread step's loss and learning rate, so that a
    reading can name the first step whose loss was not finite."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.steps = 0
        self.unread: list[tuple[int, torch.Tensor, float]] = []  # (step index, loss, learning rate)

    def add(self, index: int, out: StepOutput, lr: float) -> None:
        self.steps += 1
        self.unread.append((index, out.loss.detach(), lr))
        for key, value in out.log.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value


def _train_epoch(loop: Loop, epoch: int, bar) -> dict:
    t, accelerator, prepared, method, optimizer = loop.recipe.train, loop.accelerator, loop.prepared, loop.method, loop.optimizer
    steps = loop.steps_per_epoch
    prepared.train()
    log = StepLog()
    means: dict[str, float] = {}
    bar_id = bar.add_task("train", total=steps, epoch=f"{epoch + 1}/{t.epochs}", stats="")
    distributed = accelerator.num_processes > 1
    for i, batch in enumerate(loop.loader):
        if i >= steps:
            break
        window_start = i - i % t.grad_accum
        window = min(t.grad_accum, steps - window_start)
        sync = i + 1 == window_start + window

        def backward(loss: torch.Tensor, scale: float = 1.0 / window) -> None:
            accelerator.backward(loss * scale)

        with loop.layouts.step() as layout, nullcontext() if sync or method.multi_backward else accelerator.no_sync(prepared):
            batch = to_layout(batch, layout)
            if method.multi_backward:
                out = method.step(batch, StepContext(backward, accelerator.autocast))
            else:
                out = prepared(batch)
                backward(out.loss)
        log.add(i, out, optimizer.param_groups[0]["lr"])
        if sync:
            if method.multi_backward and distributed:
                average_gradients(method.parameters())
            lr = learning_rate(t, loop.state.step, loop.updates_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if loop.ema is not None:
                loop.ema.update_parameters(method.model)
            loop.state.step += 1
        bar.update(bar_id, advance=1)
        if (i + 1) % READ_EVERY == 0 or i + 1 == steps:  # the last step is read before the epoch is saved
            means = _read(log, loop, epoch)
            bar.update(bar_id, stats=method.progress_text(means))
    bar.remove_task(bar_id)
    stats = dict(means)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return stats


def _read(log: StepLog, loop: Loop, epoch: int) -> dict[str, float]:
    """The epoch's means so far as Python numbers, in one copy from the device, after checking
    the unread steps' losses: stop at the first non-finite one (on any process: with several,
    one all-reduce of the check, at the same step on every process)."""
    accelerator = loop.accelerator
    losses = torch.stack([loss.float().reshape(()).to(accelerator.device) for _, loss, _ in log.unread])
    bad = (~torch.isfinite(losses)).any().float().reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    keys = [k for k, v in log.sums.items() if isinstance(v, torch.Tensor)]
    sums = [log.sums[k].detach().float().reshape(1).to(accelerator.device) for k in keys]
    host = torch.cat([bad, losses, *sums]).tolist()
    unread, log.unread = log.unread, []
    if host[0]:
        _diverged(loop, epoch, unread, host[1 : 1 + len(unread)])
    values = dict(zip(keys, host[1 + len(unread) :]))
    return {k: values[k] / log.steps if k in values else v / log.steps for k, v in log.sums.items()}


def _diverged(loop: Loop, epoch: int, unread: list[tuple[int, torch.Tensor, float]], losses: list[float]) -> None:
    """Stop with the first non-finite loss among the unread steps (or say another process had it)."""
    first = next((j for j, value in enumerate(losses) if not math.isfinite(value)), None)
    index, _, lr = unread[first if first is not None else 0]
    value = losses[first] if first is not None else "not finite on another process"
    kept = f"{loop.run_dir} keeps epoch {epoch}" if epoch > 0 else "nothing was saved"
    raise TrainingDiverged(
        f"{loop.recipe.source}: training diverged at epoch {epoch + 1}, step {index + 1}: the loss is {value} "
        f"(train.lr {lr:.4g}); lower train.lr ({kept})"
    )


def choose_layout_unwrapped(layouts: LayoutChoice, method: TrainingMethod, batch: Any, accelerator) -> None:
    """Run the layout trial of several processes before DDP wraps the network (its gradient
    buckets keep the layout they were built for), on the device the run trains on: the
    timings are those of its steps, and SyncBatchNorm runs on the GPU only."""
    method.to(accelerator.device)
    batch = send_to_device(batch, accelerator.device)
    layouts.decide(lambda layout: _untraced_step(method, to_layout(batch, layout), accelerator))


def _untraced_step(method: TrainingMethod, batch: Any, accelerator) -> None:
    """A forward and backward that leave no trace: buffers and random state restored, gradients dropped."""
    with frozen_state(method), accelerator.autocast():
        method.step(batch, StepContext(lambda loss: loss.backward(), accelerator.autocast))
    method.zero_grad(set_to_none=True)


def average_gradients(parameters) -> None:
    """Mean of every gradient over the processes, in one all-reduce."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _agreed_run_dir(processes: PartialState, recipe: Recipe, name: str, resume: bool | Path) -> Path:
    """The run folder, chosen by the main process and sent to the others."""
    chosen = [None]
    if processes.is_main_process:
        chosen = [str(latest_resumable(recipe, name) if resume is True else resume if resume else new_run_dir(recipe, name))]
    if processes.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return Path(chosen[0])


def sync_buffers(module: nn.Module) -> None:
    """Every process takes the main process's buffers (BN running statistics), so that all
    evaluate the network that is saved: with plain BN each process's statistics follow its
    own shard of the batch."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, src=0)


def _save_epoch(loop: Loop, rows: list[dict]) -> None:
    """Weights + metadata after every epoch; the resumable state beside them."""
    accelerator, run_dir, method, state = loop.accelerator, loop.run_dir, loop.method, loop.state
    accelerator.wait_for_everyone()
    final = state.epoch == loop.recipe.train.epochs
    madds = _madds(method.model, loop.task) if final else {}
    tmp = run_dir / f"{STATE}.tmp"
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process has written its random state into tmp
    if accelerator.is_main_process:
        write_json(progress_file(tmp), asdict(state))
        meta = run_metadata(loop.task, method, loop.recipe, rows, madds, state.epoch)
        meta["memory_layout"] = {"layout": state.layout, "reason": state.layout_reason}
        meta["data_workers"] = {"workers": loop.workers[0], "reason": loop.workers[1]}
        meta["data_cache"] = dict(getattr(loop.task, "cache_reasons", {}))
        if getattr(loop.task, "crop_reason", None):
            meta["data_crop"] = loop.task.crop_reason
        meta["cudnn_benchmark"] = {"enabled": loop.autotuning[0], "reason": loop.autotuning[1]}
        meta["mixed_precision"] = {"precision": loop.precision[0], "source": loop.precision[1]}
        if state.best is not None:
            _save_best(loop, meta, final)  # before the state that says it is saved
        if loop.ema is not None:
            _save_ema(loop, meta)
        replace_dir(tmp, run_dir / STATE)
        save_run(run_dir, method.model, method.artifact_tensors(), meta)
        with (run_dir / LOG).open("a") as f:
            f.write(json.dumps(state.history[-1], default=str) + "\n")
    accelerator.wait_for_everyone()


def _evaluate_ema(loop: Loop, subnets: list, bar) -> list[dict]:
    """The averaged weights evaluated as the trained ones are (inside the method's evaluation
    context, every sub-network and combined row): swapped into the network, then swapped back."""
    method = loop.method
    trained = {k: v.detach().clone() for k, v in method.model.state_dict().items()}
    method.model.load_state_dict(loop.ema.module.state_dict())
    try:
        sync_buffers(method)
        with method.evaluation(subnets):
            rows = evaluate(method.model, loop.task, subnets, method.combiners(), accelerator=loop.accelerator, progress=bar)
    finally:
        method.model.load_state_dict(trained)
    return method.annotate(rows)


def _save_ema(loop: Loop, meta: dict) -> None:
    """``ema/``: a run folder of the averaged weights, with their latest evaluation rows."""
    rows = next((e["val_ema"] for e in reversed(loop.state.history) if "val_ema" in e), [])
    tmp = loop.run_dir / f"{EMA}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_run(tmp, loop.ema.module, loop.method.artifact_tensors(), {**meta, "metrics": rows, "ema": {"decay": loop.recipe.train.ema}})
    write_json(tmp / RECIPE, loop.recipe.model_dump(mode="json"))
    replace_dir(tmp, loop.run_dir / EMA)


def best_value(rows: list[dict], spec: str, trained: set[str], source: str) -> float:
    """The number ``train.keep_best`` ranks epochs by (higher is better): ``METRIC/SUBNET``,
    that row's metric; ``METRIC``, its mean over the trained sub-networks' rows."""
    metric, _, subnet = spec.partition("/")
    chosen = [r for r in rows if (r.get("subnet") == subnet if subnet else r.get("subnet") in trained)]
    if not chosen or any(metric not in r for r in chosen):
        metrics = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in ("resolution", "width")})
        raise UserError(
            f"{source}: train.keep_best: '{spec}' names no evaluated value (metrics: {', '.join(metrics)}; "
            f"sub-networks: {', '.join(r['subnet'] for r in rows)}; e.g. {metrics[0] if metrics else 'top1'} or "
            f"{metrics[0] if metrics else 'top1'}/{rows[0]['subnet'] if rows else '224'})"
        )
    return sum(float(r[metric]) for r in chosen) / len(chosen)


def _save_best(loop: Loop, meta: dict, final: bool) -> None:
    """``best/``: a run folder of the best epoch by ``train.keep_best``, written when an epoch
    beats the earlier ones; marked complete once the run has finished."""
    best, folder = loop.state.best, loop.run_dir / BEST
    if best["epoch"] == loop.state.epoch:
        if loop.best_madds is None:
            loop.best_madds = meta["madds"] or _madds(loop.method.model, loop.task)
        tmp = loop.run_dir / f"{BEST}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        best_meta = {**meta, "madds": loop.best_madds, "complete": final, "best": {"by": loop.recipe.train.keep_best, **best}}
        save_run(tmp, loop.method.model, loop.method.artifact_tensors(), best_meta)
        write_json(tmp / RECIPE, loop.recipe.model_dump(mode="json"))
        replace_dir(tmp, folder)
    elif final:
        finished = json.loads((folder / META).read_text())
        write_json(folder / META, {**finished, "complete": True})


def _madds(model: nn.Module, task: Task) -> dict[str, int]:
    device = next(model.parameters()).device
    return {s.id: subnet_madds(model, s, send_to_device(task.example_input(s.resolution), device)) for s in model.subnets}


def _epoch_line(log: dict, primary: str, method_text: str = "") -> str:
    parts = [f"epoch {log['epoch']}", f"loss {log.get('loss', float('nan')):.3f}", f"lr {log['lr']:.4g}"]
    for row in log.get("val", []):
        if primary in row:
            parts.append(f"{row['subnet']}: {row[primary]:.1f}")
    if method_text:
        parts.append(method_text)
    return " · ".join(parts)
