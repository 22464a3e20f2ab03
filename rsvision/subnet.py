"""Sub-network configurations: the key of every switchable axis.

A switchable network runs as one of many sub-networks. RS-Nets switch the input
resolution; MutualNet switches the width as well. A :class:`SubNet` names one such
configuration and gives it a stable string id used for BN groups (``groups.<id>``),
evaluation rows, logs, ``rsvision.json`` and exports:

- ``SubNet(224)`` → ``"224"``: resolution only, the id RS-Net run folders always used;
- ``SubNet(160, 0.7)`` → ``"160w70"``: resolution 160 at width 0.70 (width in percent,
  so ids are exact for widths on a 0.01 grid, MutualNet's query grid included).

Command-line sizes (:func:`parse_subnets`): one resolution (``224``), a range
``START:STOP:STEP`` (START, START + STEP, ... up to STOP, included when it falls on that
grid: ``64:256:16`` gives 64, 80, ..., 256) or a sub-network id (``160w70``). Sizes above
``MAX_SCALE`` times a run's largest trained resolution are refused before any work
(:func:`check_scale`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from rsvision.errors import UserError

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


#: The largest size a command accepts, as a multiple of the run's largest trained resolution.
MAX_SCALE = 4

_SIZES = "expected a size (224) or a range START:STOP:STEP (64:256:16)"
_SUBNETS = "expected a size (224), a range START:STOP:STEP (64:256:16) or a sub-network id (160w70)"


def expand_range(token: str, option: str = "--res") -> list[int]:
    """The sizes of ``START:STOP:STEP``."""
    parts = token.split(":")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"{option} {token}: {_SIZES}")
    start, stop, step = (int(p) for p in parts)
    if min(start, step) <= 0:
        raise UserError(f"{option} {token}: the start and the step must be positive")
    if stop < start:
        raise UserError(f"{option} {token}: the stop ({stop}) is below the start ({start})")
    return list(range(start, stop + 1, step))


def _parse(tokens: Iterable[str], option: str, ids: bool) -> list[SubNet]:
    out: list[SubNet] = []
    for token in (str(t).strip() for t in tokens):
        if token.lstrip("-").isdigit() and int(token) <= 0:
            raise UserError(f"{option} {token}: sizes must be positive")
        if ":" in token:
            found = [SubNet(r) for r in expand_range(token, option)]
        else:
            try:
                found = [SubNet.parse(token)]
            except ValueError:
                found = []
            if not found or (found[0].width is not None and not ids):
                raise UserError(f"{option} {token}: {_SUBNETS if ids else _SIZES}")
        for subnet in found:
            if subnet in out:
                raise UserError(f"{option}: {subnet.id} is given twice")
            out.append(subnet)
    return out


def parse_subnets(tokens: Iterable[str], option: str = "--res") -> list[SubNet]:
    """Sub-networks of ``tokens`` (sizes, ranges and ids), in the order given; a repeat is an error."""
    return _parse(tokens, option, ids=True)


def parse_resolutions(tokens: Iterable[str], option: str = "--res") -> list[int]:
    """Resolutions of ``tokens`` (sizes and ranges), in the order given; a repeat is an error."""
    return [s.resolution for s in _parse(tokens, option, ids=False)]


def check_scale(sizes: Iterable[SubNetLike], trained: Sequence[int], source: str, option: str = "--res") -> None:
    """Refuse a size above ``MAX_SCALE`` x the largest resolution ``source`` was trained at (one line naming it).

    Values that are not sizes are left for the caller's own parsing to name.
    """
    largest = max(trained)
    for value in sizes:
        try:
            size = SubNet.parse(value)
        except ValueError:
            continue
        if size.resolution > MAX_SCALE * largest:
            raise UserError(
                f"{option} {size.id}: more than {MAX_SCALE}x the largest resolution {source} was trained at ({largest}); "
                f"the limit is {MAX_SCALE * largest}"
            )
