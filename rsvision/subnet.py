"""Sub-network configurations: the key of every switchable axis.

A switchable network runs as one of many sub-networks. RS-Nets switch the input
resolution; MutualNet switches the width as well. A :class:`SubNet` names one such
configuration and gives it a stable string id used for BN groups (``groups.<id>``),
evaluation rows, logs, ``rsvision.json`` and exports:

- ``SubNet(224)`` → ``"224"``: resolution only, the id RS-Net run folders always used;
- ``SubNet(160, 0.7)`` → ``"160w70"``: resolution 160 at width 0.70 (width in percent,
  so ids are exact for widths on a 0.01 grid, MutualNet's query grid included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Union

_ID = re.compile(r"^(\d+)(?:w(\d+))?$")


@dataclass(frozen=True)
class SubNet:
    """One configuration of a switchable network: input resolution and, optionally, width."""

    resolution: int
    width: float | None = None

    def __post_init__(self) -> None:
        if int(self.resolution) != self.resolution or self.resolution <= 0:
            raise ValueError(f"a sub-network's resolution must be a positive integer, got {self.resolution}")
        object.__setattr__(self, "resolution", int(self.resolution))
        if self.width is not None:
            if not 0 < self.width <= 1:
                raise ValueError(f"a sub-network's width must be in (0, 1], got {self.width}")
            object.__setattr__(self, "width", float(self.width))

    @property
    def id(self) -> str:
        """``"224"`` or ``"160w70"``: usable as a module name (no dots)."""
        if self.width is None:
            return str(self.resolution)
        return f"{self.resolution}w{round(self.width * 100)}"

    def __str__(self) -> str:
        return self.id

    def label(self) -> str:
        """Human-readable: ``224x224`` or ``0.70x @ 160x160``."""
        size = f"{self.resolution}x{self.resolution}"
        return size if self.width is None else f"{self.width:.2f}x @ {size}"

    def with_resolution(self, resolution: int) -> "SubNet":
        return SubNet(resolution, self.width)

    @classmethod
    def parse(cls, value: "SubNetLike") -> "SubNet":
        """A SubNet from itself, a resolution (``224``) or an id (``"224"``, ``"160w70"``)."""
        if isinstance(value, SubNet):
            return value
        if isinstance(value, int):
            return cls(value)
        match = _ID.match(str(value).strip())
        if not match:
            raise ValueError(f"not a sub-network id: {value!r} (expected e.g. '224' or '160w70')")
        resolution, percent = match.groups()
        return cls(int(resolution), None if percent is None else int(percent) / 100)


SubNetLike = Union[SubNet, int, str]


def subnets_of(values: Iterable[SubNetLike]) -> list[SubNet]:
    """Unique sub-networks, widest first, then largest resolution first (the paper's order)."""
    unique = {SubNet.parse(v) for v in values}
    if not unique:
        raise ValueError("expected at least one sub-network")
    return sorted(unique, key=lambda s: (-(s.width or 1.0), -s.resolution))
