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
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from torch import nn
from torch.utils.data import DataLoader

from rsvision.artifacts import STATE, recover_dir, replace_dir, save_run, write_json
from rsvision.engine.evaluate import evaluate
from rsvision.engine.layout import LayoutChoice, to_layout
from rsvision.engine.report import console, results_table, training_progress
from rsvision.engine.schedule import learning_rate
from rsvision.errors import UserError
from rsvision.data.sampling import EpochSampler, EpochSeeded
from rsvision.profile import count_madds, count_parameters
from rsvision.recipe import Recipe, check_unused
from rsvision.registry import TASKS, load_plugins
from rsvision.switchable import at_subnet
from rsvision.task import Task
from rsvision.training import StepContext, TrainingMethod, method_for
from rsvision.training.mred import frozen_state


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


def make_accelerator(recipe: Recipe) -> Accelerator:
    mp = recipe.train.mixed_precision
    if mp == "fp16" and not torch.cuda.is_available():
        raise UserError(f"{recipe.source}: train.mixed_precision: fp16 needs a GPU; use bf16 on CPU")
    # Accelerate keeps its settings process-wide; forget the previous run's (the process
    # group, if any, stays) so that several runs in one process can differ in precision.
    AcceleratorState._reset_state()
    # Accumulation is done here (see the module docstring), so Accelerate steps on every call.
    # No duplicated evaluation samples; training drops the last partial batch, so every
    # process gets the same number of steps. The order comes from EpochSampler.
    return Accelerator(mixed_precision=mp, dataloader_config=DataLoaderConfiguration(even_batches=False))


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
        (p for p in Path(recipe.output_dir).glob(f"{name}-*") if (p / STATE / "progress.json").is_file()),
        key=lambda p: (p / STATE / "progress.json").stat().st_mtime,
    )
    if not candidates:
        raise UserError(f"--resume: no run of '{name}' with a saved training state under {recipe.output_dir}/")
    return candidates[-1]


def run_metadata(task: Task, method: TrainingMethod, recipe: Recipe, rows: list[dict], madds: dict, epochs_done: int) -> dict:
    model = method.model
    return {
        "task": recipe.task,
        "resolutions": recipe.resolutions,
        "subnets": [s.id for s in model.subnets],
        "class_names": task.class_names(),
        "input": task.input_format.as_dict(),
        "recipe": recipe.model_dump(mode="json"),
        "metrics": rows,
        "primary_metric": task.primary_metric,
        "parameters": count_parameters(model),
        "madds": madds,
        "epochs_done": epochs_done,
        "complete": epochs_done == recipe.train.epochs,
        **method.describe(),
        **task.describe(),
    }


