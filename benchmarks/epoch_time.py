"""Training end to end: `rsvision train` against a plain loop, in process and as a user runs it.

    python benchmarks/epoch_time.py [--settings fashion synthetic imagefolder] [--repeats 2]
        [--fashion-root /usr/share/datasets/fashion-mnist] [--out DIR]
    python benchmarks/epoch_time.py --combine DIR     # the table of the settings run so far

Each setting is a cell: with ``--out`` it writes ``DIR/SETTING.json`` (times of every repeat,
top-1, the layout, cache and loader choices rsvision made, the load average).

Same model, same images, same resolutions, same loss (MRED, Eq. 9), same optimiser and
schedule; both timed in this process after imports (wall clock), repeats interleaved.

- rsvision: ``rsvision.engine.train`` on a recipe with ``epochs: 1`` and everything else as
  a user would leave it (batched resizing, the default memory layout, ``data.cache: auto``,
  which with one epoch decodes nothing ahead, evaluation of every resolution and the
  ensemble, MAdds, the run folder written atomically).
- plain: a hand-written PyTorch loop in this file, as a user in a hurry would write it:
  every image decoded once into one uint8 tensor; per batch one random-resized crop and
  flip per image done for the whole batch at once (``torchvision.ops.roi_align``), resized to
  every resolution on the tensor; the same network and ``MREDLoss``; the memory layout
  that times faster (chosen before its clock starts); one evaluation at the end on the
  validation images decoded once and resized with the protocol.

Settings: ``fashion``: Fashion-MNIST (the IDX files of Debian's dataset-fashion-mnist),
4,000 training and 2,000 validation images, one channel, a CIFAR-style ResNet-20 of width
16, S = 5 at 28..12 px, batch 128. ``synthetic``: the built-in synthetic data, 2,000 + 500
images, the quickstart's network at 128..64 px, batch 32. Both time one epoch plus one
evaluation inside this process, after imports.

``imagefolder``: the user's path, timed as two commands from the shell (wall clock and CPU
time of the child process, imports included). An image folder of 28-px grey PNGs (4,000
training and 2,000 validation Fashion-MNIST images), a CIFAR-style ResNet-14 of width 16
written as user code in a plugin file (``plugins:``), S = 5 at 28..12, batch 128,
``data.workers: 1``, 2 epochs with evaluation after each, every other setting at rsvision's
default; ``rsvision train RECIPE`` against ``python benchmarks/plain_rsnet.py`` (a plain
PyTorch script that trains the same RS-Net on the same images: decoded once, batched tensor
augmentation, the faster memory layout, the same evaluation after each epoch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from plain_rsnet import crop_boxes
from rsvision.tasks.base import input_format_of
from torchvision.ops import roi_align

from rsvision.constants import val_resize
from rsvision.engine import train
from rsvision.models import build_model
from rsvision.recipe import validate_recipe
from rsvision.registry import DATASETS
from rsvision.training.loss import MREDLoss

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"

#: The user's backbone of the ``imagefolder`` setting, as a plugin file.
USER_BACKBONE = """\
import torch.nn.functional as F
from torch import nn

