"""LQ-Nets quantizers: levels, initial bases, QEM, straight-through gradients, checkpoints."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from rsvision.quant import (
    LQActQuantizer,
    LQWeightQuantizer,
    QuantConv2d,
    QuantLinear,
    quantize_model,
    update_quantizers,
)
from rsvision.models.factory import create_model
from rsvision.quant.lq import _LQActivationQuantizer, code_table


def test_code_tables():
    assert code_table(2, signed=True).tolist() == [[-1, -1], [1, -1], [-1, 1], [1, 1]]
    assert code_table(2, signed=False).tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]


def test_weight_init_basis_and_levels_by_hand():
    # 3x3 conv with 8 outputs: n = 72, sqrt(2/n) = 1/6, so v = 0.6745/6 * (1/2, 1).
    q = LQWeightQuantizer(2, out_channels=8, fan_out=72)
    assert torch.allclose(q.basis[:, 0], torch.tensor([0.6745 / 12, 0.6745 / 6]))
    levels = q.levels()[0].sort().values
    assert torch.allclose(levels, torch.tensor([-0.168625, -0.0562083, 0.0562083, 0.168625]), atol=1e-6)


def test_weights_go_to_nearest_level_ties_down():
    q = LQWeightQuantizer(2, out_channels=1, fan_out=72).eval()
    w = torch.tensor([[0.0, 0.1, 0.12, -0.2, 0.05]])  # thresholds -0.1124, 0, 0.1124
    out = q(w)
    assert torch.allclose(out, torch.tensor([[-0.0562083, 0.0562083, 0.168625, -0.168625, 0.0562083]]), atol=1e-6)


def test_activation_init_basis_by_hand():
    q = LQActQuantizer(2)
    assert torch.allclose(q.basis, torch.tensor([0.6745 * 2 / 3, 0.6745 * 4 / 3]))
    assert torch.allclose(q.levels(), torch.tensor([0.0, 0.449667, 0.899333, 1.349]), atol=1e-5)


def test_weight_qem_step_by_hand():
    # 1 bit, w = [1, -3], v = 0.5: codes (+1, -1), v* = (4 + 1e-4 * 0.5) / (2 + 1e-4) = 2.0000;
    # moving average 0.9 * 0.5 + 0.1 * 2.0 = 0.65.
    q = LQWeightQuantizer(1, out_channels=1, fan_out=1).train()
    q.basis.fill_(0.5)
    out = q(torch.tensor([[1.0, -3.0]]))
    assert out.tolist() == [[0.5, -0.5]]  # the output uses the basis before the update
    assert q.basis.item() == pytest.approx(0.9 * 0.5 + 0.1 * (4 + 0.5e-4) / (2 + 1e-4), abs=1e-7)


def test_activation_qem_step_by_hand():
    # 1 bit, levels {0, 1}: x = [0, 1, 3] -> codes (0, 1, 1), v* = (1 + 3) / 2 = 2, v = 0.9 + 0.2.
    q = LQActQuantizer(1).train()
    q.basis.fill_(1.0)
    assert q(torch.tensor([0.0, 1.0, 3.0])).tolist() == [0.0, 1.0, 1.0]
    assert q.basis.item() == pytest.approx(1.1)


def test_activation_qem_keeps_basis_when_singular():
    q = LQActQuantizer(2).train()
    before = q.basis.clone()
    q(torch.zeros(10))  # every value on level 0: BᵀB = 0
    assert torch.equal(q.basis, before)


def test_at_most_2_pow_k_values_per_output_channel():
    torch.manual_seed(0)
    for bits in (1, 2, 3):
        conv = quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 3), nn.Linear(6, 2)), bits)[1]
        assert isinstance(conv, QuantConv2d)
        w = conv.quantized_weight()
        for c in range(w.shape[0]):
            assert len(w[c].unique()) <= 2**bits


def test_qem_reduces_quantization_error_of_gaussian_weights():
    torch.manual_seed(0)
    w = torch.randn(16, 64, 3, 3) * (2 / (9 * 16)) ** 0.5
    q = LQWeightQuantizer(2, 16, 9 * 16).train()
    errors = [((q(w) - w) ** 2).mean().item() for _ in range(40)]
    assert errors[10] < errors[0] and errors[-1] < errors[10]
    assert errors[-1] < 0.85 * errors[0]
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:]))


def test_weight_gradient_is_straight_through():
    torch.manual_seed(0)
    w = torch.randn(3, 5, requires_grad=True)
    c = torch.randn(3, 5)
    (LQWeightQuantizer(2, 3, 3)(w) * c).sum().backward()
    assert torch.equal(w.grad, c)


def test_activation_gradient_is_zero_above_top_level():
    q = LQActQuantizer(2).eval()  # top level 1.349
    x = torch.tensor([-0.5, 0.2, 1.0, 1.349, 1.4, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_qem_only_in_training_mode():
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)), 2, 2, example_input=torch.zeros(1, 3, 12, 12))
    bases = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("basis")}
    model.eval()(torch.randn(2, 3, 12, 12))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in bases.items())
    model.train()(torch.randn(2, 3, 12, 12))
    assert all(not torch.equal(model.state_dict()[k], v) for k, v in bases.items())


def test_first_and_last_layers_stay_float_by_default():
    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 5))

    model = quantize_model(net(), 2, 2, example_input=torch.zeros(1, 3, 12, 12))
    assert [type(m).__name__ for m in model] == ["Conv2d", "ReLU", "QuantConv2d", "ReLU", "Flatten", "Linear"]
    assert isinstance(model[2].input_quantizer, LQActQuantizer)
    model = quantize_model(net(), 2, 2, quantize_first=True, quantize_last=True, example_input=torch.zeros(1, 3, 12, 12))
    assert isinstance(model[0], QuantConv2d) and isinstance(model[0].input_quantizer, nn.Identity)  # never the image
    assert isinstance(model[5], QuantLinear) and isinstance(model[5].input_quantizer, LQActQuantizer)


def test_bases_round_trip_through_state_dict():
    torch.manual_seed(0)

    def net():
        return quantize_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)), 2, 2, example_input=torch.zeros(1, 3, 10, 10))

    model = net().train()
    for _ in range(3):
        model(torch.rand(2, 3, 10, 10))
    state = model.state_dict()
    assert {"2.weight_quantizer.basis", "2.input_quantizer.basis"} <= set(state) and "4.weight" in state
    assert not any(k.endswith(".codes") for k in state)
    fresh = net()
    fresh.load_state_dict(state)
    assert torch.equal(fresh[2].weight_quantizer.basis, model[2].weight_quantizer.basis)
    x = torch.rand(2, 3, 10, 10)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def _ddp_worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    q = LQActQuantizer(2).train()
    torch.manual_seed(rank)
    q(torch.rand(1000) * (1 + 2 * rank))  # a different batch on each process
    results[rank] = q.basis.clone()
    dist.destroy_process_group()


def test_activation_bases_stay_identical_across_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(port, results), nprocs=2)
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], LQActQuantizer(2).basis)


def test_levels_stay_float32_under_autocast():
    q, a = LQWeightQuantizer(2, 4, 72), LQActQuantizer(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert q.levels().dtype == a.levels().dtype == torch.float32
        assert torch.equal(q.levels(), LQWeightQuantizer(2, 4, 72).levels())


@pytest.mark.parametrize("dtype, n", [(torch.bfloat16, 257), (torch.float16, 70_000)])
def test_activation_qem_sums_in_float64_under_autocast(dtype, n):
    # 1 bit, levels {0, 1.5}: n values of 1.0 all take code 1, so v* = n / n = 1 and the basis
    # moves to 0.9 * 1.5 + 0.1 * 1 = 1.45. Summed in the input's precision, 257 ones make 256
    # in bf16 (v* = 256 / 257) and 70,000 overflow fp16 (inf: the update was skipped).
    q = LQActQuantizer(1).train()
    q.basis.fill_(1.5)
    with torch.autocast("cpu", dtype=dtype):
        assert q(torch.ones(n, dtype=dtype)).unique().tolist() == [1.5]
    assert q.basis.item() == pytest.approx(1.45, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_activation_basis_fitted_under_autocast_equals_the_float32_fit(dtype):
    """2M ReLU outputs in half precision: the basis fitted under autocast is the one fitted
    to the same values in float32 (the statistics do not depend on the input's precision)."""
    torch.manual_seed(0)
    x = (2 * torch.randn(2_000_000)).relu().to(dtype)
    half, full = LQActQuantizer(2).train(), LQActQuantizer(2).train()
    with torch.autocast("cpu", dtype=dtype):
        half(x)
    full(x.float())
    assert not torch.equal(full.basis, LQActQuantizer(2).basis)
    torch.testing.assert_close(half.basis, full.basis, rtol=1e-6, atol=0)


# --- statistics applied once per forward, without host synchronisation ---------------------


class _HostSyncs(TorchDispatchMode):
    """Counts the device-to-host reads (``.item()``, ``bool()``, ``float()`` of a tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_lq_training_forward_makes_no_host_sync(device):
    # The w2a2 pre-activation ResNet of Table 3 at two resolutions: 6 activation quantizers,
    # each updated twice (once per resolution) with no read of a device value; in bf16 autocast.
    torch.manual_seed(0)
    quant = {"method": "lq", "weight_bits": 2, "act_bits": 2}
    model = create_model(backbone="preact_resnet8", num_classes=4, resolutions=[16, 12], quant=quant).to(device).train()
    acts = [m for m in model.modules() if isinstance(m, _LQActivationQuantizer)]
    before = [q.basis.clone() for q in acts]
    images = [torch.rand(2, 3, 16, 16, device=device), torch.rand(2, 3, 12, 12, device=device)]
    with _HostSyncs() as syncs, torch.autocast(device, dtype=torch.bfloat16):
        model(images)
    assert syncs.count == 0
    assert len(acts) == 6 and all(q.pending is None and not torch.equal(q.basis, b) for q, b in zip(acts, before))


class _Reused(nn.Module):
    """A conv applied twice in one forward, so its activation quantizer is called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        return self.head(F.relu(self.conv(F.relu(self.conv(x)))))


def test_updates_at_the_end_of_the_forward_equal_updates_in_each_call():
    torch.manual_seed(0)
    deferred = quantize_model(_Reused(), 2, 2, example_input=torch.zeros(1, 3, 8, 8)).train()
    in_call = copy.deepcopy(deferred)
    for m in in_call.modules():
        if isinstance(m, _LQActivationQuantizer):
            m.deferred = False
    for _ in range(3):
        x = 8 * torch.rand(2, 3, 8, 8)
        assert torch.equal(deferred(x), in_call(x))
    bases = {k: v for k, v in deferred.state_dict().items() if k.endswith("basis")}
    assert len(bases) == 2 and all(torch.equal(v, in_call.state_dict()[k]) for k, v in bases.items())
    assert not torch.equal(bases["conv.input_quantizer.basis"], LQActQuantizer(2).basis)


def test_update_quantizers_applies_what_a_call_left():
    q = LQActQuantizer(1).train()
    q.deferred = True
    q.basis.fill_(1.0)
    q(torch.tensor([0.0, 1.0, 3.0]))  # v* = (1 + 3) / 2 = 2, applied later
    assert q.basis.item() == 1.0 and q.pending is not None
    update_quantizers(nn.Sequential(q))
    assert q.basis.item() == pytest.approx(1.1) and q.pending is None


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    return quantize_model(net, 2, 2, example_input=torch.zeros(1, 3, 12, 12)).train()


def _batches(rank: int) -> list[torch.Tensor]:
    torch.manual_seed(100 + rank)
    return [torch.rand(2, 3, 12, 12) * (1 + rank) for _ in range(3)]


def _net_ddp_worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    reduce, sizes = dist.all_reduce, []

    def counted(tensor, *args, **kwargs):
        sizes.append(tensor.numel())
        return reduce(tensor, *args, **kwargs)

    dist.all_reduce = counted
    net = _net()
    for x in _batches(rank):
        net(x)
    dist.all_reduce = reduce
    results[rank] = ({k: v for k, v in net.state_dict().items() if k.endswith("basis")}, sizes)
    dist.destroy_process_group()


def test_one_all_reduce_per_forward_for_all_activation_quantizers():
    """Two processes, three forwards each: one all-reduce per forward carrying the counts and
    sums of the 2 activation quantizers (2 x 4 codes each), and the bases one process fits
    on both processes' batches (no BN: each sample's activations are its own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_net_ddp_worker, args=(port, results), nprocs=2)
    (bases0, sizes0), (bases1, sizes1) = results[0], results[1]
    assert sizes0 == sizes1 == [2 * (2 * 4)] * 3
    one = _net()
    for a, b in zip(_batches(0), _batches(1)):
        one(torch.cat([a, b]))
    assert bases0.keys() == bases1.keys() == {k for k in one.state_dict() if k.endswith("basis")}
    for k, v in one.state_dict().items():
        if k.endswith("basis"):
            assert torch.equal(bases0[k], bases1[k])
            torch.testing.assert_close(bases0[k], v, rtol=1e-6, atol=0, msg=k)
