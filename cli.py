"""The ``rsvision`` command: a thin layer over the library.

A user error (missing file, bad field, unknown name) prints one line and exits 2; any
other failure exits 1 (set RSVISION_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

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
    run_training(cfg, name=cfg.name or recipe.stem, resume=resume, quiet=quiet)


@cli.command("eval")
@click.option("--task", "task_name", default=None, help="Task of the run (cls, seg): picks the latest such run, and is checked against --checkpoint.")
@click.option("--res", multiple=True, type=int, help="Resolution(s) to evaluate; default: the trained ones and the ensemble.")
@click.argument("extra_res", nargs=-1, type=int)
@click.option("--width", "widths", multiple=True, type=float, help="Width(s) of a width-switchable run, e.g. --width 0.5 (default: its trained ones).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Run folder or packed file (default: the latest finished run under ./runs).")
@click.option("--data", "data_root", default=None, help="Data root, replacing the recipe's data.root.")
@click.option("--batch-size", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@plugin_option
def evaluate(task_name, res, extra_res, widths, checkpoint, data_root, batch_size, as_json, plugins) -> None:
    """Evaluate a trained run at any resolution (untrained ones through BN interpolation)."""
    from rsvision.artifacts import find_latest_run, load_artifact
    from rsvision.engine import evaluate_artifact
    from rsvision.engine.report import console, results_table
    from rsvision.registry import load_plugins

    load_plugins(plugins)
    resolutions = _resolutions(res, extra_res) or None
    run_dir = checkpoint or find_latest_run(RUNS_DIR, task_name)
    artifact = load_artifact(run_dir, data_root)
    meta = artifact.meta
    if task_name is not None and meta.get("task") != task_name:
        raise UserError(f"{run_dir}: a '{meta.get('task')}' run, not '{task_name}' (drop --task or pick a {task_name} run)")
    if not artifact.complete:
        console.print(f"[yellow]warning:[/] {run_dir} stopped after epoch {meta.get('epochs_done')} of {meta['recipe']['train']['epochs']}")
    subnets = resolutions
    if widths or artifact.task.recipe.widths is not None:
        chosen = _width_subnets(artifact, resolutions, widths)
        subnets = chosen if resolutions or widths else None  # None: the trained ones and combined rows
    rows = evaluate_artifact(artifact, subnets, batch_size)
    if as_json:
        _emit_json({"run": str(run_dir), "task": meta["task"], "results": rows})
        return
    out.print(results_table(rows, title=f"{run_dir}"))
    interpolated = [str(r["resolution"]) for r in rows if r.get("status") == "interpolated"]
    if interpolated:
        out.print(f"BN interpolated between trained resolutions for: {', '.join(interpolated)}")


@cli.command()
@click.option("--backbone", default=None, help="A registered backbone (with the classifier head).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="A run folder.")
@click.option("--res", multiple=True, type=int, required=True, help="Resolutions, e.g. --res 224 192 160 128 96.")
@click.argument("extra_res", nargs=-1, type=int)
@click.option("--num-classes", type=int, default=1000, show_default=True)
@click.option("--no-latency", is_flag=True, help="Skip the CPU latency measurement.")
@click.option("--json", "as_json", is_flag=True)
@plugin_option
def profile(backbone, checkpoint, res, extra_res, num_classes, no_latency, as_json, plugins) -> None:
    """Parameters, multiply-adds and CPU latency per resolution."""
    from rsvision.profile import human, profile_backbone, profile_run
    from rsvision.registry import load_plugins

    load_plugins(plugins)
    if (backbone is None) == (checkpoint is None):
        raise UserError("profile: give exactly one of --backbone NAME or --checkpoint RUN_DIR")
    resolutions = _resolutions(res, extra_res)
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
@click.option("--res", multiple=True, type=int, help="Resolution(s) to run at; default: the trained ones.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("predictions"), show_default=True)
@click.option("--compare", is_flag=True, help="Also write IMAGE_compare.png: the image and its masks side by side.")
def predict(images, checkpoint, res, out_dir, compare) -> None:
    """Write colour-coded segmentation masks of IMAGES at each resolution."""
    from rsvision.artifacts import find_latest_run
    from rsvision.predict import predict_files

    run_dir = checkpoint or find_latest_run(RUNS_DIR, "seg")
    for path in predict_files(run_dir, images, list(res), out_dir, compare):
        out.print(str(path))


@cli.command("export")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True, help="Run folder of a quantized RS-Net.")
@click.option("--format", "fmt", type=click.Choice(["lq"]), default="lq", show_default=True, help="Packed format: K-bit LQ-Nets codes + bases.")
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Packed file to write.")
@click.option("--fp16", is_flag=True, help="Store the float remainder (BN, first conv, classifier) in float16.")
@click.option("--linear-bits", type=click.IntRange(2, 8), default=None, help="Store float linear layers (the classifier) as N-bit integers per row.")
@click.option("--json", "as_json", is_flag=True)
def export(checkpoint: Path, fmt: str, out_path: Path, fp16: bool, linear_bits: int | None, as_json: bool) -> None:
    """Pack a quantized run into one file (`rsvision eval --checkpoint FILE` reads it)."""
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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``rsvision`` command."""
    try:
        cli.main(args=argv, prog_name="rsvision", standalone_mode=False)
    except click.exceptions.ClickException as exc:
        exc.show()
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
