"""Which module inputs can be negative, read from the autograd graph of one forward pass.

LQ-Nets' activation quantizer has codes in ``{0,1}^K``: it assumes a ReLU in front, and
zeroes any negative input. Whether a layer's input can be negative is a property of the
graph, not of the model's name, so it is decided from the graph: one forward pass of an
example input (which requires grad) in eval mode records the ``grad_fn`` of each watched
module's input, and a walk down the autograd graph applies a small sign rule:

- ReLU (in place or not), sigmoid, hardsigmoid, softmax, abs and exp are non-negative;
  so are hardtanh (ReLU6) and clamp when their saved lower bound is ``>= 0``;
- pooling, bilinear / nearest upsampling, views, permutes, slicing, concatenation, sums
  and means, casts, copies, ``+`` (with a non-negative alpha), ``*`` and ``/`` are
  non-negative iff all their tensor inputs are (a constant operand of ``*`` or ``/``
  counts when autograd saved it and it is ``>= 0``);
- everything else (convolutions, BatchNorm, bicubic upsampling, constant operands of
  ``+``, the image itself, a leaf or an input without a graph) can be negative.

The rule is conservative: an unknown node makes its output "can be negative", so a
non-negative input may get a signed quantizer, never the reverse.
"""

from __future__ import annotations

import re

import torch
from torch import nn

# Outputs that are never negative, whatever the input.
_NON_NEGATIVE = {"ReluBackward", "SigmoidBackward", "HardsigmoidBackward", "SoftmaxBackward", "AbsBackward", "ExpBackward"}

# Outputs bounded below by a saved attribute: non-negative when that bound is >= 0.
_LOWER_BOUND = {"HardtanhBackward": "_saved_min_val", "ClampBackward": "_saved_min", "ClampMinBackward": "_saved_min"}

# Outputs that are non-negative iff every tensor input is.
_SIGN_PRESERVING = {
    "MaxPool2DWithIndicesBackward", "MaxPool3DWithIndicesBackward", "AvgPool2DBackward", "AvgPool3DBackward",
    "AdaptiveAvgPool2DBackward", "AdaptiveMaxPool2DBackward", "MeanBackward", "SumBackward",
    "UpsampleNearest2DBackward", "UpsampleNearestExact2DBackward", "UpsampleBilinear2DBackward",
    "ViewBackward", "UnsafeViewBackward", "PermuteBackward", "TransposeBackward",
    "SqueezeBackward", "UnsqueezeBackward", "ExpandBackward", "SliceBackward", "SelectBackward", "IndexBackward",
    "SplitBackward", "SplitWithSizesBackward", "UnbindBackward", "CatBackward", "StackBackward",
    "CloneBackward", "ToCopyBackward", "AliasBackward", "BackwardHookFunctionBackward",
    "MaximumBackward", "MinimumBackward", "AddBackward", "MulBackward", "DivBackward",
}

# For ``*`` and ``/``: the saved value of the operand at each input position.
_SAVED_OPERANDS = ("_saved_self", "_saved_other")


def _kind(node) -> str:
    """The node's class name without its overload number (``ReluBackward0`` -> ``ReluBackward``)."""
    return re.sub(r"\d+$", "", type(node).__name__)


def _is_non_negative_value(value) -> bool:
    if isinstance(value, torch.Tensor):
        return bool((value >= 0).all())
    return isinstance(value, (int, float)) and value >= 0


def _own_sign(node, kind: str) -> bool | None:
    """True/False when the node decides the sign by itself, None when it follows its inputs."""
    if kind in _NON_NEGATIVE:
        return True
    if kind in _LOWER_BOUND:
        return _is_non_negative_value(getattr(node, _LOWER_BOUND[kind], None))
    if kind not in _SIGN_PRESERVING:
        return False
    if kind == "AddBackward" and not _is_non_negative_value(getattr(node, "_saved_alpha", 1)):
        return False
    return None


def _constant_operand_ok(node, kind: str, position: int) -> bool:
    """An input without a graph (a constant): non-negative only for ``*`` / ``/`` with a saved value ``>= 0``."""
    if kind not in ("MulBackward", "DivBackward") or position >= len(_SAVED_OPERANDS):
        return False
    return _is_non_negative_value(getattr(node, _SAVED_OPERANDS[position], None))


def non_negative(root, memo: dict) -> bool:
    """Whether the output of autograd node ``root`` can never be negative (``memo`` caches nodes)."""
    stack = [root]
    while stack:
        node = stack[-1]
        if node in memo:
            stack.pop()
            continue
        kind = _kind(node)
        sign = _own_sign(node, kind)
        if sign is None:
            inputs = [(i, fn) for i, (fn, _) in enumerate(node.next_functions)]
            if not all(fn is not None or _constant_operand_ok(node, kind, i) for i, fn in inputs):
                sign = False
            else:
                graph_inputs = [fn for _, fn in inputs if fn is not None]
                pending = [fn for fn in graph_inputs if fn not in memo]
                if pending:
                    stack.extend(pending)
                    continue
                sign = all(memo[fn] for fn in graph_inputs)
        memo[node] = sign
        stack.pop()
    return memo[root]


def inputs_can_be_negative(model: nn.Module, names: list[str], example_input: torch.Tensor) -> dict[str, bool]:
    """For each named submodule, whether its input can be negative (see the module docstring).

    Runs ``model(example_input)`` once in eval mode with gradients on and forward
    pre-hooks on the named modules; no BatchNorm statistic changes, and every module's
    training flag is restored afterwards. A module called several times counts as
    non-negative only if every call's input is; one the pass never reaches can be negative.
    """
    recorded: dict[str, list] = {name: [] for name in names}

    def recorder(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            recorded[name].append(x.grad_fn if isinstance(x, torch.Tensor) else None)

        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(recorder(name)) for name in names]
    modes = {m: m.training for m in model.modules()}
    first = next(model.parameters(), None)
    x = example_input.detach().to(first.device if first is not None else example_input.device, copy=True).requires_grad_(True)
    try:
        model.eval()
        with torch.enable_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    memo: dict = {}
    return {name: not fns or not all(fn is not None and non_negative(fn, memo) for fn in fns) for name, fns in recorded.items()}
