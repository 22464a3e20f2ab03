"""Import hygiene: every module imports on its own, imports point only back along the flow,
and no import cycle exists.

The modules are those of the packages ``pyproject.toml`` installs (``rsvision.tasks`` lives
in ``tasks/``), found through the import system. The static checks read every import a
module can run, inside functions too (only ``if TYPE_CHECKING:`` blocks are skipped): a
deferred import still ties the two modules together.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _installed_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["packages"]


def _modules() -> dict[str, Path]:
    """Every module of the installed packages → its source file."""
    modules = {}
    for package in _installed_packages():
        spec = importlib.util.find_spec(package)
        modules[package] = Path(spec.origin)
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            if not info.ispkg:
                modules[f"{package}.{info.name}"] = Path(info.module_finder.path) / f"{info.name}.py"
    return dict(sorted(modules.items()))


def test_every_subpackage_is_installed():
    packages = _installed_packages()
    for package in packages:
        spec = importlib.util.find_spec(package)
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            assert not info.ispkg or f"{package}.{info.name}" in packages, f"{package}.{info.name} is not in pyproject.toml's packages"


_IMPORT_EACH = """
import importlib, json, sys, traceback
import torch  # once: what every module shares, and the slow part

failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "rsvision" or m.startswith("rsvision.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc().strip().splitlines()[-1]
print(json.dumps(failures))
"""


def test_every_module_imports_on_its_own():
    names = list(_modules())
    result = subprocess.run([sys.executable, "-c", _IMPORT_EACH, json.dumps(names)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{name}: {error}" for name, error in failures.items())


#: The stages of the flow, in order (docs/architecture.md). A module may import from its own
#: stage and the stages before it; ``rsvision`` itself (the public facade) is outside the order.
STAGES = [
    "rsvision.errors",
    "rsvision.constants",
    "rsvision.subnet",
    "rsvision.registry",
    "rsvision.recipe",
    "rsvision.io",
    "rsvision.report",
    "rsvision.nn",
    "rsvision.quant",
    "rsvision.data",
    "rsvision.models",
    "rsvision.tasks",
    "rsvision.training",
    "rsvision.run",
    "rsvision.engine",
    "rsvision.analysis",
    "rsvision.deploy",
    "rsvision.serve",
    "rsvision.interop",
    "rsvision.cli",
]


def _stage(module: str) -> int | None:
    """The index in :data:`STAGES` of the stage ``module`` belongs to (None: the facade)."""
    return next((i for i, s in enumerate(STAGES) if module == s or module.startswith(s + ".")), None)


def _backward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a → b`` for every import of a later stage by an earlier one."""
    out = []
    for module, imported in sorted(graph.items()):
        own = _stage(module)
        for target in sorted(imported):
            stage = _stage(target)
            if own is not None and stage is not None and stage > own:
                out.append(f"{module} → {target} ({STAGES[own]} imports the later {STAGES[stage]})")
    return out


def _module_level_imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Absolute names ``module`` imports anywhere but under ``if TYPE_CHECKING:`` (``from a
    import b`` gives ``a`` and ``a.b``), inside functions and classes too."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.With, ast.For, ast.While)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against the importing package
                    package = module if is_package else module.rpartition(".")[0]
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and not _is_type_checking(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` → ``a``, ``a.b``, ``a.b.c``: importing a module first imports its packages."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (anywhere in the module).

    Importing ``a.b`` also runs the package ``a``, except where ``a`` is a package of the
    importing module itself: that one is already being imported.
    """
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        own = set(_ancestors(module))
        imported = _module_level_imports(ast.parse(path.read_text()), module, path.name == "__init__.py")
        graph[module] = {a for name in imported for a in _ancestors(name) if a in modules and a not in own}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_imports_point_back_along_the_flow():
    assert all(_stage(m) is not None for m in _modules() if m != "rsvision"), [m for m in _modules() if m != "rsvision" and _stage(m) is None]
    backward = _backward_imports(_import_graph())
    assert not backward, "imports against the flow:\n" + "\n".join(backward)


def test_the_stage_check_sees_a_backward_import():
    graph = _import_graph()
    graph["rsvision.nn.switchable"] = graph["rsvision.nn.switchable"] | {"rsvision.deploy.export"}
    assert _backward_imports(graph) == ["rsvision.nn.switchable → rsvision.deploy.export (rsvision.nn imports the later rsvision.deploy)"]
    tree = ast.parse("def f():\n    from rsvision.deploy import export\n")
    assert "rsvision.deploy.export" in _module_level_imports(tree, "rsvision.nn.switchable", is_package=False)


def test_the_package_has_no_import_cycle():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_cycle_finder_sees_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("from . import x\nfrom ..y import z\nif TYPE_CHECKING:\n    import hidden\ndef f():\n    import lazy\n")
    assert _module_level_imports(tree, "p.q.m", is_package=False) == {"p.q", "p.q.x", "p.y", "p.y.z", "lazy"}


def _loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))


def test_a_plugin_import_loads_no_torch():
    loaded = _loaded_after("from rsvision import register_backbone, UserError")
    assert "torch" not in loaded
    assert "rsvision.training" not in loaded


def test_the_tasks_leave_optional_libraries_to_first_use():
    loaded = _loaded_after("import rsvision.tasks, rsvision.training")
    assert {"rsvision.tasks.classification", "rsvision.tasks.segmentation"} <= loaded
    assert not {"torchmetrics", "albumentations", "scipy", "matplotlib"} & loaded


def test_lazy_public_names_resolve():
    import rsvision

    for name in rsvision.__all__:
        assert getattr(rsvision, name) is not None, name
