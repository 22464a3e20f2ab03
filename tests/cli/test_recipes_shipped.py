"""Recipes shipped with the package: ``rsvision recipes`` lists them, ``recipes copy`` writes one
out, ``rsvision train NAME`` finds one from any folder; the NYUDv2 recipe checks its data
before it downloads its pretrained weights."""

import json
from importlib.resources import files
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rsvision.cli import cli

CHECKOUT = Path(__file__).resolve().parents[2] / "recipes"


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_the_package_holds_the_checkouts_recipes():
    shipped = Path(str(files("rsvision") / "recipes"))
    assert sorted(p.name for p in shipped.glob("*.yaml")) == sorted(p.name for p in CHECKOUT.glob("*.yaml"))


def test_recipes_lists_every_shipped_recipe_with_what_it_trains():
    code, out, err = _invoke("recipes", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert set(listed) == {p.stem for p in CHECKOUT.glob("*.yaml")}
    assert listed["quickstart"] == "Quickstart: a small RS-Net on built-in synthetic data, a few minutes on 2 CPU cores."


def test_recipes_copy_writes_one_out_and_keeps_an_existing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _invoke("recipes", "copy", "quickstart")
    assert code == 0, err
    assert out.strip() == "quickstart.yaml" and (tmp_path / "quickstart.yaml").read_text() == (CHECKOUT / "quickstart.yaml").read_text()
    code, _, err = _invoke("recipes", "copy", "quickstart", ".")
    assert code == 2 and err.strip() == "error: quickstart.yaml: exists; pass --overwrite to replace it"
    code, _, err = _invoke("recipes", "copy", "nope")
    assert code == 2 and err.startswith("error: recipes copy: no shipped recipe 'nope' (shipped: ")


@pytest.mark.parametrize("name", ["quickstart", "quickstart.yaml", "recipes/quickstart.yaml"])
def test_train_finds_a_shipped_recipe_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _invoke("train", name, "--set", "train.lr=abc")  # found and read: the override is what fails
    assert code == 2
    assert err.strip() == f"error: {files('rsvision') / 'recipes' / 'quickstart.yaml'}: train.lr: expected a number, got 'abc'"


def test_an_unknown_recipe_points_to_the_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _invoke("train", "nope")
    assert code == 2 and err.strip() == "error: nope: recipe file not found, nor a shipped recipe (`rsvision recipes` lists them)"


def test_the_nyudv2_recipe_checks_its_data_before_any_download(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.chdir(tmp_path)
    code, _, err = _invoke("train", "refinenet_nyud", "--set", f"data.root={tmp_path / 'nyudv2'}")
    assert code == 2
    assert err.strip().startswith(f"error: data.root: {tmp_path / 'nyudv2'} is not a folder (nyudv2 expects")
