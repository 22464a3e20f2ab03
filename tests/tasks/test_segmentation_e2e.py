"""`rsvision train recipes/refinenet_nyud.yaml` shrunk by overrides, on tiny NYUDv2 fixtures of both forms, then eval and predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from seg_fixtures import write_nyu_folder, write_nyu_mat

from rsvision.cli import main
from rsvision.run.folder import find_latest_run

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "refinenet_nyud.yaml"


@pytest.mark.parametrize("form", ["mat", "folder"])
def test_train_eval_predict_refinenet_nyud(tmp_path, capsys, form):
    data = tmp_path / "nyud"
    (write_nyu_mat if form == "mat" else write_nyu_folder)(data)
    runs = tmp_path / "runs"
    sets = [
        "model.backbone=resnet18", "model.pretrained=null", "model.head_args.widths=[16,16,16,32]",
        f"data.root={data}", "resolutions=[64,48,32]", "train.epochs=1", "train.max_steps_per_epoch=2",
        "data.batch_size=2", "data.eval_batch_size=2", "data.workers=0", f"output_dir={runs}",
    ]  # fmt: skip
    main(["train", str(RECIPE), "--quiet", *[a for s in sets for a in ("--set", s)]])
    run_dir = find_latest_run(runs, "seg")
    capsys.readouterr()

    main(["eval", "--checkpoint", str(run_dir), "--json"])
    result = json.loads(capsys.readouterr().out)
    rows = {row["subnet"]: row for row in result["results"]}
    assert set(rows) == {"64", "48", "32", "ensemble"}
    for row in rows.values():
        assert all(0 <= row[k] <= 100 for k in ("pixel_acc", "mean_acc", "miou"))

    image = tmp_path / "room.png"
    Image.fromarray(np.full((24, 32, 3), 128, dtype=np.uint8)).save(image)
    main(["predict", "--checkpoint", str(run_dir), "--res", "64", "--res", "32", "-o", str(tmp_path / "out"), "--compare", str(image)])
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["room_compare.png", "room_r32.png", "room_r64.png"]
    with Image.open(tmp_path / "out" / "room_compare.png") as compare:
        assert compare.size == (3 * 32 + 2 * 4, 24)
