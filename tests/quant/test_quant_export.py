"""Packed export of a quantized RS-Net: bit packing, sizes, identical predictions after reload."""

from __future__ import annotations

import torch

from rsvision.models import build_model
from rsvision.recipe import validate_recipe
from rsvision.run.packed import (
    compact_,
    export_packed,
    is_packed,
    load_packed_run,
    pack_codes,
    unpack_codes,
)

RECIPE = {
    "task": "cls",
    "resolutions": [32, 24, 16],
    "model": {"backbone": "preact_resnet8", "num_classes": 10},
    "data": {"dataset": "synthetic"},
    "quant": {"weight_bits": 2, "act_bits": 2},
}


def test_pack_codes_by_hand():
    packed = pack_codes(torch.tensor([1, 2, 3, 0, 3]), bits=2)
    # lowest bits first: 01 | 10 | 11 | 00 -> 0b00_11_10_01 = 0x39, then 11 -> 0x03
    assert packed.tolist() == [0x39, 0x03]
    assert unpack_codes(packed, 2, 5).tolist() == [1, 2, 3, 0, 3]
    codes = torch.randint(0, 8, (1001,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(unpack_codes(pack_codes(codes, 3), 3, 1001), codes)
    assert pack_codes(codes, 3).numel() == (1001 * 3 + 7) // 8


def _trained_model():
    torch.manual_seed(0)
    model = build_model(validate_recipe(RECIPE)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        out = model([torch.rand(4, 3, r, r) for r in (32, 24, 16)])
        loss = sum(torch.nn.functional.cross_entropy(o, torch.arange(4)) for o in out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _predictions(model):
    torch.manual_seed(1)
    with torch.no_grad():
        return [model(torch.rand(2, 3, r, r)) for r in (32, 24, 20, 16)]  # 20: interpolated BN


def test_reload_gives_identical_predictions(tmp_path):
    model = _trained_model()
    alpha = torch.tensor([0.1, 0.2, 0.3])
    path = tmp_path / "model.lq"
    size = export_packed(model, path, {"recipe": RECIPE}, {"mred.alpha": alpha})
    assert is_packed(path) and not is_packed(tmp_path)
    reloaded = load_packed_run(path)
    assert reloaded.alpha.tolist() == alpha.tolist() and reloaded.meta["recipe"] == RECIPE
    for a, b in zip(_predictions(model), _predictions(reloaded.model)):
        assert torch.equal(a, b)
    float_bytes = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    assert size < float_bytes / 3


def test_compacted_model_matches_its_fp16_int8_file(tmp_path):
    model = compact_(_trained_model(), remainder="float16", linear_bits=8)
    assert len(model.body.head.fc.weight[0].unique()) <= 255
    path = tmp_path / "model.lq"
    export_packed(model, path, {"recipe": RECIPE}, remainder="float16", linear_bits=8)
    reloaded = load_packed_run(path).model
    for a, b in zip(_predictions(model), _predictions(reloaded)):
        assert torch.equal(a, b)


def test_cli_export_then_eval_the_packed_file(tmp_path, capsys):
    """`rsvision export` a trained 2/2 run; `rsvision eval --checkpoint FILE` matches the run folder."""
    import json

    from conftest import tiny_recipe_dict

    from rsvision.cli import main
    from rsvision.engine import train

    data = tiny_recipe_dict(tmp_path, train={"epochs": 1, "lr": 0.05, "seed": 0, "max_steps_per_epoch": 2})
    data["model"] = {"backbone": "preact_resnet8", "num_classes": 4}
    data["quant"] = {"weight_bits": 2, "act_bits": 2}
    run_dir = train(validate_recipe(data), name="q", quiet=True)
    packed = tmp_path / "model.lq"
    main(["export", "--checkpoint", str(run_dir), "-o", str(packed), "--json"])
    capsys.readouterr()
    results = []
    for checkpoint in (run_dir, packed):
        main(["eval", "--checkpoint", str(checkpoint), "--res", "16", "14", "--json"])
        results.append(json.loads(capsys.readouterr().out)["results"])
    assert results[0] == results[1]


def test_packed_file_gets_the_umasks_permissions(tmp_path):
    import os

    previous = os.umask(0o027)
    try:
        export_packed(_trained_model(), tmp_path / "model.lq", {"recipe": RECIPE})
    finally:
        os.umask(previous)
    assert (tmp_path / "model.lq").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["model.lq"]  # no temporary file left
