"""2/2 RS-Net against 2/2 I-Nets per resolution on the synthetic data (RS-Nets Table 3, in small).

Trains ``recipes/quickstart_quant.yaml`` once as an RS-Net (all resolutions, private BNs,
MRED) and once per resolution as an individual network (I-Net) with the same recipe, then
evaluates each at its resolution(s). Prints top-1 per resolution, the gain of the RS-Net
and the packed sizes (one RS-Net file against S I-Net files).

    python benchmarks/quant_rs_vs_inets.py            # about 2x the quickstart's time
    python benchmarks/quant_rs_vs_inets.py --set train.epochs=2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rsvision.engine import evaluate, train
from rsvision.recipe import load_recipe
from rsvision.run.folder import load_artifact
from rsvision.run.packed import export_packed

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart_quant.yaml"


def top1(run_dir: Path, resolutions: list[int]) -> tuple[dict[int, float], int]:
    """Top-1 at each resolution, and the packed size of the run's model."""
    artifact = load_artifact(run_dir)
    rows = evaluate(artifact.model, artifact.task, resolutions)
    with tempfile.TemporaryDirectory() as tmp:
        size = export_packed(artifact.model, Path(tmp) / "m.lq", artifact.meta, artifact.tensors)
    return {row["resolution"]: row["top1"] for row in rows}, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", default=tempfile.mkdtemp(prefix="quant_bench_"))
    args = parser.parse_args()
    overrides = [*args.overrides, f"output_dir={args.output_dir}"]
    recipe = load_recipe(RECIPE, overrides)
    resolutions = recipe.resolutions

    start = time.perf_counter()
    rs_acc, rs_size = top1(train(recipe, name="rsnet", quiet=True), resolutions)
    rs_time = time.perf_counter() - start
    inet_acc, inet_size, inet_time = {}, 0, 0.0
    for r in resolutions:
        start = time.perf_counter()
        single = load_recipe(RECIPE, [*overrides, f"resolutions=[{r}]"])
        acc, size = top1(train(single, name=f"inet{r}", quiet=True), [r])
        inet_acc[r], inet_size, inet_time = acc[r], inet_size + size, inet_time + time.perf_counter() - start

    q = recipe.quant
    print(f"W/A {q.weight_bits}/{q.act_bits}, {recipe.model.backbone}, {recipe.train.epochs} epochs, synthetic data")
    print(f"{'resolution':>10} {'I-Nets top-1':>13} {'RS-Net top-1':>13} {'gain':>7}")
    for r in resolutions:
        print(f"{r:>10} {inet_acc[r]:>13.1f} {rs_acc[r]:>13.1f} {rs_acc[r] - inet_acc[r]:>+7.1f}")
    mean_gain = sum(rs_acc[r] - inet_acc[r] for r in resolutions) / len(resolutions)
    print(f"{'mean':>10} {'':>13} {'':>13} {mean_gain:>+7.1f}")
    print(f"packed size: RS-Net {rs_size:,} B, {len(resolutions)} I-Nets {inet_size:,} B ({inet_size / rs_size:.1f}x)")
    print(f"train + eval time: RS-Net {rs_time:.0f} s, I-Nets {inet_time:.0f} s")


if __name__ == "__main__":
    main()
