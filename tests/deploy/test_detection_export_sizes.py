"""A detector's ONNX export resizes photos of any aspect ratio to the size PyTorch does, and
the export's own check runs on non-square images."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from rsvision.deploy.export import PHOTO_CHECK_SIZES, check_subnet
from rsvision.deploy.network import plain_subnet
from rsvision.deploy.onnx import export_detector, run_detector_session, session
from rsvision.models.detection import SubNetTransform, create_detector, resized_size
from rsvision.nn.switchable import at_subnet

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

#: Photo sizes (height, width): landscape and portrait phone photos, a 4:3 camera's.
PHOTOS = ((1080, 1920), (1920, 1080), (3000, 4000))
#: Sub-network exported: 48, the largest 64 (so max_size = round(64 x 1000 / 600) = 107).
SIZE = 48


@pytest.mark.parametrize(
    "height, width, min_size, max_size, expected",
    [
        (1080, 1920, 48, 107, (48, 85)),  # 1920 x 48 / 1080 = 85.33
        (1920, 1080, 48, 107, (85, 48)),
        (3000, 4000, 48, 107, (48, 64)),  # 4000 x 48 / 3000 = 64 exactly
        (100, 1000, 48, 80, (8, 80)),  # capped: s = 80 / 1000, 100 x 0.08 = 8
        (64, 64, 48, 80, (48, 48)),
    ],
)
def test_resized_size_is_the_same_for_ints_and_traced_tensors(height, width, min_size, max_size, expected):
    assert resized_size(height, width, min_size, max_size) == expected
    traced = resized_size(torch.tensor(height), torch.tensor(width), min_size, max_size)
    assert tuple(int(v) for v in traced) == expected


def tiny_detector():
    torch.manual_seed(0)
    model = create_detector(
        backbone="resnet8", num_classes=3, subnets=[64, SIZE], backbone_args={"width": 4, "stem_stride": 4},
        fpn_channels=16, anchor_sizes=[8, 16, 32, 64], box_representation=32,
        head_args={"rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20, "box_score_thresh": 0.0},
    ).eval()
    with torch.no_grad(), at_subnet(model, SIZE):
        model([torch.zeros(3, SIZE, SIZE)])  # the RoI pooler learns its scales on a first call, not while traced
    return model


def photo(height: int, width: int) -> torch.Tensor:
    """Smooth seeded content at ``height x width`` in [0, 1]."""
    small = torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(1))
    return torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_detector()
    plain = plain_subnet(model, SIZE)
    path = tmp_path_factory.mktemp("det") / "model.onnx"
    export_detector(plain.network, torch.zeros(3, SIZE, SIZE), path, masks=False)
    return model, plain, path


@pytest.mark.parametrize("height, width", PHOTOS)
def test_export_keeps_pytorchs_detections_on_photos(exported, height, width):
    model, _, path = exported
    image = photo(height, width)
    with torch.no_grad(), at_subnet(model, SIZE):
        reference = model([image])[0]
    result = run_detector_session(session(path, threads=1), image)
    assert len(reference["boxes"]) > 0 and len(result["boxes"]) == len(reference["boxes"])
    top = 10
    assert result["labels"][:top].tolist() == reference["labels"][:top].tolist()
    assert torch.allclose(result["scores"][:top], reference["scores"][:top], atol=1e-4)
    assert float((result["boxes"] - reference["boxes"]).abs().max()) <= 1.0


def test_export_check_runs_on_non_square_images_and_catches_a_different_resize(exported, tmp_path, monkeypatch):
    model, plain, path = exported
    squares = [photo(64, 64)]
    assert check_subnet(model, model.subnets[-1], plain, path, squares)["check_max_abs_diff"] < 1e-3
    # torchvision's own transform computes the scale in float32 in the graph: 270 x 480 becomes 47 x 85
    monkeypatch.setattr(
        SubNetTransform, "materialize",
        lambda self, subnet, channels=None: GeneralizedRCNNTransform(subnet.resolution, self.max_size, self.image_mean, self.image_std),
    )
    other = plain_subnet(model, SIZE)
    export_detector(other.network, torch.zeros(3, SIZE, SIZE), tmp_path / "other.onnx", masks=False)
    with pytest.raises(RuntimeError, match="sub-network 48: onnxruntime"):
        check_subnet(model, model.subnets[-1], other, tmp_path / "other.onnx", squares)
    assert (270, 480) in PHOTO_CHECK_SIZES
