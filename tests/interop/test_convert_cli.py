"""`rsvision convert --from rs-nets`, then `rsvision eval`: the converted run predicts like the official model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from calib_fixtures import run_cli
from PIL import Image
from test_convert import NUM_CLASSES, official_checkpoint

from rsvision.data.transforms import EvalTransform, InputFormat
from rsvision.io import file_sha256
from rsvision.run.folder import load_artifact

SIZES = [64, 48, 32]  # the training run's --sizes, bn_0 first

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_thread):
    path = tmp_path_factory.mktemp("official") / "model_best.pth.tar"
    return path, official_checkpoint("resnet18", SIZES, path)


def _imagefolder(root, classes: int = 3, per_class: int = 2) -> list[tuple[Image.Image, int]]:
    rng = np.random.default_rng(0)
    samples = []
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = Image.fromarray(rng.integers(0, 256, size=(40, 52, 3), dtype=np.uint8))
                image.save(folder / f"{i}.png")
                if split == "val":
                    samples.append((image, c))
    return samples


def test_converted_run_evaluates_like_the_official_model(checkpoint, tmp_path, capsys):
    path, official = checkpoint
    run = tmp_path / "converted"
    code, out, err = run_cli(["convert", "--from", "rs-nets", str(path), "-o", str(run), "--arch", "resnet18", "--res", *map(str, SIZES), "--json"], capsys)
    assert code == 0, err
    meta = json.loads((run / "rsvision.json").read_text())
    assert meta["task"] == "cls" and meta["complete"] and meta["metrics"] == [] and meta["epochs_done"] == 120
    assert meta["subnets"] == ["64", "48", "32"] and meta["recipe"]["model"]["backbone"] == "resnet18"
    assert meta["input"] == InputFormat(3, None, None).as_dict()
    assert meta["class_names"] == [str(i) for i in range(NUM_CLASSES)]
    assert meta["converted_from"] == {"file": path.name, "arch": "parallel_resnet18", "sha256": file_sha256(path), "epoch": 120, "best_acc0": 73.1, "best_acc": 80.5}

    samples = _imagefolder(tmp_path / "data")
    code, out, err = run_cli(["eval", "--checkpoint", str(run), "--data", str(tmp_path / "data"), "--batch-size", "4", "--json"], capsys)
    assert code == 0, err
    rows = {row["subnet"]: row for row in json.loads(out)["results"]}

    transform = EvalTransform(SIZES, InputFormat(3, None, None))  # [0, 1], as the official loaders
    xs = [torch.stack(t) for t in zip(*(transform(image)["images"] for image, _ in samples))]
    target = torch.tensor([label for _, label in samples])
    model = load_artifact(run, str(tmp_path / "data")).model
    with torch.no_grad():
        expected = official(xs)
        for x, want, size in zip(xs, expected, SIZES):
            torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
            assert rows[str(size)]["top1"] == pytest.approx(100 * (want.argmax(1) == target).float().mean().item())
        weights = torch.softmax(official.alpha, 0)
        ensemble = sum(w * z for w, z in zip(weights, expected))
    assert rows["ensemble"]["top1"] == pytest.approx(100 * (ensemble.argmax(1) == target).float().mean().item())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "resnet50"], "model_best.pth.tar: the checkpoint is a 'parallel_resnet18' (resnet18), not --arch resnet50"),
        (["--arch", "vgg16"], "--arch: unsupported architecture 'vgg16'"),
        (["--res", "64", "48"], "3 BatchNorm copies per layer (bn_0..bn_2) but 2 resolutions were given"),
        (["--from", "tensorflow"], "--from tensorflow: unknown checkpoint format (supported: rs-nets)"),
        (["--classes", "{tmp}/classes.txt"], "classes.txt: 2 class names, but the classifier has 10 outputs"),
        (["--to-existing-run"], "already a run folder; convert into a new folder"),
        (["--unreadable"], "notes.txt: cannot read checkpoint (not a PyTorch file"),
    ],
)
def test_bad_conversion_input_is_one_line(checkpoint, tmp_path, capsys, args, message):
    path, _ = checkpoint
    out = tmp_path / "converted"
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    if "--to-existing-run" in args:
        args = []
        out.mkdir()
        (out / "rsvision.json").write_text("{}")
    if "--unreadable" in args:
        args = []
        path = tmp_path / "notes.txt"
        path.write_text("not a checkpoint")
    sizes = [] if "--res" in args else ["--res", *map(str, SIZES)]
    base = ["convert", "--from", "rs-nets", str(path), "-o", str(out), *sizes]
    code, _, err = run_cli(base + [a.format(tmp=tmp_path) for a in args], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (out / "model.safetensors").exists()
