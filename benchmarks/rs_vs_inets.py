"""Table 2 in miniature: I-Nets, I-max, Parallel and RS-Net per resolution, from one recipe.

    python benchmarks/rs_vs_inets.py [--recipe recipes/quickstart.yaml] [--set KEY=VALUE ...]
        [--seeds 0 1]

Trains, from one recipe, one individual network per resolution (I-Nets), the parallel
network without distillation (``mred.mode=off``) and the RS-Net (full MRED); I-max is the
I-Net of the largest resolution tested at every resolution (it has one BN group, used for
all). Every variant of one seed sees the same data in the same order. Prints top-1 per
resolution (the mean over ``--seeds``, and each seed's value when there are several), the
RS-Net's gain over the I-Nets, and the wall time.
"""

from __future__ import annotations

import statistics
import tempfile
import time

from variants import base_recipe, scores, train_variant

VARIANTS = ("I-Nets", "I-max", "Parallel", "RS-Net")


def top1(run_dir, resolutions) -> dict[int, float]:
    return {r: row["top1"] for r, row in scores(run_dir, resolutions).items()}


def one_seed(base: dict, resolutions: list[int], seed: int) -> dict[str, dict[int, float]]:
    """Top-1 of every variant at every resolution for ``train.seed = seed``."""
    with tempfile.TemporaryDirectory() as out:
        inets = {r: top1(train_variant(base, out, f"inet{r}", top={"resolutions": [r]}, **{"train.seed": seed}), resolutions) for r in resolutions}
        parallel = top1(train_variant(base, out, "parallel", **{"mred.mode": "off", "train.seed": seed}), resolutions)
        rsnet = top1(train_variant(base, out, "rsnet", **{"mred.mode": "full", "train.seed": seed}), resolutions)
    return {"I-Nets": {r: inets[r][r] for r in resolutions}, "I-max": inets[resolutions[0]], "Parallel": parallel, "RS-Net": rsnet}


def cell(values: list[float]) -> str:
    mean = f"{statistics.fmean(values):.1f}"
    return mean if len(values) == 1 else f"{mean} ({' / '.join(f'{v:.1f}' for v in values)})"


def main() -> None:
    recipe, overrides, base, seeds = base_recipe(__doc__.splitlines()[0], "recipes/quickstart.yaml", seeds=True)
    resolutions = sorted(base["resolutions"], reverse=True)
    start = time.time()
    runs = [one_seed(base, resolutions, seed) for seed in seeds]
    minutes = (time.time() - start) / 60
    per = {v: {r: [run[v][r] for run in runs] for r in resolutions} for v in VARIANTS}
    gain = {r: [run["RS-Net"][r] - run["I-Nets"][r] for run in runs] for r in resolutions}
    print(f"recipe {recipe} {' '.join(overrides)}; seeds {' '.join(map(str, seeds))}; top-1 (%) on the validation split"
          + ("; mean (each seed)" if len(seeds) > 1 else ""))
    print("| resolution | " + " | ".join(VARIANTS) + " | RS-Net - I-Nets |")
    print("|---:|" + "---:|" * (len(VARIANTS) + 1))
    for r in resolutions:
        gains = " / ".join(f"{g:+.1f}" for g in gain[r])
        print(f"| {r} | " + " | ".join(cell(per[v][r]) for v in VARIANTS) + f" | {gains} |")
    wins = sum(statistics.fmean(gain[r]) >= 0 for r in resolutions)
    imax = [statistics.fmean(per["I-max"][r]) for r in resolutions]
    print(f"RS-Net >= I-Nets (mean) at {wins}/{len(resolutions)} resolutions; "
          f"I-max drop from {resolutions[0]} to {resolutions[-1]}: {imax[0] - imax[-1]:.1f} points; wall time {minutes:.1f} min")


if __name__ == "__main__":
    main()
