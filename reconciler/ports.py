"""Port ranges the way firewalld treats them.

firewalld prints ``N`` for a single port and ``LO-HI`` for a range, and when a
new range overlaps ranges already in a zone it merges them into one (adding
8079-8085 to a zone holding 8080 and 8081 leaves just 8079-8085); removing a
port from inside a range splits the range.  A port is therefore *present* when
some range covers it, not only when the same string is listed.  This module is
the one place that knows those rules, so the planner can predict what
firewalld will report after its own operations.
"""

from __future__ import annotations

import re

PORT_PROTOCOLS = ("tcp", "udp", "sctp", "dccp")
_RANGE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")

Range = tuple[int, int]


def parse_range(text: str) -> Range:
    """``"80"`` → (80, 80); ``"60000-60010"`` → (60000, 60010).

    Raises ValueError for anything firewalld would refuse (0, > 65535, LO > HI).
    """
    match = _RANGE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not PORT or PORT-PORT")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    if not 1 <= low <= 65535 or not 1 <= high <= 65535:
        raise ValueError(f"{text!r}: ports must be between 1 and 65535")
    if low > high:
        raise ValueError(f"{text!r}: range start is above its end")
    return low, high


def format_range(rng: Range) -> str:
    """Canonical text: ``"80"`` or ``"60000-60010"`` (``"9000-9000"`` → ``"9000"``)."""
    low, high = rng
    return str(low) if low == high else f"{low}-{high}"


def canonical_port(text: str) -> str:
    return format_range(parse_range(text))


def covers(ranges: set[Range] | frozenset[Range], rng: Range) -> bool:
    """True when one existing range contains all of ``rng`` (firewalld's test)."""
    if rng in ranges:  # the common case, without scanning every range of the zone
        return True
    return any(low <= rng[0] and rng[1] <= high for low, high in ranges)


def add_range(ranges: frozenset[Range], rng: Range) -> frozenset[Range]:
    """The ranges firewalld holds after adding ``rng``: overlaps merge into one."""
    if covers(ranges, rng):
        return ranges
    low, high = rng
    kept = set()
    for other in ranges:
        if other[1] >= low and other[0] <= high:
            low, high = min(low, other[0]), max(high, other[1])
        else:
            kept.add(other)
    kept.add((low, high))
    return frozenset(kept)


def remove_range(ranges: frozenset[Range], rng: Range) -> frozenset[Range]:
    """The ranges firewalld holds after removing ``rng``: the covering range
    splits; a range not wholly covered is refused (NOT_ENABLED) and changes nothing."""
    if not covers(ranges, rng):
        return ranges
    low, high = rng
    kept = set()
    for other in ranges:
        if other[1] < low or other[0] > high:
            kept.add(other)
            continue
        if other[0] < low:
            kept.add((other[0], low - 1))
        if other[1] > high:
            kept.add((high + 1, other[1]))
    return frozenset(kept)
