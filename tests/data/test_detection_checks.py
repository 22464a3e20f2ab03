"""COCO files as labelling tools and phones leave them: sideways photos, shrunk images, category
sets that differ between train and val, merged files, box-only files, empty files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from det_fixtures import polygon, write_coco
from PIL import Image

from rsvision.data.detection import coco
from rsvision.errors import UserError

ORIENTATION = 0x0112
BOX = {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 8, 4], "segmentation": polygon(2, 3, 10, 7)}


def _file(root, split, images, annotations, categories):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_a_sideways_phone_photo_keeps_its_boxes(tmp_path):
    """Stored 96 wide x 64 high with EXIF orientation 6: shown (and labelled) 64 x 96. A box at
    y 44..74 fits the upright image; read sideways it was clipped at y 64."""
    (tmp_path / "train").mkdir()
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(np.full((64, 96, 3), 90, np.uint8)).save(tmp_path / "train" / "phone.jpg", "JPEG", exif=exif)
    _file(tmp_path, "train", [{"id": 1, "file_name": "phone.jpg", "width": 64, "height": 96}],
          [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 44, 20, 30]}], [{"id": 1, "name": "cup"}])  # fmt: skip
    image, target = coco(root=str(tmp_path), split="train", masks=False)[0]
    assert image.shape == (3, 96, 64)
    assert target["boxes"].tolist() == [[10, 44, 30, 74]]


def test_an_image_shrunk_after_labelling_is_refused_or_its_boxes_rescaled(tmp_path):
    anns = [{**BOX, "bbox": [2, 4, 10, 6], "segmentation": polygon(2, 4, 12, 10)}, {**BOX, "id": 2, "bbox": [24, 14, 4, 4], "segmentation": polygon(24, 14, 28, 18)}]
    write_coco(tmp_path, anns)
    Image.fromarray(np.full((10, 15, 3), 100, np.uint8)).save(tmp_path / "train" / "a.png")  # half of the 30x20 it was labelled at
    with pytest.raises(UserError, match=r"a\.png: decodes to 15x10 \(EXIF orientation applied\), but image id 1 of .*instances_train\.json is 30x20; data\.args\.size_mismatch: rescale"):
        coco(root=str(tmp_path), split="train")[0]
    image, target = coco(root=str(tmp_path), split="train", size_mismatch="rescale")[0]
    assert image.shape == (3, 10, 15)
    assert target["boxes"].tolist() == [[1, 2, 6, 5], [12, 7, 14, 9]]  # both kept, halved
    assert target["masks"].shape == (2, 10, 15) and target["masks"][0, 2:5, 1:6].all() and target["masks"][0].sum() == 15
    with pytest.raises(UserError, match=r"data\.args\.size_mismatch: expected one of error, rescale, got 'crop'"):
        coco(root=str(tmp_path), split="train", size_mismatch="crop")


def test_a_sideways_size_is_hinted(tmp_path):
    write_coco(tmp_path, [BOX])
    Image.fromarray(np.full((30, 20, 3), 100, np.uint8)).save(tmp_path / "train" / "a.png")
    with pytest.raises(UserError, match=r"decodes to 20x30 .* is 30x20 \(the same size turned"):
        coco(root=str(tmp_path), split="train")[0]


def test_validation_categories_map_to_the_training_labels_by_id(tmp_path):
    """Train: 1 square, 2 disc, 3 triangle; val lists only 1 and 3: its triangle stays label 3
    (numbered per file it was label 2, the training file's 'disc')."""
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "x.png")
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        Image.open(tmp_path / "x.png").save(tmp_path / split / "x.png")
    image = [{"id": 1, "file_name": "x.png", "width": 20, "height": 20}]
    train_cats = [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}, {"id": 3, "name": "triangle"}]
    _file(tmp_path, "train", image, [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]}], train_cats)
    val = _file(tmp_path, "val", image, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}], [train_cats[0], train_cats[2]])
    data = coco(root=str(tmp_path), split="val", masks=False)
    assert data.classes == ["square", "disc", "triangle"]
    assert data[0][1]["labels"].tolist() == [3]
    _file(tmp_path, "val", image, [], [{"id": 3, "name": "triangle"}, {"id": 9, "name": "star"}, {"id": 8, "name": "moon"}])
    with pytest.raises(UserError, match=rf"{val}: categories: 8 'moon', 9 'star' not in the training file .*instances_train\.json \(its categories: 1 'square', 2 'disc', 3 'triangle'\)"):
        coco(root=str(tmp_path), split="val", masks=False)
    _file(tmp_path, "val", image, [], [{"id": 2, "name": "circle"}])
    with pytest.raises(UserError, match=r"categories: named otherwise than in the training file .*: 2 is 'circle' here, 'disc' there"):
        coco(root=str(tmp_path), split="val", masks=False)


def test_two_images_sharing_an_id_are_refused(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}, {"id": 1, "file_name": "b.png", "width": 30, "height": 20}]
    path = write_coco(tmp_path, [BOX], images=images)
    with pytest.raises(UserError, match=rf"{path}: image id 1: given to two images, a\.png and b\.png"):
        coco(root=str(tmp_path), split="train")


def test_an_annotation_file_without_images_is_refused(tmp_path):
    write_coco(tmp_path, [BOX])
    path = _file(tmp_path, "val", [], [], [{"id": 7, "name": "cat"}, {"id": 3, "name": "ant"}])
    with pytest.raises(UserError, match=rf"{path}: no images"):
        coco(root=str(tmp_path), split="val")


def test_a_box_only_file_points_at_masks_false(tmp_path):
    write_coco(tmp_path, [{**BOX, "segmentation": []}])
    with pytest.raises(UserError, match=r"annotation id 1: segmentation is empty \(a box-only file.*data\.args\.masks: false"):
        coco(root=str(tmp_path), split="train")
    assert coco(root=str(tmp_path), split="train", masks=False)[0][1]["boxes"].tolist() == [[2, 3, 10, 7]]


@pytest.mark.parametrize("value", [0, -3, 20.5, "20", True])
def test_image_sizes_must_be_positive_integers(tmp_path, value):
    path = write_coco(tmp_path, [BOX], images=[{"id": 1, "file_name": "a.png", "width": 30, "height": 20}])
    data = json.loads(path.read_text())
    data["images"][0]["height"] = value
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"{path}: image id 1: 'height' must be a positive integer"):
        coco(root=str(tmp_path), split="train")
