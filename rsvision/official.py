"""An official RS-Nets checkpoint as an rsvision run folder (``rsvision convert --from rs-nets``).

The run folder holds the converted weights with the ensemble scores as ``mred.alpha``, and
metadata like a finished training run's: task ``cls``, the recipe of
:func:`rsvision.convert.official_recipe` (ImageFolder data, inputs in [0, 1] without
mean/std, as the official loaders feed them), the sub-networks, class names (indices
unless a file names them), MAdds, ``complete: true`` and ``converted_from`` (file name,
architecture, SHA-256 and the checkpoint's own fields such as ``epoch``). ``rsvision
eval --checkpoint RUN_DIR --data IMAGENET`` then evaluates it like any run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rsvision.artifacts import ALPHA_KEY, META, file_sha256, save_run
from rsvision.convert import OFFICIAL_ARCHS, convert_rsnets, official_recipe, read_official_file, rsvision_arch
from rsvision.errors import UserError

#: The ``--sizes`` of the published ImageNet weights, in their order (bn_0 is 224).
PUBLISHED_SIZES = (224, 192, 160, 128, 96)


def read_classes(path: str | Path, num_classes: int) -> list[str]:
    """Class names, one per line (blank lines skipped); there must be one per output of the classifier."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read class names ({exc.__class__.__name__})") from None
    if len(names) != num_classes:
        raise UserError(f"{path}: {len(names)} class names, but the classifier has {num_classes} outputs")
    return names


def checked_arch(given: str | None, in_checkpoint: str | None, source: str) -> str:
    """The rsvision backbone: ``given`` (``--arch``) must agree with the checkpoint's own ``arch`` field."""
    if given is None and in_checkpoint is None:
        raise UserError(f"{source}: the checkpoint names no architecture; give --arch ({', '.join(OFFICIAL_ARCHS.values())})")
    ours = rsvision_arch(given, "--arch") if given is not None else None
    theirs = rsvision_arch(in_checkpoint, source) if in_checkpoint is not None else None
    if ours is not None and theirs is not None and ours != theirs:
        raise UserError(f"{source}: the checkpoint is a '{in_checkpoint}' ({theirs}), not --arch {given}")
    return ours or theirs  # type: ignore[return-value]


def _check_output(out_dir: Path) -> None:
    if (out_dir / META).exists():
        raise UserError(f"{out_dir}: already a run folder; convert into a new folder")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists and is not an empty folder")


def convert_official_run(
    checkpoint: str | Path,
    out_dir: str | Path,
    arch: str | None = None,
    resolutions: Sequence[int] = PUBLISHED_SIZES,
    classes_file: str | Path | None = None,
) -> dict[str, Any]:
    """Write the run folder ``out_dir`` from an official checkpoint; returns a summary.

    ``resolutions`` are the training run's ``--sizes`` in their order (BN child i belongs
    to the i-th); ``arch`` may be left out when the checkpoint names it.
    """
    from rsvision.engine.trainer import run_metadata
    from rsvision.profile import count_madds
    from rsvision.registry import TASKS, load_builtins
    from rsvision.switchable import at_subnet
    from rsvision.training import method_for

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    _check_output(out_dir)
    official, fields = read_official_file(checkpoint)
    arch = checked_arch(arch, official.arch, str(checkpoint))
    weights, alpha = convert_rsnets(official.state, arch, resolutions, source=str(checkpoint))
    num_classes = weights["body.head.fc.weight"].shape[0]
    classes = read_classes(classes_file, num_classes) if classes_file else [str(i) for i in range(num_classes)]

    load_builtins()
    recipe = official_recipe(arch, num_classes, resolutions)
    task = TASKS.get("cls")(recipe)
    task.classes = classes  # no ImageNet folder needed to name them
    model = task.build_model()
    model.load_state_dict(weights)
    model.eval()
    method = method_for(recipe)(model, task, recipe)
    tensors = {ALPHA_KEY: alpha} if alpha is not None else {}
    method.load_artifact_tensors(tensors)
    madds = {}
    for subnet in model.subnets:
        with at_subnet(model, subnet):
            madds[subnet.id] = count_madds(model, task.example_input(subnet.resolution))
    epochs = fields.get("epoch")
    meta = run_metadata(task, method, recipe, [], madds, epochs if isinstance(epochs, int) else recipe.train.epochs)
    source = {"file": checkpoint.name, "arch": official.arch or arch, "sha256": file_sha256(checkpoint)}
    meta |= {"complete": True, "converted_from": {**source, **{k: v for k, v in fields.items() if k != "arch"}}}
    save_run(out_dir, model, tensors, meta)
    return {"run": str(out_dir), "arch": arch, "resolutions": recipe.resolutions, "num_classes": num_classes, "alpha": alpha is not None, **source}
