"""The baseline of ``epoch_time.py --settings imagefolder``: an RS-Net trained by a plain
PyTorch script, as a careful user would write it without rsvision.

    python benchmarks/plain_rsnet.py DATA PLUGIN [--epochs 2] [--batch-size 128]
        [--resolutions 28 24 20 16 12] [--lr 0.1] [--seed 0]

``DATA`` is an image folder (``train/<class>/*.png``, ``val/<class>/*.png``, one size, grey);
``PLUGIN`` the ``.py`` file that defines the user's backbone class ``UserResNet`` (the same
file ``rsvision train`` loads through ``plugins:``; its registration is skipped here, a plain
script has no registry, so rsvision is not imported). Every image is decoded once into one
uint8 tensor; per batch one random-resized crop and flip per image for the whole batch
(``roi_align``), resized to every resolution on the tensor; a private BatchNorm per
resolution; L = L_cls + L_ens + L_dis with full distillation (RS-Nets Eq. 5-7, 10); SGD with
momentum and a per-step cosine schedule; the faster memory layout timed on the first steps;
after every epoch, top-1 of every resolution and of the ensemble on the validation images
(shorter side r / 0.875, centre crop r). Imports only torch, torchvision, numpy and PIL.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import roi_align


def load_backbone_file(path: Path) -> types.ModuleType:
    """Execute the plugin file with ``rsvision.register_backbone`` as a no-op decorator."""
    sys.modules["rsvision"] = types.SimpleNamespace(register_backbone=lambda name: (lambda cls: cls))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    del sys.modules["rsvision"]
    return module


def decode(folder: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image under ``folder/<class>/`` as one uint8 tensor ``[N, 1, H, W]`` and the labels."""
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            with Image.open(path) as img:
                images.append(np.asarray(img.convert("L")))
            labels.append(label)
    return torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels)


class SwitchableBN(nn.Module):
    """One BatchNorm per resolution; ``index`` picks the one in use."""

    index = 0

    def __init__(self, bn: nn.BatchNorm2d, count: int) -> None:
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(bn.num_features) for _ in range(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[SwitchableBN.index](x)


def switchable(module: nn.Module, count: int) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, SwitchableBN(child, count))
        else:
            switchable(child, count)
    return module


class Net(nn.Module):
    def __init__(self, backbone: nn.Module, classes: int, count: int) -> None:
        super().__init__()
        self.backbone = switchable(backbone, count)
        self.fc = nn.Linear(backbone.out_channels[-1], classes)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, x in enumerate(xs):
            SwitchableBN.index = i
            out.append(self.fc(self.backbone(x)[-1].mean((2, 3))))
        return out


def mred_loss(logits: list[torch.Tensor], alpha: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_cls (sum of the S cross-entropies) + L_ens (alpha only) + L_dis (every teacher t < s, scaled 2/(S+1))."""
    S = len(logits)
    cls = sum(F.cross_entropy(z, target) for z in logits)
    z0 = (alpha.softmax(0)[:, None, None] * torch.stack([z.detach() for z in logits])).sum(0)
    ens = F.cross_entropy(z0, target)
    teachers = [z0] + [z.detach() for z in logits]
    kl = []
    for s in range(1, S + 1):
        log_ps = F.log_softmax(logits[s - 1], 1)
        for t in range(s):
            log_pt = F.log_softmax(teachers[t], 1)
            kl.append((log_pt.exp() * (log_pt - log_ps)).sum(1).mean())
    return cls + ens + (2 / (S + 1)) * sum(kl)


def crop_boxes(n: int, h: int, w: int, scale: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """Random-resized-crop boxes ``[n, 4]`` (x1, y1, x2, y2): area in ``scale``, aspect 3/4..4/3, clipped."""
    area = torch.empty(n).uniform_(*scale, generator=g) * h * w
    ratio = torch.exp(torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g))
    cw, ch = torch.sqrt(area * ratio).clamp(max=w), torch.sqrt(area / ratio).clamp(max=h)
    x1, y1 = torch.rand(n, generator=g) * (w - cw), torch.rand(n, generator=g) * (h - ch)
    return torch.stack([x1, y1, x1 + cw, y1 + ch], 1)


def batch_inputs(images: torch.Tensor, res: list[int], g: torch.Generator, layout) -> list[torch.Tensor]:
    x = (images.float() / 255 - 0.286) / 0.353
    n = len(x)
    boxes = torch.cat([torch.arange(n)[:, None].float(), crop_boxes(n, x.shape[-2], x.shape[-1], (0.25, 1.0), g)], 1)
    crops = roi_align(x, boxes, output_size=res[0], aligned=True)
    flip = torch.rand(n, generator=g) < 0.5
    crops[flip] = crops[flip].flip(-1)
    inputs = [crops] + [F.interpolate(crops, size=(r, r), mode="bilinear", antialias=True) for r in res[1:]]
    return [t.contiguous(memory_format=layout) for t in inputs]


def evaluate(model: Net, alpha: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, res: list[int], layout) -> dict:
    model.eval()
    correct = [0] * (len(res) + 1)
    with torch.no_grad():
        for i in range(0, len(images), 500):
            x = (images[i : i + 500].float() / 255 - 0.286) / 0.353
            xs = []
            for r in res:
                side = int(r / 0.875)
                y = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
                top = (side - r) // 2
                xs.append(y[..., top : top + r, top : top + r].contiguous(memory_format=layout))
            logits = model(xs)
            z0 = (alpha.softmax(0)[:, None, None] * torch.stack(logits)).sum(0)
            for k, z in enumerate(logits + [z0]):
                correct[k] += int((z.argmax(1) == labels[i : i + 500]).sum())
    model.train()
    names = [str(r) for r in res] + ["ensemble"]
    return {name: 100 * c / len(images) for name, c in zip(names, correct)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("plugin", type=Path)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[28, 24, 20, 16, 12])
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    plugin = load_backbone_file(args.plugin)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    classes = sorted(p.name for p in (args.data / "train").iterdir())
    train_images, train_labels = decode(args.data / "train", classes)
    val_images, val_labels = decode(args.data / "val", classes)
    res, bs = args.resolutions, args.batch_size
    model = Net(plugin.UserResNet(), len(classes), len(res))
    alpha = nn.Parameter(torch.ones(len(res)))
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": rest + [alpha], "weight_decay": 0.0}], lr=args.lr, momentum=0.9
    )
    steps = len(train_images) // bs
    total = args.epochs * steps
    layouts, layout, timings = [torch.contiguous_format, torch.channels_last], torch.contiguous_format, {}
    scores = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_images), generator=g)
        for step in range(steps):
            k = epoch * steps + step
            if k < 4:  # warm-up then one timed step per layout; the faster for the rest
                layout = layouts[k // 2]
                model.to(memory_format=layout)
            for group in opt.param_groups:
                group["lr"] = 0.5 * args.lr * (1 + math.cos(math.pi * k / total))
            idx = order[step * bs : (step + 1) * bs]
            start = time.perf_counter()
            loss = mred_loss(model(batch_inputs(train_images[idx], res, g, layout)), alpha, train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if k in (1, 3):
                timings[layout] = time.perf_counter() - start
            if k == 3:
                layout = min(timings, key=timings.get)
                model.to(memory_format=layout)
        scores.append(evaluate(model, alpha, val_images, val_labels, res, layout))
    print(json.dumps({"top1": scores[-1], "channels_last": layout == torch.channels_last}))


if __name__ == "__main__":
    main()
