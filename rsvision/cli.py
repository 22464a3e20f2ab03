"""The ``rsvision`` command: a thin layer over the library.

Each command parses its arguments, calls one library function and prints what it returns
(tables through :mod:`rsvision.report`). A user error (missing file, bad field, unknown
name) prints one line, ``error: ...``, and exits 2; any other failure exits 1 (set
RSVISION_DEBUG=1 for the traceback). Warnings print as one line each. Output paths and
sizes are checked before any work. ``rsvision.cli.cli`` behaves the same whether it is run
as the ``rsvision`` command or through ``click.testing.CliRunner``.

Shared vocabulary:

- ``RUN``: a run folder (or a packed file where the command reads one), the first argument
  of every command that takes a run; ``--checkpoint RUN`` is the same (giving both, they
  must name the same run).
- ``--res``: sizes (224), ranges START:STOP:STEP (64:256:16) and, where the command serves
  width sub-networks, ids (160w70), one parser for every command
  (:func:`rsvision.subnet.parse_subnets`). More sizes may follow as plain arguments
  (``--res 128 112 96``): an argument that looks like a size is a size, the other one is RUN
  (write ``./224`` for a run folder named like a size).
- ``--budget-madds N`` / ``--budget-ms MS`` in ``query`` and ``deploy`` (``--budget N`` is
  the older spelling of ``--budget-madds``).
- ``--device`` on every command that runs a trained network: ``auto`` (CUDA when present,
  else the CPU), ``cpu``, ``cuda``, ``cuda:N`` (:mod:`rsvision.analysis.device`, which also
  holds the precision rule).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from rsvision.constants import RUNS_DIR
from rsvision.errors import UserError

if TYPE_CHECKING:
    from rsvision.deploy.budget import Budget

out = Console()

#: Arguments read as sizes rather than as RUN: 224, 160w70, 64:256:16 (and malformed ranges, for --res to name).
_SIZE_TOKEN = re.compile(r"\d+(?:w\d+)?|[^/\\]*:[^/\\]*")

RUN_HELP = (
    "RUN is a run folder (--checkpoint RUN is the same). Sizes may follow --res as plain "
    "arguments: an argument that looks like a size (224, 64:256:16, 160w70) is a size, the "
    "other one is RUN (write ./224 for a run folder named like a size)."
)


def checkpoint_option(help_text: str = "Same as RUN (the older spelling).") -> Callable:
    return click.option("--checkpoint", type=click.Path(path_type=Path), default=None, metavar="RUN", help=help_text)


def _looks_like_size(token: str) -> bool:
    return bool(_SIZE_TOKEN.fullmatch(str(token).strip()))


def _agree(run: Path | None, checkpoint: Path | None, command: str) -> Path | None:
    """RUN or ``--checkpoint``; both must then name the same run."""
    if checkpoint is None:
        return run
    if run is not None and Path(run).resolve() != Path(checkpoint).resolve():
        raise UserError(f"{command}: RUN {run} and --checkpoint {checkpoint} name different runs; give one of them")
    return checkpoint


def _run_and_sizes(
    tokens: Sequence[str],
    checkpoint: Path | None,
    command: str,
    default: Callable[[], Path] | None = None,
    required: bool = True,
) -> tuple[Path | None, list[str]]:
    """Split ``[RUN] [SIZE]...`` (see :data:`RUN_HELP`): the run, and the sizes left for ``--res``.

    With ``--checkpoint`` only an existing path counts as RUN, so a stray word is named by
    the ``--res`` parser instead. Without any run: ``default()`` (the latest run), or a
    one-line error when ``required``.
    """
    rest = [str(t) for t in tokens]
    run = None
    for i, token in enumerate(rest):
        if not _looks_like_size(token) and (checkpoint is None or Path(token).exists()):
            run = Path(rest.pop(i))
            break
    others = [t for t in rest if not _looks_like_size(t) and Path(t).exists()]
    if others:
        raise UserError(f"{command}: one RUN at a time (got {run or checkpoint} and {others[0]})")
    run = _agree(run, checkpoint, command)
    if run is None and default is not None:
        run = default()
    if run is None and required:
        raise UserError(f"{command}: give the run folder (RUN or --checkpoint RUN)")
    return run, rest


_BUDGETS = (("--budget-madds", "madds"), ("--budget", "madds"), ("--budget-ms", "ms"))


def budget_options(multiple: bool) -> Callable:
    """``--budget-madds``, ``--budget-ms`` and ``--budget`` (the older ``--budget-madds``)."""
    again = " (repeatable)" if multiple else ""

    def decorate(f):
        f = click.option("--budget", "budget_alias", multiple=multiple, default=() if multiple else None, metavar="N",
                         help="Same as --budget-madds (the older spelling).")(f)
        f = click.option("--budget-ms", "budget_ms", multiple=multiple, default=() if multiple else None, metavar="MS",
                         help=f"Most milliseconds per image at batch 1 on this machine, e.g. 5{again}.")(f)
        return click.option("--budget-madds", "budget_madds", multiple=multiple, default=() if multiple else None, metavar="N",
                            help=f"Most multiply-adds per image, e.g. 600M, 1.2G, 150000000{again}.")(f)

    return decorate


def _budgets(madds, alias, ms) -> list[tuple[str, Budget]]:
    """Every budget given, with the option it was given as (MAdds first, then ms)."""
    from rsvision.deploy.budget import Budget

    found = []
    for (option, kind), values in zip(_BUDGETS, (madds, alias, ms)):
        values = () if values is None else (values,) if isinstance(values, str) else values
        parse = Budget.madds if kind == "madds" else Budget.ms
        found += [(option, parse(text, option)) for text in values]
    return found


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


def _check_scale(run: Path, sizes: Iterable, option: str = "--res") -> None:
    """Refuse sizes far beyond the resolutions ``run`` was trained at (:func:`rsvision.subnet.check_scale`)."""
    from rsvision.run.folder import load_artifact, read_meta
    from rsvision.subnet import check_scale

    sizes = list(sizes)
    if sizes:
        meta = read_meta(run) if Path(run).is_dir() else load_artifact(run).meta
        check_scale(sizes, meta["recipe"]["resolutions"], str(run), option)


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


device_option = click.option(
    "--device", default="auto", show_default=True, metavar="DEVICE",
    help="Where the network runs: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N. "
    "On CUDA a run trained in bf16/fp16 runs in autocast of that dtype; elsewhere float32.",
)


def _device(spec: str):
    """``--device`` as a ``torch.device``; a bad one is one line (exit 2) before any work."""
    from rsvision.analysis.device import resolve_device

    return resolve_device(spec)


plugin_option = click.option(
    "--plugin", "plugins", multiple=True, metavar="MODULE", help="Import MODULE (or a .py file) to register its backbones, heads, tasks or datasets."
)


class _Commands(click.Group):
    """The ``rsvision`` group: errors become one line and an exit status (module docstring)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # programmatic use: click's own behaviour
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code = _dispatch(lambda: click.Group.main(self, args, prog_name or "rsvision", complete_var, standalone_mode=False, **extra))
        if isinstance(code, int) and code:
            sys.exit(code)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rsvision")
