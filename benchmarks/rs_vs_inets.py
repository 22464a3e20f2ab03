"""Table 2 in miniature: I-Nets, I-max, Parallel and RS-Net per resolution on synthetic data.

    python benchmarks/rs_vs_inets.py [--recipe recipes/quickstart.yaml] [--set KEY=VALUE ...]

Trains, from one recipe, one individual network per resolution (I-Nets), the parallel
network without distillation (``mred.mode=off``) and the RS-Net (full MRED); I-max is the
I-Net of the largest resolution tested at every resolution (it has one BN group, used for
all). Prints top-1 per resolution, the RS-Net's gain over the I-Nets, and the wall time.
"""

from __future__ import annotations

import tempfile
import time

from variants import base_recipe, scores, train_variant


def top1(run_dir, resolutions) -> dict[int, float]:
    return {r: row["top1"] for r, row in scores(run_dir, resolutions).items()}


def main() -> None:
    recipe, overrides, base = base_recipe(__doc__.splitlines()[0], "recipes/quickstart.yaml")
    resolutions = sorted(base["resolutions"], reverse=True)
    start = time.time()
    with tempfile.TemporaryDirectory() as out:
        inets = {r: top1(train_variant(base, out, f"inet{r}", top={"resolutions": [r]}), resolutions) for r in resolutions}
        parallel = top1(train_variant(base, out, "parallel", **{"mred.mode": "off"}), resolutions)
        rsnet = top1(train_variant(base, out, "rsnet", **{"mred.mode": "full"}), resolutions)
    minutes = (time.time() - start) / 60
    imax = inets[resolutions[0]]
    print(f"recipe {recipe} {' '.join(overrides)}; top-1 (%) on the validation split")
    print("| resolution | I-Nets | I-max | Parallel | RS-Net | RS-Net - I-Nets |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in resolutions:
        print(f"| {r} | {inets[r][r]:.1f} | {imax[r]:.1f} | {parallel[r]:.1f} | {rsnet[r]:.1f} | {rsnet[r] - inets[r][r]:+.1f} |")
    wins = sum(rsnet[r] >= inets[r][r] for r in resolutions)
    print(f"RS-Net >= I-Nets at {wins}/{len(resolutions)} resolutions; "
          f"I-max drop from {resolutions[0]} to {resolutions[-1]}: {imax[resolutions[0]] - imax[resolutions[-1]]:.1f} points; "
          f"wall time {minutes:.1f} min")


if __name__ == "__main__":
    main()
