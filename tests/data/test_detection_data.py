"""Detection data: the COCO reader on files written here (boxes, polygons, RLE, crowd, empty
images, broken entries), the generated canvases, and the flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from det_fixtures import polygon, rle_counts, write_coco
from test_idx import make_split

from rsvision.data.detection import DetectionTrainTransform, boxes_of_masks, hflip
from rsvision.errors import UserError
from rsvision.registry import DATASETS


def test_coco_boxes_labels_polygon_rle_crowd_and_empty_images(tmp_path):
    square = np.zeros((20, 30), np.uint8)
    square[5:9, 10:16] = 1
    from pycocotools import mask as coco_mask

    compressed = coco_mask.encode(np.asfortranarray(square))
    anns = [
        {"id": 11, "image_id": 1, "category_id": 7, "bbox": [2, 3, 8, 4], "segmentation": polygon(2, 3, 10, 7), "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 3, "bbox": [10, 5, 6, 4], "segmentation": {"size": [20, 30], "counts": rle_counts(square)}, "iscrowd": 1},
        {"id": 13, "image_id": 2, "category_id": 3, "bbox": [10, 5, 6, 4], "segmentation": {"size": [20, 30], "counts": compressed["counts"].decode()}, "iscrowd": 0},
    ]
    write_coco(tmp_path, anns)
    data = DATASETS.build("coco", root=str(tmp_path), split="train")
    assert data.classes == ["ant", "cat"]  # sorted by category id: 3 -> label 1, 7 -> label 2
    assert len(data) == 3
    image, target = data[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
    assert target["boxes"].tolist() == [[2, 3, 10, 7], [10, 5, 16, 9]]
    assert target["labels"].tolist() == [2, 1]
    assert target["iscrowd"].tolist() == [0, 1]
    assert target["masks"].shape == (2, 20, 30)
    assert target["masks"][1].numpy().tolist() == square.tolist()  # uncompressed RLE
    assert target["masks"][0].sum() > 0 and target["masks"][0, 5, 5] == 1  # the polygon, filled
    _, second = data[1]
    assert second["masks"][0].numpy().tolist() == square.tolist()  # compressed RLE
    _, empty = data[2]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 10, 10)
    # Training leaves crowd regions out.
    sample = DetectionTrainTransform(3, flip=0.0, masks=True)(image, target)
    assert sample["target"]["labels"].tolist() == [2] and sample["target"]["masks"].shape == (1, 20, 30)
    assert sample["image"].dtype == torch.float32 and float(sample["image"].max()) == pytest.approx(100 / 255)


@pytest.mark.parametrize(
    "ann, problem",
    [
        ({"image_id": 9, "category_id": 7, "bbox": [0, 0, 1, 1]}, "image_id 9 is not an image of this file"),
        ({"image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1]}, "category_id 4 is not a category of this file"),
        ({"image_id": 1, "category_id": 7, "bbox": [0, 0, 1]}, r"bbox must be \[x, y, width, height\]"),
        ({"image_id": 1, "category_id": 7, "bbox": [0, 0, -2, 1]}, "bbox has a negative width or height"),
        ({"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1], "segmentation": [[1, 2, 3]]}, "segmentation polygons must be lists of at least 3 x, y pairs"),
        ({"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1], "segmentation": {"size": [20, 30], "counts": [5, 5]}}, "RLE run lengths add up to 10, not height x width = 600"),
    ],
)
def test_coco_broken_annotation_names_file_and_id(tmp_path, ann, problem):
    ann = {"id": 42, "segmentation": polygon(0, 0, 1, 1), **ann}
    path = write_coco(tmp_path, [ann])
    with pytest.raises(UserError, match=rf"{path}: annotation id 42: {problem}"):
        DATASETS.build("coco", root=str(tmp_path), split="train")


def test_coco_undecodable_rle_names_the_annotation_when_read(tmp_path):
    path = write_coco(tmp_path, [{"id": 8, "image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2], "segmentation": {"size": [4, 4], "counts": "!!"}}])
    data = DATASETS.build("coco", root=str(tmp_path), split="train")
    with pytest.raises(UserError, match=rf"{path}: annotation id 8: mask is 4x4, its image 20x30|{path}: annotation id 8: cannot decode"):
        data[0]


def test_coco_without_masks_needs_no_segmentation_and_missing_file_is_named(tmp_path):
    write_coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 3, 3]}])
    data = DATASETS.build("coco", root=str(tmp_path), split="train", masks=False)
    assert "masks" not in data[0][1]
    with pytest.raises(UserError, match="segmentation missing"):
        DATASETS.build("coco", root=str(tmp_path), split="train")
    with pytest.raises(UserError, match=r"no file matching instances_val\*\.json"):
        DATASETS.build("coco", root=str(tmp_path), split="val")


def test_boxes_of_masks_and_flip():
    masks = np.zeros((1, 6, 8), np.uint8)
    masks[0, 1:3, 2:5] = 1
    assert boxes_of_masks(masks).tolist() == [[2, 1, 5, 3]]
    image = torch.arange(48).reshape(1, 6, 8)
    target = {"boxes": torch.tensor([[2.0, 1, 5, 3]]), "masks": torch.from_numpy(masks)}
    flipped, t = hflip(image, target)
    assert t["boxes"].tolist() == [[3, 1, 6, 3]]  # 8 - 5, 8 - 2
    assert boxes_of_masks(t["masks"].numpy()).tolist() == t["boxes"].tolist()
    assert torch.equal(flipped[..., 0], image[..., -1])


def test_synthetic_det_boxes_are_tight_around_masks_and_seeded():
    data = DATASETS.build("synthetic_det", split="train", train_size=6, canvas=64, min_item=8, max_item=24)
    for i in range(len(data)):
        image, target = data[i]
        assert image.shape == (3, 64, 64)
        assert 1 <= len(target["boxes"]) <= 3 and set(target["labels"].tolist()) <= {1, 2, 3}
        assert target["boxes"].tolist() == boxes_of_masks(target["masks"].numpy()).tolist()
    again = DATASETS.build("synthetic_det", split="train", train_size=6, canvas=64, min_item=8, max_item=24)
    assert torch.equal(data[3][0], again[3][0])
    val = DATASETS.build("synthetic_det", split="val", val_size=6, canvas=64, min_item=8, max_item=24)
    assert not torch.equal(data[0][0], val[0][0])


def test_fashion_canvas_items_from_idx_files(tmp_path):
    items = np.zeros((4, 28, 28), np.uint8)
    items[:, 10:20, 5:15] = 200
    for prefix in ("train", "t10k"):
        make_split(tmp_path, prefix, items, np.array([0, 3, 9, 3]), zipped=False)
    data = DATASETS.build("fashion_canvas", root=str(tmp_path), split="val", val_size=5, canvas=64, scales=[1.0, 1.0], max_items=1)
    assert data.classes[9] == "Ankle boot" and len(data) == 5
    image, target = data[0]
    assert image.shape == (1, 64, 64)
    (x1, y1, x2, y2), = target["boxes"].tolist()
    assert (x2 - x1, y2 - y1) == (10, 10)  # the item's 10 x 10 bright block at scale 1
    assert target["labels"].item() in {1, 4, 10}
    with pytest.raises(UserError, match="28 x high <= canvas"):
        DATASETS.build("fashion_canvas", root=str(tmp_path), split="val", canvas=32, scales=[1.0, 2.0])
