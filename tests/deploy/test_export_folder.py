"""The output folder rule of ``export --format onnx`` and ``deploy``: a new or empty folder, or
an earlier export replaced whole with ``--overwrite``; written atomically; nothing else touched."""

import json
from pathlib import Path

import pytest
from calib_fixtures import run_cli
from deploy_fixtures import cls_run

from rsvision.deploy.export import export_onnx
from rsvision.deploy.manifest import MANIFEST, read_manifest

pytest.importorskip("onnxruntime")


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _leftovers(folder: Path) -> list[str]:
    """Entries beside ``folder`` that belong to it (temporary or displaced folders)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name and folder.name in p.name)


def _export(run, out, *args, capsys):
    return run_cli(["export", str(run), "--format", "onnx", *args, "-o", str(out)], capsys)


def _one_line(code, err, message):
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_an_earlier_export_is_kept_unless_overwrite_replaces_it_whole(tmp_path_factory, tmp_path, capsys):
    run = cls_run(tmp_path_factory)
    out = tmp_path / "onnx"
    out.mkdir()  # an empty folder is a new one
    code, _, err = _export(run, out, "--res", "16", "12", capsys=capsys)
    assert code == 0, err
    earlier = _contents(out)
    assert sorted(earlier) == [MANIFEST, "model_12.onnx", "model_16.onnx"]

    code, _, err = _export(run, out, "--res", "8", capsys=capsys)
    _one_line(code, err, f"{out}: holds an earlier export (16, 12); pass --overwrite to replace it")
    assert _contents(out) == earlier

    code, _, err = _export(run, out, "--res", "8", "--overwrite", capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "model_8.onnx"]  # no orphaned graphs
    assert [e["id"] for e in read_manifest(out)["subnets"]] == ["8"]
    assert _leftovers(out) == []


def test_a_folder_of_other_files_is_never_written(tmp_path_factory, tmp_path, capsys):
    run = cls_run(tmp_path_factory)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        code, _, err = _export(run, out, "--res", "8", *extra, capsys=capsys)
        _one_line(code, err, f"{out}: not empty and not an rsvision export")
    assert _contents(out) == {"notes.txt": b"keep me"} and _leftovers(out) == []


def test_an_export_that_fails_half_way_leaves_nothing(tmp_path_factory, tmp_path, monkeypatch):
    import rsvision.deploy.export as onnx_export

    run = cls_run(tmp_path_factory)
    real, calls = onnx_export.export_network, []

    def second_fails(network, example, path, opset=onnx_export.OPSET):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        real(network, example, path, opset)

    monkeypatch.setattr(onnx_export, "export_network", second_fails)
    out = tmp_path / "onnx"
    with pytest.raises(RuntimeError, match="disk full"):
        export_onnx(run, out, [16, 8])
    assert len(calls) == 2 and not out.exists() and _leftovers(out) == []


def test_deploy_refuses_an_earlier_deployment_before_any_work(tmp_path_factory, tmp_path, capsys, monkeypatch):
    import rsvision.run.folder

    run = cls_run(tmp_path_factory)
    out = tmp_path / "deployed"
    code, _, err = run_cli(["deploy", str(run), "--budget-madds", "1G", "-o", str(out)], capsys)
    assert code == 0, err
    earlier = _contents(out)
    chosen = json.loads(earlier[MANIFEST])["subnets"][0]["id"]

    with monkeypatch.context() as m:
        m.setattr(rsvision.run.folder, "load_artifact", lambda *a, **k: pytest.fail("deploy loaded the run before checking -o"))
        code, _, err = run_cli(["deploy", str(run), "--budget-madds", "1G", "-o", str(out)], capsys)
    _one_line(code, err, f"{out}: holds an earlier export ({chosen}); pass --overwrite to replace it")
    assert _contents(out) == earlier

    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(["deploy", str(run), "--budget-madds", "1G", "--overwrite", "-o", str(out)], capsys)
    _one_line(code, err, f"{out}: holds an earlier export and other files (notes.txt)")
    (out / "notes.txt").unlink()

    code, _, err = run_cli(["deploy", str(run), "--budget-madds", "1G", "--overwrite", "-o", str(out)], capsys)
    assert code == 0, err
    manifest = read_manifest(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, manifest["subnets"][0]["file"]])
    assert _leftovers(out) == []
