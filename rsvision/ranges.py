"""Command-line sizes: one resolution (``224``), a range (``64:256:16``) or a sub-network id (``160w70``).

A range ``START:STOP:STEP`` holds START, START + STEP, ... up to STOP, which is included
when it falls on that grid (``64:256:16`` gives 64, 80, ..., 256; ``64:250:16`` ends at 240).
Sizes above ``MAX_SCALE`` times a run's largest trained resolution are refused before
any work (:func:`check_scale`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from rsvision.errors import UserError
from rsvision.subnet import SubNet, SubNetLike

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
