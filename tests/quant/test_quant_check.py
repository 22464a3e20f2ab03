"""Checking a quantized export: level flips at near ties are told apart from a wrong graph, on 300 images."""

from __future__ import annotations

import copy

import pytest
import torch
from test_quant_export import _trained_model

from rsvision.deploy.network import plain_subnet
from rsvision.quant.dequantize import (
    TIE_MARGIN,
    NearestLevel,
    compare_quantized,
    near_ties,
)

TOLERANCE = 1e-4  # the ONNX export's: 1e-4 x max(1, |output|)


@pytest.fixture(scope="module")
def folded():
    network = plain_subnet(_trained_model(), 24).network
    x = torch.rand(300, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    return network, x


def _within(result) -> bool:
    return result["max_abs_diff"] <= TOLERANCE * max(1.0, result["max_abs_output"])


@torch.no_grad()
def test_rounding_that_differs_at_near_ties_passes_and_a_wrong_graph_fails(folded):
    network, x = folded
    assert any(isinstance(m, NearestLevel) for m in network.modules())  # the folded graph keeps its quantizers
    ties = near_ties(network, x)
    assert 0 < int(ties.sum()) < 150
    other = copy.deepcopy(network)  # another runtime: inputs within half the margin above a threshold round down
    for m in other.modules():
        if isinstance(m, NearestLevel):
            m.thresholds += TIE_MARGIN / 2 * max(1.0, float(m.levels.abs().max()))
    reference, flipped = network(x), other(x)
    per_image = (flipped - reference).abs().amax(1)
    assert (per_image > TOLERANCE * max(1.0, float(reference.abs().max()))).any()  # an all-image check fails
    assert not (per_image[~ties] > 0).any()
    result = compare_quantized(network, other, x)
    assert _within(result) and result["compared"] + result["near_ties"] == 300 and result["compared"] >= 150
    wrong = copy.deepcopy(network)
    next(p for p in wrong.parameters() if p.dim() == 4).mul_(1.01)
    assert not _within(compare_quantized(network, wrong, x))


def test_onnxruntime_runs_the_export_as_pytorch_on_300_images(folded, tmp_path):
    pytest.importorskip("onnxruntime")
    from rsvision.deploy.onnx import export_network, run_session, session

    network, x = folded
    export_network(network, x[:2], tmp_path / "q.onnx", 18)
    sess = session(tmp_path / "q.onnx")
    result = compare_quantized(network, lambda z: run_session(sess, z), x)
    assert _within(result) and result["compared"] >= 150, result
