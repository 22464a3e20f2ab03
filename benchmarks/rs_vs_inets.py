"""Table 2 in miniature: I-Nets, I-max, Parallel and RS-Net per resolution, from one recipe.

    python benchmarks/rs_vs_inets.py [--recipe recipes/quickstart.yaml] [--set KEY=VALUE ...]
        [--seeds 0 1] [--lr 0.02 0.05 0.1] [--variants I-Nets Parallel RS-Net]
        [--val-set KEY=VALUE ...] [--json results.json] [--combine a.json b.json ...]

Trains, from one recipe, one individual network per resolution (I-Nets), the parallel
network without distillation (``mred.mode=off``), the RS-Net (full MRED, Eq. 10) and, when
asked, the RS-Net with vanilla MRED (Eq. 9); I-max is the I-Net of the largest resolution
tested at every resolution (it has one BN group, used for all). Every variant of one seed
sees the same data in the same order.

Each trained network is scored on the recipe's val split (the test set) and, with
``--val-set`` (by default, for the ``mnist`` dataset, 5,000 held-out images of the
training file: ``data.args.val_from=train``), on a validation split carved from the
training set. Two tables come out: (a) every variant at each common rate, as the paper
trains them (§4.1); (b) each variant at its own best rate, chosen on the validation split
alone (an I-Net per resolution; Parallel and the RS-Nets on their mean over resolutions),
then scored on the test set. ``--json`` keeps every run's scores as they finish;
``--combine`` prints the tables from such files (e.g. one per seed, run as separate
processes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from variants import cell, recipe_and_records, scores, train_variant, validation_overrides


#: Variant name -> (recipe overrides, trained per resolution).
VARIANTS = {
    "I-Nets": ({}, True),
    "Parallel": ({"mred.mode": "off"}, False),
    "RS-Net": ({"mred.mode": "full"}, False),
    "RS-Net (vanilla)": ({"mred.mode": "vanilla"}, False),
}
#: Columns of the tables (I-max comes from the I-Nets' run at the largest resolution).
DEFAULT_VARIANTS = ["I-Nets", "Parallel", "RS-Net"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each repetition")
    parser.add_argument("--lr", type=float, nargs="+", help="train.lr of each sweep (default: the recipe's)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--val-set", action="append", metavar="KEY=VALUE",
                        help="recipe overrides that make the val split a validation split carved from the training set")
    parser.add_argument("--json", type=Path, help="write every run's scores here as they finish")
    parser.add_argument("--combine", type=Path, nargs="+", help="print the tables of earlier --json files; train nothing")
    return parser.parse_args()


def run_scores(run_dir: Path, resolutions: list[int], val_overrides: list[str]) -> dict[str, dict[int, float]]:
    """Top-1 per resolution on the test split and, when carved, the validation split."""
    out = {"test": {r: row["top1"] for r, row in scores(run_dir, resolutions).items()}}
    if val_overrides:
        out["val"] = {r: row["top1"] for r, row in scores(run_dir, resolutions, val_overrides).items()}
    return out


def train_all(args: argparse.Namespace, base: dict, resolutions: list[int], val_overrides: list[str]) -> list[dict]:
    """One record per trained network: variant, lr, seed, resolution (I-Nets) and scores."""
    records: list[dict] = []
    for lr in args.lr or [base["train"]["lr"]]:
        for seed in args.seeds:
            for variant in args.variants:
                overrides, per_resolution = VARIANTS[variant]
                for r in resolutions if per_resolution else [None]:
                    with tempfile.TemporaryDirectory() as out:
                        start = time.time()
                        top = {"resolutions": [r]} if r is not None else None
                        run = train_variant(base, out, "variant", top=top, **overrides, **{"train.seed": seed, "train.lr": lr})
                        record = {"variant": variant, "lr": lr, "seed": seed, "resolution": r,
                                  **run_scores(run, resolutions, val_overrides), "minutes": (time.time() - start) / 60}
                    records.append(record)
                    print(json.dumps(record), flush=True)
                    if args.json:
                        args.json.write_text(json.dumps({"recipe": args.recipe, "overrides": args.overrides, "records": records}, indent=1))
    return records


def per_variant(records: list[dict], resolutions: list[int], split: str) -> dict[tuple[str, float, int], dict[int, float]]:
    """(variant, lr, seed) -> accuracy per resolution; I-Nets gathered from their single runs, I-max added."""
    table: dict[tuple[str, float, int], dict[int, float]] = {}
    for rec in records:
        acc = {int(k): v for k, v in rec[split].items()}
        key = (rec["variant"], rec["lr"], rec["seed"])
        if rec["resolution"] is None:
            table[key] = acc
        else:
            table.setdefault(key, {})[rec["resolution"]] = acc[rec["resolution"]]
            if rec["resolution"] == resolutions[0]:
                table[("I-max", rec["lr"], rec["seed"])] = acc
    return table


def spread(values: list[float]) -> str:
    return f"{statistics.stdev(values):.2f}" if len(values) > 1 else "-"


def print_table(title: str, columns: dict[str, dict[int, list[float]]], resolutions: list[int]) -> None:
    """Mean (each seed) per resolution, the mean over resolutions and its seed-to-seed spread."""
    names = list(columns)
    print(f"\n{title}")
    gain = "RS-Net" in columns and "I-Nets" in columns
    print("| resolution | " + " | ".join(names) + (" | RS-Net - I-Nets |" if gain else " |"))
    print("|---:|" + "---:|" * (len(names) + gain))
    for r in resolutions:
        row = [cell(columns[n][r]) for n in names]
        if gain:
            diffs = [a - b for a, b in zip(columns["RS-Net"][r], columns["I-Nets"][r])]
            row.append(f"{statistics.fmean(diffs):+.2f}" if diffs else "-")
        print(f"| {r} | " + " | ".join(row) + " |")
    means = {n: [statistics.fmean(vals) for vals in zip(*(columns[n][r] for r in resolutions))] for n in names}
    row = [cell(means[n]) for n in names]
    if gain:
        row.append(f"{statistics.fmean(a - b for a, b in zip(means['RS-Net'], means['I-Nets'])):+.2f}" if means["RS-Net"] else "-")
    print("| mean | " + " | ".join(row) + " |")
    print("| seed spread (sd of the mean) | " + " | ".join(spread(means[n]) for n in names) + (" | |" if gain else " |"))


def columns_at(test: dict, variants: list[str], resolutions: list[int], seeds: list[int], choose) -> dict[str, dict[int, list[float]]]:
    """Per variant and resolution, the test accuracy of each seed at the rate ``choose(variant, r)``."""
    return {v: {r: [test[(v, choose(v, r), s)][r] for s in seeds if (v, choose(v, r), s) in test] for r in resolutions} for v in variants}


def report(records: list[dict], resolutions: list[int]) -> None:
    test = per_variant(records, resolutions, "test")
    rates = sorted({rec["lr"] for rec in records})
    seeds = sorted({rec["seed"] for rec in records})
    trained = [v for v in VARIANTS if any(rec["variant"] == v for rec in records)]
    variants = trained[:1] + ["I-max"] + trained[1:] if "I-Nets" in trained else trained
    for lr in rates:
        print_table(f"(a) every variant at lr {lr}: top-1 (%) on the test split, mean (each seed)",
                    columns_at(test, variants, resolutions, seeds, lambda v, r: lr), resolutions)
        imax = [statistics.fmean(test[("I-max", lr, s)][r] for s in seeds if ("I-max", lr, s) in test) for r in (resolutions[0], resolutions[-1])] if "I-Nets" in trained else None
        if imax:
            print(f"I-max drop from {resolutions[0]} to {resolutions[-1]}: {imax[0] - imax[1]:.1f} points")
    if len(rates) > 1 and all("val" in rec for rec in records):
        val = per_variant(records, resolutions, "val")

        def mean_val(v: str, lr: float, r: int | None) -> float:
            runs = [val[(v, lr, s)] for s in seeds if (v, lr, s) in val]
            return statistics.fmean(run[r] if r is not None else statistics.fmean(run.values()) for run in runs)

        def best(v: str, r: int) -> float:
            # An I-Net is one network per resolution; I-max is the largest resolution's I-Net.
            at = r if v == "I-Nets" else resolutions[0] if v == "I-max" else None
            return max(rates, key=lambda lr: mean_val("I-Nets" if v == "I-max" else v, lr, at))

        print_table("(b) each variant at its best rate, chosen on the validation split: top-1 (%) on the test split",
                    columns_at(test, variants, resolutions, seeds, best), resolutions)
        chosen = {v: sorted({best(v, r) for r in resolutions}) for v in variants}
        print("rates chosen: " + "; ".join(f"{v} {', '.join(map(str, c))}" for v, c in chosen.items()))


def main() -> None:
    args = parse_args()
    base, records = recipe_and_records(args)
    resolutions = sorted(base["resolutions"], reverse=True)
    start = time.time()
    if records is None:
        records = train_all(args, base, resolutions, validation_overrides(base, args.val_set))
    print(f"\nrecipe {args.recipe} {' '.join(args.overrides)}; seeds {' '.join(map(str, sorted({r['seed'] for r in records})))}")
    report(records, resolutions)
    if not args.combine:
        print(f"wall time {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
