"""Cost of one RS-Net training step: rsvision's standard and low-memory steps against a
naive list-of-tensors reference and against S separate single-resolution steps.

One step = zero_grad, forward of the S resolutions, MRED loss (Eq. 9), backward (the
optimiser update is the same for every variant and left out). ResNet-18 (torchvision,
through rsvision's backbone registry), S = 5, batch 32, resolutions 64..32 (CPU-sized).

Variants, measured in the same run with repetitions interleaved. Medians and minima are
reported: on a machine shared with other jobs the step times have a heavy upper tail, and
the minimum is the run least disturbed by them.
  standard   rsvision: RSNet + MREDLoss, one backward      (train.memory: standard)
  low        rsvision: per-resolution backward              (train.memory: low)
  naive      a list-in/list-out ResNet-18 written here as in the original RS-Nets code:
             every layer is a ModuleParallel (one shared module applied to each tensor of
             the list) or a BatchNorm2dParallel (bn_i for resolution i), same MREDLoss
  singles    torchvision ResNet-18 trained at one resolution with cross-entropy, once per
             resolution; the sum is the FLOPs-proportional limit of an S-resolution step

Peak memory: the most bytes held by PyTorch's CPU allocator during one step beyond what was
held when it started (weights, optimiser state and the batch exist already; gradients are
allocated inside the step), read from the allocator events of ``torch.profiler`` with
``profile_memory=True`` in a separate, untimed step.

Usage: python benchmarks/train_throughput.py [--repeats 7] [--batch 32] [--extras]
(--extras also times channels_last and torch.compile for the standard step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.profiler import ProfilerActivity, profile

from rsvision.models import build_model
from rsvision.recipe import validate_recipe
from rsvision.registry import TASKS
from rsvision.training import MREDTraining, StepContext
from rsvision.training.loss import MREDLoss

RESOLUTIONS = [64, 56, 48, 40, 32]
CLASSES = 100


class ModuleParallel(nn.Module):
    """One shared module applied to every tensor of the list."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.module(x) for x in xs]


class BatchNorm2dParallel(nn.Module):
    """bn_i for the i-th tensor of the list (private BN per resolution)."""

    def __init__(self, channels: int, num_resolutions: int) -> None:
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(num_resolutions))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [bn(x) for bn, x in zip(self.bns, xs)]


def conv_bn(cin: int, cout: int, k: int, stride: int, S: int) -> nn.Sequential:
    return nn.Sequential(ModuleParallel(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)), BatchNorm2dParallel(cout, S))


