"""The training loop, on HF Accelerate, for every task.

Each step sends the S resolutions of one batch through the shared model (each with its
BN group), brings the logits to one shape (the task's ``loss_logits``), computes the MRED
loss (Eq. 9), and does one backward and one optimiser step. The learning rate follows the
schedule per iteration. Only the main process writes the run folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from torch import nn
from torch.utils.data import DataLoader

from rsvision.engine.checkpoint import STATE, replace_dir, save_run, write_json
from rsvision.engine.evaluate import evaluate_model
from rsvision.engine.report import console, results_table, step_stats, training_progress
from rsvision.engine.schedule import learning_rate
from rsvision.engine.steps import STEPS, MultiResolutionModel
from rsvision.errors import UserError
from rsvision.mred import MREDLoss
from rsvision.profile import count_madds, count_parameters
from rsvision.recipe import Recipe
from rsvision.registry import TASKS, load_plugins
from rsvision.switchable import RSNet, at_resolution
from rsvision.task import Task, criterion_for


@dataclass
class Progress:
    """What a resumed run needs besides the tensors: where it stopped and what it logged."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def build_optimizer(model: RSNet, criterion: MREDLoss, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD over the network (with weight decay) and alpha (without)."""
    t = recipe.train
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": t.weight_decay},
        {"params": [criterion.alpha], "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)


def make_accelerator(recipe: Recipe) -> Accelerator:
    mp = recipe.train.mixed_precision
    if mp == "fp16" and not torch.cuda.is_available():
        raise UserError("train.mixed_precision: fp16 needs a GPU; use bf16 on CPU")
    # Accelerate keeps its settings process-wide; forget the previous run's (the process
    # group, if any, stays) so that several runs in one process can differ in precision.
    AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision=mp,
        gradient_accumulation_steps=recipe.train.grad_accum,
        # No duplicated evaluation samples; training drops the last partial batch, so every
        # process still gets the same number of steps. The shuffle is seeded by (seed, epoch):
        # the same order for any number of processes, a new one each epoch.
        dataloader_config=DataLoaderConfiguration(even_batches=False, use_seedable_sampler=True, data_seed=recipe.train.seed),
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
    candidates = sorted(
        (p for p in Path(recipe.output_dir).glob(f"{name}-*") if (p / STATE / "progress.json").is_file()),
        key=lambda p: (p / STATE / "progress.json").stat().st_mtime,
    )
    if not candidates:
        raise UserError(f"--resume: no run of '{name}' with a saved training state under {recipe.output_dir}/")
    return candidates[-1]


def run_metadata(task: Task, model: RSNet, recipe: Recipe, rows: list[dict], alpha: torch.Tensor, madds: dict) -> dict:
    return {
        "task": recipe.task,
        "resolutions": recipe.resolutions,
        "class_names": task.class_names(),
        "recipe": recipe.model_dump(mode="json"),
        "metrics": rows,
        "primary_metric": task.primary_metric,
        "ensemble_weights": [round(float(w), 6) for w in alpha.detach().softmax(0)],
        "parameters": count_parameters(model),
        "madds": madds,
        **task.describe(),
    }


def train(recipe: Recipe, *, name: str = "run", resume: bool = False, quiet: bool = False) -> Path:
    """Train ``recipe`` and return its run folder (``model.safetensors`` + ``rsvision.json``)."""
    load_plugins(recipe.plugins)
    accelerator = make_accelerator(recipe)
    t = recipe.train
    set_seed(t.seed)
    task: Task = TASKS.get(recipe.task)(recipe)
    model = task.build_model()
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if t.sync_bn:
        if not torch.cuda.is_available():
            raise UserError("train.sync_bn: SyncBatchNorm runs on CUDA only; set it to false on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    criterion = criterion_for(task)
    optimizer = build_optimizer(model, criterion, recipe)
    train_loader = DataLoader(
        task.train_dataset(),
        batch_size=recipe.data.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=recipe.data.workers,
        collate_fn=task.collate,
        persistent_workers=recipe.data.workers > 0,
    )
    wrapped = MultiResolutionModel(model, criterion, task.loss_logits)
    if t.compile:
        wrapped.model = torch.compile(wrapped.model)
    wrapped, optimizer, train_loader = accelerator.prepare(wrapped, optimizer, train_loader)
    steps_per_epoch = len(train_loader)
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise UserError(f"data.batch_size {recipe.data.batch_size} is larger than the training set; no full batch")
    updates_per_epoch = max(1, steps_per_epoch // t.grad_accum)

    run_dir = _agreed_run_dir(accelerator, recipe, name, resume)
    progress_state = Progress()
    if resume:
        accelerator.load_state(str(run_dir / STATE))
        progress_state = Progress(**json.loads((run_dir / STATE / "progress.json").read_text()))
        if accelerator.is_main_process:
            console.print(f"resuming {run_dir} at epoch {progress_state.epoch + 1}")
    elif accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "recipe.json", recipe.model_dump(mode="json"))

    unwrapped: MultiResolutionModel = accelerator.unwrap_model(wrapped)
    rows: list[dict] = progress_state.history[-1]["val"] if progress_state.history and "val" in progress_state.history[-1] else []
    bar = training_progress(disable=quiet or not accelerator.is_main_process)
    with bar:
        for epoch in range(progress_state.epoch, t.epochs):
            train_stats = _train_epoch(
                wrapped, optimizer, train_loader, accelerator, recipe, epoch, steps_per_epoch, updates_per_epoch, progress_state, bar
            )
            log = {"epoch": epoch + 1, **train_stats, "alpha": unwrapped.criterion.weights.tolist()}
            if (epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs:
                sync_buffers(unwrapped.model)
                rows = evaluate_model(
                    unwrapped.model, task, ensemble_weights=unwrapped.criterion.weights.detach(), accelerator=accelerator, progress=bar
                )
                log["val"] = rows
            progress_state.epoch = epoch + 1
            progress_state.history.append(log)
            _save_epoch(accelerator, run_dir, unwrapped, task, recipe, rows, progress_state, epoch + 1 == t.epochs)
            if accelerator.is_main_process and not quiet:
                console.print(_epoch_line(log, task.primary_metric))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not quiet:
        console.print(results_table(_with_costs(rows, run_dir), _metric_names(rows)))
        console.print(f"run folder: {run_dir}")
    accelerator.end_training()
    return run_dir


def _train_epoch(wrapped, optimizer, loader, accelerator, recipe, epoch, steps, updates_per_epoch, state, bar) -> dict:
    t = recipe.train
    wrapped.train()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    resolutions = recipe.resolutions
    sums = {"loss": 0.0, "cls": 0.0, "ens": 0.0, "dis": 0.0}
    per_res = {r: [0.0, 0.0] for r in resolutions}
    bar_id = bar.add_task("train", total=steps, epoch=f"{epoch + 1}/{t.epochs}", stats="")
    ignore_index = accelerator.unwrap_model(wrapped).criterion.ignore_index
    step = STEPS[t.memory]
    seen = 0
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        with accelerator.accumulate(wrapped):
            logits, out = step(wrapped, batch, accelerator)
            if accelerator.sync_gradients:
                lr = learning_rate(t, state.step, updates_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                state.step += 1
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seen += 1
        for key, value in (("loss", out.total), ("cls", out.cls), ("ens", out.ens), ("dis", out.dis)):
            sums[key] += float(value.detach())
        target = batch["target"]
        for r, z, ce in zip(resolutions, logits, out.cls_per_resolution):
            per_res[r][0] += float(ce)
            per_res[r][1] += _accuracy(z.detach(), target, ignore_index)
        bar.update(
            bar_id,
            advance=1,
            stats=step_stats(sums["loss"] / seen, {r: (v[0] / seen, v[1] / seen) for r, v in per_res.items()}),
        )
    bar.remove_task(bar_id)
    stats = {k: v / max(seen, 1) for k, v in sums.items()}
    stats["lr"] = optimizer.param_groups[0]["lr"]
    stats["train"] = {str(r): {"ce": v[0] / max(seen, 1), "acc": v[1] / max(seen, 1)} for r, v in per_res.items()}
    return stats


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
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for b in module.buffers():
            torch.distributed.broadcast(b, src=0)


def _accuracy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> float:
    """Training accuracy in % (per pixel for dense outputs, ignoring the void label)."""
    pred = logits.argmax(1)
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    return 100.0 * float(((pred == target) & valid).sum()) / max(1, int(valid.sum()))


def _save_epoch(accelerator, run_dir, unwrapped, task, recipe, rows, state: Progress, final: bool) -> None:
    """Weights + metadata after every epoch; the resumable state beside them."""
    accelerator.wait_for_everyone()
    madds = _madds(unwrapped.model, task) if final else {}
    tmp = run_dir / f"{STATE}.tmp"
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process has written its random state into tmp
    if accelerator.is_main_process:
        write_json(tmp / "progress.json", state.__dict__)
        replace_dir(tmp, run_dir / STATE)
        meta = run_metadata(task, unwrapped.model, recipe, rows, unwrapped.criterion.alpha, madds)
        save_run(run_dir, unwrapped.model, unwrapped.criterion.alpha, meta)
        _append_log(run_dir / "log.jsonl", state.history[-1])
    accelerator.wait_for_everyone()


def _madds(model: RSNet, task: Task) -> dict[str, int]:
    device = next(model.parameters()).device
    out = {}
    for r in model.resolutions:
        with at_resolution(model, r):
            out[str(r)] = count_madds(model, task.example_input(r).to(device))
    return out


def _append_log(path: Path, entry: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def _with_costs(rows: list[dict], run_dir: Path) -> list[dict]:
    meta = json.loads((run_dir / "rsvision.json").read_text())
    madds, weights = meta.get("madds", {}), meta.get("ensemble_weights", [])
    resolutions = meta["resolutions"]
    out = []
    for row in rows:
        row = dict(row)
        r = row["resolution"]
        if str(r) in madds:
            row["madds"] = madds[str(r)]
        if r in resolutions:
            row["alpha"] = weights[resolutions.index(r)]
        out.append(row)
    return out


def _metric_names(rows: list[dict]) -> list[str]:
    return [k for k in rows[0] if k not in ("resolution", "madds", "alpha")] if rows else []


def _epoch_line(log: dict, primary: str) -> str:
    parts = [f"epoch {log['epoch']}", f"loss {log['loss']:.3f}", f"lr {log['lr']:.4g}"]
    for row in log.get("val", []):
        if primary in row:
            parts.append(f"{row['resolution']}: {row[primary]:.1f}")
    parts.append("alpha " + " ".join(f"{w:.2f}" for w in log["alpha"]))
    return " · ".join(parts)
