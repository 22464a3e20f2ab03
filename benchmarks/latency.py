"""Deployment latency per resolution at batch 1: how close each path comes to the MAdds ratio.

For ResNet-18 (torchvision's definition through ``create_model``, untrained, 1000 classes)
at 224, 192, 160, 128, 96 and for the quickstart network (``recipes/quickstart.yaml``) at
its resolutions, four ways of running one sub-network, measured in the same run with the
repetitions interleaved (one call of every path and resolution per round), median of the
rounds after warm-up:

  eager        the switchable RS-Net, sub-network chosen with ``at_subnet`` (Python
               dispatch in every SwitchableBatchNorm)
  plain        ``materialize``: the fixed network of the sub-network, BN as nn.BatchNorm2d
  folded       ``plain`` with every conv -> BN pair folded (``rsvision.nn.fold``)
  folded_cl    ``folded`` with its weights in channels-last memory format (input as it is),
               what ``rsvision.load(run).at(r)`` runs: PyTorch picks other convolution
               kernels for small feature maps then
  onnxruntime  the exported ONNX graph, CPU session, all graph optimisations

Each latency is also given as a ratio to the largest resolution's, next to the MAdds ratio
(the target: the smallest resolution's latency ratio within 1.5x of its MAdds ratio), and a
least-squares line ``latency = fixed + per_GMAdd x MAdds`` over the resolutions gives each
path's fixed cost per call (the part that does not shrink with the input). Wall-clock
medians and minima at ``--threads``, and, because a shared machine's wall clock mostly
measures the other jobs, the CPU time of the calling thread with 1 thread (PyTorch and
onnxruntime both compute on the calling thread then), which waiting for a core does not
inflate.

Switching: the cost of changing resolution in one loaded model (``at_subnet``, a cached
``rsvision.load(...).at(r)``, the first ``at(r)``, which builds the folded network) against
loading another network from disk (safetensors + model construction in PyTorch; an
onnxruntime session from an ONNX file).

    python benchmarks/latency.py [--threads 2] [--rounds 30] [--models resnet18 quickstart]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from rsvision.analysis.latency import median_ms, torch_threads
from rsvision.deploy.onnx import export_network, session
from rsvision.models import build_model, create_model
from rsvision.nn.cost import count_madds
from rsvision.deploy.network import plain_subnet
from rsvision.nn.switchable import at_subnet, materialize
from rsvision.recipe import load_recipe
from rsvision.report import human

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("eager", "plain", "folded", "folded_cl", "onnxruntime")


def build(name: str):
    """The switchable model, its resolutions (largest first) and its input channels."""
    if name == "resnet18":
        resolutions = [224, 192, 160, 128, 96]
        return create_model(backbone="resnet18", num_classes=1000, resolutions=resolutions).eval(), resolutions
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    return build_model(recipe).eval(), sorted(recipe.resolutions, reverse=True)


def networks(model, resolutions, tmp: Path) -> dict[int, tuple]:
    """Per resolution: a batch-1 input, the plain, folded and channels-last folded networks, and the ONNX file."""
    out = {}
    for r in resolutions:
        x = torch.rand(1, 3, r, r)
        folded = plain_subnet(model, r).network
        path = tmp / f"{r}.onnx"
        export_network(folded, torch.cat([x, x]), path)
        channels_last = plain_subnet(model, r, channels_last=True).network
        out[r] = (x, materialize(model, r), folded, channels_last, path)
    return out


def callables(model, nets: dict[int, tuple], threads: int) -> dict[tuple[str, int], Callable[[], object]]:
    """One zero-argument call per (path, resolution); onnxruntime sessions with ``threads`` threads."""
    calls = {}
    for r, (x, plain, folded, channels_last, path) in nets.items():
        sess = session(path, threads)
        feed = {sess.get_inputs()[0].name: x.numpy()}

        def eager(x=x, r=r):
            with at_subnet(model, r):
                return model(x)

        calls["eager", r] = eager
        calls["plain", r] = lambda net=plain, x=x: net(x)
        calls["folded", r] = lambda net=folded, x=x: net(x)
        calls["folded_cl", r] = lambda net=channels_last, x=x: net(x)
        calls["onnxruntime", r] = lambda s=sess, f=feed: s.run(None, f)
    return calls


@torch.no_grad()
def interleaved(calls: dict, rounds: int, warmup: int, clock: Callable[[], float]) -> dict[tuple[str, int], list[float]]:
    """Milliseconds of every call in every round (rounds interleave all calls), by ``clock``."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict = {key: [] for key in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            start = clock()
            fn()
            times[key].append((clock() - start) * 1000)
    return times


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``: returns (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def report(title: str, ms: dict, madds: dict, resolutions: list[int]) -> None:
    top, low = resolutions[0], resolutions[-1]
    print(f"\n{title} (ms; ratio to {top} px in brackets)")
    print(f"{'res':>5} {'MAdds':>8} {'ratio':>6} " + " ".join(f"{p:>19}" for p in PATHS))
    for r in resolutions:
        cells = " ".join(f"{ms[p, r]:>10.2f} ({ms[p, r] / ms[p, top]:.3f})" for p in PATHS)
        print(f"{r:>5} {human(madds[r]):>8} {madds[r] / madds[top]:>6.3f} {cells}")
    target = madds[low] / madds[top]
    print(f"{low}/{top}: MAdds ratio {target:.3f}; within 1.5x means a latency ratio <= {1.5 * target:.3f}")
    for p in PATHS:
        ratio = ms[p, low] / ms[p, top]
        fixed, slope = fit_line([madds[r] / 1e9 for r in resolutions], [ms[p, r] for r in resolutions])
        verdict = "meets" if ratio <= 1.5 * target else "misses"
        print(f"  {p:>11}: ratio {ratio:.3f} = {ratio / target:.2f}x the MAdds ratio ({verdict}); "
              f"line fit {fixed:.2f} ms + {slope:.2f} ms/GMAdd; {ms['eager', top] / ms[p, top]:.2f}x eager's speed at {top}")


def latency_tables(name: str, threads: int, rounds: int, warmup: int) -> None:
    model, resolutions = build(name)
    madds = {}
    for r in resolutions:
        with at_subnet(model, r):
            madds[r] = count_madds(model, torch.zeros(1, 3, r, r))
    with tempfile.TemporaryDirectory() as tmp:
        nets = networks(model, resolutions, Path(tmp))
        with torch_threads(threads):
            wall = interleaved(callables(model, nets, threads), rounds, warmup, time.perf_counter)
        with torch_threads(1):
            cpu = interleaved(callables(model, nets, 1), rounds, warmup, time.thread_time)
    print(f"\n=== {name}: batch 1, {rounds} interleaved rounds after {warmup} warm-up rounds")
    report(f"wall clock, {threads} threads, median", {k: statistics.median(v) for k, v in wall.items()}, madds, resolutions)
    report(f"wall clock, {threads} threads, minimum", {k: min(v) for k, v in wall.items()}, madds, resolutions)
    report("CPU time of the calling thread, 1 thread, median", {k: statistics.median(v) for k, v in cpu.items()}, madds, resolutions)


def switching(threads: int) -> None:
    """Changing resolution inside one loaded model against loading another network from disk."""
    from safetensors.torch import load_file, save_file
    from torchvision.models import resnet18

    import rsvision
    from rsvision.run.folder import save_run

    recipe = load_recipe(ROOT / "recipes" / "resnet18_imagenet.yaml")
    with tempfile.TemporaryDirectory() as tmp, torch_threads(threads):
        run = Path(tmp) / "run"
        save_run(run, build_model(recipe), {}, {"task": recipe.task, "recipe": recipe.model_dump(mode="json")})
        weights = Path(tmp) / "r18.safetensors"
        save_file({k: v.contiguous() for k, v in resnet18(weights=None).state_dict().items()}, str(weights))
        loaded = rsvision.load(run, device="cpu")
        x = torch.rand(2, 3, 160, 160)
        onnx_path = Path(tmp) / "160.onnx"
        export_network(loaded.at(160), x, onnx_path)

        def pin():
            with at_subnet(loaded.model, 128):
                pass

        def first_at():
            loaded._networks.clear()
            loaded.at(128)

        def from_disk():
            net = resnet18(weights=None)
            net.load_state_dict(load_file(str(weights)))
            return net.eval()

        rows = [
            ("at_subnet(model, r): enter + exit", median_ms(pin, 200, 10)),
            ("rsvision.load(run).at(r), cached", median_ms(lambda: loaded.at(160), 200, 10)),
            ("rsvision.load(run).at(r), first call (materialize + fold)", median_ms(first_at, 5, 1)),
            ("PyTorch: ResNet-18 built + safetensors read from disk", median_ms(from_disk, 5, 1)),
            ("rsvision.load(run): the switchable RS-Net from disk", median_ms(lambda: rsvision.load(run, device="cpu"), 3, 1)),
            ("onnxruntime: session from an ONNX file on disk", median_ms(lambda: session(onnx_path, threads), 5, 1)),
        ]
    print("\nswitching resolution (ResNet-18, ms, median)")
    for label, value in rows:
        print(f"  {label:<62} {value:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["resnet18", "quickstart"], choices=["resnet18", "quickstart"])
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (at start)")
    for name in args.models:
        latency_tables(name, args.threads, args.rounds, args.warmup)
    switching(args.threads)
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
