"""Choosing a sub-network by budget: parsing, the arg-max rule, the exported choice, errors."""

from __future__ import annotations

import json

import pytest
from deploy_fixtures import cls_run

from rsvision.cli import main
from rsvision.deploy.budget import Budget, best_within, parse_madds, parse_ms
from rsvision.errors import UserError

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("text, value", [("600M", 600_000_000), ("1.2G", 1_200_000_000), ("150000000", 150_000_000), ("54.5k", 54_500), (" 2 g ", 2 * 10**9)])
def test_parse_madds(text, value):
    assert parse_madds(text) == value


@pytest.mark.parametrize("text", ["", "abc", "600X", "-5M", "0", "1.2.3G"])
def test_parse_madds_refuses(text):
    with pytest.raises(UserError, match="--budget-madds"):
        parse_madds(text)


def test_parse_ms():
    assert parse_ms("5") == 5.0 and parse_ms("2.5ms") == 2.5
    for bad in ("", "fast", "0", "-1", "inf"):
        with pytest.raises(UserError, match="--budget-ms"):
            parse_ms(bad)


def test_choose_is_the_arg_max_within_the_budget_with_ties_to_the_cheaper():
    rows = [
        {"subnet": "224", "resolution": 224, "top1": 70.0, "madds": 1800, "latency_ms": 9.0},
        {"subnet": "160", "resolution": 160, "top1": 68.0, "madds": 900, "latency_ms": 5.0},
        {"subnet": "128", "resolution": 128, "top1": 68.0, "madds": 600, "latency_ms": 4.0},
        {"subnet": "96", "resolution": 96, "top1": 60.0, "madds": 330, "latency_ms": 2.0},
    ]
    assert best_within(rows, Budget("madds", 1000), "top1")["subnet"] == "128"
    assert best_within(rows, Budget("ms", 2.5), "top1")["subnet"] == "96"
    assert best_within(rows, Budget("ms", 100), "top1")["subnet"] == "224"
    assert best_within(rows, Budget("madds", 100), "top1") is None


def test_deploy_exports_the_best_sub_network_within_the_budget(tmp_path_factory, tmp_path, capsys):
    from rsvision.run.folder import read_meta

    run = cls_run(tmp_path_factory)
    madds = read_meta(run)["madds"]
    budget = madds["16"] - 1  # 16 px is over the budget; 8 and the interpolated 12 are within
    out = tmp_path / "deployed"
    main(["deploy", str(run), "--budget-madds", str(budget), "--res", "12", "-o", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    rows = {r["subnet"]: r for r in report["candidates"]}
    assert set(rows) == {"16", "12", "8"} and rows["12"]["status"] == "interpolated"
    assert report["latency_backend"] == "onnxruntime" and all(r["latency_ms"] > 0 for r in rows.values())
    assert [r["within_budget"] for r in (rows["16"], rows["12"], rows["8"])] == [False, True, True]
    within = [r for r in report["candidates"] if r["madds"] <= budget]
    best = max(r["top1"] for r in within)
    expected = min((r for r in within if r["top1"] == best), key=lambda r: r["madds"])
    assert report["chosen"]["subnet"] == expected["subnet"]
    tops = [r["top1"] for r in report["candidates"]]
    assert tops == sorted(tops, reverse=True)  # ranked by score
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["id"] for e in manifest["subnets"]] == [expected["subnet"]]
    assert (out / manifest["subnets"][0]["file"]).is_file()
    assert manifest["deploy"]["metric"] == "top1" and manifest["deploy"]["budget"] == {"kind": "madds", "limit": budget}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget-madds", "1K"], "no sub-network within 1.00K MAdds; the cheapest, 8, needs"),
        (["--budget-madds", "1G", "--budget-ms", "5"], "give exactly one of --budget-madds"),
        ([], "give exactly one of --budget-madds"),
        (["--budget-madds", ""], "--budget-madds '': expected a number"),
        (["--budget-ms", "soon"], "--budget-ms soon: expected a positive number of milliseconds"),
        (["--budget-madds", "1G", "--calibrated"], "stores no calibrated sub-networks"),
        (["--budget-madds", "1G", "--res", "99"], "outside the trained range 8..16"),
    ],
)
def test_deploy_errors_are_one_line_exit_2(tmp_path_factory, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["deploy", str(cls_run(tmp_path_factory)), *args, "-o", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_deploy_refuses_what_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["deploy", str(tmp_path), "--budget-ms", "5"])
    assert exit_info.value.code == 2 and "not an rsvision run folder" in capsys.readouterr().err


def test_candidates_include_calibrated_sub_networks(tmp_path_factory):
    from rsvision.deploy.select import candidates
    from rsvision.nn.bn_stats import calibrate
    from rsvision.nn.switchable import subnet_status
    from rsvision.run.folder import load_artifact

    artifact = load_artifact(cls_run(tmp_path_factory))
    assert [s.id for s in candidates(artifact.model, "run", False, [])] == ["16", "8"]
    calibrate(artifact.model, artifact.task, [12], images=8)
    found = candidates(artifact.model, "run", True, [])
    assert [s.id for s in found] == ["16", "12", "8"] and subnet_status(artifact.model, "12") == "calibrated"
