"""Packed size of a ResNet-18 W2 RS-Net (S = 5, 1000 classes, first conv and fc in float).

Builds the model of ``recipes/resnet18_lq_w2a32.yaml`` (untrained: sizes do not depend on
the values), exports it with three settings of the float remainder and prints the file
size against the float32 RS-Net, one float32 ResNet-18 and five separately quantized
I-Nets, then reloads each file and checks that its predictions are identical to the
(compacted) model's at every resolution.

    python benchmarks/quant_export_size.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from rsvision.models import build_model
from rsvision.recipe import load_recipe
from rsvision.run.packed import compact_, export_packed, load_packed_run, size_report

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "resnet18_lq_w2a32.yaml"
SETTINGS = [("float32", None), ("float16", None), ("float16", 8)]


def main() -> None:
    recipe = load_recipe(RECIPE)
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    meta = {"recipe": recipe.model_dump(mode="json")}
    x = {r: torch.rand(2, 3, r, r) for r in recipe.resolutions}
    print(f"{'remainder':>9} {'fc':>6} {'bytes':>11} {'vs float32 RS-Net':>18} {'vs float32 net':>15} {'vs 5 I-Nets':>12} {'reload identical':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for remainder, linear_bits in SETTINGS:
            compact_(model, remainder=remainder, linear_bits=linear_bits)  # the settings only round further
            path = Path(tmp) / "r18.lq"
            rep = size_report(model, export_packed(model, path, meta, remainder=remainder, linear_bits=linear_bits), remainder=remainder, linear_bits=linear_bits)
            reloaded = load_packed_run(path).model
            with torch.no_grad():
                same = all(torch.equal(model(x[r]), reloaded(x[r])) for r in recipe.resolutions)
            fc = f"int{linear_bits}" if linear_bits else remainder.replace("float", "fp")
            print(
                f"{remainder:>9} {fc:>6} {rep['packed_bytes']:>11,} {rep['ratio_vs_float32_rsnet']:>17.2f}x "
                f"{rep['ratio_vs_float32_single_net']:>14.2f}x {rep['ratio_vs_inets']:>11.2f}x {str(same):>17}"
            )
    print(
        f"quantized weights: {rep['quantized_weights']:,}; bits per weight: RS-Net {rep['bits_per_weight_rsnet']}, "
        f"{rep['resolutions']} I-Nets log2(2^K*S) = {rep['bits_per_weight_inets']:.2f}"
    )


if __name__ == "__main__":
    main()
