"""Table 7 in miniature: I-Nets, I-max and RS-Net per resolution on synthetic scenes.

    python benchmarks/seg_rs_vs_inets.py [--recipe recipes/quickstart_seg.yaml] [--set KEY=VALUE ...]

Trains, from one segmentation recipe, one individual network per resolution (I-Nets)
and the RS-Net (full MRED); I-max is the I-Net of the largest resolution tested at every
resolution. Prints pixel accuracy, mean accuracy and mean IoU (%) per resolution as in
Table 7, the RS-Net's gain over the I-Nets, and the wall time.
"""

from __future__ import annotations

import tempfile
import time

from variants import base_recipe, scores, train_variant

METRICS = ("pixel_acc", "mean_acc", "miou")


def main() -> None:
    recipe, overrides, base = base_recipe(__doc__.splitlines()[0], "recipes/quickstart_seg.yaml")
    resolutions = sorted(base["resolutions"], reverse=True)
    start = time.time()
    with tempfile.TemporaryDirectory() as out:
        inets = {r: scores(train_variant(base, out, f"inet{r}", top={"resolutions": [r]}), resolutions) for r in resolutions}
        rsnet = scores(train_variant(base, out, "rsnet", **{"mred.mode": "full"}), resolutions)
    minutes = (time.time() - start) / 60
    imax = inets[resolutions[0]]
    print(f"recipe {recipe} {' '.join(overrides)}; validation split, % (pixel acc / mean acc / mIoU)")
    print("| resolution | I-Nets | I-max | RS-Net | RS-Net - I-Nets (mIoU) |")
    print("|---:|---|---|---|---:|")
    for r in resolutions:
        cells = ["/".join(f"{m[r][k] if m is not inets else inets[r][r][k]:.1f}" for k in METRICS) for m in (inets, imax, rsnet)]
        print(f"| {r} | {' | '.join(cells)} | {rsnet[r]['miou'] - inets[r][r]['miou']:+.1f} |")
    wins = sum(rsnet[r]["miou"] >= inets[r][r]["miou"] for r in resolutions)
    drop = imax[resolutions[0]]["miou"] - imax[resolutions[-1]]["miou"]
    print(f"RS-Net >= I-Nets (mIoU) at {wins}/{len(resolutions)} resolutions; "
          f"I-max mIoU drop from {resolutions[0]} to {resolutions[-1]}: {drop:.1f} points; wall time {minutes:.1f} min")


if __name__ == "__main__":
    main()
