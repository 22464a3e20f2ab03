"""MutualNet §4.3 / Fig. 8 in miniature: a switchable detector against one detector per size.

    python benchmarks/det_sizes.py [--recipe recipes/fashion_det.yaml] [--set KEY=VALUE ...]
        [--seeds 0 1] [--json results.json] [--combine a.json b.json ...]

Trains, from one detection recipe and per seed, the switchable detector (every size of the
recipe, summed losses, private BN per size, one FPN and head set) and one detector per size
(I-Nets, the same recipe with one size); I-max is the largest size's detector tested at every
size (its one BN group serves all). Prints box AP and AP50 per size with MAdds, the mean and
seed-to-seed spread, the switchable detector's gain over the I-Nets, and the wall time.
``--json`` keeps each run's scores as they finish; ``--combine`` prints the tables from such
files (one per seed, run as separate processes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from variants import cell, recipe_and_records, scores, train_variant

from rsvision.report import human

METRICS = ("ap", "ap50")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/fashion_det.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", type=Path, help="write every run's scores here as they finish")
    parser.add_argument("--combine", type=Path, nargs="+", help="print the tables of earlier --json files; train nothing")
    return parser.parse_args()


def train_all(args: argparse.Namespace, base: dict, sizes: list[int]) -> list[dict]:
    records: list[dict] = []
    for seed in args.seeds:
        for variant, size in [("switchable", None), *(("I-Nets", r) for r in sizes)]:
            with tempfile.TemporaryDirectory() as out:
                start = time.time()
                top = {"resolutions": [size]} if size is not None else None
                run = train_variant(base, out, "det", top=top, **{"train.seed": seed})
                rows = scores(run, sizes)
                meta = json.loads((run / "rsvision.json").read_text())
            record = {"variant": variant, "seed": seed, "size": size, "minutes": (time.time() - start) / 60,
                      "scores": {str(r): {m: rows[r][m] for m in METRICS} for r in sizes}, "madds": meta["madds"]}  # fmt: skip
            records.append(record)
            print(json.dumps(record), flush=True)
            if args.json:
                args.json.write_text(json.dumps({"recipe": args.recipe, "overrides": args.overrides, "records": records}, indent=1))
    return records


def columns(records: list[dict], sizes: list[int], metric: str) -> dict[str, dict[int, list[float]]]:
    """Variant → size → the metric of each seed; I-max from the largest size's I-Net."""
    out: dict[str, dict[int, list[float]]] = {"I-Nets": {r: [] for r in sizes}, "I-max": {r: [] for r in sizes}, "switchable": {r: [] for r in sizes}}
    for rec in sorted(records, key=lambda rec: rec["seed"]):
        for r in sizes:
            value = rec["scores"][str(r)][metric]
            if rec["variant"] == "switchable":
                out["switchable"][r].append(value)
            elif rec["size"] == r:
                out["I-Nets"][r].append(value)
            if rec["variant"] == "I-Nets" and rec["size"] == sizes[0]:
                out["I-max"][r].append(value)
    return out


def report(records: list[dict], sizes: list[int]) -> None:
    madds = next(rec["madds"] for rec in records if rec["variant"] == "switchable")
    for metric in METRICS:
        cols = columns(records, sizes, metric)
        print(f"\nbox {metric} (%) on the val split, mean (each seed)")
        print("| size | MAdds | I-Nets | I-max | switchable | switchable - I-Nets |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in sizes:
            gains = [a - b for a, b in zip(cols["switchable"][r], cols["I-Nets"][r])]
            print(f"| {r} | {human(madds[str(r)])} | {cell(cols['I-Nets'][r])} | {cell(cols['I-max'][r])} | {cell(cols['switchable'][r])} | {statistics.fmean(gains):+.2f} |")
        means = {name: [statistics.fmean(v) for v in zip(*(cols[name][r] for r in sizes))] for name in cols}
        spread = {name: f"{statistics.stdev(v):.2f}" if len(v) > 1 else "-" for name, v in means.items()}
        gain = statistics.fmean(a - b for a, b in zip(means["switchable"], means["I-Nets"]))
        print(f"| mean | | {cell(means['I-Nets'])} | {cell(means['I-max'])} | {cell(means['switchable'])} | {gain:+.2f} |")
        print(f"| seed spread (sd of the mean) | | {spread['I-Nets']} | {spread['I-max']} | {spread['switchable']} | |")
    minutes = {v: sum(rec["minutes"] for rec in records if rec["variant"] == v) / len({rec["seed"] for rec in records}) for v in ("switchable", "I-Nets")}
    print(f"\nwall time per seed: switchable {minutes['switchable']:.1f} min, I-Nets {minutes['I-Nets']:.1f} min")


def main() -> None:
    args = parse_args()
    base, records = recipe_and_records(args)
    sizes = sorted(base["resolutions"], reverse=True)
    if records is None:
        records = train_all(args, base, sizes)
    print(f"\nrecipe {args.recipe} {' '.join(args.overrides)}; seeds {' '.join(str(s) for s in sorted({rec['seed'] for rec in records}))}")
    report(records, sizes)


if __name__ == "__main__":
    main()
