"""MutualNet's Fig. 4/6 in miniature: width x resolution against width-only, resolution-only
and independently trained networks, at matched multiply-adds.

    python benchmarks/width_x_resolution.py [--recipe recipes/quickstart_mutualnet.yaml]
        [--set KEY=VALUE ...] [--seeds 0 1] [--lr 0.02 0.05 0.1] [--val-set KEY=VALUE ...]
        [--inets 1.0,0.5,0.25 --inet-res 128,96] [--grid-step 0.05] [--plot PATH]
        [--json results.json] [--combine a.json b.json ...]

From one recipe (same data, epochs, optimiser) it trains, per seed and learning rate:

- MutualNet: the recipe as it is (widths x resolutions, sandwich rule);
- width-only (US-Nets style): the same width range at the largest resolution only;
- resolution-only (RS-Net, MRED): full width at every resolution;
- independent networks: for each (width, resolution) of ``--inets`` x ``--inet-res``, a
  network with that many channels (the backbone's ``width`` scaled like the sub-network's
  channels) trained alone at that resolution (``mred.mode: off``).

The width networks are read on a grid (widths every ``--grid-step`` over the range, BN
statistics recomputed per configuration on training images); the others through their
own BN. Every configuration is scored on the recipe's val split (the test set) and, with
``--val-set`` (by default, for the ``mnist`` dataset, 5,000 held-out images of the training
file), on a validation split carved from the training set. Each method (each independent
network on its own) runs at the rate with the best mean validation accuracy, and
MutualNet's configuration within a budget is the one most accurate on the validation split;
the tables give test accuracy, means over seeds. For every baseline configuration: its
top-1, the MutualNet sub-network of the same (width, resolution), and MutualNet's chosen
configuration within the same MAdds. Saves the accuracy-vs-MAdds plot (matplotlib, Agg).
``--json`` keeps every run's scores as they finish; ``--combine`` prints the tables from
such files (e.g. one per seed, run as separate processes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from variants import load_combined, validation_overrides

from rsvision.analysis.calibrate import calibrate_missing
from rsvision.analysis.query import GRID_STEP, width_grid
from rsvision.engine import evaluate, train
from rsvision.nn.cost import subnet_madds
from rsvision.nn.slimmable import channels_at
from rsvision.recipe import apply_overrides, validate_recipe
from rsvision.registry import TASKS
from rsvision.report import human
from rsvision.run.folder import load_artifact
from rsvision.subnet import SubNet

METHODS = ("MutualNet", "width-only", "RS-Net", "independent")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart_mutualnet.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each repetition")
    parser.add_argument("--lr", type=float, nargs="+", help="train.lr of each sweep (default: the recipe's)")
    parser.add_argument("--val-set", action="append", metavar="KEY=VALUE",
                        help="recipe overrides that make the val split a validation split carved from the training set")
    parser.add_argument("--inets", default="1.0,0.75,0.5,0.25", help="widths of the independent networks")
    parser.add_argument("--inet-res", default="128,96", help="resolutions of the independent networks")
    parser.add_argument("--grid-step", type=float, default=GRID_STEP, help="width step of the grid the width networks are read on")
    parser.add_argument("--calibration-images", type=int, default=2000, help="training images per configuration's BN statistics")
    parser.add_argument("--plot", default="docs/img/width_x_resolution.png")
    parser.add_argument("--json", type=Path, help="write every run's scores here as they finish")
    parser.add_argument("--combine", type=Path, nargs="+", help="print the tables of earlier --json files; train nothing")
    return parser.parse_args()


def run(base: dict, out: str, name: str, changes: dict) -> Path:
    """Train ``base`` with top-level sections replaced (``None`` removes one)."""
    data = yaml.safe_load(yaml.safe_dump(base))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    data["output_dir"] = out
    return train(validate_recipe(data, name), name=name, quiet=True)


def variants(base: dict, inet_widths: list[float], inet_res: list[int]) -> list[tuple[str, list | None, dict]]:
    """(method, independent network's [width, resolution] or None, top-level recipe changes)."""
    resolutions = sorted(base["resolutions"], reverse=True)
    channels, divisor = base["model"]["backbone_args"]["width"], base["widths"].get("divisor", 8)
    out = [("MutualNet", None, {}), ("width-only", None, {"resolutions": [resolutions[0]]}), ("RS-Net", None, {"widths": None, "mred": {"mode": "full"}})]
    for w in inet_widths:
        model = {**base["model"], "backbone_args": {**base["model"]["backbone_args"], "width": channels_at(w, channels, divisor)}}
        out += [("independent", [w, r], {"resolutions": [r], "widths": None, "model": model, "mred": {"mode": "off"}}) for r in inet_res]
    return out


def scored_rows(run_dir: Path, step: float, images: int, val_overrides: list[str], config: list | None) -> list[dict]:
    """Top-1 on the test (and validation) split and MAdds of every configuration a run serves:
    the width grid x its resolutions for width runs (BN recomputed), else its trained ones."""
    artifact = load_artifact(run_dir)
    task, model = artifact.task, artifact.model
    recipe = task.recipe
    if recipe.widths is not None:
        grid = width_grid(recipe.widths, step)
        subnets = [SubNet(r, w) for w in grid for r in recipe.resolutions]
        calibrate_missing(artifact, subnets, images)
    else:
        subnets = [SubNet(r) for r in recipe.resolutions]
    test = evaluate(model, task, subnets)
    val = None
    if val_overrides:
        val_task = TASKS.get(recipe.task)(validate_recipe(apply_overrides(recipe.model_dump(mode="json"), val_overrides), str(run_dir)))
        val = evaluate(model, val_task, subnets)
    rows = []
    for i, s in enumerate(subnets):
        width = s.width if s.width is not None else (config[0] if config else 1.0)
        row = {"width": round(width, 4), "resolution": s.resolution, "madds": subnet_madds(model, s, task.example_input(s.resolution)), "test": test[i]["top1"]}
        if val is not None:
            row["val"] = val[i]["top1"]
        rows.append(row)
    return rows


def train_all(args: argparse.Namespace, base: dict, val_overrides: list[str]) -> list[dict]:
    inet_widths = [float(w) for w in args.inets.split(",")]
    inet_res = [int(r) for r in args.inet_res.split(",")]
    records: list[dict] = []
    for lr in args.lr or [base["train"]["lr"]]:
        for seed in args.seeds:
            for method, config, changes in variants(base, inet_widths, inet_res):
                trained = apply_overrides(yaml.safe_load(yaml.safe_dump(base)), [f"train.seed={seed}", f"train.lr={lr}"])
                with tempfile.TemporaryDirectory() as out:
                    start = time.time()
                    run_dir = run(trained, out, method.lower().replace(" ", "-"), changes)
                    rows = scored_rows(run_dir, args.grid_step, args.calibration_images, val_overrides, config)
                record = {"method": method, "config": config, "lr": lr, "seed": seed, "rows": rows, "minutes": (time.time() - start) / 60}
                records.append(record)
                print(json.dumps({k: v for k, v in record.items() if k != "rows"}), flush=True)
                if args.json:
                    args.json.write_text(json.dumps({"recipe": args.recipe, "overrides": args.overrides, "load": os.getloadavg(), "records": records}, indent=1))
    return records


def key_of(rec: dict) -> tuple:
    return (rec["method"], tuple(rec["config"]) if rec["config"] else None)


def chosen_rows(records: list[dict]) -> tuple[dict[tuple, list[dict]], dict[tuple, float]]:
    """Per method (each independent network alone): its rows at the rate with the best mean
    validation top-1 (test top-1 when there is no validation split), each row's test and
    validation top-1 averaged over seeds."""
    by_key: dict[tuple, dict[float, list[dict]]] = {}
    for rec in records:
        by_key.setdefault(key_of(rec), {}).setdefault(rec["lr"], []).append(rec)
    split = "val" if all("val" in row for rec in records for row in rec["rows"]) else "test"
    out, rates = {}, {}
    for key, per_rate in by_key.items():
        def score(lr: float) -> float:
            return statistics.fmean(statistics.fmean(row[split] for row in rec["rows"]) for rec in per_rate[lr])
        lr = max(per_rate, key=score)
        rates[key] = lr
        runs = per_rate[lr]
        rows = []
        for i, row in enumerate(runs[0]["rows"]):
            merged = {k: row[k] for k in ("width", "resolution", "madds")}
            for s in ("test", "val"):
                if s in row:
                    merged[s] = statistics.fmean(rec["rows"][i][s] for rec in runs)
                    merged[f"{s}_seeds"] = [rec["rows"][i][s] for rec in runs]
            rows.append(merged)
        out[key] = rows
    return out, rates


def best_within(rows: list[dict], madds: float, split: str) -> dict | None:
    """The row most accurate on ``split`` among those within ``madds`` (ties: the cheaper)."""
    fitting = [r for r in rows if r["madds"] <= madds * 1.0001]
    return max(fitting, key=lambda r: (r[split], -r["madds"])) if fitting else None


def report(records: list[dict], recipe: str, overrides: list[str]) -> dict:
    rows, rates = chosen_rows(records)
    split = "val" if "val" in next(iter(rows.values()))[0] else "test"
    mutual = rows[("MutualNet", None)]
    usnet, rsnet = rows[("width-only", None)], rows[("RS-Net", None)]
    inets = {key[1]: r[0] for key, r in rows.items() if key[0] == "independent"}
    seeds = sorted({rec["seed"] for rec in records})
    print(f"recipe {recipe} {' '.join(overrides)}; seeds {' '.join(map(str, seeds))}; top-1 (%) on the test split, mean over seeds;")
    print(f"each method at its best rate on the {'validation split' if split == 'val' else 'test split (no validation split)'}; MutualNet's configuration within a budget chosen on it too")
    print("rates: " + "; ".join(f"{k[0]}{' ' + str(k[1][0]) + 'x@' + str(k[1][1]) if k[1] else ''} {lr:g}" for k, lr in rates.items()))
    at = {(round(r["width"], 2), r["resolution"]): r for r in mutual}
    print("| baseline | config | MAdds | baseline | MutualNet, same config | MutualNet within MAdds | difference |")
    print("|---|---|---:|---:|---:|---:|---:|")
    summary: dict[str, list[float]] = {}

    def line(kind: str, row: dict) -> None:
        w, r = row["width"], row["resolution"]
        same = at.get((round(w, 2), r))
        best = best_within(mutual, row["madds"], split)
        delta = best["test"] - row["test"] if best else float("nan")
        summary.setdefault(kind, []).append(delta)
        same_text = f"{same['test']:.1f}" if same else "-"
        best_text = f"{best['test']:.1f} ({best['width']:.2f}x @ {best['resolution']})" if best else "-"
        print(f"| {kind} | {w:.2f}x @ {r} | {human(row['madds'])} | {row['test']:.1f} | {same_text} | {best_text} | {delta:+.1f} |")

    for row in sorted(usnet, key=lambda r: -r["width"]):
        if round(row["width"] * 100) % 25 == 0:
            line("width-only", row)
    for row in rsnet:
        line("resolution-only", row)
    for row in sorted(inets.values(), key=lambda r: (-r["width"], -r["resolution"])):
        line("independent", row)
    print()
    print("| baseline | configurations | MutualNet within MAdds ahead | mean difference (points) |")
    print("|---|---:|---:|---:|")
    for kind, deltas in summary.items():
        print(f"| {kind} | {len(deltas)} | {sum(d > 0 for d in deltas)} (ties {sum(d == 0 for d in deltas)}) | {sum(deltas) / len(deltas):+.2f} |")
    largest = max(r["resolution"] for r in mutual)
    full = at.get((1.0, largest))
    alone = inets.get((1.0, largest))
    if full and alone:
        print(f"\nfull width at {largest}: MutualNet {full['test']:.2f} vs the independent network {alone['test']:.2f} ({full['test'] - alone['test']:+.2f})")
    minutes = {}
    for rec in records:
        minutes[rec["method"]] = minutes.get(rec["method"], 0.0) + rec["minutes"]
    runs = len(seeds) * len({rec["lr"] for rec in records})
    print("wall time per seed and rate: " + ", ".join(f"{k} {v / runs:.1f} min" for k, v in minutes.items()))
    return {"mutual": mutual, "usnet": usnet, "rsnet": rsnet, "inets": inets}


def plot(path: str, tables: dict) -> None:
    """Top-1 against MAdds: MutualNet's grid and front, and every baseline (test split, chosen rates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rsvision.analysis.query import pareto

    mutual, usnet, rsnet, inets = tables["mutual"], tables["usnet"], tables["rsnet"], tables["inets"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["madds"] / 1e6 for r in mutual], [r["test"] for r in mutual], s=8, color="tab:blue", alpha=0.25, label="MutualNet, every (width, resolution)")
    front = pareto(mutual, "test")
    ax.plot([r["madds"] / 1e6 for r in front], [r["test"] for r in front], "-o", ms=3, color="tab:blue", label="MutualNet, best per MAdds")
    us = sorted(usnet, key=lambda r: r["madds"])
    ax.plot([r["madds"] / 1e6 for r in us], [r["test"] for r in us], "-s", ms=3, color="tab:orange", label=f"width-only (US-Nets style, {us[0]['resolution']} px)")
    rs = sorted(rsnet, key=lambda r: r["madds"])
    ax.plot([r["madds"] / 1e6 for r in rs], [r["test"] for r in rs], "-^", ms=5, color="tab:green", label="resolution-only (RS-Net, 1.0x)")
    ax.scatter([r["madds"] / 1e6 for r in inets.values()], [r["test"] for r in inets.values()], marker="x", s=40, color="tab:red", label="independent (width, resolution)")
    ax.set_xscale("log")
    ax.set_xlabel("MAdds (millions, log scale)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    args = arguments()
    if args.combine:
        records, args.recipe, args.overrides = load_combined(args.combine)
    else:
        with open(args.recipe) as f:
            base = apply_overrides(yaml.safe_load(f), args.overrides)
        base.setdefault("widths", {})["query"] = False
        load, start = os.getloadavg(), time.time()
        records = train_all(args, base, validation_overrides(base, args.val_set))
        end = os.getloadavg()
        print(f"total wall time {(time.time() - start) / 60:.1f} min; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, at end {end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f}")
    plot(args.plot, report(records, args.recipe, args.overrides))


if __name__ == "__main__":
    main()
