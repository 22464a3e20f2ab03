"""A proxy for the width plateau: MutualNet's full width after a short training, per option.

    python benchmarks/width_plateau.py [--recipe recipes/quickstart_mutualnet.yaml] [--steps 600]
        [--options baseline,paper,warmup,low-lr,ramp,labels] [--seeds 0,1] [--set KEY=VALUE ...]

From one width recipe it trains, for ``--steps`` optimiser steps (epochs of at most the
training set's batches, cosine schedule over them), each option:

- ``baseline``: the recipe as it is;
- ``paper``: distillation from the first step at weight 1 (``widths.students: distill``,
  ``widths.student_ramp_epochs: 0``);
- ``warmup``: ``train.warmup_epochs`` of ``--warmup-epochs``;
- ``low-lr``: ``train.lr`` times ``--lr-factor``;
- ``ramp``: ``widths.student_ramp_epochs`` of ``--ramp-epochs`` (the students' loss weight
  rises from 0 to 1);
- ``labels``: ``widths.students: labels`` (the students learn from the labels).

and prints the top-1 of the full width at the largest resolution on the validation split
(BN statistics recomputed on ``widths.calibration_images`` training images), per seed and
as the mean, with the wall time and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import yaml

from rsvision.engine import train
from rsvision.recipe import apply_overrides, validate_recipe
from rsvision.registry import TASKS
from rsvision.subnet import SubNet

OPTIONS = ("baseline", "paper", "warmup", "low-lr", "ramp", "labels")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart_mutualnet.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps per training")
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated, from {', '.join(OPTIONS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated train.seed values")
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--lr-factor", type=float, default=1 / 3)
    parser.add_argument("--ramp-epochs", type=float, default=1.0)
    parser.add_argument("--keep", default=None, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    unknown = sorted(set(args.options.split(",")) - set(OPTIONS))
    if unknown:
        parser.error(f"--options: unknown {', '.join(unknown)} (choose from {', '.join(OPTIONS)})")
    return args


def changes(option: str, base: dict, args: argparse.Namespace) -> dict[str, object]:
    """The recipe fields ``option`` sets (dotted keys)."""
    if option == "paper":
        return {"widths.students": "distill", "widths.student_ramp_epochs": 0}
    if option == "warmup":
        return {"train.warmup_epochs": args.warmup_epochs}
    if option == "low-lr":
        return {"train.lr": base["train"]["lr"] * args.lr_factor}
    if option == "ramp":
        return {"widths.student_ramp_epochs": args.ramp_epochs}
    if option == "labels":
        return {"widths.students": "labels"}
    return {}


def schedule(base: dict, steps: int) -> dict[str, int]:
    """``train`` fields for about ``steps`` optimiser steps: the fewest epochs that hold them,
    each of equally many steps (``max_steps_per_epoch`` counts micro-batches), one validation."""
    recipe = validate_recipe(base, "proxy")
    batches = len(TASKS.get(recipe.task)(recipe).train_dataset()) // recipe.data.batch_size
    accum = recipe.train.grad_accum
    epochs = math.ceil(steps * accum / batches)
    return {"epochs": epochs, "max_steps_per_epoch": math.ceil(steps / epochs) * accum, "val_every": epochs}


def full_width_top1(run_dir: Path, resolution: int) -> float:
    meta = json.loads((run_dir / "rsvision.json").read_text())
    full = SubNet(resolution, max(meta["widths"].get("range") or meta["widths"]["list"])).id
    return next(row["top1"] for row in meta["metrics"] if row.get("subnet") == full)


def main() -> None:
    args = arguments()
    with open(args.recipe) as f:
        base = apply_overrides(yaml.safe_load(f), args.overrides)
    if "widths" not in base:
        raise SystemExit(f"{args.recipe}: not a width recipe (no widths section)")
    base["widths"]["query"] = False
    base["train"] = {**base.get("train", {}), **schedule(base, args.steps)}
    resolution = max(base["resolutions"])
    options = args.options.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    load = os.getloadavg()
    start = time.time()
    results: dict[str, list[float]] = {}
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or tmp
        for option in options:
            fields = changes(option, base, args)
            for seed in seeds:
                data = apply_overrides(yaml.safe_load(yaml.safe_dump(base)), [f"{k}={v}" for k, v in fields.items()] + [f"train.seed={seed}", f"output_dir={out}"])
                t = time.time()
                run_dir = train(validate_recipe(data, f"{option}-s{seed}"), name=f"{option}-s{seed}", quiet=True)
                times[option] = times.get(option, 0.0) + time.time() - t
                results.setdefault(option, []).append(full_width_top1(run_dir, resolution))
    end_load = os.getloadavg()
    t = base["train"]
    updates = t["epochs"] * math.ceil(t["max_steps_per_epoch"] / t.get("grad_accum", 1))
    print(f"recipe {args.recipe} {' '.join(args.overrides)}; {updates} optimiser steps ({t['epochs']} epochs of {t['max_steps_per_epoch']} batches), seeds {seeds}")
    print(f"top-1 (%) of the full width at {resolution} px on the validation split")
    print("| option | changes | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | wall (min) |")
    print("|---|---|" + "---:|" * (len(seeds) + 2))
    for option in options:
        fields = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in changes(option, base, args).items()) or "-"
        values = results[option]
        cells = " | ".join(f"{v:.1f}" for v in values)
        print(f"| {option} | {fields} | {cells} | {sum(values) / len(values):.1f} | {times[option] / 60:.1f} |")
    print(f"total wall time {(time.time() - start) / 60:.1f} min; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, at end {end_load[0]:.2f} / {end_load[1]:.2f} / {end_load[2]:.2f}")


if __name__ == "__main__":
    main()
