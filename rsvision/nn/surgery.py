"""Module surgery: swapping a submodule by its dotted name, replacing layers recursively,
and running a module in evaluation mode for a block."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` inside ``root`` (``layer1.0.bn1``)."""
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def replace_modules(module: nn.Module, convert: Callable[[nn.Module, str], nn.Module | None], prefix: str = "") -> None:
    """Depth first, replace each child ``convert`` returns a module for (given the child and
    its dotted name); children it returns None for are searched in turn."""
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        new = convert(child, path)
        if new is not None:
            setattr(module, name, new)
        else:
            replace_modules(child, convert, path + ".")


@contextmanager
def eval_mode(module: M) -> Iterator[M]:
    """``module`` in evaluation mode inside the block; its own mode (and its children's) afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
