"""MutualNet's Fig. 4/6 in miniature: width x resolution against width-only, resolution-only
and independently trained networks, at matched multiply-adds, on synthetic data.

    python benchmarks/width_x_resolution.py [--recipe recipes/quickstart_mutualnet.yaml]
        [--set KEY=VALUE ...] [--inets 1.0,0.5,0.25 --inet-res 128,96] [--plot PATH]

From one recipe (same data, epochs, optimiser) it trains:

- MutualNet: the recipe as it is (widths x resolutions, sandwich rule);
- width-only (US-Nets style): the same width range at the largest resolution only;
- resolution-only (RS-Net, MRED): full width at every resolution;
- independent networks: for each (width, resolution) of ``--inets`` x ``--inet-res``, a
  network with that many channels (the backbone's ``width`` scaled like the sub-network's
  channels) trained alone at that resolution (``mred.mode: off``).

MutualNet and the width-only network are read through their query tables (widths every
0.05, BN statistics recomputed per configuration on 2,000 training images); the others
through their own BN. For every baseline configuration the script prints its top-1, the
MutualNet sub-network of the same (width, resolution), and MutualNet's best configuration
within the same MAdds; then the wall time and the machine's load. It saves the
accuracy-vs-MAdds plot (matplotlib, Agg).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

from rsvision.analysis.query import query_run
from rsvision.engine import train
from rsvision.nn.slimmable import channels_at
from rsvision.recipe import apply_overrides, validate_recipe
from rsvision.report import human


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart_mutualnet.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--inets", default="1.0,0.75,0.5,0.25", help="widths of the independent networks")
    parser.add_argument("--inet-res", default="128,96", help="resolutions of the independent networks")
    parser.add_argument("--plot", default="docs/width_x_resolution.png")
    parser.add_argument("--keep", default=None, help="keep the run folders here (default: a temporary folder)")
    return parser.parse_args()


def run(base: dict, out: str, name: str, **changes) -> Path:
    """Train ``base`` with top-level sections replaced (``None`` removes one)."""
    data = yaml.safe_load(yaml.safe_dump(base))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    data["output_dir"] = out
    return train(validate_recipe(data, name), name=name, quiet=True)


def trained_rows(run_dir: Path) -> list[dict]:
    """The final validation rows of a run with their MAdds (its own BN)."""
    meta = json.loads((run_dir / "rsvision.json").read_text())
    return [{**row, "madds": meta["madds"][row["subnet"]]} for row in meta["metrics"] if row.get("subnet") in meta["madds"]]


def best_within(rows: list[dict], madds: float) -> dict | None:
    fitting = [r for r in rows if r["madds"] <= madds * 1.0001]
    return max(fitting, key=lambda r: (r["top1"], -r["madds"])) if fitting else None


def main() -> None:
    args = arguments()
    with open(args.recipe) as f:
        base = apply_overrides(yaml.safe_load(f), args.overrides)
    base.setdefault("widths", {})["query"] = False
    resolutions = sorted(base["resolutions"], reverse=True)
    low, high = base["widths"]["range"]
    divisor = base["widths"].get("divisor", 8)
    channels = base["model"]["backbone_args"]["width"]
    inet_widths = [float(w) for w in args.inets.split(",")]
    inet_res = [int(r) for r in args.inet_res.split(",")]
    load = os.getloadavg()
    start = time.time()
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or tmp

        def timed(name: str, **changes) -> Path:
            t = time.time()
            path = run(base, out, name, **changes)
            times[name] = time.time() - t
            return path

        mutual_dir = timed("mutualnet")
        usnet_dir = timed("usnet", resolutions=[resolutions[0]])
        rsnet_dir = timed("rsnet", widths=None, mred={"mode": "full"})
        inet_dirs = {}
        for w in inet_widths:
            model = {**base["model"], "backbone_args": {**base["model"]["backbone_args"], "width": channels_at(w, channels, divisor)}}
            for r in inet_res:
                inet_dirs[(w, r)] = timed(f"inet-w{round(w * 100)}-r{r}", resolutions=[r], widths=None, model=model, mred={"mode": "off"})
        t = time.time()
        mutual = query_run(mutual_dir)["rows"]
        usnet = query_run(usnet_dir)["rows"]
        times["query tables"] = time.time() - t
        rsnet = trained_rows(rsnet_dir)
        inets = {key: trained_rows(path)[0] for key, path in inet_dirs.items()}
    minutes = (time.time() - start) / 60
    end_load = os.getloadavg()

    at = {(round(r["width"], 2), r["resolution"]): r for r in mutual}
    print(f"recipe {args.recipe} {' '.join(args.overrides)}; top-1 (%) on the validation split; MutualNet widths {low}-{high}, resolutions {resolutions}")
    print("| baseline | config | MAdds | baseline | MutualNet, same config | MutualNet best within MAdds | best - baseline |")
    print("|---|---|---:|---:|---:|---:|---:|")
    summary: dict[str, list[float]] = {}

    def line(kind: str, w: float, r: int, madds: int, top1: float) -> None:
        same = at.get((round(w, 2), r))
        best = best_within(mutual, madds)
        delta = best["top1"] - top1 if best else float("nan")
        summary.setdefault(kind, []).append(delta)
        same_text = f"{same['top1']:.1f}" if same else "-"
        best_text = f"{best['top1']:.1f} ({best['width']:.2f}x @ {best['resolution']})" if best else "-"
        print(f"| {kind} | {w:.2f}x @ {r} | {human(madds)} | {top1:.1f} | {same_text} | {best_text} | {delta:+.1f} |")

    for row in sorted(usnet, key=lambda r: -r["width"]):
        if abs(row["width"] * 20 - round(row["width"] * 20)) < 1e-6 and round(row["width"] * 100) % 25 == 0:
            line("width-only", row["width"], row["resolution"], row["madds"], row["top1"])
    for row in rsnet:
        line("resolution-only", 1.0, row["resolution"], row["madds"], row["top1"])
    for (w, r), row in inets.items():
        line("independent", w, r, row["madds"], row["top1"])
    print()
    print("| baseline | configurations | MutualNet best within MAdds wins | mean difference (points) |")
    print("|---|---:|---:|---:|")
    for kind, deltas in summary.items():
        print(f"| {kind} | {len(deltas)} | {sum(d > 0 for d in deltas)} (ties {sum(d == 0 for d in deltas)}) | {sum(deltas) / len(deltas):+.2f} |")
    print()
    print("wall time per training: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print(f"total wall time {minutes:.1f} min; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, at end {end_load[0]:.2f} / {end_load[1]:.2f} / {end_load[2]:.2f}")
    plot(args.plot, mutual, usnet, rsnet, inets, resolutions)


def plot(path: str, mutual, usnet, rsnet, inets, resolutions) -> None:
    """Top-1 against MAdds: MutualNet's grid and Pareto front, and every baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rsvision.analysis.query import pareto

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["madds"] / 1e6 for r in mutual], [r["top1"] for r in mutual], s=8, color="tab:blue", alpha=0.25, label="MutualNet, every (width, resolution)")
    front = pareto(mutual, "top1")
    ax.plot([r["madds"] / 1e6 for r in front], [r["top1"] for r in front], "-o", ms=3, color="tab:blue", label="MutualNet, query table (best per MAdds)")
    us = sorted(usnet, key=lambda r: r["madds"])
    ax.plot([r["madds"] / 1e6 for r in us], [r["top1"] for r in us], "-s", ms=3, color="tab:orange", label=f"width-only (US-Nets style, {resolutions[0]} px)")
    rs = sorted(rsnet, key=lambda r: r["madds"])
    ax.plot([r["madds"] / 1e6 for r in rs], [r["top1"] for r in rs], "-^", ms=5, color="tab:green", label="resolution-only (RS-Net, 1.0x)")
    ax.scatter([r["madds"] / 1e6 for r in inets.values()], [r["top1"] for r in inets.values()], marker="x", s=40, color="tab:red", label="independent (width, resolution)")
    ax.set_xscale("log")
    ax.set_xlabel("MAdds (millions, log scale)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
