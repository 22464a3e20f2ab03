"""Evaluation of any sub-networks in one pass over the data.

Each validation image is decoded once and brought to every resolution the sub-networks
need (the task's protocol); every sub-network then runs on its resolution of the batch.
Trained, calibrated, interpolated (§4.3) and nearest sub-networks are evaluated alike;
their row says which. ``combiners`` add rows computed from the sub-networks' outputs
(the training method's, e.g. MRED's alpha-ensemble).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, Dataset, Subset

from rsvision.data.workers import loader_workers
from rsvision.nn.surgery import eval_mode
from rsvision.nn.switchable import at_subnet, subnet_status
from rsvision.subnet import SubNet, SubNetLike
from rsvision.tasks.base import Task

Combiner = Callable[[list[torch.Tensor]], torch.Tensor]


def subnet_row(subnet: SubNet) -> dict[str, Any]:
    row: dict[str, Any] = {"subnet": subnet.id, "resolution": subnet.resolution}
    if subnet.width is not None:
        row["width"] = subnet.width
    return row


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task: Task,
    subnets: Sequence[SubNetLike],
    combiners: dict[str, Combiner] | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    accelerator=None,
    progress=None,
    split: str = "val",
) -> list[dict[str, Any]]:
    """One row of metrics per sub-network (in the order given), then one per combiner.

    A combiner gets the task's logits of every sub-network, in order, and returns the
    logits its row scores.
    """
    subnets = list(dict.fromkeys(SubNet.parse(s) for s in subnets))
    combiners = combiners or {}
    data = task.recipe.data
    batch_size = batch_size or data.eval_batch_size or data.batch_size
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    workers = loader_workers(data.workers, device, data.oversubscribe)[0] if workers is None else workers
    resolutions = sorted({s.resolution for s in subnets}, reverse=True)
    images = process_shard(task.eval_dataset(resolutions, split))
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=task.eval_collate)
    metrics = {s: task.metrics().to(device) for s in subnets}
    combined = {name: task.metrics().to(device) for name in combiners}
    with eval_mode(model):
        for batch in _track(loader, progress, "eval " + "/".join(s.id for s in subnets)):
            batch = send_to_device(batch, device)
            logits = []
            for s in subnets:
                with at_subnet(model, s):
                    z = task.eval_logits(model(batch["images"][resolutions.index(s.resolution)]), batch)
                metrics[s].update(z, batch)
                logits.append(z)
            for name, combine in combiners.items():
                combined[name].update(combine(logits), batch)
    rows = [{**subnet_row(s), "status": subnet_status(model, s), **metrics[s].compute()} for s in subnets]
    return rows + [{"subnet": name, **m.compute()} for name, m in combined.items()]


def process_shard(data: Dataset) -> Dataset:
    """This process's contiguous share of ``data`` when a process group is running (the
    metrics reduce over it), else all of it.

    Shares differ by one image at most and are not padded, so no image counts twice; with
    fewer images than processes some shares are empty. Process order is data order, which
    the gathered detections keep (COCO AP breaks score ties by image order).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return data
    rank, world, n = dist.get_rank(), dist.get_world_size(), len(data)
    return Subset(data, range(n * rank // world, n * (rank + 1) // world))


def _track(loader, progress, description: str):
    if progress is None:
        yield from loader
        return
    task_id = progress.add_task(description, total=len(loader), epoch=description, stats="")
    for batch in loader:
        yield batch
        progress.advance(task_id)
    progress.remove_task(task_id)


