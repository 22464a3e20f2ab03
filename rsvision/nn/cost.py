"""Cost of a network: parameters and multiply-adds per sub-network.

Multiply-adds come from ``torch.utils.flop_counter`` (FLOPs / 2, the paper's "MAdds"),
counted at batch 1 for one sub-network at a time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rsvision.nn.surgery import eval_mode
from rsvision.nn.switchable import SwitchableBatchNorm, at_subnet
from rsvision.subnet import SubNetLike


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bn_affine_parameters(model: nn.Module) -> int:
    """Affine parameters of one BN group: what each extra resolution adds."""
    total, inside = 0, set()
    for m in model.modules():
        if isinstance(m, SwitchableBatchNorm):
            total += sum(p.numel() for p in next(iter(m.groups.values())).parameters())
            inside.update(id(g) for g in [*m.groups.values(), *m.calibrated.values()])
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside:
            total += sum(p.numel() for p in m.parameters(recurse=False))
    return total


@torch.no_grad()
def count_madds(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds of one forward pass on ``example`` (FLOPs / 2)."""
    with eval_mode(model):
        with FlopCounterMode(display=False) as counter:
            model(example)
    return counter.get_total_flops() // 2


def subnet_madds(model: nn.Module, subnet: SubNetLike, example: torch.Tensor) -> int:
    """Multiply-adds of ``model`` run as ``subnet`` on ``example`` (one image at the sub-network's
    resolution): the cost every table, metadata file, manifest and budget uses."""
    with at_subnet(model, subnet):
        return count_madds(model, example)
