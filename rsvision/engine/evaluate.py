"""Evaluation at any resolution: the trained ones, others through BN interpolation (§4.3),
and the alpha-ensemble z_0 = sum_s softmax(alpha)_s z_s (Eq. 5) over the trained ones."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, Dataset

from rsvision.switchable import RSNet, at_resolution
from rsvision.task import Task

ENSEMBLE = "ensemble"


class _Zip(Dataset):
    """One sample at several resolutions: ``{"images": [...], "target": ..., ...}``."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return len(self.datasets[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        samples = [d[index] for d in self.datasets]
        out = {k: v for k, v in samples[0].items() if k != "image"}
        out["images"] = [s["image"] for s in samples]
        return out


def _zip_collate(task: Task):
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(samples[0]["images"])
        per_res = [task.eval_collate([{**s, "image": s["images"][i]} for s in samples]) for i in range(n)]
        batch = per_res[0]
        batch["images"] = [b["image"] for b in per_res]
        del batch["image"]
        return batch

    return collate


def _loader(dataset: Dataset, collate, batch_size: int, workers: int, accelerator=None) -> DataLoader:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    return accelerator.prepare_data_loader(loader) if accelerator is not None else loader


@torch.no_grad()
def evaluate_model(
    model: RSNet,
    task: Task,
    resolutions: Sequence[int] | None = None,
    ensemble_weights: torch.Tensor | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    accelerator=None,
    progress=None,
) -> list[dict[str, Any]]:
    """One row of metrics per resolution, plus an ``ensemble`` row when ``ensemble_weights`` is given.

    Trained resolutions are evaluated in one pass over the data (their logits also form
    the ensemble); other resolutions each get their own pass.
    """
    data = task.recipe.data
    batch_size = batch_size or data.eval_batch_size or data.batch_size
    workers = data.workers if workers is None else workers
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    trained = model.resolutions
    wanted = list(resolutions) if resolutions is not None else list(trained)
    in_pass = [r for r in trained if r in wanted or ensemble_weights is not None]
    was_training = model.training
    model.eval()
    rows: dict[Any, dict[str, Any]] = {}
    try:
        if in_pass:
            metrics = {r: task.metrics() for r in in_pass}
            ens_metrics = task.metrics() if ensemble_weights is not None else None
            weights = ensemble_weights.to(device) if ensemble_weights is not None else None
            loader = _loader(_Zip([task.eval_dataset(r) for r in in_pass]), _zip_collate(task), batch_size, workers, accelerator)
            for batch in _track(loader, progress, f"eval {'/'.join(map(str, in_pass))}"):
                batch = send_to_device(batch, device)
                logits = [task.eval_logits(z, batch) for z in model(batch["images"])]
                for r, z in zip(in_pass, logits):
                    metrics[r].update(z, batch)
                if ens_metrics is not None:
                    ens_metrics.update(sum(w * z.float() for w, z in zip(weights, logits)), batch)
            rows.update({r: {"resolution": r, **m.compute()} for r, m in metrics.items()})
            if ens_metrics is not None:
                rows[ENSEMBLE] = {"resolution": ENSEMBLE, **ens_metrics.compute()}
        for r in wanted:
            if r in rows:
                continue
            m = task.metrics()
            loader = _loader(task.eval_dataset(r), task.eval_collate, batch_size, workers, accelerator)
            with at_resolution(model, r):
                for batch in _track(loader, progress, f"eval {r}"):
                    batch = send_to_device(batch, device)
                    m.update(task.eval_logits(model(batch["image"]), batch), batch)
            rows[r] = {"resolution": r, **m.compute()}
    finally:
        model.train(was_training)
    ordered = [rows[r] for r in wanted]
    if ENSEMBLE in rows:
        ordered.append(rows[ENSEMBLE])
    return ordered


def _track(loader, progress, description: str):
    if progress is None:
        yield from loader
        return
    task_id = progress.add_task(description, total=len(loader), epoch=description, stats="")
    for batch in loader:
        yield batch
        progress.advance(task_id)
    progress.remove_task(task_id)



def evaluate_run(
    run_dir,
    resolutions: Sequence[int] | None = None,
    data_root: str | None = None,
    batch_size: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate a saved run at ``resolutions`` (default: the trained ones and the ensemble).

    Returns the rows (with ``madds`` per resolution) and the run's metadata.
    """
    from rsvision.engine.checkpoint import load_run
    from rsvision.profile import count_madds

    task, model, alpha, meta = load_run(run_dir, data_root)
    weights = alpha.softmax(0) if resolutions is None else None
    rows = evaluate_model(model, task, resolutions, ensemble_weights=weights, batch_size=batch_size)
    trained = model.resolutions
    for row in rows:
        r = row["resolution"]
        if isinstance(r, int):
            with at_resolution(model, r):
                row["madds"] = count_madds(model, task.example_input(r))
            if r in trained:
                row["alpha"] = float(alpha.softmax(0)[trained.index(r)])
            else:
                row["interpolated"] = True
    return rows, meta
