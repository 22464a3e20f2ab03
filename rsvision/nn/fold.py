"""BatchNorm folding (:func:`fold_batchnorm`): every BatchNorm that directly follows a
convolution goes into that convolution. In evaluation a BN is the
affine map ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, so ``bn(conv(x))`` is one
convolution with rescaled weights and a bias.

Folding reads the data flow from a ``torch.fx`` trace in which every BN module (and every
module that says ``fold_leaf = True``, such as a de-quantized activation's
:class:`~rsvision.quant.dequantize.NearestLevel`) is a leaf:
a conv → BN pair folds when the conv's output goes to that BN only and each of the two
modules is called once. timm's norm-act layers (``BatchNormAct2d``: BN, then dropout and
activation in one module) fold the same way and leave their dropout and activation. A
module whose ``forward`` cannot be traced (control flow on tensor values or shapes) is kept
as a whole and folded inside, child by child; such modules are listed in the result. The
BNs left are counted as the batch-norm ops of the folded network's trace.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from rsvision.nn.surgery import set_submodule

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_PLAIN_FORWARDS = (_BatchNorm.forward, nn.SyncBatchNorm.forward)
_BATCH_NORM_OPS = (torch.batch_norm, torch.nn.functional.batch_norm)


@dataclass
class FoldReport:
    """How many BNs were folded into convolutions, how many are left, and which modules were not traced."""

    folded: int = 0
    left: int = 0
    untraced: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"bn_folded": self.folded, "bn_left": self.left, "untraced_modules": list(self.untraced)}


class _Tracer(fx.Tracer):
    """An fx tracer that treats ``leaves`` as opaque and remembers which module's forward failed."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.stack: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or (isinstance(m, BATCHNORMS) or getattr(m, "fold_leaf", False)) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        qualname = self.path_of_module(m)
        if self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        self.stack.append(qualname)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = qualname
            raise
        finally:
            self.stack.pop()


def _trace(module: nn.Module) -> tuple[fx.GraphModule | None, set[str]]:
    """A graph of ``module`` with as few opaque submodules as tracing allows (None: its own forward fails)."""
    leaves: set[str] = set()
    while True:
        tracer = _Tracer(leaves)
        try:
            graph = tracer.trace(module)
        except Exception:
            if not tracer.failed_in or tracer.failed_in in leaves:
                return None, leaves
            leaves.add(tracer.failed_in)
            continue
        return fx.GraphModule(tracer.root, graph, type(module).__name__), leaves


def _norm_act_types() -> tuple[type, ...]:
    """timm's BN + dropout + activation layers (none while timm is not imported: no model has them then)."""
    norm_act = sys.modules.get("timm.layers.norm_act")
    return () if norm_act is None else (norm_act.BatchNormAct2d, norm_act.SyncBatchNormAct)


def _after_normalizing(bn: nn.Module) -> list[nn.Module] | None:
    """The modules ``bn`` runs on its normalised output (none for a plain BN); None when unknown."""
    if type(bn).forward in _PLAIN_FORWARDS:
        return []
    if isinstance(bn, _norm_act_types()):
        return [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None and not isinstance(m, nn.Identity)]
    return None


def _fuse_pairs(gm: fx.GraphModule) -> int:
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), BATCHNORMS):
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, fx.Node) or source.op != "call_module" or not isinstance(modules.get(source.target), nn.Conv2d):
            continue
        conv, bn = modules[source.target], modules[node.target]
        if len(source.users) != 1 or calls[source.target] != 1 or calls[node.target] != 1 or len(node.args) != 1 or node.kwargs:
            continue
        after = _after_normalizing(bn)
        if after is None or type(conv).forward is not nn.Conv2d.forward or not bn.track_running_stats or bn.running_mean is None:
            continue
        set_submodule(gm, source.target, fuse_conv_bn_eval(conv, bn))
        if after:
            set_submodule(gm, node.target, after[0] if len(after) == 1 else nn.Sequential(*after))
        else:
            node.replace_all_uses_with(source)
            gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


def _fold(module: nn.Module, prefix: str, report: FoldReport) -> nn.Module:
    if isinstance(module, BATCHNORMS) or not any(isinstance(m, BATCHNORMS) for m in module.modules()):
        return module
    gm, leaves = _trace(module)
    if gm is None:
        report.untraced.append(prefix or "<root>")
        for name, child in list(module.named_children()):
            setattr(module, name, _fold(child, f"{prefix}.{name}" if prefix else name, report))
        return module
    report.folded += _fuse_pairs(gm)
    for leaf in sorted(leaves):
        report.untraced.append(f"{prefix}.{leaf}" if prefix else leaf)
        inner = gm.get_submodule(leaf)
        for name, child in list(inner.named_children()):
            setattr(inner, name, _fold(child, f"{prefix}.{leaf}.{name}".lstrip("."), report))
    return gm


def batch_norm_ops(module: nn.Module) -> int:
    """How many batch-norm ops ``module``'s forward runs, read from its trace (BN modules and
    ``batch_norm`` calls; inside a module that cannot be traced, its children's)."""
    gm, leaves = _trace(module)
    if gm is None:
        return sum(batch_norm_ops(child) for child in module.children())
    modules = dict(gm.named_modules())
    count = 0
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target not in leaves:
            count += isinstance(modules[node.target], BATCHNORMS)
        elif node.op == "call_function":
            count += node.target in _BATCH_NORM_OPS
    return count + sum(batch_norm_ops(child) for leaf in leaves for child in gm.get_submodule(leaf).children())


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> tuple[nn.Module, FoldReport]:
    """``module`` (in eval mode, changed in place where it cannot be traced) with conv → BN pairs folded.

    Returns the folded network (a ``torch.fx.GraphModule`` where tracing worked) and a
    :class:`FoldReport`. BNs that follow no convolution stay as they are.
    """
    if module.training:
        raise ValueError("fold_batchnorm needs a module in eval mode (BN folding uses the running statistics)")
    report = FoldReport()
    folded = _fold(module, "", report).eval()
    report.left = batch_norm_ops(folded)
    return folded, report


