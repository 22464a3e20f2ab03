"""The ``rsvision`` command: a thin layer over the library.

A user error (missing file, bad field, unknown name) prints one line and exits 2; any
other failure exits 1 (set RSVISION_DEBUG=1 for the traceback). Warnings print as one
line each. Output paths and sizes are checked before any work.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

import click
from rich.console import Console
from rich.table import Table

from rsvision.constants import RUNS_DIR
from rsvision.errors import UserError

out = Console()


def _resolutions(res: tuple[int, ...], extra: tuple[int, ...]) -> list[int]:
    """``--res 224 192 160`` and ``--res 224 --res 192`` both give [224, 192, 160]."""
    values = list(res) + list(extra)
    if any(r <= 0 for r in values):
        raise UserError(f"--res: expected positive sizes, got {values}")
    if len(set(values)) != len(values):
        raise UserError(f"--res: a size is given twice in {values}")
    return values


def _check_scale(run: Path, sizes: Iterable, option: str = "--res") -> None:
    """Refuse sizes far beyond the resolutions ``run`` was trained at (:func:`rsvision.ranges.check_scale`)."""
    from rsvision.artifacts import load_artifact, read_meta
    from rsvision.ranges import check_scale

    sizes = list(sizes)
    if sizes:
        meta = read_meta(run) if Path(run).is_dir() else load_artifact(run).meta
        check_scale(sizes, meta["recipe"]["resolutions"], str(run), option)


def _check_writable(path: Path, option: str | None = "-o", inside: bool = False) -> None:
    """Refuse an output ``path`` that cannot be written, before any work: the nearest existing
    folder where it is created (in ``path`` itself with ``inside``) must take a new file."""
    folder = Path(path) if inside else Path(path).parent
    while not folder.exists():
        folder = folder.parent
    reason = None
    if not folder.is_dir():
        reason = f"{folder} is a file, not a folder"
    else:
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            reason = f"{folder}: {exc.strerror or exc}"
    if reason:
        raise UserError(f"{option + ' ' if option else ''}{path}: cannot write there ({reason})")


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


plugin_option = click.option(
    "--plugin", "plugins", multiple=True, metavar="MODULE", help="Import MODULE (or a .py file) to register its backbones, heads, tasks or datasets."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rsvision")
def cli() -> None:
    """Train and deploy Resolution Switchable Networks."""


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field, e.g. train.epochs=1 (YAML value).")
@plugin_option
@click.option("--resume", is_flag=True, help="Continue the latest run of this recipe from its saved training state.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(recipe: Path, overrides: tuple[str, ...], plugins: tuple[str, ...], resume: bool, quiet: bool) -> None:
    """Train the RS-Net described by RECIPE (a YAML file)."""
    from rsvision.engine import train as run_training
    from rsvision.recipe import load_recipe
    from rsvision.registry import load_plugins

    load_plugins(plugins)
    cfg = load_recipe(recipe, overrides)
    _check_writable(Path(cfg.output_dir), "output_dir", inside=True)
    run_training(cfg, name=cfg.name or recipe.stem, resume=resume, quiet=quiet)


@cli.command("eval")
@click.option("--task", "task_name", default=None, help="Task of the run (cls, seg): picks the latest such run, and is checked against --checkpoint.")
@click.option("--res", multiple=True, help="Resolution(s) or ranges START:STOP:STEP (64:256:16) to evaluate; default: the trained ones and the ensemble.")
@click.argument("extra_res", nargs=-1)
@click.option("--width", "widths", multiple=True, type=float, help="Width(s) of a width-switchable run, e.g. --width 0.5 (default: its trained ones).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Run folder or packed file (default: the latest finished run under ./runs).")
@click.option("--data", "data_root", default=None, help="Data root, replacing the recipe's data.root.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@plugin_option
def evaluate(task_name, res, extra_res, widths, checkpoint, data_root, batch_size, as_json, plugins) -> None:
    """Evaluate a trained run at any resolution (untrained ones through BN interpolation)."""
    from rsvision.artifacts import find_latest_run, load_artifact
    from rsvision.engine.report import console, results_table
    from rsvision.evaluations import evaluate_and_record
    from rsvision.ranges import check_scale, parse_resolutions
    from rsvision.registry import load_plugins

    load_plugins(plugins)
    resolutions = parse_resolutions(res + extra_res) or None
    run_dir = checkpoint or find_latest_run(RUNS_DIR, task_name)
    artifact = load_artifact(run_dir, data_root)
    meta = artifact.meta
    if task_name is not None and meta.get("task") != task_name:
        raise UserError(f"{run_dir}: a '{meta.get('task')}' run, not '{task_name}' (drop --task or pick a {task_name} run)")
    check_scale(resolutions or (), artifact.model.resolutions, str(run_dir))
    if not artifact.complete:
        console.print(f"[yellow]warning:[/] {run_dir} stopped after epoch {meta.get('epochs_done')} of {meta['recipe']['train']['epochs']}")
    subnets = resolutions
    if widths or artifact.task.recipe.widths is not None:
        chosen = _width_subnets(artifact, resolutions, widths)
        subnets = chosen if resolutions or widths else None  # None: the trained ones and combined rows
    rows = evaluate_and_record(artifact, subnets, batch_size)
    if as_json:
        _emit_json({"run": str(run_dir), "task": meta["task"], "results": rows})
        return
    out.print(results_table(rows, title=f"{run_dir}"))
    interpolated = [str(r["resolution"]) for r in rows if r.get("status") == "interpolated"]
    if interpolated:
        out.print(f"BN interpolated between trained resolutions for: {', '.join(interpolated)}")


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--res", multiple=True, required=True, help="Resolutions, ranges (112:144:16) or sub-network ids to calibrate, trained or not.")
@click.argument("extra_res", nargs=-1)
@click.option("--images", type=int, default=2000, show_default=True, help="Training images to measure the statistics on.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: the recipe's evaluation batch size.")
@click.option("--data", "data_root", default=None, help="Data root, replacing the recipe's data.root.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@plugin_option
def calibrate(run, res, extra_res, images, batch_size, data_root, as_json, plugins) -> None:
    """Recompute BatchNorm statistics of RUN at any resolution from training images (kept beside the weights)."""
    from rich.progress import Progress

    from rsvision.artifacts import CALIBRATION
    from rsvision.calibrate import calibrate_run
    from rsvision.engine.report import console
    from rsvision.ranges import parse_subnets
    from rsvision.registry import load_plugins

    load_plugins(plugins)
    if images < 1:
        raise UserError(f"--images: expected at least 1 image, got {images}")
    subnets = parse_subnets(res + extra_res)
    if run.is_dir():
        _check_writable(run / CALIBRATION, option=None)
    with Progress(console=console, disable=as_json, transient=True) as bar:
        report = calibrate_run(run, subnets, images, batch_size, data_root, progress=bar)
    if as_json:
        _emit_json(report)
        return
    out.print(f"calibrated {', '.join(report['subnets'])} on {report['images']} training images → {report['file']}", soft_wrap=True)
    out.print(f"calibrated statistics in the run: {', '.join(report['calibrated'])} (`rsvision eval` uses them)", soft_wrap=True)


@cli.command()
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Figure to write: .png or .svg.")
@click.option("--res", multiple=True, help="Resolutions or ranges (64:256:16) to evaluate each RUN at; default: its trained and calibrated ones.")
@click.option("--inets", multiple=True, metavar="RUN,RUN,...", help="Single-resolution runs drawn as one I-Nets curve, each at its own resolution.")
@click.option("--label", "labels", multiple=True, metavar="NAME", help="Curve names in order: the RUNs, then each --inets group.")
@click.option("--data", "data_root", default=None, help="Data root, replacing the runs' data.root.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the plotted points as JSON.")
@plugin_option
def plot(runs, out_path, res, inets, labels, data_root, batch_size, as_json, plugins) -> None:
    """Accuracy vs. MAdds and vs. resolution of RUNs (RS-Nets Fig. 1 and Fig. 4 right)."""
    from rsvision.plot import draw, output_format, plot_data
    from rsvision.ranges import parse_resolutions
    from rsvision.registry import load_plugins

    load_plugins(plugins)
    output_format(out_path)
    _check_writable(out_path)
    groups = [[p.strip() for p in group.split(",") if p.strip()] for group in inets]
    if any(not g for g in groups):
        raise UserError("--inets: expected run folders separated by commas, got an empty list")
    data = plot_data(runs, groups, parse_resolutions(res) or None, labels, data_root, batch_size)
    draw(data, out_path)
    if as_json:
        _emit_json({"figure": str(out_path), **data.as_dict()})
        return
    for curve in data.curves:
        out.print(f"{curve.label}: " + ", ".join(f"{p.resolution} {p.value:.1f}" for p in curve.points), soft_wrap=True)
    out.print(f"figure: {out_path}", soft_wrap=True)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--from", "source", required=True, metavar="rs-nets", help="Format of CHECKPOINT: rs-nets (the official RS-Nets PyTorch code).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Run folder to create.")
@click.option("--arch", default=None, help="resnet18, resnet34, resnet50, resnet101 or mobilenet_v2; checked against the checkpoint's own arch.")
@click.option("--res", multiple=True, help="The training run's --sizes in their order [default: 224 192 160 128 96].")
@click.argument("extra_res", nargs=-1)
@click.option("--classes", "classes_file", type=click.Path(path_type=Path), default=None, help="Class names, one per line (default: indices).")
@click.option("--json", "as_json", is_flag=True)
def convert(checkpoint, source, out_dir, arch, res, extra_res, classes_file, as_json) -> None:
    """Turn an official RS-Nets checkpoint into a run folder that `rsvision eval` reads."""
    from rsvision.official import PUBLISHED_SIZES, convert_official_run
    from rsvision.ranges import parse_resolutions

    if source != "rs-nets":
        raise UserError(f"--from {source}: unknown checkpoint format (supported: rs-nets)")
    resolutions = parse_resolutions(res + extra_res) or list(PUBLISHED_SIZES)
    _check_writable(out_dir, inside=True)
    report = convert_official_run(checkpoint, out_dir, arch, resolutions, classes_file)
    if as_json:
        _emit_json(report)
        return
    sizes = " ".join(map(str, report["resolutions"]))
    out.print(f"{checkpoint} ({report['arch']}, {report['num_classes']} classes, S = {sizes}) → {out_dir}", soft_wrap=True)
    out.print(f"evaluate with: rsvision eval --checkpoint {out_dir} --data IMAGENET_ROOT (inputs in [0, 1], no mean/std)", soft_wrap=True)


@cli.command()
@click.option("--backbone", default=None, help="A registered backbone (with the classifier head).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="A run folder.")
@click.option("--onnx", "onnx_dir", type=click.Path(path_type=Path), default=None, help="An ONNX export directory: onnxruntime latency per sub-network.")
@click.option("--res", multiple=True, type=int, help="Resolutions, e.g. --res 224 192 160 128 96 (not with --onnx).")
@click.argument("extra_res", nargs=-1, type=int)
@click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--no-latency", is_flag=True, help="Skip the CPU latency measurement.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="--onnx: onnxruntime threads (default: every core).")
@click.option("--json", "as_json", is_flag=True)
@plugin_option
def profile(backbone, checkpoint, onnx_dir, res, extra_res, num_classes, no_latency, threads, as_json, plugins) -> None:
    """Parameters, multiply-adds and CPU latency per resolution."""
    from rsvision.profile import human, profile_backbone, profile_run
    from rsvision.registry import load_plugins

    load_plugins(plugins)
    if sum(x is not None for x in (backbone, checkpoint, onnx_dir)) != 1:
        raise UserError("profile: give exactly one of --backbone NAME, --checkpoint RUN_DIR or --onnx EXPORT_DIR")
    resolutions = _resolutions(res, extra_res)
    if onnx_dir is not None:
        if resolutions:
            raise UserError("profile: --onnx measures the exported sub-networks; drop --res")
        _profile_onnx(onnx_dir, threads, as_json)
        return
    if not resolutions:
        raise UserError("profile: --res is required with --backbone or --checkpoint (e.g. --res 224 160 96)")
    if backbone:
        report = profile_backbone(backbone, resolutions, num_classes, latency=not no_latency)
    else:
        report = profile_run(checkpoint, resolutions, latency=not no_latency)
    if as_json:
        _emit_json(report)
        return
    table = Table(title=f"{backbone or checkpoint}")
    for col in ("resolution", "MAdds", "latency (ms, CPU, batch 1)"):
        table.add_column(col, justify="right")
    for row in report["rows"]:
        table.add_row(f"{row['resolution']}x{row['resolution']}", human(row["madds"]), f"{row['latency_ms']:.1f}" if "latency_ms" in row else "-")
    out.print(table)
    S, bn = report["num_resolutions"], report["bn_affine"]
    out.print(
        f"parameters: plain {report['parameters_plain']:,} · RS-Net (S={S}) {report['parameters_rsnet']:,} "
        f"(+{(S - 1) * bn:,} = {S - 1} x {bn:,} BN affine)"
    )


def _profile_onnx(export_dir: Path, threads: int | None, as_json: bool) -> None:
    from rsvision.latency import profile_export
    from rsvision.profile import human

    report = profile_export(export_dir, threads)
    if as_json:
        _emit_json(report)
        return
    table = Table(title=f"{export_dir} ({report['backend']}, {report['threads']} threads, batch 1)")
    for col in ("sub-network", "MAdds", "latency (ms)", "MAdds / largest", "latency / largest"):
        table.add_column(col, justify="right")
    for row in report["rows"]:
        ratio = f"{row['madds_ratio']:.3f}" if row.get("madds_ratio") is not None else "-"
        table.add_row(row["id"], human(row["madds"]) if "madds" in row else "-", f"{row['latency_ms']:.2f}", ratio, f"{row['latency_ratio']:.3f}")
    out.print(table)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True)
@plugin_option
def list_registered(as_json: bool, plugins: tuple[str, ...]) -> None:
    """What is registered: backbones, heads, tasks, datasets, quantizers."""
    from rsvision import registry

    registry.load_plugins(plugins)
    kinds = {
        "backbones": registry.list_backbones(),
        "heads": registry.list_heads(),
        "tasks": registry.list_tasks(),
        "datasets": registry.list_datasets(),
        "quantizers": registry.list_quantizers(),
    }
    if as_json:
        _emit_json(kinds)
        return
    table = Table(title="registered")
    table.add_column("kind")
    table.add_column("names")
    for kind, names in kinds.items():
        table.add_row(kind, ", ".join(names) or "-")
    out.print(table)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Segmentation run folder (default: the latest seg run under ./runs).")
@click.option("--res", multiple=True, type=click.IntRange(min=1), help="Resolution(s) to run at; default: the trained ones.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("predictions"), show_default=True)
@click.option("--compare", is_flag=True, help="Also write IMAGE_compare.png: the image and its masks side by side.")
def predict(images, checkpoint, res, out_dir, compare) -> None:
    """Write colour-coded segmentation masks of IMAGES at each resolution."""
    from rsvision.artifacts import find_latest_run
    from rsvision.predict import predict_files

    run_dir = checkpoint or find_latest_run(RUNS_DIR, "seg")
    resolutions = _resolutions(res, ())
    _check_writable(out_dir, inside=True)
    for path in predict_files(run_dir, images, resolutions, out_dir, compare):
        out.print(str(path))


@cli.command("export")
@click.argument("run_and_res", nargs=-1, metavar="[RUN]")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="The run folder (same as RUN).")
@click.option("--format", "fmt", type=click.Choice(["lq", "onnx"]), default="lq", show_default=True,
              help="lq: packed K-bit LQ-Nets codes + bases of a quantized run; onnx: one BN-folded ONNX graph per sub-network + manifest.json.")
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True, help="lq: the packed file; onnx: the directory.")
@click.option("--res", multiple=True, type=int, help="onnx: resolutions to export, e.g. --res 224 160 96 (default: the trained and calibrated ones).")
@click.option("--subnet", "subnet_ids", multiple=True, metavar="ID", help="onnx: sub-network ids to export, e.g. 160w70.")
@click.option("--fp16", is_flag=True, help="lq: store the float remainder (BN, first conv, classifier) in float16.")
@click.option("--linear-bits", type=click.IntRange(2, 8), default=None, help="lq: store float linear layers (the classifier) as N-bit integers per row.")
@click.option("--overwrite", is_flag=True, help="onnx: replace an earlier export in the output directory (otherwise refused).")
@click.option("--json", "as_json", is_flag=True)
def export(run_and_res, checkpoint, fmt, out_path, res, subnet_ids, fp16, linear_bits, overwrite, as_json) -> None:
    """Export a run: a packed file of a quantized run (lq) or ONNX graphs per sub-network (onnx)."""
    tokens = list(run_and_res)
    if checkpoint is None:
        if not tokens:
            raise UserError("export: give the run folder (RUN or --checkpoint RUN)")
        checkpoint, tokens = Path(tokens[0]), tokens[1:]
    _check_writable(out_path)
    if fmt == "onnx":
        _export_onnx(checkpoint, out_path, list(res) + [_int_token("--res", t) for t in tokens], subnet_ids, overwrite, as_json)
        return
    if tokens or res or subnet_ids:
        raise UserError("export: --res and --subnet apply to --format onnx; --format lq packs every sub-network")
    if not checkpoint.is_dir():
        raise UserError(f"{checkpoint}: no such run folder")
    if out_path.is_dir():
        raise UserError(f"{out_path}: is a directory; --format lq writes one file")
    from rsvision.quant.export import export_run

    report = export_run(checkpoint, out_path, remainder="float16" if fp16 else "float32", linear_bits=linear_bits)
    if as_json:
        _emit_json(report)
        return
    table = Table(title=f"{out_path} ({fmt}, S = {report['resolutions']})")
    table.add_column("stored as")
    table.add_column("bytes", justify="right")
    table.add_column("packed is smaller by", justify="right")
    table.add_row("packed RS-Net", f"{report['packed_bytes']:,}", "")
    table.add_row("float32 RS-Net", f"{report['float32_rsnet_bytes']:,}", f"{report['ratio_vs_float32_rsnet']:.1f}x")
    table.add_row(f"{report['resolutions']} packed I-Nets", f"{report['inets_packed_bytes']:,}", f"{report['ratio_vs_inets']:.1f}x")
    out.print(table)


def _int_token(option: str, token: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise UserError(f"{option}: expected a resolution (a positive integer), got '{token}'") from None
    if value <= 0:
        raise UserError(f"{option}: expected a positive resolution, got {value}")
    return value


def _export_onnx(run: Path, out_dir: Path, res: list[int], subnet_ids: tuple[str, ...], overwrite: bool, as_json: bool) -> None:
    from rsvision.onnx_export import export_run
    from rsvision.profile import human

    requested = _resolutions(tuple(res), ()) + list(subnet_ids)
    _check_scale(run, res)
    _check_scale(run, subnet_ids, "--subnet")

    def line(e) -> None:
        diff = f"max |onnxruntime - PyTorch| {e['check_max_abs_diff']:.2g}" if "check_max_abs_diff" in e else "not checked"
        out.print(f"{out_dir / e['file']}: {e['id']} ({e['bn_status']}), {human(e['madds'])} MAdds, "
                  f"BN folded {e['bn_folded']}, left {e['bn_left']}, {diff}", soft_wrap=True)

    manifest = export_run(run, out_dir, requested or None, overwrite=overwrite, on_subnet=None if as_json else line)
    if as_json:
        _emit_json(manifest)
        return
    q = manifest["quantization"]
    if q:
        out.print(f"quantized run: exported as a de-quantized float graph ({q['weight_quantized_layers']} layers with "
                  f"{'/'.join(map(str, q['weight_bits']))}-bit weights stored as float values; activations: {q['activations']})", soft_wrap=True)
        if q["left"]:
            out.print(f"activation quantizers kept as traced PyTorch code: {', '.join(q['left'])}")
    out.print(f"{out_dir / 'manifest.json'}: {manifest['task']}, opset {manifest['opset']}, checked on {manifest['check']['inputs']}", soft_wrap=True)


def _width_subnets(artifact, resolutions, widths):
    """``--width`` x ``--res`` of a width run; sub-networks without BN statistics of their own
    get them recomputed first (post-hoc BN), and the user is told."""
    from rsvision.engine.report import console
    from rsvision.query import calibrate_missing, width_subnets

    subnets = width_subnets(artifact, resolutions, widths)
    done, images = calibrate_missing(artifact, subnets)
    if done:
        where = f", saved to {artifact.path}/calibration.safetensors" if Path(artifact.path).is_dir() else ""
        console.print(f"post-hoc BN: recomputed the statistics of {', '.join(s.id for s in done)} on {images} training images{where}")
    return subnets


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("extra_res", nargs=-1, type=int)
@click.option("--budget-madds", default=None, metavar="N", help="Most multiply-adds per image, e.g. 600M, 1.2G, 150000000.")
@click.option("--budget-ms", default=None, metavar="MS", help="Most milliseconds per image at batch 1 on this machine.")
@click.option("--calibrated", is_flag=True, help="Also consider the calibrated sub-networks stored in the run.")
@click.option("--res", multiple=True, type=int, help="Also consider these resolutions (BN interpolated between trained ones).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("deployed"), show_default=True, help="Directory for the chosen ONNX graph and its manifest.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for the latency measurement (default: every core).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier deployment in the output directory (otherwise refused).")
@click.option("--json", "as_json", is_flag=True)
def deploy(run, extra_res, budget_madds, budget_ms, calibrated, res, out_dir, threads, overwrite, as_json) -> None:
    """Export the most accurate sub-network of RUN within a MAdds or latency budget."""
    from rsvision.deploy import Budget, deploy as choose_and_export
    from rsvision.profile import human

    budget = Budget.parse(budget_madds, budget_ms)
    _check_writable(out_dir)
    report = choose_and_export(run, budget, calibrated=calibrated, extra=_resolutions(res, extra_res), out_dir=out_dir, threads=threads, overwrite=overwrite)
    if as_json:
        _emit_json({k: v for k, v in report.items() if k != "manifest"})
        return
    metric, chosen = report["metric"], report["chosen"]
    table = Table(title=f"{run}: budget {budget.text()} (latency: {report['latency_backend']}, batch 1)")
    for col in ("", "sub-network", "BN", metric, "MAdds", "latency (ms)", "within budget"):
        table.add_column(col, justify="right")
    for row in report["candidates"]:
        table.add_row("->" if row is chosen else "", row["subnet"], row["status"], f"{row[metric]:.2f}", human(row["madds"]),
                      f"{row['latency_ms']:.2f}", "yes" if row["within_budget"] else "no")
    out.print(table)
    entry = report["manifest"]["subnets"][0]
    out.print(f"deployed {chosen['subnet']} ({metric} {chosen[metric]:.2f}) to {Path(out_dir) / entry['file']}", soft_wrap=True)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--budget", "budgets", multiple=True, metavar="MADDS", help="Best configuration within this many multiply-adds, e.g. 150M (repeatable).")
@click.option("--budget-ms", "budgets_ms", multiple=True, metavar="MS", help="Best configuration within this latency in ms (this machine, batch 1; repeatable).")
@click.option("--images", type=click.IntRange(1), default=None, help="Training images for recomputed BN statistics (default 2000).")
@click.option("--step", type=click.FloatRange(0.01, 1.0), default=0.05, show_default=True, help="Width step of the grid (range runs).")
@click.option("--refresh", is_flag=True, help="Rebuild the table even if the run folder holds one for these weights.")
@click.option("--data", "data_root", default=None, help="Data root, replacing the recipe's data.root.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@plugin_option
def query(run, budgets, budgets_ms, images, step, refresh, data_root, as_json, plugins) -> None:
    """Query table of a width run: every (width, resolution) with MAdds, latency and accuracy, and the best per budget."""
    from rsvision.engine.report import training_progress
    from rsvision.query import choices, parse_budget, parse_ms, print_query, query_run
    from rsvision.registry import load_plugins

    load_plugins(plugins)
    madds = [parse_budget(b) for b in budgets]
    ms = [parse_ms(b) for b in budgets_ms]
    with training_progress(disable=as_json) as bar:
        report = query_run(run, images, step, data_root, refresh, progress=bar)
    picked = choices(report, madds, ms)
    if as_json:
        _emit_json({**report, "best": picked})
        return
    print_query(report, picked, out)


def _last_line(exc: UserError) -> str:
    """A UserError raised in a DataLoader worker arrives wrapped in the worker's traceback."""
    text = str(exc).strip()
    if "Original Traceback" not in text:
        return text
    return text.splitlines()[-1].split("UserError: ", 1)[-1]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one plain line, ``warning: MESSAGE``, without the source line that raised it."""
    click.secho("warning: ", fg="yellow", err=True, nl=False)
    click.echo(str(message), err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``rsvision`` command."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        _dispatch(argv)


def _dispatch(argv: list[str] | None) -> None:
    """Run the command; exceptions become one line and an exit status (module docstring)."""
    try:
        cli.main(args=argv, prog_name="rsvision", standalone_mode=False)
    except click.exceptions.ClickException as exc:
        command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "rsvision"
        click.secho("error: ", fg="red", err=True, nl=False)
        click.echo(f"{exc.format_message()} (see `{command} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except UserError as exc:
        click.secho("error: ", fg="red", err=True, nl=False)
        click.echo(_last_line(exc), err=True)
        sys.exit(2)
    except Exception as exc:
        if os.environ.get("RSVISION_DEBUG"):
            raise
        click.secho("failed: ", fg="red", err=True, nl=False)
        click.echo(f"{type(exc).__name__}: {exc} (set RSVISION_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
