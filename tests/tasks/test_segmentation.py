"""Segmentation task (RS-Nets App. B): loss at the largest size, void handling, metrics, data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rsvision.tasks.segmentation import SegmentationMetrics, scores_from_confusion
from seg_fixtures import nyu_to_40, write_nyu_folder, write_nyu_mat, write_segfolder

from rsvision.data.seg_transforms import JointTrainTransform
from rsvision.data.transforms import InputFormat, batch_resolutions
from rsvision.errors import UserError
from rsvision.recipe import validate_recipe
from rsvision.registry import DATASETS, HEADS, TASKS, load_builtins
from rsvision.training.loss import MREDLoss

load_builtins()


def make_task(resolutions=(64, 48, 32), dataset="synthetic_seg", root=None, num_classes=6, head="refinenet", **data):
    recipe = validate_recipe(
        {
            "task": "seg",
            "resolutions": list(resolutions),
            "model": {"backbone": "resnet18", "head": head, "num_classes": num_classes,
                      "head_args": {"widths": [16, 16, 16, 32]} if head == "refinenet" else {}},
            "data": {"dataset": dataset, "root": root, "batch_size": 2, "workers": 0,
                     "args": {"train_size": 4, "val_size": 4} if dataset == "synthetic_seg" else {}, **data},
        }
    )
    return TASKS.get("seg")(recipe)


def criterion_for(task):
    return MREDLoss(len(task.resolutions), mode="full", ignore_index=task.ignore_index)


# --- training: logits upsampled to the largest input before the ensemble -------------


def test_loss_logits_are_upsampled_to_the_largest_input():
    task = make_task()
    batch = task.collate([task.train_dataset()[i] for i in range(2)])
    assert [x.shape[-1] for x in batch_resolutions(batch, task.resolutions, task.input_format)] == [64, 48, 32]
    assert batch["target"].shape == (2, 64, 64) and batch["target"].dtype == torch.long
    torch.manual_seed(0)
    logits = [torch.randn(2, 6, s, s) for s in (16, 12, 8)]  # stride 4
    resized = task.loss_logits(logits, batch)
    assert all(z.shape == (2, 6, 64, 64) for z in resized)
    expected = F.interpolate(logits[2], size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized[2], expected)
    out = criterion_for(task)(resized, batch["target"])
    assert out.ensemble_logits.shape == (2, 6, 64, 64)
    # Equal alphas: the ensemble is the mean of the upsampled logits.
    torch.testing.assert_close(out.ensemble_logits, torch.stack(resized).mean(0))


def test_model_outputs_stride_4_and_trains_through_mred():
    task = make_task()
    model = task.build_model()
    batch = task.collate([task.train_dataset()[i] for i in range(2)])
    logits = model(batch_resolutions(batch, task.resolutions, task.input_format))
    assert [tuple(z.shape) for z in logits] == [(2, 6, 16, 16), (2, 6, 12, 12), (2, 6, 8, 8)]
    out = criterion_for(task)(task.loss_logits(logits, batch), batch["target"])
    out.total.backward()
    assert torch.isfinite(out.total)
    assert model.body.head.classifier.weight.grad.abs().sum() > 0


def test_void_pixels_are_excluded_from_ce_and_kl():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, :3] = 255
    logits = [torch.randn(2, 4, 8, 8) for _ in range(3)]
    changed = [z.clone() for z in logits]
    for z in changed:
        z[:, :, :3] = torch.randn_like(z[:, :, :3]) * 10  # only void pixels differ
    loss = MREDLoss(3, mode="full", ignore_index=255)
    a, b = loss(logits, target), loss(changed, target)
    torch.testing.assert_close(a.cls, b.cls)
    torch.testing.assert_close(a.dis, b.dis)
    torch.testing.assert_close(a.total, b.total)
    # ...and the valid pixels are averaged: CE equals the CE over valid pixels only.
    valid = target != 255
    ce = F.cross_entropy(logits[0].permute(0, 2, 3, 1)[valid], target[valid])
    torch.testing.assert_close(a.cls_per_resolution[0], ce)


def test_training_transform_moves_image_and_mask_together():
    # Four quadrants, grey level = 40 * label: after scale/crop/flip the mask must still
    # describe the image (bilinear vs nearest may disagree only along the edges).
    labels = np.zeros((40, 60), dtype=np.int64)
    labels[:20, 30:], labels[20:, :30], labels[20:, 30:] = 1, 2, 3
    image = np.repeat((labels * 40).astype(np.uint8)[..., None], 3, axis=2)
    transform = JointTrainTransform([32, 16], scale_range=(0.5, 2.0), input_format=InputFormat(3, None, None), per_sample=True)
    torch.manual_seed(0)
    for _ in range(5):
        out = transform(image, labels)
        assert [tuple(x.shape) for x in out["images"]] == [(3, 32, 32), (3, 16, 16)]
        grey, target = out["images"][0][0] * 255, out["target"]
        valid = target != 255
        agree = (grey[valid] - 40 * target[valid]).abs() < 20
        assert agree.float().mean() > 0.9
        assert torch.all(grey[~valid] == 0)  # padding: black image, void mask


# --- evaluation at the original image size -------------------------------------------


def test_confusion_metrics_match_hand_computation():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 0]]])
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    metrics = SegmentationMetrics(3)
    metrics.update(logits, {"target": target})
    # Valid pixels (7): class 0: 2 gt, 1 right; class 1: 3 gt, 2 right; class 2: 2 gt, 1 right.
    # Predictions: 0 → 3 (2 wrong), 1 → 3 (1 wrong), 2 → 1.
    scores = metrics.compute()
    assert scores["pixel_acc"] == pytest.approx(100 * 4 / 7)
    assert scores["mean_acc"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1 / 2) / 3)
    iou = (1 / (2 + 3 - 1), 2 / (3 + 3 - 2), 1 / (2 + 1 - 1))
    assert scores["miou"] == pytest.approx(100 * sum(iou) / 3)
    confusion = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    assert scores_from_confusion(confusion) == pytest.approx(scores)


def test_evaluation_scores_each_image_at_its_original_size(tmp_path):
    samples = write_segfolder(tmp_path, sizes=((20, 30), (24, 16)))
    task = make_task(resolutions=(32,), dataset="segfolder", root=str(tmp_path), num_classes=3)
    data = task.eval_dataset([32])
    assert all(data.base[i][0].flags.writeable for i in range(2))  # torch warns on read-only arrays
    items = [data[0], data[1]]
    assert items[0]["images"][0].shape == (3, 32, 32) and items[1]["images"][0].shape == (3, 32, 32)
    assert tuple(items[0]["target"].shape) == (20, 30) and tuple(items[1]["target"].shape) == (24, 16)
    batch = task.eval_collate(items)
    assert batch["target"].shape == (2, 24, 30) and batch["size"].tolist() == [[20, 30], [24, 16]]
    assert torch.all(batch["target"][0, 20:] == 255) and torch.all(batch["target"][1, :, 16:] == 255)
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    out = task.eval_logits(logits, batch)
    assert out.shape == (2, 3, 24, 30)
    expected = F.interpolate(logits[1:], size=(24, 16), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out[1, :, :, :16], expected)
    # Batched scores equal the scores of the two images evaluated one by one.
    together = task.metrics()
    together.update(out, batch)
    apart = task.metrics()
    for i in range(2):
        single = task.eval_collate([items[i]])
        apart.update(task.eval_logits(logits[i : i + 1], single), single)
    assert together.compute() == pytest.approx(apart.compute())
    assert torch.equal(batch["target"][0, :20, :30], torch.from_numpy(samples[0][1].astype(np.int64)))


# --- datasets -------------------------------------------------------------------------


def test_nyudv2_mat_form_reads_matlab_layout_and_maps_40_classes(tmp_path):
    images, raw = write_nyu_mat(tmp_path)
    train = DATASETS.build("nyudv2", root=str(tmp_path), split="train")
    val = DATASETS.build("nyudv2", root=str(tmp_path), split="val")
    assert len(train) == 3 and len(val) == 2 and len(train.classes) == 40
    image, mask = val[1]  # testNdxs[1] = 5 (1-based) → image 4
    np.testing.assert_array_equal(image, images[4])
    np.testing.assert_array_equal(mask, nyu_to_40(raw[4]))
    assert set(np.unique(mask)) <= {0, 1, 4, 11, 39, 255}


def test_nyudv2_folder_form(tmp_path):
    images, labels = write_nyu_folder(tmp_path)
    train = DATASETS.build("nyudv2", root=str(tmp_path), split="train")
    val = DATASETS.build("nyudv2", root=str(tmp_path), split="val")
    assert len(train) == 3 and len(val) == 2
    image, mask = val[0]
    np.testing.assert_array_equal(image, images[2])
    np.testing.assert_array_equal(mask, labels[2])


def test_segfolder_and_synthetic(tmp_path):
    write_segfolder(tmp_path)
    ds = DATASETS.build("segfolder", root=str(tmp_path), split="train")
    assert ds.classes == ["bg", "a", "b"] and len(ds) == 2 and ds[1][1].shape == (24, 16)
    syn = DATASETS.build("synthetic_seg", split="train", train_size=3, image_size=64)
    (a, ma), (b, mb) = syn[0], DATASETS.build("synthetic_seg", split="train", train_size=3, image_size=64)[0]
    assert np.array_equal(a, b) and np.array_equal(ma, mb) and a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert len(syn.classes) == 6 and ma.max() < 6


def test_bad_data_names_the_sample(tmp_path):
    write_segfolder(tmp_path, sizes=((20, 30), (24, 16)))
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(tmp_path / "masks" / "s0.png")
    bad = np.zeros((24, 16), dtype=np.uint8)
    bad[3, 3] = 7
    Image.fromarray(bad).save(tmp_path / "masks" / "s1.png")
    ds = DATASETS.build("segfolder", root=str(tmp_path), split="train")
    with pytest.raises(UserError, match=r"s0\.png.*mask is 10x10 but the image is 30x20"):
        ds[0]
    with pytest.raises(UserError, match=r"s1\.png.*labels 7 outside 0\.\.2"):
        ds[1]
    (tmp_path / "images" / "s0.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"s0\.png: cannot read image"):
        ds[0]
    with pytest.raises(UserError, match=r"missing\.png not found"):
        (tmp_path / "train.txt").write_text("missing.png\n")
        DATASETS.build("segfolder", root=str(tmp_path), split="train")
    with pytest.raises(UserError, match="neither form of NYUDv2"):
        DATASETS.build("nyudv2", root=str(tmp_path), split="train")


def test_nyudv2_mat_bad_label_names_the_image(tmp_path):
    write_nyu_mat(tmp_path)
    import scipy.io

    scipy.io.savemat(tmp_path / "classMapping40.mat", {"mapClass": np.array([[1, 2]])})
    ds = DATASETS.build("nyudv2", root=str(tmp_path), split="val")
    with pytest.raises(UserError, match=r"nyu_depth_v2_labeled\.mat: image 3: raw label \d is not in classMapping40"):
        ds[0]


def test_num_classes_must_match_the_dataset(tmp_path):
    write_segfolder(tmp_path)
    task = make_task(dataset="segfolder", root=str(tmp_path), num_classes=5)
    with pytest.raises(UserError, match="num_classes is 5 but the train data of 'segfolder' has 3 classes"):
        task.train_dataset()


# --- heads ----------------------------------------------------------------------------


def test_refinenet_parameters_match_the_paper():
    """Table 7: 118.20M per I-Net, 118.31M for the RS-Net with S = 3 (ResNet-101, 40 classes)."""
    from rsvision.models import EncoderDecoder
    from rsvision.nn.switchable import RSNet
    from rsvision.registry import BACKBONES

    backbone = BACKBONES.build("resnet101")
    body = EncoderDecoder(backbone, HEADS.build("refinenet", backbone=backbone, num_classes=40))
    params = sum(p.numel() for p in body.parameters())
    bn_stats = sum(m.running_mean.numel() + m.running_var.numel() for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert params / 1e6 == pytest.approx(118.10, abs=0.005)
    assert (params + bn_stats) / 1e6 == pytest.approx(118.20, abs=0.005)  # the I-Net count includes BN statistics
    rs = RSNet(body, [352, 224, 96])
    assert sum(p.numel() for p in rs.parameters()) / 1e6 == pytest.approx(118.31, abs=0.005)


@pytest.mark.parametrize("head", ["refinenet", "deeplabv3plus", "fpn", "unet"])
def test_heads_give_stride_4_logits(head):
    task = make_task(resolutions=(64, 32), head=head)
    model = task.build_model().eval()
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 6, 16, 16)


def test_refinenet_handles_three_stage_backbones():
    from rsvision.registry import BACKBONES

    backbone = BACKBONES.build("resnet8", width=8)
    head = HEADS.build("refinenet", backbone=backbone, num_classes=3, widths=[8, 8, 16])
    assert head(backbone(torch.zeros(1, 3, 16, 16))).shape == (1, 3, 16, 16)
