"""The Grafana dashboard in docs/grafana: every query names metrics (and grouping labels) that a
running server really exports, read from the /metrics of a test server on loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import rsvision  # noqa: E402
from deploy_fixtures import cls_run  # noqa: E402
from rsvision.serve.runner import Runner  # noqa: E402
from test_server import _array, _encoded, running  # noqa: E402

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "rsvision-serving.json"
#: Sample suffixes per metric type in the text exposition format.
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
#: Labels Prometheus adds at scrape time, and a histogram's bucket edge.
ADDED = {"instance", "job", "le"}


def exported(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """From an exposition: ``{sample name: metric family}`` (every family, with or without
    samples yet) and ``{sample name: label names seen}``."""
    names, labels = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            if family.endswith("_created"):  # the creation time prometheus_client adds to counters and histograms
                continue
            family = family.removesuffix("_total") if kind == "counter" else family  # prometheus_client names a counter's TYPE line by its sample
            for suffix in SUFFIXES[kind]:
                names[family + suffix] = family
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels.setdefault(name.split()[0], set()).update(re.findall(r'(\w+)="', rest.split("}")[0]) if rest else [])
    return names, labels


def queries(dashboard: dict) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_queries_name_exported_metrics(tmp_path_factory):
    dashboard = json.loads(DASHBOARD.read_text())
    png = _encoded(Image.fromarray(_array()))
    with running(Runner(rsvision.load(cls_run(tmp_path_factory))), policy="adaptive") as client:
        # One answer, one 400 and one drop: every labelled family has a sample to read its labels from.
        assert client.post("/predict", content=png, headers={"content-type": "image/png"}).status_code == 200
        assert client.post("/predict", content=b"no image", headers={"content-type": "image/png"}).status_code == 400
        assert client.post("/predict", content=png, headers={"content-type": "image/png", "X-Deadline-Ms": "0.001"}).status_code == 503
        names, labels = exported(client.get("/metrics").text)
    assert all(panel["targets"] for panel in dashboard["panels"]), "a panel without a query"
    used = set()
    for expr in queries(dashboard):
        metrics = set(re.findall(r"\brsvision_\w+", expr))
        assert metrics or expr.startswith("vector("), f"no rsvision metric in {expr!r}"
        unknown = metrics - set(names)
        assert not unknown, f"{expr!r} names {sorted(unknown)}, which the server does not export"
        used |= {names[m] for m in metrics}
        grouped = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
        known = set().union(*(labels.get(m, set()) for m in metrics)) | ADDED
        assert grouped <= known, f"{expr!r} groups by {sorted(grouped - known)}, labels the metrics do not carry"
    # Every family the server exports is on the dashboard.
    assert set(names.values()) <= used, f"not on the dashboard: {sorted(set(names.values()) - used)}"
    # The template variables the queries use are defined.
    defined = {v["name"] for v in dashboard["templating"]["list"]} | {"__rate_interval"}
    for expr in queries(dashboard):
        assert set(re.findall(r"\$(\w+)", expr)) <= defined, expr


def test_exported_parses_an_exposition():
    text = """# HELP a_total x
# TYPE a_total counter
a_total{subnet="16"} 3.0
# TYPE h histogram
h_bucket{le="0.05"} 1.0
h_count 1.0
# TYPE g gauge
"""
    names, labels = exported(text)
    assert names == {"a_total": "a", "h_bucket": "h", "h_sum": "h", "h_count": "h", "g": "g"}
    assert labels == {"a_total": {"subnet"}, "h_bucket": {"le"}, "h_count": set()}
