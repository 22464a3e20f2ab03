"""The detection task: the BN group of each size, one neck and head set, two training steps of
each detector through the engine, COCO AP of a perfect prediction, and the run's commands."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rsvision.tasks.detection import DetectionMetrics

from rsvision.cli import main
from rsvision.engine import train
from rsvision.errors import UserError
from rsvision.models.detection import create_detector
from rsvision.nn.cost import bn_affine_parameters
from rsvision.nn.switchable import SwitchableBatchNorm, at_subnet
from rsvision.recipe import validate_recipe
from rsvision.registry import TASKS
from rsvision.run.folder import find_latest_run

#: A detector small enough for tests; box_score_thresh 0 keeps every detection, so an untrained detector still detects.
SMALL = {"fpn_channels": 16, "anchor_sizes": [8, 16, 32, 64], "box_representation": 32, "mask_channels": 8,
         "rpn_pre_nms_top_n_train": 50, "rpn_post_nms_top_n_train": 20, "rpn_pre_nms_top_n_test": 50,
         "rpn_post_nms_top_n_test": 20, "box_batch_size_per_image": 16,
         "box_score_thresh": 0.0}  # fmt: skip


def tiny_detector(head="fasterrcnn", subnets=(64, 48)):
    own = {k: v for k, v in SMALL.items() if k in ("fpn_channels", "anchor_sizes", "box_representation", "mask_channels")}
    rest = {k: v for k, v in SMALL.items() if k not in own}
    return create_detector(backbone="resnet8", head=head, num_classes=3, subnets=list(subnets), backbone_args={"width": 4, "stem_stride": 4}, head_args=rest, **own)


def det_recipe(tmp_path, head="fasterrcnn", **train):
    return {
        "task": "det",
        "resolutions": [64, 32],
        "model": {"backbone": "resnet8", "backbone_args": {"width": 4, "stem_stride": 4}, "head": head, "num_classes": 3, "head_args": SMALL},
        "data": {"dataset": "synthetic_det", "normalize": False, "batch_size": 2, "workers": 0,
                 "args": {"train_size": 4, "val_size": 2, "canvas": 64, "min_item": 10, "max_item": 30}},
        "train": {"epochs": 1, "lr": 0.01, "seed": 0, "channels_last": False, **train},
        "output_dir": str(tmp_path / "runs"),
    }  # fmt: skip


def test_each_size_uses_its_own_bn_group_whatever_the_padded_batch():
    model = tiny_detector().eval()
    bn = next(m for m in model.modules() if isinstance(m, SwitchableBatchNorm))
    used = []
    hooks = [g.register_forward_hook(lambda mod, args, out, k=k: used.append((k, args[0].shape[-2:]))) for k, g in bn.groups.items()]
    images = [torch.rand(3, 64, 64), torch.rand(3, 40, 100)]
    with torch.no_grad():
        for size in (48, 64):
            with at_subnet(model, size):
                model(images)
    for h in hooks:
        h.remove()
    assert [k for k, _ in used] == ["48", "64"]
    # Shorter side resized to the size, the longer capped at 1000/600 of the largest size (107
    # px), the batch padded to multiples of 32 (torchvision's transform): both sizes give a
    # 64 x 128 batch (the stem's BN sees it at stride 2), and each uses its own group.
    assert tuple(used[0][1]) == tuple(used[1][1]) == (64 // 2, 128 // 2)
    with pytest.raises(ValueError, match="pinned with at_subnet"):
        model(images)


def test_neck_and_heads_are_one_parameter_set():
    two, one = tiny_detector("maskrcnn", (64, 48)), tiny_detector("maskrcnn", (64,))
    for name, _ in two.named_parameters():
        if not name.startswith("body.backbone.body."):
            assert ".groups." not in name, name
    extra = sum(p.numel() for p in two.parameters()) - sum(p.numel() for p in one.parameters())
    assert extra == bn_affine_parameters(one)  # (S - 1) x the backbone's BN affine parameters
    assert {n for n, _ in two.named_parameters() if "groups.64" in n} == {n.replace("groups.48", "groups.64") for n, _ in two.named_parameters() if "groups.48" in n}


def test_perfect_prediction_scores_ap_100():
    masks = torch.zeros(2, 32, 32, dtype=torch.uint8)
    masks[0, 2:10, 3:12], masks[1, 15:30, 10:28] = 1, 1
    target = {"boxes": torch.tensor([[3.0, 2, 12, 10], [10, 15, 28, 30]]), "labels": torch.tensor([1, 2]), "iscrowd": torch.zeros(2, dtype=torch.uint8), "masks": masks}
    pred = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.tensor([0.9, 0.8]), "masks": masks[:, None].float()}
    metric = DetectionMetrics(masks=True)
    metric.update([pred], {"target": [target]})
    scores = metric.compute()
    assert scores["ap"] == pytest.approx(100) and scores["ap50"] == pytest.approx(100) and scores["mask_ap"] == pytest.approx(100)
    shifted = DetectionMetrics()
    shifted.update([{**pred, "boxes": target["boxes"] + torch.tensor([12.0, 0, 12, 0])}], {"target": [target]})
    assert shifted.compute()["ap50"] < 50


@pytest.mark.parametrize("head", ["fasterrcnn", "maskrcnn", "retinanet"])
def test_two_training_steps_of_each_detector(tmp_path, head):
    data = det_recipe(tmp_path, head, max_steps_per_epoch=2)
    if head == "retinanet":  # no RPN, no RoI heads
        data["model"]["head_args"] = {k: SMALL[k] for k in ("fpn_channels", "anchor_sizes")} | {"score_thresh": 0.0}
    recipe = validate_recipe(data)
    assert recipe.method == "parallel"
    task = TASKS.get("det")(recipe)
    before = {k: v.clone() for k, v in task.build_model().state_dict().items()}
    run = train(recipe, name=head, quiet=True)
    meta = json.loads((run / "rsvision.json").read_text())
    rows = {row["subnet"]: row for row in meta["metrics"]}
    assert set(rows) == {"64", "32"}
    assert all(0 <= rows[s]["ap"] <= 100 for s in rows) and ("mask_ap" in rows["64"]) == (head == "maskrcnn")
    assert meta["madds"]["64"] > meta["madds"]["32"] > 0
    from safetensors.torch import load_file

    after = load_file(run / "model.safetensors")
    moved = [k for k in before if k in after and before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert any(".fpn." in k for k in moved) and any("groups.32" in k for k in moved) and any("groups.64" in k for k in moved)


def test_low_memory_step_gives_the_same_gradients(tmp_path):
    from rsvision.training import StepContext, method_for

    recipe = validate_recipe(det_recipe(tmp_path, "maskrcnn"))
    low = validate_recipe(det_recipe(tmp_path, "maskrcnn", memory="low"))
    task = TASKS.get("det")(recipe)
    batch = task.collate([task.train_dataset()[i] for i in range(2)])
    grads = []
    for r in (recipe, low):
        torch.manual_seed(0)
        method = method_for(r)(task.build_model(), task, r)
        torch.manual_seed(1)
        out = method.step(batch, StepContext(lambda loss: loss.backward(), contextlib.nullcontext))
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in method.model.named_parameters() if p.grad is not None}))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    for name, g in grads[0][1].items():
        assert torch.allclose(g, grads[1][1][name], atol=1e-5), name


def test_eval_calibrate_predict_plot_on_a_detection_run(tmp_path, capsys):
    recipe = validate_recipe(det_recipe(tmp_path, "maskrcnn", max_steps_per_epoch=1))
    train(recipe, name="det", quiet=True)
    run = find_latest_run(tmp_path / "runs", "det")
    capsys.readouterr()
    main(["calibrate", str(run), "--res", "48", "--images", "2"])
    capsys.readouterr()
    main(["eval", str(run), "--res", "64", "--res", "48", "--json"])
    result = json.loads(capsys.readouterr().out)
    rows = {row["subnet"]: row for row in result["results"]}
    assert set(rows) == {"64", "48"} and rows["48"]["status"] == "calibrated"
    image = tmp_path / "canvas.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(image)
    main(["predict", str(run), str(image), "--res", "64", "-o", str(tmp_path / "out"), "--compare"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["canvas_compare.png", "canvas_r64.png"]
    main(["plot", str(run), "-o", str(tmp_path / "ap.png")])
    assert (tmp_path / "ap.png").stat().st_size > 0
    capsys.readouterr()
    main(["deploy", str(run), "--budget-madds", "1G", "-o", str(tmp_path / "deployed"), "--json"])
    report = json.loads(capsys.readouterr().out)
    manifest = json.loads((tmp_path / "deployed" / "manifest.json").read_text())
    assert report["chosen"]["subnet"] in {"64", "48", "32"} and manifest["view"]["name"] == "detector"
    entry = manifest["subnets"][0]
    assert entry["bn_left"] == 0 and set(entry["output_shape"]) == {"boxes", "labels", "scores", "masks"}
    assert entry["check_max_abs_diff"] < 1e-3 and manifest["check"]["inputs"] == "2 validation images"
    import rsvision

    size = int(report["chosen"]["subnet"])
    torch_dets = rsvision.load(run).predict(str(image), resolution=size)
    onnx_dets = rsvision.load(tmp_path / "deployed").predict(str(image), resolution=size)
    assert len(torch_dets.boxes) > 0 and torch_dets.names == onnx_dets.names and torch_dets.masks.shape[1:] == (48, 64)
    assert torch.allclose(torch_dets.boxes, onnx_dets.boxes, atol=1e-3)


def test_coco_recipe_trains_on_coco_files(tmp_path, capsys):
    """recipes/maskrcnn_fpn_coco.yaml, shrunk by overrides, on COCO files written here."""
    from det_fixtures import polygon, write_coco

    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 8, 4], "segmentation": polygon(2, 3, 10, 7)},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [10, 5, 12, 9], "segmentation": polygon(10, 5, 22, 14)}]  # fmt: skip
    for split in ("train", "val"):
        write_coco(tmp_path / "coco", anns, split=split)
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "maskrcnn_fpn_coco.yaml"
    sets = [
        f"data.root={tmp_path / 'coco'}", "resolutions=[64,32]", "model.backbone=resnet8", "model.backbone_args={width: 4, stem_stride: 4}",
        "model.num_classes=2", "model.head_args={max_size: 100, fpn_channels: 16, anchor_sizes: [8, 16, 32, 64], box_representation: 32, mask_channels: 8}",
        "data.batch_size=2", "data.workers=0", "train.epochs=1", "train.sync_bn=false", "train.milestones=[1]", f"output_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    main(["train", str(recipe), "--quiet", *[a for s in sets for a in ("--set", s)]])
    meta = json.loads((find_latest_run(tmp_path / "runs", "det") / "rsvision.json").read_text())
    assert meta["class_names"] == ["ant", "cat"] and {row["subnet"] for row in meta["metrics"]} == {"64", "32"}


def test_timm_backbone_detector_trains_in_bf16_with_accumulation(tmp_path):
    data = det_recipe(tmp_path, "fasterrcnn", max_steps_per_epoch=2, mixed_precision="bf16", grad_accum=2)
    data["model"].update(backbone="timm/resnet18", backbone_args={})
    data["model"]["head_args"] = {**SMALL, "anchor_sizes": [8, 16, 32, 64, 128]}  # four stages and the pooled level
    run = train(validate_recipe(data), name="timm", quiet=True)
    rows = json.loads((run / "rsvision.json").read_text())["metrics"]
    assert {row["subnet"] for row in rows} == {"64", "32"}


def test_width_x_resolution_detector_trains_every_sub_network_on_the_ground_truth(tmp_path):
    """MutualNet §4.3: a width-switchable backbone (the FPN keeps its outputs), the sandwich
    rule, every sub-network on the detector's losses, post-hoc BN; distillation is refused."""
    data = det_recipe(tmp_path, "fasterrcnn", max_steps_per_epoch=2)
    data["model"]["backbone_args"] = {"width": 8, "stem_stride": 4}
    data["widths"] = {"range": [0.5, 1.0], "divisor": 2, "bn": "posthoc", "sample": 3, "students": "labels", "calibration_images": 4}
    recipe = validate_recipe(data)
    assert recipe.method == "mutualnet"
    model = TASKS.get("det")(recipe).build_model()
    fpn_convs = [m for m in model.body.backbone.fpn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert fpn_convs and all(m.full_outputs for m in fpn_convs)
    run = train(recipe, name="mutual", quiet=True)
    meta = json.loads((run / "rsvision.json").read_text())
    rows = {row["subnet"]: row for row in meta["metrics"]}
    assert set(rows) == {"64w100", "32w100", "64w50", "32w50"} and {row["status"] for row in rows.values()} == {"calibrated"}
    assert meta["madds"]["64w50"] < meta["madds"]["64w100"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(entry.get("students", 0) > 0 for entry in log)
    data["widths"]["students"] = "distill"
    with pytest.raises(UserError, match="trains every sub-network on the ground truth"):
        train(validate_recipe(data), name="distill", quiet=True)