def cli() -> None:
    """Train and deploy Resolution Switchable Networks."""


#: ``--resume`` without a value: the latest run of RECIPE.
_LATEST = ":latest"


@cli.command(short_help="Train the RS-Net described by RECIPE.")
@click.argument("recipe", required=False, metavar="[RECIPE]")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field, e.g. train.epochs=1 (YAML value).")
@plugin_option
@click.option("--resume", "resume", is_flag=False, flag_value=_LATEST, default=None, metavar="[RUN_DIR]",
              help="Continue from the saved training state of RUN_DIR (then RECIPE may be left out), or of the latest run of "
              "RECIPE. Recipe fields that differ from the run's are refused, listed, unless --allow-changes; a finished run "
              "is left as it is (one line, exit 0).")
@click.option("--allow-changes", is_flag=True, help="With --resume: continue although recipe fields (--set or an edited RECIPE) differ from the run's.")
@click.option("--quiet", is_flag=True, help="No progress bar, no tables: only the run folder, on stdout.")
@click.option("--json", "as_json", is_flag=True, help="The run folder and its results as JSON on stdout (progress stays on stderr).")
def train(recipe: str | None, overrides: tuple[str, ...], plugins: tuple[str, ...], resume: str | None, allow_changes: bool,
          quiet: bool, as_json: bool) -> None:
    """Train the RS-Net described by RECIPE: a YAML file, or the name of a shipped recipe (`rsvision recipes`).

    The results table and the run folder go to stdout; progress and the per-epoch lines to
    stderr. A width recipe with ``widths.query: true`` then builds the run's query table (as
    ``rsvision query RUN``) and prints it. Plugins (``--plugin``, the recipe's ``plugins:``,
    relative to the recipe's folder) are recorded in the run, so later commands need no
    ``--plugin``.
    """
    from rsvision.engine import train as run_training
    from rsvision.engine.trainer import latest_resumable
    from rsvision.recipe import load_recipe
    from rsvision.registry import load_plugins
    from rsvision.run.files import RECIPE
    from rsvision.run.plugins import resolve_plugins
    from rsvision.run.resume import check_resume, resumable, saved_recipe

    if resume not in (None, _LATEST) and recipe is None and not Path(resume).is_dir():  # `train --resume RECIPE`
        recipe, resume = resume, _LATEST
    named = resumable(resume) if resume not in (None, _LATEST) else None
    if recipe is None and named is None:
        raise UserError("train: give RECIPE (a YAML file or a shipped recipe's name: `rsvision recipes` lists them)")
    path = _recipe_file(recipe) if recipe is not None else named.run_dir / RECIPE
    load_plugins(plugins)
    cfg = load_recipe(path, overrides) if recipe is not None else saved_recipe(named, overrides)
    cfg.plugins = list(dict.fromkeys(resolve_plugins(cfg.plugins, path.parent) + resolve_plugins(plugins, Path.cwd())))
    load_plugins(cfg.plugins)
    name = cfg.name or (named.run_dir.name if named else path.stem)
    _check_writable(Path(cfg.output_dir), "output_dir", inside=True)
    target: bool | Path = False
    if resume is not None:
        run = named or resumable(latest_resumable(cfg, name))
        changes = check_resume(run, cfg, allow_changes)
        if run.epochs_done >= cfg.train.epochs:
            click.echo(f"{run.run_dir}: finished ({run.epochs_done} of {cfg.train.epochs} epochs); nothing to resume", err=True)
            return
        if changes:
            warnings.warn(f"--resume {run.run_dir} with --allow-changes: {'; '.join(changes)}", stacklevel=1)
        target = run.run_dir
    run_dir = run_training(cfg, name=name, resume=target, quiet=quiet)
    if os.environ.get("RANK", "0") != "0":  # one process prints and builds the query table
        return
    _print_trained(run_dir, cfg, quiet, as_json)
    if cfg.widths is not None and cfg.widths.query:
        _query_after_training(run_dir, quiet or as_json)


def _recipe_file(recipe: str) -> Path:
    """RECIPE as a file: the path when it exists, else the shipped recipe of that name
    (``quickstart``, ``quickstart.yaml`` or ``recipes/quickstart.yaml`` from any folder)."""
    path = Path(recipe)
    if path.exists() or path.parent not in (Path("."), Path("recipes")):
        return path
    shipped = _shipped_recipes().get(path.name.removesuffix(".yaml").removesuffix(".yml"))
    if shipped is None:
        raise UserError(f"{recipe}: recipe file not found, nor a shipped recipe (`rsvision recipes` lists them)")
    return shipped