class BasicBlockParallel(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, S: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(conv_bn(cin, cout, 3, stride, S), ModuleParallel(nn.ReLU(inplace=True)), conv_bn(cout, cout, 3, 1, S))
        self.shortcut = conv_bn(cin, cout, 1, stride, S) if stride != 1 or cin != cout else nn.Identity()
        self.relu = ModuleParallel(nn.ReLU(inplace=True))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.relu([a + b for a, b in zip(self.branch(xs), self.shortcut(xs))])


class ResNet18Parallel(nn.Module):
    """ResNet-18 whose every layer takes and returns a list (one tensor per resolution)."""

    def __init__(self, num_classes: int, S: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 64, 7, 2, S), ModuleParallel(nn.ReLU(inplace=True)), ModuleParallel(nn.MaxPool2d(3, 2, 1))]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlockParallel(cin, cout, stride, S), BasicBlockParallel(cout, cout, 1, S)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = ModuleParallel(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.head(self.features(xs))


CTX = StepContext(lambda loss: loss.backward(), nullcontext)


def rsvision_model(channels_last: bool = False, memory: str = "standard") -> MREDTraining:
    recipe = validate_recipe(
        {
            "task": "cls",
            "resolutions": RESOLUTIONS,
            "model": {"backbone": "resnet18", "head": "classifier", "num_classes": CLASSES},
            "data": {"dataset": "synthetic"},
            "train": {"memory": memory},
        }
    )
    method = MREDTraining(build_model(recipe), TASKS.get("cls")(recipe), recipe)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method.train()


def make_steps(batch: dict, extras: bool) -> dict[str, Callable[[], None]]:
    rs, rs_low = rsvision_model(), rsvision_model(memory="low")
    rs_low.load_state_dict(rs.state_dict())
    naive_net = ResNet18Parallel(CLASSES, len(RESOLUTIONS)).train()
    naive_loss = MREDLoss(len(RESOLUTIONS))
    singles = [torchvision.models.resnet18(num_classes=CLASSES).train() for _ in RESOLUTIONS]

    def rs_step(module, step_batch=batch):
        def run():
            module.zero_grad(set_to_none=True)
            module.step(step_batch, CTX)

        return run

    def naive():
        naive_net.zero_grad(set_to_none=True)
        naive_loss.zero_grad(set_to_none=True)
        naive_loss(naive_net(batch["images"]), batch["target"]).total.backward()

    def single(i):
        def run():
            singles[i].zero_grad(set_to_none=True)
            F.cross_entropy(singles[i](batch["images"][i]), batch["target"]).backward()

        return run

    steps = {"standard": rs_step(rs), "low": rs_step(rs_low), "naive": naive}
    steps.update({f"single {r}": single(i) for i, r in enumerate(RESOLUTIONS)})
    if extras:
        cl_batch = {**batch, "images": [x.contiguous(memory_format=torch.channels_last) for x in batch["images"]]}
        compiled = rsvision_model()
        compiled.model.body = torch.compile(compiled.model.body)
        steps.update({"standard channels_last": rs_step(rsvision_model(channels_last=True), cl_batch), "standard compile": rs_step(compiled)})
    return steps


def peak_bytes(step: Callable[[], None]) -> int:
    """Highest allocator total above the start of the step, from the profiler's memory events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name))["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max([0, *totals])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--extras", action="store_true", help="also channels_last and torch.compile")
    args = parser.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batch = {"images": [torch.randn(args.batch, 3, r, r, generator=g) for r in RESOLUTIONS], "target": torch.randint(CLASSES, (args.batch,), generator=g)}
    steps = make_steps(batch, args.extras)

    for name, step in steps.items():  # warm-up (and compilation)
        start = time.perf_counter()
        step()
        step()
        if name == "standard compile":
            print(f"torch.compile: first two steps took {time.perf_counter() - start:.1f} s")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):  # interleaved: every variant sees the same machine load
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    memory = {name: peak_bytes(steps[name]) for name in ("standard", "low", "naive")}

    for stat in (median, best):
        stat["sum of single steps"] = sum(stat[f"single {r}"] for r in RESOLUTIONS)
    print(f"ResNet-18, S={len(RESOLUTIONS)} {RESOLUTIONS}, batch {args.batch}, {torch.get_num_threads()} threads, {args.repeats} repeats")
    print(f"{'variant':<26}{'median ms':>10}{'min ms':>10}{'images/s':>10}{'peak MiB':>10}")
    for name in median:
        mem = f"{memory[name] / 2**20:.0f}" if name in memory else "-"
        print(f"{name:<26}{1000 * median[name]:>10.0f}{1000 * best[name]:>10.0f}{args.batch / median[name]:>10.1f}{mem:>10}")
    print("ratios (median, min):")
    for label, a, b, target in (
        ("standard / naive time", "standard", "naive", "target <= 1.0, aim 0.9"),
        ("low / standard time", "low", "standard", ""),
        ("standard / sum of singles time", "standard", "sum of single steps", "target <= 1.1"),
        ("channels_last / standard time", "standard channels_last", "standard", ""),
        ("compile / standard time", "standard compile", "standard", ""),
    ):
        if a in median:
            print(f"  {label:<32}{median[a] / median[b]:.2f}  {best[a] / best[b]:.2f}   {target}")
    print(f"  {'low / standard peak memory':<32}{memory['low'] / memory['standard']:.2f}         target <= 0.6")
    print(f"  {'naive / standard peak memory':<32}{memory['naive'] / memory['standard']:.2f}")


if __name__ == "__main__":
    main()
