"""Where the time of `rsvision train` goes, stage by stage, for one recipe.

    python benchmarks/train_stages.py RECIPE [--set KEY=VALUE ...] [--top 0]

Imports are timed in a fresh interpreter (``import rsvision.cli`` and what a training run
imports); the training itself runs in this process under ``cProfile`` and each stage is the
cumulative time of the function that does it: plugin loading, the task's datasets (folder
scanning, decoding with ``data.cache: memory``), waiting for the next training batch (data
loading and augmentation the workers have not hidden), the training method's forward and
loss, the backward pass, the optimiser step, evaluation, the multiply-add count, and the
run-folder writes. The profiler slows Python-heavy stages more than the network's own
kernels, so read the shares, not the seconds, against a run without it. ``--top N`` also
prints the N functions with the largest own time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time

import yaml

IMPORTS = "import rsvision.cli, rsvision.engine, rsvision.tasks, rsvision.training"

#: Stage → (end of the defining file's path, function name[, callers left out]) whose cumulative time it is.
STAGES = {
    "plugins": ("rsvision/registry.py", "load_plugins"),
    "datasets (scan, decode)": ("tasks/base.py", "dataset"),
    "wait for a training batch": ("torch/utils/data/dataloader.py", "__next__", "rsvision/engine/evaluate.py"),
    "forward + loss": ("rsvision/training/rsnets.py", "forward"),
    "backward": ("torch/_tensor.py", "backward"),
    "optimiser step": ("accelerate/optimizer.py", "step"),
    "evaluation": ("rsvision/engine/evaluate.py", "evaluate"),
    "multiply-adds": ("rsvision/engine/trainer.py", "_madds"),
    "run folder (state, weights, metadata)": ("rsvision/engine/trainer.py", "_save_epoch"),
}


def import_seconds() -> float:
    code = f"import time; t = time.perf_counter(); {IMPORTS}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def cumulative(stats: pstats.Stats, path_end: str, function: str, not_from: str | None = None) -> float:
    """Cumulative seconds of ``function`` in the file ending ``path_end``; with ``not_from``,
    only its calls from callers outside the file ending so."""
    total = 0.0
    for (file, _, name), (_, _, _, ct, callers) in stats.stats.items():
        if name != function or not file.replace(os.sep, "/").endswith(path_end):
            continue
        if not_from is None:
            total += ct
        else:
            total += sum(c[3] for (caller, _, _), c in callers.items() if not caller.replace(os.sep, "/").endswith(not_from))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args()
    imports = import_seconds()
    from rsvision.engine import train
    from rsvision.recipe import apply_overrides, validate_recipe

    with open(args.recipe) as f:
        data = apply_overrides(yaml.safe_load(f), args.overrides)
    with tempfile.TemporaryDirectory() as out:
        data["output_dir"] = out
        recipe = validate_recipe(data, args.recipe)
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.runcall(train, recipe, name="stages", quiet=True)
        total = time.perf_counter() - start
    stats = pstats.Stats(profile)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.recipe}")
    print("| stage | seconds | share of training |")
    print("|---|---:|---:|")
    print(f"| imports (fresh interpreter, not profiled) | {imports:.1f} | |")
    seconds = {stage: cumulative(stats, *key) for stage, key in STAGES.items()}
    seconds["run folder (state, weights, metadata)"] -= seconds["multiply-adds"]  # the count runs inside the save
    for stage, s in seconds.items():
        print(f"| {stage} | {s:.1f} | {100 * s / total:.0f} % |")
    rest = total - sum(seconds.values())
    print(f"| the rest (progress, logging, set-up) | {rest:.1f} | {100 * rest / total:.0f} % |")
    print(f"| **training, profiled** | **{total:.1f}** | 100 % |")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
