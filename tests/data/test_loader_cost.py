"""benchmarks/loader_cost.py at tiny sizes, so it cannot rot; and its reproduction of the former path."""

import math

import torch
from conftest import benchmark_script

from rsvision.data.datasets import imagefolder
from rsvision.data.transforms import InputFormat, MultiResolutionTransform



def _script():
    return benchmark_script("loader_cost")


def test_the_former_float32_sample_is_the_new_uint8_sample_normalised(tmp_path):
    script = _script()
    script.write_jpegs(tmp_path, 4, classes=2, size=(40, 30))
    dataset = imagefolder(root=str(tmp_path), split="train")
    fmt = InputFormat()
    transform = MultiResolutionTransform([16], input_format=fmt)
    for i in range(len(dataset)):
        image = dataset[i][0]
        torch.manual_seed(i)
        old = script.float32_sample(transform, image)["image"]
        torch.manual_seed(i)
        assert torch.equal(old, fmt.normalize(transform(image)["image"]))


def test_the_benchmark_runs_and_reports_every_path(capsys):
    ms = _script().main(["--images", "4", "--passes", "1", "--size", "16", "--batch-size", "2", "--image-size", "40", "30"])
    assert set(ms) == {"process", "worker"}
    assert all(set(by_path) == {"decode-pil", "decode-tensor", "before", "uint8", "after"} for by_path in ms.values())
    assert all(math.isfinite(v) and v > 0 for by_path in ms.values() for v in by_path.values())
    out = capsys.readouterr().out
    assert "40x30 JPEGs" in out and "after: JPEG to tensor, uint8 / before (worker)" in out