def train(recipe: Recipe, *, name: str = "run", resume: bool = False, quiet: bool = False) -> Path:
    """Train ``recipe`` and return its run folder (``model.safetensors`` + ``rsvision.json``)."""
    load_plugins(recipe.plugins)
    task: Task = TASKS.get(recipe.task)(recipe)
    method_cls = method_for(recipe)
    check_unused(recipe, set(task.recipe_fields) | set(method_cls.recipe_fields))
    t = recipe.train
    if t.sync_bn and not torch.cuda.is_available():
        raise UserError(f"{recipe.source}: train.sync_bn: SyncBatchNorm runs on CUDA only; set it to false on CPU")
    accelerator = make_accelerator(recipe)
    set_seed(t.seed)
    model = task.build_model()
    if t.sync_bn:
        model = synchronized_bn(model)
    method = method_cls(model, task, recipe)
    train_set = EpochSeeded(task.train_dataset(), t.seed)
    sampler = EpochSampler(len(train_set), t.seed)
    loader = DataLoader(
        train_set,
        batch_size=recipe.data.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=recipe.data.workers,
        collate_fn=task.collate,
        persistent_workers=recipe.data.workers > 0,
    )
    if len(loader) == 0:
        raise UserError(f"{recipe.source}: data.batch_size {recipe.data.batch_size} is larger than the training set ({len(train_set)} samples); no full batch")
    run_dir = _agreed_run_dir(accelerator, recipe, name, resume)
    state = RunProgress(**json.loads((run_dir / STATE / "progress.json").read_text())) if resume else RunProgress()
    layouts = LayoutChoice(t.channels_last, state.layout, method, accelerator, state.layout_reason)  # a resumed run keeps its layout
    if layouts.trial and accelerator.num_processes > 1:
        first = next(iter(DataLoader(train_set, batch_size=recipe.data.batch_size, collate_fn=task.collate)))
        layouts.decide(lambda layout: _untraced_step(method, to_layout(first, layout), accelerator))
    optimizer = build_optimizer(method, recipe)
    if t.compile:
        method.model.body = torch.compile(method.model.body)
    prepared, optimizer, loader = accelerator.prepare(method, optimizer, loader)
    unwrapped: TrainingMethod = accelerator.unwrap_model(prepared)
    steps_per_epoch = min(len(loader), t.max_steps_per_epoch or len(loader))  # per process, once sharded
    updates_per_epoch = math.ceil(steps_per_epoch / t.grad_accum)
    if resume:
        accelerator.load_state(str(run_dir / STATE))
        if accelerator.is_main_process:
            console.print(f"resuming {run_dir} at epoch {state.epoch + 1}")
    elif accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "recipe.json", recipe.model_dump(mode="json"))

    def note_layout() -> None:
        """Keep the layout in the run's state and say it, once it is known."""
        if state.layout is None and layouts.name is not None:
            state.layout, state.layout_reason = layouts.name, layouts.reason
            if accelerator.is_main_process and not quiet:
                console.print(f"memory layout: {state.layout} ({state.layout_reason})")

    note_layout()
    rows: list[dict] = state.history[-1].get("val", []) if state.history else []
    bar = training_progress(disable=quiet or not accelerator.is_main_process)
    with bar:
        for epoch in range(state.epoch, t.epochs):
            sampler.set_epoch(epoch)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            stats = _train_epoch(prepared, unwrapped, optimizer, loader, accelerator, recipe, epoch, steps_per_epoch, updates_per_epoch, layouts, state, bar, run_dir)
            note_layout()
            log = {"epoch": epoch + 1, **stats, **unwrapped.describe()}
            if (epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs:
                sync_buffers(unwrapped)
                subnets = unwrapped.eval_subnets()
                with unwrapped.evaluation(subnets):
                    rows = evaluate(unwrapped.model, task, subnets, unwrapped.combiners(), accelerator=accelerator, progress=bar)
                rows = unwrapped.annotate(rows)
                log["val"] = rows
            state.epoch = epoch + 1
            state.history.append(log)
            _save_epoch(accelerator, run_dir, unwrapped, task, recipe, rows, state)
            if accelerator.is_main_process and not quiet:
                console.print(_epoch_line(log, task.primary_metric))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not quiet:
        meta = json.loads((run_dir / "rsvision.json").read_text())
        console.print(results_table(_with_costs(rows, meta["madds"])))
        console.print(f"run folder: {run_dir}")
    if accelerator.is_main_process:
        unwrapped.after_training(run_dir, quiet)
    accelerator.end_training()
    return run_dir


def _train_epoch(prepared, unwrapped, optimizer, loader, accelerator, recipe, epoch, steps, updates_per_epoch, layouts, state, bar, run_dir) -> dict:
    t = recipe.train
    prepared.train()
    sums: dict[str, float] = {}
    seen = 0
    bar_id = bar.add_task("train", total=steps, epoch=f"{epoch + 1}/{t.epochs}", stats="")
    distributed = accelerator.num_processes > 1
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        window_start = i - i % t.grad_accum
        window = min(t.grad_accum, steps - window_start)
        sync = i + 1 == window_start + window

        def backward(loss: torch.Tensor, scale: float = 1.0 / window) -> None:
            accelerator.backward(loss * scale)

        with layouts.step() as layout, nullcontext() if sync or unwrapped.multi_backward else accelerator.no_sync(prepared):
            batch = to_layout(batch, layout)
            if unwrapped.multi_backward:
                out = unwrapped.step(batch, StepContext(backward, accelerator.autocast))
            else:
                out = prepared(batch)
                backward(out.loss)
        _check_finite(out.loss, accelerator, recipe, epoch, i, optimizer, run_dir)
        if sync:
            if unwrapped.multi_backward and distributed:
                average_gradients(unwrapped.parameters())
            lr = learning_rate(t, state.step, updates_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
        seen += 1
        for key, value in out.log.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.update(bar_id, advance=1, stats=unwrapped.progress_text({k: v / seen for k, v in sums.items()}))
    bar.remove_task(bar_id)
    stats = {k: v / max(seen, 1) for k, v in sums.items()}
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return stats


def _check_finite(loss: torch.Tensor, accelerator, recipe: Recipe, epoch: int, index: int, optimizer, run_dir: Path) -> None:
    """Stop at the first non-finite loss (on any process), before the optimiser steps on it."""
    bad = torch.tensor(0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0, device=accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    if float(bad) == 0:
        return
    kept = f"{run_dir} keeps epoch {epoch}" if epoch > 0 else "nothing was saved"
    raise TrainingDiverged(
        f"{recipe.source}: training diverged at epoch {epoch + 1}, step {index + 1}: the loss is {float(loss.detach())} "
        f"(train.lr {optimizer.param_groups[0]['lr']:.4g}); lower train.lr ({kept})"
    )


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


def _agreed_run_dir(accelerator: Accelerator, recipe: Recipe, name: str, resume: bool) -> Path:
    """The run folder, chosen by the main process and sent to the others."""
    chosen = [None]
    if accelerator.is_main_process:
        chosen = [str(latest_resumable(recipe, name) if resume else new_run_dir(recipe, name))]
    if accelerator.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return Path(chosen[0])


def sync_buffers(module: nn.Module) -> None:
    """Every process takes the main process's buffers (BN running statistics), so that all
    evaluate the network that is saved: with plain BN each process's statistics follow its
    own shard of the batch."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, src=0)


def _save_epoch(accelerator, run_dir: Path, method: TrainingMethod, task: Task, recipe: Recipe, rows, state: RunProgress) -> None:
    """Weights + metadata after every epoch; the resumable state beside them."""
    accelerator.wait_for_everyone()
    final = state.epoch == recipe.train.epochs
    madds = _madds(method.model, task) if final else {}
    tmp = run_dir / f"{STATE}.tmp"
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process has written its random state into tmp
    if accelerator.is_main_process:
        write_json(tmp / "progress.json", asdict(state))
        replace_dir(tmp, run_dir / STATE)
        meta = run_metadata(task, method, recipe, rows, madds, state.epoch)
        meta["memory_layout"] = {"layout": state.layout, "reason": state.layout_reason}
        save_run(run_dir, method.model, method.artifact_tensors(), meta)
        with (run_dir / "log.jsonl").open("a") as f:
            f.write(json.dumps(state.history[-1], default=str) + "\n")
    accelerator.wait_for_everyone()


def _madds(model: nn.Module, task: Task) -> dict[str, int]:
    device = next(model.parameters()).device
    out = {}
    for s in model.subnets:
        with at_subnet(model, s):
            out[s.id] = count_madds(model, task.example_input(s.resolution).to(device))
    return out


def _with_costs(rows: list[dict], madds: dict[str, int]) -> list[dict]:
    return [{**row, "madds": madds[row["subnet"]]} if row.get("subnet") in madds else row for row in rows]


def _epoch_line(log: dict, primary: str) -> str:
    parts = [f"epoch {log['epoch']}", f"loss {log.get('loss', float('nan')):.3f}", f"lr {log['lr']:.4g}"]
    for row in log.get("val", []):
        if primary in row:
            parts.append(f"{row['subnet']}: {row[primary]:.1f}")
    if "ensemble_weights" in log:
        parts.append("alpha " + " ".join(f"{w:.2f}" for w in log["ensemble_weights"]))
    return " · ".join(parts)