from rsvision import register_backbone


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class UserResNet(nn.Module):
    out_channels, output_stride = [16, 32, 64], 4

    def __init__(self, in_channels=1, width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, cin = [], width
        for i, cout in enumerate([width, 2 * width, 4 * width]):
            stages.append(nn.Sequential(Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


register_backbone("user_resnet14")(UserResNet)
"""


def recipe_for(setting: str, output_dir: str, fashion_root: str) -> dict:
    if setting == "fashion":
        return {
            "task": "cls",
            "resolutions": [28, 24, 20, 16, 12],
            "model": {"backbone": "resnet20", "backbone_args": {"width": 16}, "num_classes": 10, "in_channels": 1},
            "data": {
                "dataset": "mnist", "root": fashion_root, "args": {"train_size": 4000, "val_size": 2000, "names": "fashion"},
                "mean": [0.286], "std": [0.353], "batch_size": 128, "workers": 0, "crop_scale": [0.35, 1.0],
            },
            "train": {"epochs": 1, "lr": 0.1, "weight_decay": 5e-4, "seed": 0},
            "output_dir": output_dir,
        }  # fmt: skip
    return {
        "task": "cls",
        "resolutions": [128, 112, 96, 80, 64],
        "model": {"backbone": "resnet8", "backbone_args": {"width": 16, "stem_stride": 4}, "num_classes": 10},
        "data": {
            "dataset": "synthetic", "args": {"train_size": 2000, "val_size": 500, "image_size": 144},
            "batch_size": 32, "workers": 0, "crop_scale": [0.35, 1.0],
        },
        "train": {"epochs": 1, "lr": 0.05, "weight_decay": 5e-4, "seed": 0},
        "output_dir": output_dir,
    }  # fmt: skip


def decode(dataset, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``dataset`` as one uint8 tensor ``[N, C, H, W]`` (all images one size) and the labels."""
    from rsvision.data.transforms import InputFormat

    fmt = InputFormat(channels, None, None)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack([fmt.image(im) for im in images]), torch.tensor(labels)


def plain_loop(recipe, train_images, train_labels, val_images, val_labels, layout) -> dict:
    """The hand-written loop (see the module docstring); returns its top-1 per resolution."""
    torch.manual_seed(recipe.train.seed)
    g = torch.Generator().manual_seed(recipe.train.seed)
    res = recipe.resolutions
    fmt = input_format_of(recipe)
    model = build_model(recipe).to(memory_format=layout).train()
    loss_fn = MREDLoss(len(res))
    params = [{"params": model.parameters(), "weight_decay": recipe.train.weight_decay}, {"params": [loss_fn.alpha], "weight_decay": 0.0}]
    opt = torch.optim.SGD(params, lr=recipe.train.lr, momentum=0.9)
    bs = recipe.data.batch_size
    steps = len(train_images) // bs
    order = torch.randperm(len(train_images), generator=g)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.5 * recipe.train.lr * (1 + math.cos(math.pi * step / steps))
        idx = order[step * bs : (step + 1) * bs]
        x = fmt.normalize(train_images[idx])
        boxes = crop_boxes(bs, x.shape[-2], x.shape[-1], recipe.data.crop_scale, g)
        crops = roi_align(x, torch.cat([torch.arange(bs)[:, None].float(), boxes], 1), output_size=res[0], aligned=True)
        flip = torch.rand(bs, generator=g) < 0.5
        crops[flip] = crops[flip].flip(-1)
        inputs = [crops if r == res[0] else F.interpolate(crops, size=(r, r), mode="bilinear", antialias=True) for r in res]
        inputs = [t.contiguous(memory_format=layout) for t in inputs]
        out = loss_fn(model(inputs), train_labels[idx])
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
    model.eval()
    top1 = {}
    with torch.no_grad():
        for r in res:
            side = val_resize(r)
            correct = 0
            for i in range(0, len(val_images), 500):
                x = fmt.normalize(val_images[i : i + 500])
                x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
                top = (side - r) // 2
                x = x[..., top : top + r, top : top + r].contiguous(memory_format=layout)
                correct += int((model(x).argmax(1) == val_labels[i : i + 500]).sum())
            top1[r] = 100 * correct / len(val_images)
    return top1


def faster_layout(recipe, images: torch.Tensor) -> torch.memory_format:
    """The layout whose forward + backward of one batch at every resolution is faster."""
    times = {}
    fmt = input_format_of(recipe)
    x = fmt.normalize(images[: recipe.data.batch_size])
    for layout in (torch.contiguous_format, torch.channels_last):
        model = build_model(recipe).to(memory_format=layout).train()
        inputs = [F.interpolate(x, size=(r, r), mode="bilinear").contiguous(memory_format=layout) for r in recipe.resolutions]
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            sum(z.sum() for z in model(inputs)).backward()
            samples.append(time.perf_counter() - start)
        times[layout] = statistics.median(samples[1:])
    return min(times, key=times.get)


def prepare_imagefolder(work: Path, fashion_root: str) -> Path:
    """Write the ``imagefolder`` setting's PNGs, plugin and recipe under ``work``; return the recipe."""
    for split, size in (("train", 4000), ("val", 2000)):
        data = DATASETS.build("mnist", root=fashion_root, split=split, train_size=4000, val_size=2000, names="fashion")
        for i in range(size):
            image, label = data[i]
            folder = work / "images" / split / data.classes[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i:05d}.png")
    (work / "user_resnet.py").write_text(USER_BACKBONE)
    recipe = {
        "task": "cls",
        "resolutions": [28, 24, 20, 16, 12],
        "plugins": [str(work / "user_resnet.py")],
        "model": {"backbone": "user_resnet14", "num_classes": 10, "in_channels": 1},
        "data": {
            "dataset": "imagefolder", "root": str(work / "images"), "mean": [0.286], "std": [0.353],
            "batch_size": 128, "workers": 1, "crop_scale": [0.25, 1.0],
        },
        "train": {"epochs": 2, "lr": 0.1, "weight_decay": 5e-4, "seed": 0},
        "output_dir": str(work / "runs"),
    }  # fmt: skip
    (work / "recipe.yaml").write_text(json.dumps(recipe))
    return work / "recipe.yaml"


def timed(command: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system of the child and its workers) of ``command``, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def user_path(repeats: int, fashion_root: str) -> dict:
    """The ``imagefolder`` setting: both sides as commands, repeats interleaved; its result row."""
    plain_script = Path(__file__).with_name("plain_rsnet.py")
    with tempfile.TemporaryDirectory() as out:
        recipe = prepare_imagefolder(Path(out), fashion_root)
        commands = {
            "rsvision": [str(Path(sys.executable).with_name("rsvision")), "train", str(recipe)],
            "plain": [sys.executable, str(plain_script), str(Path(out) / "images"), str(Path(out) / "user_resnet.py")],
        }
        times, output, plain_layouts = {name: [] for name in commands}, {}, []
        for _ in range(repeats):
            for name, command in commands.items():
                wall, cpu, output[name] = timed(command)
                times[name].append((wall, cpu))
            plain_layouts.append("channels_last" if json.loads(output["plain"].strip().splitlines()[-1])["channels_last"] else "contiguous")
        plain_top1 = json.loads(output["plain"].strip().splitlines()[-1])["top1"]
        run = sorted((Path(out) / "runs").iterdir())[-1]
        meta = json.loads((run / "rsvision.json").read_text())
        rows = {row["resolution"]: row["top1"] for row in meta["metrics"] if "resolution" in row}
    return {
        "setting": "imagefolder (4000 PNGs + plugin, workers 1, 2 epochs; as commands)",
        "rsvision_s": [t[0] for t in times["rsvision"]], "plain_s": [t[0] for t in times["plain"]],
        "rsvision_cpu_s": [t[1] for t in times["rsvision"]], "plain_cpu_s": [t[1] for t in times["plain"]],
        "rsvision_top1": [rows[28], rows[12]], "plain_top1": [plain_top1["28"], plain_top1["12"]],
        "layout": meta["memory_layout"], "plain_layouts": plain_layouts, "cache": meta.get("data_cache"),
        "crop": meta.get("data_crop"), "workers": meta["data_workers"],
    }  # fmt: skip


def in_process(setting: str, repeats: int, fashion_root: str) -> dict:
    """The ``fashion`` or ``synthetic`` setting, timed in this process; its result row."""
    with tempfile.TemporaryDirectory() as out:
        data = recipe_for(setting, out, fashion_root)
        recipe = validate_recipe(data, f"epoch_time:{setting}")
        d = recipe.data
        train_set = DATASETS.build(d.dataset, root=d.root, split="train", **d.args)
        val_set = DATASETS.build(d.dataset, root=d.root, split="val", **d.args)
        times = {"rsvision": [], "plain": []}
        for _ in range(repeats):
            start = time.perf_counter()
            run = train(validate_recipe(data, f"epoch_time:{setting}"), name=setting, quiet=True)
            times["rsvision"].append(time.perf_counter() - start)
            start = time.perf_counter()
            train_images, train_labels = decode(train_set, recipe.model.in_channels)
            val_images, val_labels = decode(val_set, recipe.model.in_channels)
            decoding = time.perf_counter() - start
            layout = faster_layout(recipe, train_images)  # known to a hand-written loop: not timed
            start = time.perf_counter()
            plain = plain_loop(recipe, train_images, train_labels, val_images, val_labels, layout)
            times["plain"].append(time.perf_counter() - start + decoding)
        meta = json.loads((Path(run) / "rsvision.json").read_text())
        rows = {row["resolution"]: row["top1"] for row in meta["metrics"] if "resolution" in row}
    res = recipe.resolutions
    return {
        "setting": f"{setting} ({len(train_set)} images, {res[0]}..{res[-1]} px; in process)",
        "rsvision_s": times["rsvision"], "plain_s": times["plain"],
        "rsvision_top1": [rows[res[0]], rows[res[-1]]], "plain_top1": [plain[res[0]], plain[res[-1]]],
        "layout": meta["memory_layout"], "plain_layout": "channels_last" if layout == torch.channels_last else "contiguous",
        "cache": meta.get("data_cache"), "workers": meta["data_workers"],
    }  # fmt: skip


def table(results: list[dict]) -> str:
    """The Markdown table of result rows (median of the repeats; CPU time where measured)."""
    lines = [
        "| setting | rsvision train (s) | plain loop (s) | ratio | rsvision top-1 @max/@min | plain top-1 @max/@min |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in results:
        rs, pl = statistics.median(r["rsvision_s"]), statistics.median(r["plain_s"])
        ratio = f"{rs / pl:.2f}"
        if "rsvision_cpu_s" in r:
            rc, pc = statistics.median(r["rsvision_cpu_s"]), statistics.median(r["plain_cpu_s"])
            rs_cell, pl_cell, ratio = f"{rs:.1f} (CPU {rc:.0f})", f"{pl:.1f} (CPU {pc:.0f})", f"{ratio} (CPU {rc / pc:.2f})"
        else:
            rs_cell, pl_cell = f"{rs:.1f}", f"{pl:.1f}"
        a, b = r["rsvision_top1"], r["plain_top1"]
        lines.append(f"| {r['setting']} | {rs_cell} | {pl_cell} | {ratio} | {a[0]:.1f} / {a[1]:.1f} | {b[0]:.1f} / {b[1]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["fashion", "synthetic", "imagefolder"], choices=["fashion", "synthetic", "imagefolder"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fashion-root", default=FASHION_ROOT)
    parser.add_argument("--out", type=Path, help="write each setting's result to OUT/SETTING.json")
    parser.add_argument("--combine", type=Path, metavar="DIR", help="print the table of the results in DIR and exit")
    args = parser.parse_args()
    if args.combine:
        print(table([json.loads(p.read_text()) for p in sorted(args.combine.glob("*.json"))]))
        return
    print(f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; repeats interleaved, median wall time in seconds")
    results = []
    for setting in args.settings:
        result = user_path(args.repeats, args.fashion_root) if setting == "imagefolder" else in_process(setting, args.repeats, args.fashion_root)
        result.update(threads=torch.get_num_threads(), repeats=args.repeats, load_average_after=os.getloadavg()[0], torch=torch.__version__)
        results.append(result)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{setting}.json").write_text(json.dumps(result, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
