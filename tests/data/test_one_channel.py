"""A one-channel run end to end from the command line: MNIST-format files written here,
a 1-channel stem, the recipe's normalisation stored in the run and used by eval and load."""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_recipe_dict
from PIL import Image
from test_idx import make_split

import rsvision
from rsvision.cli import main

MEAN, STD = 0.25, 0.5


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grey")
    root = tmp / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 48), ("t10k", 16)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 60, (n, 14, 14)) + 60 * labels[:, None, None]  # brightness tells the class
        make_split(root, prefix, images, labels, zipped=prefix == "train")
    recipe = tiny_recipe_dict(
        tmp,
        model={"backbone": "resnet8", "num_classes": 4, "backbone_args": {"width": 4}, "in_channels": 1},
        data={"dataset": "mnist", "root": str(root), "mean": [MEAN], "std": [STD], "batch_size": 8, "workers": 0, "args": {"names": ["a", "b", "c", "d"]}},
    )
    path = tmp / "grey.yaml"
    path.write_text(yaml.safe_dump(recipe))
    main(["train", str(path), "--quiet"])
    (run_dir,) = (tmp / "runs").iterdir()
    return run_dir, root


def test_the_run_takes_one_channel_and_stores_its_normalisation(grey_run):
    run_dir, _ = grey_run
    meta = json.loads((run_dir / "rsvision.json").read_text())
    assert meta["input"] == {"channels": 1, "mean": [MEAN], "std": [STD]}
    assert meta["class_names"] == ["a", "b", "c", "d"]
    first_conv = next(m for m in rsvision.load(run_dir).model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1 and first_conv.weight.shape[1] == 1


def test_eval_reproduces_the_training_metrics(grey_run, capsys):
    run_dir, _ = grey_run
    meta = json.loads((run_dir / "rsvision.json").read_text())
    capsys.readouterr()
    main(["eval", "--checkpoint", str(run_dir), "--json"])
    rows = {r["subnet"]: r["top1"] for r in json.loads(capsys.readouterr().out)["results"]}
    assert rows == pytest.approx({r["subnet"]: r["top1"] for r in meta["metrics"]})


def test_predict_normalises_with_the_stored_mean_and_std(grey_run):
    run_dir, _ = grey_run
    model = rsvision.load(run_dir)
    image = Image.fromarray(np.full((14, 14), 200, dtype=np.uint8))  # grey "L" image, as the data
    x = model.preprocess(image, 16)
    # 14 px -> int(16 / 0.875) = 18 px -> centre 16 px: a constant image stays 200 / 255
    assert x.shape == (1, 16, 16)
    assert torch.allclose(x, torch.full_like(x, (200 / 255 - MEAN) / STD), atol=1e-5)
    logits = model.at(16)(x[None])
    assert model.predict(image, 16).index == int(logits.argmax())


def test_a_grey_file_read_as_rgb_keeps_its_values_in_one_channel(tmp_path):
    from rsvision.data.datasets import read_rgb
    from rsvision.data.transforms import InputFormat, luma

    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    x = InputFormat(channels=1, mean=None, std=None).image(read_rgb(tmp_path / "grey.png"))
    assert x.shape == (1, 16, 16) and torch.equal(x[0], torch.from_numpy(grey))
    # colour: Pillow's luma, e.g. pure red 255 -> (255 * 19595 + 32768) >> 16 = 76
    rgb = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=torch.uint8).T.reshape(3, 1, 4)
    assert luma(rgb).flatten().tolist() == [76, 150, 29, 18]
    assert luma(rgb).flatten().tolist() == list(Image.fromarray(rgb.permute(1, 2, 0).numpy()).convert("L").getdata())


def test_a_colour_image_into_one_channel_is_luma_by_any_route():
    """A PIL RGB image goes through Pillow's own conversion, an RGB tensor through luma(): the same values."""
    from rsvision.data.transforms import InputFormat, luma

    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    fmt = InputFormat(channels=1, mean=None, std=None)
    through_pillow = fmt.image(Image.fromarray(rgb))
    assert torch.equal(through_pillow, luma(torch.from_numpy(rgb).permute(2, 0, 1)))
    assert torch.equal(through_pillow, fmt.image(torch.from_numpy(rgb).permute(2, 0, 1).contiguous()))