def _shipped_recipes() -> dict[str, Path]:
    """The recipes shipped with the package (``rsvision/recipes/``, package data), by name."""
    from importlib.resources import files

    folder = Path(str(files("rsvision") / "recipes"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


@cli.group(invoke_without_command=True, short_help="List the shipped recipes, or copy one out.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def recipes(ctx: click.Context, as_json: bool) -> None:
    """The recipes shipped with rsvision: listed here; `rsvision recipes copy NAME` writes one
    out to edit; `rsvision train NAME` trains one as it is."""
    if ctx.invoked_subcommand is not None:
        return
    shipped = {name: _recipe_summary(path) for name, path in _shipped_recipes().items()}
    if as_json:
        _emit_json(shipped)
        return
    table = Table(title="shipped recipes (rsvision train NAME, rsvision recipes copy NAME)")
    table.add_column("name", no_wrap=True)
    table.add_column("what it trains")
    for name, summary in shipped.items():
        table.add_row(name, summary)
    out.print(table)


def _recipe_summary(path: Path) -> str:
    """The first sentence of a recipe's opening comment (each shipped recipe says there what it trains)."""
    lines = []
    for line in path.read_text().lstrip().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    for end in re.finditer(r"\.(\s|$)", text):
        word = text[: end.start()].rsplit(" ", 1)[-1]
        if len(word) > 3 or word.endswith((")", "}")):  # a sentence's end, not an abbreviation's (App. B)
            return text[: end.start() + 1]
    return text


@recipes.command("copy")
@click.argument("name")
@click.argument("dest", required=False, type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def copy_recipe(name: str, dest: Path | None, overwrite: bool) -> None:
    """Write the shipped recipe NAME to DEST (a file, or a folder; default: ./NAME.yaml)."""
    from rsvision.io import atomic_write

    shipped = _shipped_recipes()
    source = shipped.get(name.removesuffix(".yaml"))
    if source is None:
        raise UserError(f"recipes copy: no shipped recipe '{name}' (shipped: {', '.join(shipped)})")
    dest = Path(dest or source.name)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists() and not overwrite:
        raise UserError(f"{dest}: exists; pass --overwrite to replace it")
    _check_writable(dest, "DEST")
    text = source.read_text()
    atomic_write(dest, lambda tmp: Path(tmp).write_text(text))
    click.echo(str(dest))


def _print_trained(run_dir: Path, cfg, quiet: bool, as_json: bool) -> None:
    """What ``train`` prints on stdout: the results table and the run folder; only the folder
    with ``--quiet``; both as JSON with ``--json``."""
    from rsvision.report import results_table
    from rsvision.run.folder import read_meta
    from rsvision.training import method_for

    meta = read_meta(run_dir)
    madds = meta.get("madds") or {}
    rows = [{**row, "madds": madds[row["subnet"]]} if row.get("subnet") in madds else row for row in meta["metrics"]]
    if as_json:
        _emit_json({"run": str(run_dir), "task": meta["task"], "epochs_done": meta["epochs_done"], "complete": meta["complete"], "results": rows})
    elif quiet:
        click.echo(str(run_dir))
    else:
        out.print(results_table(rows, columns=method_for(cfg).columns))
        out.print(f"run folder: {run_dir}", soft_wrap=True)


def _query_after_training(run_dir: Path, quiet: bool) -> None:
    from rsvision.analysis.query import query_run
    from rsvision.report import print_query, training_progress

    with training_progress(disable=quiet) as bar:
        report = query_run(run_dir, progress=bar)
    if not quiet:
        print_query(report, (), out)


@cli.command("eval", epilog=RUN_HELP, short_help="Evaluate RUN at any resolution.")
@click.argument("args", nargs=-1, metavar="[RUN] [SIZE]...")
@click.option("--task", "task_name", default=None, help="Task of the run (cls, seg, det): picks the latest such run, and is checked against RUN.")
@click.option("--res", multiple=True, help="Sizes, ranges START:STOP:STEP (64:256:16) or sub-network ids (160w70) to evaluate; default: the trained ones and the ensemble.")
@click.option("--width", "widths", multiple=True, type=float, help="Width(s) of a width-switchable run, e.g. --width 0.5 (default: its trained ones).")
@checkpoint_option("Same as RUN. Default: the latest finished run under ./runs; a packed file (.lq) works too.")
@click.option("--data", "data_root", default=None, help="Data root, replacing the recipe's data.root.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@device_option
@plugin_option
def evaluate(args, task_name, res, widths, checkpoint, data_root, batch_size, as_json, device, plugins) -> None:
    """Evaluate RUN at any resolution (untrained ones through BN interpolation)."""
    from rsvision.analysis.device import precision_name
    from rsvision.analysis.evaluate import evaluate_and_record
    from rsvision.registry import load_plugins
    from rsvision.report import results_table
    from rsvision.run.folder import find_latest_run
    from rsvision.subnet import parse_subnets
    from rsvision.training import method_for

    load_plugins(plugins)
    device = _device(device)
    parse_subnets(res)  # a bad --res is named before the latest run is looked for
    run_dir, sizes = _run_and_sizes(args, checkpoint, "eval", default=lambda: find_latest_run(RUNS_DIR, task_name))
    chosen = parse_subnets(res + tuple(sizes))
    artifact = _load_for_eval(run_dir, task_name, chosen, data_root, device)
    rows = evaluate_and_record(artifact, _eval_subnets(artifact, chosen, widths), batch_size)
    precision = precision_name(artifact.task.recipe, artifact.model)
    if as_json:
        _emit_json({"run": str(run_dir), "task": artifact.meta["task"], "device": str(device), "precision": precision, "results": rows})
        return
    where = f" ({device}, {precision})" if device.type != "cpu" else ""
    out.print(results_table(rows, title=f"{run_dir}{where}", columns=method_for(artifact.task.recipe).columns))
    interpolated = [str(r["resolution"]) for r in rows if r.get("status") == "interpolated"]
    if interpolated:
        out.print(f"BN interpolated between trained resolutions for: {', '.join(interpolated)}")


def _load_for_eval(run_dir: Path, task_name: str | None, chosen, data_root: str | None, device):
    """The artifact on ``device``, checked: of ``task_name`` when given, sizes within the scale limit; warns when unfinished."""
    from rsvision.analysis.device import to_device
    from rsvision.report import console
    from rsvision.run.folder import load_artifact
    from rsvision.subnet import check_scale

    artifact = to_device(load_artifact(run_dir, data_root), device)
    meta = artifact.meta
    if task_name is not None and meta.get("task") != task_name:
        raise UserError(f"{run_dir}: a '{meta.get('task')}' run, not '{task_name}' (drop --task or pick a {task_name} run)")
    check_scale(chosen, artifact.model.resolutions, str(run_dir))
    if not artifact.complete:
        console.print(f"[yellow]warning:[/] {run_dir} stopped after epoch {meta.get('epochs_done')} of {meta['recipe']['train']['epochs']}")
    return artifact


def _eval_subnets(artifact, chosen, widths):
    """What ``eval`` evaluates: ``--res`` sizes x ``--width`` (each defaulting to the trained
    ones on a width run) and the ``--res`` ids as given; None for the trained sub-networks and
    the method's combined rows. Width sub-networks without BN statistics of their own get
    them recomputed first (post-hoc BN), and the user is told."""
    from rsvision.analysis.calibrate import calibrate_missing
    from rsvision.analysis.query import width_subnets
    from rsvision.nn.bn_stats import unservable
    from rsvision.report import console
    from rsvision.run.files import CALIBRATION

    sizes = [s.resolution for s in chosen if s.width is None]
    ids = [s for s in chosen if s.width is not None]
    for subnet in ids:
        reason = unservable(artifact.model, subnet)
        if reason:
            raise UserError(f"--res {subnet.id}: {reason}")
    if artifact.task.recipe.widths is None and not widths and not ids:
        return sizes or None
    subnets = (width_subnets(artifact, sizes, widths) if sizes or widths or not ids else []) + ids
    done, images = calibrate_missing(artifact, subnets)
    if done:
        where = f", saved to {Path(artifact.path) / CALIBRATION}" if Path(artifact.path).is_dir() else ""
        console.print(f"post-hoc BN: recomputed the statistics of {', '.join(s.id for s in done)} on {images} training images{where}")
    return subnets if chosen or widths else None


@cli.command(epilog=RUN_HELP, short_help="Recompute the BN statistics of RUN at any resolution.")
@click.argument("args", nargs=-1, metavar="RUN [SIZE]...")
@checkpoint_option()
@click.option("--res", multiple=True, required=True, help="Sizes, ranges (112:144:16) or sub-network ids (160w70) to calibrate, trained or not.")
@click.option("--images", type=int, default=2000, show_default=True, help="Training images to measure the statistics on.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: the recipe's evaluation batch size.")
@click.option("--data", "data_root", default=None, help="Data root, replacing the recipe's data.root.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@device_option
@plugin_option
def calibrate(args, checkpoint, res, images, batch_size, data_root, as_json, device, plugins) -> None:
    """Recompute BatchNorm statistics of RUN at any resolution from training images (kept beside the weights)."""
    from rich.progress import Progress

    from rsvision.analysis.calibrate import calibrate_run
    from rsvision.registry import load_plugins
    from rsvision.report import console
    from rsvision.run.files import CALIBRATION
    from rsvision.subnet import parse_subnets

    load_plugins(plugins)
    device = _device(device)
    if images < 1:
        raise UserError(f"--images: expected at least 1 image, got {images}")
    run, sizes = _run_and_sizes(args, checkpoint, "calibrate")
    subnets = parse_subnets(res + tuple(sizes))
    if run.is_dir():
        _check_writable(run / CALIBRATION, option=None)
    with Progress(console=console, disable=as_json, transient=True) as bar:
        report = calibrate_run(run, subnets, images, batch_size, data_root, progress=bar, device=device)
    if as_json:
        _emit_json(report)
        return
    out.print(f"calibrated {', '.join(report['subnets'])} on {report['images']} training images → {report['file']}", soft_wrap=True)
    out.print(f"calibrated statistics in the run: {', '.join(report['calibrated'])} (`rsvision eval` uses them)", soft_wrap=True)


@cli.command(short_help="Plot accuracy vs. MAdds and vs. resolution of RUNs.")
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Figure to write: .png or .svg.")
@click.option("--res", multiple=True, help="Sizes or ranges (64:256:16) to evaluate each RUN at; default: its trained and calibrated ones.")
@click.option("--inets", multiple=True, metavar="RUN,RUN,...", help="Single-resolution runs drawn as one I-Nets curve, each at its own resolution.")
@click.option("--label", "labels", multiple=True, metavar="NAME", help="Curve names in order: the RUNs, then each --inets group.")
@click.option("--data", "data_root", default=None, help="Data root, replacing the runs' data.root.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the plotted points as JSON.")
@click.option("--curves", is_flag=True, help="Instead: one RUN's training loss and accuracy per sub-network over the epochs (its log.jsonl).")
@device_option
@plugin_option
def plot(runs, out_path, res, inets, labels, data_root, batch_size, as_json, curves, device, plugins) -> None:
    """Accuracy vs. MAdds and vs. resolution of RUNs (RS-Nets Fig. 1 and Fig. 4 right)."""
    from rsvision.analysis.plot import draw, draw_curves, output_format, plot_data, training_curves
    from rsvision.registry import load_plugins
    from rsvision.subnet import parse_resolutions

    if curves:
        if len(runs) != 1 or inets or res:
            raise UserError("plot --curves: give exactly one RUN (no --inets or --res)")
        output_format(out_path)
        _check_writable(out_path)
        data = training_curves(runs[0])
        draw_curves(data, out_path)
        if as_json:
            _emit_json({"figure": str(out_path), **data.as_dict()})
            return
        out.print(f"figure: {out_path}", soft_wrap=True)
        return
    load_plugins(plugins)
    device = _device(device)
    output_format(out_path)
    _check_writable(out_path)
    groups = [[p.strip() for p in group.split(",") if p.strip()] for group in inets]
    if any(not g for g in groups):
        raise UserError("--inets: expected run folders separated by commas, got an empty list")
    data = plot_data(runs, groups, parse_resolutions(res) or None, labels, data_root, batch_size, device)
    draw(data, out_path)
    if as_json:
        _emit_json({"figure": str(out_path), **data.as_dict()})
        return
    for curve in data.curves:
        out.print(f"{curve.label}: " + ", ".join(f"{p.resolution} {p.value:.1f}" for p in curve.points), soft_wrap=True)
    out.print(f"figure: {out_path}", soft_wrap=True)


@cli.command(short_help="Turn an official RS-Nets checkpoint into a run folder.")
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
    from rsvision.interop.official import PUBLISHED_SIZES, convert_official_run
    from rsvision.subnet import parse_resolutions

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
    out.print(f"evaluate with: rsvision eval {out_dir} --data IMAGENET_ROOT (inputs in [0, 1], no mean/std)", soft_wrap=True)


@cli.command(epilog=RUN_HELP, short_help="Parameters, MAdds and latency per resolution.")
@click.argument("args", nargs=-1, metavar="[RUN] [SIZE]...")
@click.option("--backbone", default=None, help="A registered backbone (with the classifier head).")
@checkpoint_option()
@click.option("--onnx", "onnx_dir", type=click.Path(path_type=Path), default=None, help="An ONNX export directory: onnxruntime latency per sub-network.")
@click.option("--res", multiple=True, help="Sizes or ranges, e.g. --res 224 192 160 128 96 or --res 96:224:32 (not with --onnx).")
@click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--no-latency", is_flag=True, help="Skip the latency measurement.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="--onnx: onnxruntime threads (default: every core).")
@click.option("--json", "as_json", is_flag=True)
@device_option
@plugin_option
def profile(args, backbone, checkpoint, onnx_dir, res, num_classes, no_latency, threads, as_json, device, plugins) -> None:
    """Parameters, multiply-adds and latency per resolution: of a backbone or of RUN on --device, or of an ONNX export (CPU)."""
    from rsvision.analysis.device import is_auto
    from rsvision.analysis.profile import profile_backbone, profile_run
    from rsvision.registry import load_plugins
    from rsvision.subnet import parse_resolutions

    load_plugins(plugins)
    resolved = _device(device)
    run, sizes = _run_and_sizes(args, checkpoint, "profile", required=False)
    if sum(x is not None for x in (backbone, run, onnx_dir)) != 1:
        raise UserError("profile: give exactly one of --backbone NAME, RUN (or --checkpoint RUN) or --onnx EXPORT_DIR")
    resolutions = parse_resolutions(res + tuple(sizes))
    if onnx_dir is not None:
        if resolutions:
            raise UserError("profile: --onnx measures the exported sub-networks; drop --res")
        if resolved.type != "cpu" and not is_auto(device):
            raise UserError(f"profile: --onnx measures onnxruntime's CPU session; drop --device {device}")
        _profile_onnx(onnx_dir, threads, as_json)
        return
    if not resolutions:
        raise UserError("profile: --res is required with --backbone or a run (e.g. --res 224 160 96)")
    if backbone:
        report = profile_backbone(backbone, resolutions, num_classes, latency=not no_latency, device=resolved)
    else:
        report = profile_run(run, resolutions, latency=not no_latency, device=resolved)
    if as_json:
        _emit_json(report)
        return
    out.print(_profile_table(report, f"{backbone or run}"))
    S, bn = report["num_resolutions"], report["bn_affine"]
    out.print(
        f"parameters: plain {report['parameters_plain']:,} · RS-Net (S={S}) {report['parameters_rsnet']:,} "
        f"(+{(S - 1) * bn:,} = {S - 1} x {bn:,} BN affine)"
    )


def _profile_table(report: dict, title: str) -> Table:
    from rsvision.report import human

    table = Table(title=title)
    for col in ("resolution", "MAdds", f"latency (ms, {'CPU' if report['device'] == 'cpu' else report['device']}, batch 1)"):
        table.add_column(col, justify="right")
    for row in report["rows"]:
        table.add_row(f"{row['resolution']}x{row['resolution']}", human(row["madds"]), f"{row['latency_ms']:.1f}" if "latency_ms" in row else "-")
    return table


def _profile_onnx(export_dir: Path, threads: int | None, as_json: bool) -> None:
    from rsvision.deploy.export import profile_export
    from rsvision.report import human

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


@cli.command("list", short_help="List the registered backbones, heads, tasks and datasets.")
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


@cli.command(short_help="Draw predictions of IMAGEs: segmentation masks or detections.")
@click.argument("args", nargs=-1, required=True, metavar="[RUN] IMAGE...")
@checkpoint_option("Same as RUN; a packed file needs this spelling. Default: the latest seg run under ./runs.")
@click.option("--res", multiple=True, help="Sizes or ranges (32:64:32) to run at; default: the trained ones.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("predictions"), show_default=True)
@click.option("--compare", is_flag=True, help="Also write IMAGE_compare.png: the image and its masks side by side.")
@device_option
@plugin_option
def predict(args, checkpoint, res, out_dir, compare, device, plugins) -> None:
    """Draw predictions of IMAGEs at each resolution: segmentation masks, or detections.

    RUN, a segmentation or detection run folder, comes first: a first argument that is a folder is RUN,
    the others are images (--checkpoint RUN is the same).
    """
    from rsvision.deploy.masks import predict_files
    from rsvision.registry import load_plugins
    from rsvision.run.folder import find_latest_run
    from rsvision.subnet import parse_resolutions

    load_plugins(plugins)
    device = _device(device)
    tokens = list(args)
    run = Path(tokens.pop(0)) if Path(tokens[0]).is_dir() else None
    run_dir = _agree(run, checkpoint, "predict") or find_latest_run(RUNS_DIR, "seg")
    images = [Path(t) for t in tokens]
    if not images:
        raise UserError("predict: give at least one IMAGE after RUN")
    for image in images:
        if image.is_dir():
            raise UserError(f"{image}: a folder, not an image (RUN comes first, then the images)")
    resolutions = parse_resolutions(res)
    _check_writable(out_dir, inside=True)
    for path in predict_files(run_dir, images, resolutions, out_dir, compare, device):
        out.print(str(path))


@cli.command("export", epilog=RUN_HELP, short_help="Export RUN: ONNX graphs, or a quantized run's packed file.")
@click.argument("args", nargs=-1, metavar="RUN [SIZE]...")
@checkpoint_option()
@click.option("--format", "fmt", type=click.Choice(["lq", "onnx"]), default=None,
              help="lq: packed K-bit LQ-Nets codes + bases of a quantized run; onnx: one BN-folded ONNX graph per sub-network + "
              "manifest.json. Default: lq for a quantized run folder, onnx otherwise.")
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True, help="lq: the packed file; onnx: the directory.")
@click.option("--res", multiple=True, help="onnx: sizes, ranges (96:224:64) or sub-network ids to export (default: the trained and calibrated ones).")
@click.option("--subnet", "subnet_ids", multiple=True, metavar="ID", help="onnx: sub-network ids to export, e.g. 160w70.")
@click.option("--fp16", is_flag=True, help="lq: store the float remainder (BN, first conv, classifier) in float16.")
@click.option("--linear-bits", type=click.IntRange(2, 8), default=None, help="lq: store float linear layers (the classifier) as N-bit integers per row.")
@click.option("--overwrite", is_flag=True, help="onnx: replace an earlier export in the output directory (otherwise refused).")
@click.option("--json", "as_json", is_flag=True)
@device_option
@plugin_option
def export(args, checkpoint, fmt, out_path, res, subnet_ids, fp16, linear_bits, overwrite, as_json, device, plugins) -> None:
    """Export RUN: a packed file of a quantized run (lq) or ONNX graphs per sub-network (onnx).

    onnx: BN statistics a sub-network lacks are recomputed on --device; the graphs are traced
    and checked on the CPU.
    """
    from rsvision.registry import load_plugins
    from rsvision.run.folder import read_meta
    from rsvision.subnet import parse_subnets

    load_plugins(plugins)
    device = _device(device)
    run, sizes = _run_and_sizes(args, checkpoint, "export")
    _check_writable(out_path)
    if fmt is None:  # by run type: a quantized run folder packs, anything else exports float graphs
        fmt = "lq" if Path(run).is_dir() and read_meta(run)["recipe"].get("quant") else "onnx"
    if fmt == "onnx":
        _export_onnx(run, out_path, parse_subnets(res + tuple(sizes)), subnet_ids, overwrite, as_json, device)
        return
    if sizes or res or subnet_ids:
        raise UserError("export: --res and --subnet apply to --format onnx; --format lq packs every sub-network")
    _export_lq(run, out_path, fp16, linear_bits, as_json)


def _export_lq(run: Path, out_path: Path, fp16: bool, linear_bits: int | None, as_json: bool) -> None:
    from rsvision.run.packed import pack_run

    if not run.is_dir():
        raise UserError(f"{run}: no such run folder")
    if out_path.is_dir():
        raise UserError(f"{out_path}: is a directory; --format lq writes one file")
    report = pack_run(run, out_path, remainder="float16" if fp16 else "float32", linear_bits=linear_bits)
    if as_json:
        _emit_json(report)
        return
    table = Table(title=f"{out_path} (lq, S = {report['resolutions']})")
    table.add_column("stored as")
    table.add_column("bytes", justify="right")
    table.add_column("packed is smaller by", justify="right")
    table.add_row("packed RS-Net", f"{report['packed_bytes']:,}", "")
    table.add_row("float32 RS-Net", f"{report['float32_rsnet_bytes']:,}", f"{report['ratio_vs_float32_rsnet']:.1f}x")
    table.add_row(f"{report['resolutions']} packed I-Nets", f"{report['inets_packed_bytes']:,}", f"{report['ratio_vs_inets']:.1f}x")
    out.print(table)


def _export_onnx(run: Path, out_dir: Path, subnets: list, subnet_ids: tuple[str, ...], overwrite: bool, as_json: bool, device) -> None:
    from rsvision.deploy.export import export_onnx
    from rsvision.deploy.manifest import MANIFEST
    from rsvision.report import human

    _check_scale(run, subnets)
    _check_scale(run, subnet_ids, "--subnet")

    def line(e) -> None:
        diff = f"max |onnxruntime - PyTorch| {e['check_max_abs_diff']:.2g}" if "check_max_abs_diff" in e else "not checked"
        out.print(f"{out_dir / e['file']}: {e['id']} ({e['bn_status']}), {human(e['madds'])} MAdds, "
                  f"BN folded {e['bn_folded']}, left {e['bn_left']}, {diff}", soft_wrap=True)

    requested = [s.id for s in subnets] + list(subnet_ids)
    manifest = export_onnx(run, out_dir, requested or None, overwrite=overwrite, on_subnet=None if as_json else line, device=device)
    if as_json:
        _emit_json(manifest)
        return
    q = manifest["quantization"]
    if q:
        out.print(f"quantized run: exported as a de-quantized float graph ({q['weight_quantized_layers']} layers with "
                  f"{'/'.join(map(str, q['weight_bits']))}-bit weights stored as float values; activations: {q['activations']})", soft_wrap=True)
        if q["left"]:
            out.print(f"activation quantizers kept as traced PyTorch code: {', '.join(q['left'])}")
    out.print(f"{out_dir / MANIFEST}: {manifest['task']}, opset {manifest['opset']}, checked on {manifest['check']['inputs']}", soft_wrap=True)


@cli.command(epilog=RUN_HELP, short_help="Deploy the best sub-network of RUN within a budget.")
@click.argument("args", nargs=-1, metavar="RUN [SIZE]...")
@checkpoint_option()
@budget_options(multiple=False)
@click.option("--calibrated", is_flag=True, help="Also consider the calibrated sub-networks stored in the run.")
@click.option("--res", multiple=True, help="Also consider these sizes, ranges or sub-network ids (BN interpolated between trained resolutions).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("deployed"), show_default=True, help="Directory for the chosen ONNX graph and its manifest.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for the latency measurement (default: every core).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier deployment in the output directory (otherwise refused).")
@click.option("--json", "as_json", is_flag=True)
@device_option
@plugin_option
def deploy(args, checkpoint, budget_madds, budget_ms, budget_alias, calibrated, res, out_dir, threads, overwrite, as_json, device, plugins) -> None:
    """Export the most accurate sub-network of RUN within a MAdds or latency budget.

    Candidates are scored on --device; latency is the exported graph's on the CPU (onnxruntime).
    """
    from rsvision.deploy.select import deploy
    from rsvision.registry import load_plugins
    from rsvision.subnet import parse_subnets

    load_plugins(plugins)
    device = _device(device)
    run, sizes = _run_and_sizes(args, checkpoint, "deploy")
    budgets = _budgets(budget_madds, budget_alias, budget_ms)
    if len(budgets) != 1:
        raise UserError("give exactly one of --budget-madds (e.g. 600M) or --budget-ms (e.g. 5)")
    budget = budgets[0][1]
    extra = parse_subnets(res + tuple(sizes))
    _check_writable(out_dir)
    report = deploy(run, budget, calibrated=calibrated, extra=extra, out_dir=out_dir, threads=threads, overwrite=overwrite, device=device)
    if as_json:
        _emit_json({k: v for k, v in report.items() if k != "manifest"})
        return
    out.print(_deploy_table(report, f"{run}: budget {budget.text()} (latency: {report['latency_backend']}, batch 1)"))
    metric, chosen, entry = report["metric"], report["chosen"], report["manifest"]["subnets"][0]
    out.print(f"deployed {chosen['subnet']} ({metric} {chosen[metric]:.2f}) to {Path(out_dir) / entry['file']}", soft_wrap=True)


def _deploy_table(report: dict, title: str) -> Table:
    from rsvision.report import human

    metric, chosen = report["metric"], report["chosen"]
    table = Table(title=title)
    for col in ("", "sub-network", "BN", metric, "MAdds", "latency (ms)", "within budget"):
        table.add_column(col, justify="right")
    for row in report["candidates"]:
        table.add_row("->" if row is chosen else "", row["subnet"], row["status"], f"{row[metric]:.2f}", human(row["madds"]),
                      f"{row['latency_ms']:.2f}", "yes" if row["within_budget"] else "no")
    return table


@cli.command(short_help="Query table of a width RUN, and the best row per budget.")
@click.argument("run", required=False, type=click.Path(path_type=Path))
@checkpoint_option()
@budget_options(multiple=True)
@click.option("--images", type=click.IntRange(1), default=None, help="Training images for recomputed BN statistics (default 2000).")
@click.option("--step", type=click.FloatRange(0.01, 1.0), default=0.05, show_default=True, help="Width step of the grid (range runs).")
@click.option("--refresh", is_flag=True, help="Rebuild the table even if the run folder holds one for these weights.")
@click.option("--data", "data_root", default=None, help="Data root, replacing the recipe's data.root.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@device_option
@plugin_option
def query(run, checkpoint, budget_madds, budget_ms, budget_alias, images, step, refresh, data_root, as_json, device, plugins) -> None:
    """Query table of a width RUN: every (width, resolution) with MAdds, latency on --device and accuracy, and the best per budget."""
    from rsvision.analysis.query import query_run
    from rsvision.registry import load_plugins
    from rsvision.report import print_query, training_progress

    load_plugins(plugins)
    device = _device(device)
    run = _agree(run, checkpoint, "query")
    if run is None:
        raise UserError("query: give the run folder (RUN or --checkpoint RUN)")
    budgets = _budgets(budget_madds, budget_alias, budget_ms)
    with training_progress(disable=as_json) as bar:
        report = query_run(run, images, step, data_root, refresh, progress=bar, device=device)
    picked = [{"budget": budget, "choice": _fitting(report, budget, option)} for option, budget in budgets]
    if as_json:
        _emit_json({**report, "best": [{"budget": c["budget"].limit, "kind": c["budget"].kind, "choice": c["choice"]} for c in picked]})
        return
    print_query(report, picked, out)


def _fitting(report: dict, budget, option: str) -> dict:
    """The best row of the query table within ``budget``; nothing fits: one line naming ``option``."""
    from rsvision.deploy.budget import require_within

    try:
        return require_within(report["rows"], budget, report["metric"])
    except UserError as exc:
        raise UserError(f"{option}: {exc}") from None


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
    cli.main(args=argv, prog_name="rsvision")


#: Click 8.2+ raises this for a group called without a command (8.1 prints the help itself).
_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _dispatch(run: Callable[[], object]) -> object:
    """Run the command; exceptions become one line and an exit status (module docstring)."""
    try:
        return run()
    except _NO_ARGS as exc:  # ``rsvision`` alone: the help, not an error line
        click.echo(exc.ctx.get_help(), err=True)
        sys.exit(exc.exit_code)
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


@cli.command(short_help="Drive the prediction server at URL with an open-loop load.")
@click.argument("url")
@click.option("--images", type=click.Path(path_type=Path), required=True, help="Image folder, FOLDER/<class>/<image>: the answers are scored against the class folders (sorted names = class indices).")
@click.option("--slo-ms", type=float, required=True, help="Latency objective: an answer later than this after its scheduled time is a miss.")
@click.option("--shape", type=click.Choice(["constant", "step", "spike", "trace"]), default="constant", show_default=True, help="Load shape (docs/serving.md).")
@click.option("--rates", default=None, metavar="R[,R...]", help="Requests per second: constant R; step R1,R2,...; spike BASE,PEAK.")
@click.option("--duration", type=float, default=None, help="Seconds of load (default: 30; a trace runs to its last arrival).")
@click.option("--trace", "trace_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="--shape trace: arrival times in seconds, one per line.")
@click.option("--spike-s", type=float, default=None, help="--shape spike: seconds of each spike (default: a tenth of the duration).")
@click.option("--spikes", type=click.IntRange(min=1), default=1, show_default=True, help="--shape spike: number of spikes, evenly spaced.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the arrival times and the image order.")
@click.option("--max-images", type=click.IntRange(min=1), default=2000, show_default=True, help="Images read from the folder (a seeded sample when there are more).")
@click.option("--max-requests", type=click.IntRange(min=1), default=100_000, show_default=True, help="Refuse a load that would send more.")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=256, show_default=True, help="Unanswered requests at most; more count as failed, not queued.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True, help="Each request's hard limit.")
@click.option("--window-s", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="Width of the time windows of the report and plot.")
@click.option("--no-deadline-header", is_flag=True, help="Do not send --slo-ms as the request's deadline (X-Deadline-Ms).")
@click.option("--allow-remote", is_flag=True, help="Allow a URL that is not this machine (loopback only by default).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the whole report here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Offered load, resolution and p99 against time (.png or .svg).")
def loadgen(url, images, slo_ms, shape, rates, duration, trace_file, spike_s, spikes, seed, max_images, max_requests, max_in_flight,
            timeout_s, window_s, no_deadline_header, allow_remote, json_path, plot_path) -> None:
    """Drive the prediction server at URL with an open-loop load; report SLO attainment, effective accuracy, latency and the sub-network mix."""
    from rsvision.analysis.plot import output_format
    from rsvision.io import atomic_write
    from rsvision.serve.loadgen import COLUMNS, draw, loadgen as run_loadgen, mix_lines, parse_rates, table_rows

    for path, option in ((json_path, "--json"), (plot_path, "--plot")):
        if path is not None:
            _check_writable(path, option)
    if plot_path is not None:
        output_format(plot_path)
    if duration is None and shape != "trace":
        duration = 30.0
    result = run_loadgen(url, images, slo_ms, shape, parse_rates(rates), duration, seed, trace_file, spike_s, spikes, max_images,
                         max_requests=max_requests, max_in_flight=max_in_flight, timeout_s=timeout_s,
                         deadline_header=not no_deadline_header, allow_remote=allow_remote, window_s=window_s)
    if json_path is not None:
        atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    if plot_path is not None:
        draw(result, plot_path)
    table = Table(title=f"{result['url']}: {shape} load, SLO {slo_ms:g} ms")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "phase" else "right", no_wrap=col == "phase")
    for row in table_rows(result):
        table.add_row(*row)
    out.print(table)
    out.print("sub-network mix (share of the answers):")
    for line in mix_lines(result):
        out.print(f"  {line}", soft_wrap=True)
    for error in result["errors"]:
        out.print(f"failed requests: {error}", soft_wrap=True)


@cli.command("serve", short_help="Serve RUN_OR_EXPORT over HTTP within a latency SLO.")
@click.argument("source", metavar="RUN_OR_EXPORT", type=click.Path(path_type=Path))
@click.option("--slo-ms", type=float, default=50.0, show_default=True,
              help="Latency objective: a request is due this long after it arrives (the X-Deadline-Ms header may ask for less).")
@click.option("--policy", default="adaptive", show_default=True, metavar="adaptive|fixed:ID",
              help="adaptive: per batch, the most accurate sub-network that keeps every deadline; fixed:ID: one sub-network (e.g. fixed:224).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port (printed).")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True, help="Requests waiting at most; more are answered 503.")
@click.option("--max-body-mb", type=float, default=20.0, show_default=True, help="Largest request body; larger ones are answered 413.")
@click.option("--max-megapixels", type=float, default=25.0, show_default=True, help="Largest image, checked before decoding; larger ones are answered 413.")
@click.option("--batch-sizes", default="1,2,4,8", show_default=True, help="Batch sizes the scheduler may run (the latency table's columns).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads of the worker (default: PyTorch's or onnxruntime's, every core).")
@click.option("--margin-ms", type=float, default=2.0, show_default=True, help="Time kept in hand after a batch, besides the observed time its answers take to leave.")
@click.option("--repeats", type=click.IntRange(min=1), default=20, show_default=True, help="Timed runs per cell of the latency table at start-up (their median, after 3 warm-up runs).")
@click.option("--name", default=None, help="Model name in the KServe v2 routes (default: the folder's name).")
@click.option("--worker", type=click.Choice(["process", "thread"]), default="process", show_default=True,
              help="Run the network in a process of its own (its time then does not depend on the HTTP traffic) or in a thread.")
@click.option("--engine", type=click.Choice(["http", "ray"]), default="http", show_default=True,
              help="http: one server process; ray: replicas of it on Ray Serve, their count set by the SLO signals (pip install \"rsvision[ray]\").")
@click.option("--min-replicas", type=click.IntRange(min=1), default=1, show_default=True, help="--engine ray: the fewest replicas.")
@click.option("--max-replicas", type=click.IntRange(min=1), default=1, show_default=True, help="--engine ray: the most replicas.")
@click.option("--address", default=None, help="--engine ray: join the Ray cluster there (auto: the one `ray start` runs here); default: a local Ray instance.")
@device_option
@plugin_option
def serve(source, slo_ms, policy, host, port, max_queue, max_body_mb, max_megapixels, batch_sizes, threads, margin_ms, repeats, name, worker,
          engine, min_replicas, max_replicas, address, device, plugins) -> None:
    """Serve RUN_OR_EXPORT over HTTP, choosing the sub-network per batch to meet --slo-ms (docs/serving.md).

    POST an image to /predict (curl --data-binary @img.png http://127.0.0.1:8000/predict);
    SIGTERM or Ctrl-C stops accepting, answers what is in flight and exits 0.
    """
    from rsvision.registry import load_plugins

    _device(device)  # a bad --device is one line before any work
    load_plugins(plugins)
    try:
        from rsvision.serve.app import ServeConfig, serve as serve_http
    except ModuleNotFoundError as exc:
        raise UserError(f"serve needs the {exc.name} package: pip install \"rsvision[serve]\"") from None
    from rsvision.serve.scheduler import parse_batch_sizes

    def ready(info: dict) -> None:
        click.echo(f"serving {info['url']} ({info['name']}, policy {info['policy']}, SLO {info['slo_ms']:g} ms); stop with Ctrl-C or SIGTERM")
        sizes = info["batch_sizes"]
        table = Table(title="latency table: ms per batch, measured here")
        for column in ["sub-network", "accuracy", *[f"batch {b}" for b in sizes]]:
            table.add_column(column, justify="right")
        accuracy = {row["id"]: row["accuracy"] for row in info["subnets"]}
        for subnet in info["order"]:  # the policy's sub-networks, most accurate first
            shown = "-" if accuracy[subnet] is None else f"{accuracy[subnet]:.2f}"
            table.add_row(subnet, shown, *[f"{info['latency_ms'][subnet][str(b)]:.2f}" for b in sizes])
        out.print(table)
        sys.stdout.flush()

    config = ServeConfig(slo_ms=slo_ms, policy=policy, max_queue=max_queue, max_body_mb=max_body_mb, max_megapixels=max_megapixels,
                         batch_sizes=tuple(parse_batch_sizes(batch_sizes)), threads=threads, margin_ms=margin_ms, repeats=repeats, worker=worker,
                         on_ready=ready)
    if engine == "ray":
        from rsvision.serve.ray_engine import serve_ray

        serve_ray(source, config, host=host, port=port, device=device, name=name, plugins=plugins,
                  min_replicas=min_replicas, max_replicas=max_replicas, address=address)
        return
    serve_http(source, config, host=host, port=port, device=device, name=name, plugins=plugins)


if __name__ == "__main__":
    main()
