"""What the firewall holds, with firewalld's own rules for "present".

A backend's observe step returns a `FirewallView`; the planner asks it
whether an item is present and, while planning, replays its own operations on
a copy so later decisions see their effect (firewalld merges overlapping port
ranges, so adding one port can swallow another).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from typing import cast

from .model import (
    DirectChain,
    DirectRule,
    Ipset,
    IpsetEntry,
    Item,
    NftChain,
    NftElement,
    NftRule,
    NftSet,
    Permanent,
    Port,
    Scope,
    SourcePort,
    runtime_of,
)
from .ports import Range, add_range, covers, format_range, parse_range, remove_range

_RANGED = frozenset({Port, SourcePort})  # exact types: cheaper than isinstance on ABCs
_RangeKey = tuple[type[Port] | type[SourcePort], Scope, str]
# Items that hold others (a chain its rules, a set its elements): removing
# one takes everything in it along, so it goes only when nothing uses it.
HOLDERS = (DirectChain, NftChain, NftSet, Ipset)


def is_holder(item: Item) -> bool:
    """One of `HOLDERS`, or the permanent copy of one (a direct chain holds the permanent copies of its rules)."""
    return isinstance(item.item if isinstance(item, Permanent) else item, HOLDERS)


class LiveRead:
    """A read its backend keeps true through its own writes: `FirewallView.without_reads`
    keeps it, since the backend knows better than a blanket drop (see `nftables`)."""

    __slots__ = ()


class FirewallView:
    """A set of items plus per-(zone, protocol) port ranges."""

    def __init__(
        self,
        items: Iterable[Item] = (),
        containers: Iterable[tuple[str, ...]] = (),
        missing: Iterable[tuple[str, ...]] = (),
        users: Mapping[Item, Iterable[Item | str]] | None = None,
        unreachable: Iterable[tuple[str, ...]] = (),
        reads: Mapping[tuple[str, ...], object] | None = None,
    ) -> None:
        self.containers: frozenset[tuple[str, ...]] = frozenset(containers)
        # Each batch backend's own record of a container's read (its -save,
        # its nft listing), so a write right after planning can be built on
        # the read the plan was made on instead of reading again: handed back
        # to `Backend.apply` as ``seen``, and dropped (`without_reads`) for a
        # container once something was written there, unless it is a `LiveRead`.
        self.reads: dict[tuple[str, ...], object] = dict(reads or {})
        # Containers that were asked for but do not exist (an unknown zone).
        self.missing: frozenset[tuple[str, ...]] = frozenset(missing)
        # Containers no backend in charge can read or write (zones while
        # firewalld is away): the planner leaves their items alone.
        self.unreachable: frozenset[tuple[str, ...]] = frozenset(unreachable)
        # What else uses a chain or set: foreign rules or elements in it, rules
        # using it (text), or our rules elsewhere jumping to it or matching on
        # it (items, in use while present).
        self.users: dict[Item, tuple[Item | str, ...]] = {k: tuple(v) for k, v in (users or {}).items()}
        self._items: set[Item] = set()
        self._ranges: dict[_RangeKey, frozenset[Range]] = defaultdict(frozenset)
        for item in items:
            if type(item) in _RANGED:
                key, rng = _key_and_range(item)
                self._ranges[key] = self._ranges[key] | {rng}
            else:
                self._items.add(item)

    def copy(self) -> FirewallView:
        clone = FirewallView(
            containers=self.containers, missing=self.missing, users=self.users, unreachable=self.unreachable, reads=self.reads
        )
        clone._items = set(self._items)
        clone._ranges = defaultdict(frozenset, self._ranges)
        return clone

    def without_reads(self, written: Iterable[tuple[str, ...]]) -> FirewallView:
        """This view, with the reads of the ``written`` containers dropped: they are stale now."""
        stale = {container for container in written if not isinstance(self.reads.get(container), LiveRead)}
        if not stale & self.reads.keys():
            return self
        clone = self.copy()
        clone.reads = {container: read for container, read in self.reads.items() if container not in stale}
        return clone

    def items(self) -> frozenset[Item]:
        ranged = (cls(scope, format_range(rng), proto) for (cls, scope, proto), ranges in self._ranges.items() for rng in ranges)
        return frozenset(self._items).union(ranged)

    def has(self, item: Item) -> bool:
        """Present as firewalld judges it: a port is present if a range covers it."""
        if type(item) in _RANGED:
            key, rng = _key_and_range(item)
            return covers(self._ranges.get(key, frozenset()), rng)
        return item in self._items

    def listed(self, items: frozenset[Item]) -> frozenset[Item]:
        """Those of ``items`` present as they are, not as part of a port range
        (which `has` finds as well): one intersection of two sets."""
        return items & self._items

    def of_kinds(self, kinds: Collection[type[Item]]) -> list[Item]:
        """The items of exactly these types (not port ranges): one pass, a type test each."""
        return [item for item in self._items if type(item) in kinds]

    def has_exact(self, item: Item) -> bool:
        """Listed as exactly this item (so removing it takes nothing else along)."""
        if type(item) in _RANGED:
            key, rng = _key_and_range(item)
            return rng in self._ranges.get(key, frozenset())
        return item in self._items

    def users_of(self, holder: Item) -> list[str]:
        """Everything that still uses ``holder``: what is in it, foreign rules, rules that use it."""
        found = [member.describe() for member in self.members_of(holder)]
        for user in self.users.get(holder, ()):
            if isinstance(user, str):
                found.append(user)
            elif self.has(user):
                found.append(user.describe())
        return found

    def members_of(self, holder: Item) -> list[Item]:
        """Items the view knows in ``holder`` (`is_holder`): a direct or nft
        chain's rules, a set's elements, an ipset's entries (runtime and
        permanent); of a permanent copy, permanent copies."""
        if isinstance(holder, Permanent):
            inner = holder.item
            return [Permanent(i) for i in FirewallView(runtime_copies(self._items)).members_of(inner)]
        if isinstance(holder, Ipset):  # its entries in either layer: removing it takes both along
            return [i for i in self._items if isinstance(entry := runtime_of(i), IpsetEntry) and entry.ipset == holder.name]
        if isinstance(holder, NftSet):
            key = (holder.family, holder.name)
            return [i for i in self._items if isinstance(i, NftElement) and (i.family, i.set) == key]
        if isinstance(holder, NftChain):
            return [i for i in self._items if isinstance(i, NftRule) and (i.family, i.chain) == (holder.family, holder.chain)]
        if not isinstance(holder, DirectChain):
            raise TypeError(f"{holder.describe()} holds nothing")
        return [
            item
            for item in self._items
            if isinstance(item, DirectRule)
            and (item.family, item.table, item.chain) == (holder.family, holder.table, holder.chain)
        ]

    def add(self, item: Item) -> None:
        if type(item) in _RANGED:
            key, rng = _key_and_range(item)
            self._ranges[key] = add_range(self._ranges[key], rng)
        else:
            self._items.add(item)

    def remove(self, item: Item) -> None:
        if type(item) in _RANGED:
            key, rng = _key_and_range(item)
            self._ranges[key] = remove_range(self._ranges[key], rng)
        else:
            self._items.discard(item)


def runtime_copies(items: Iterable[Item]) -> list[Item]:
    """The items the permanent copies among ``items`` are copies of."""
    return [item.item for item in items if isinstance(item, Permanent)]


def _key_and_range(item: Item) -> tuple[_RangeKey, Range]:
    """A port's (or source port's) range, and the key of the ranges it joins: kind, scope, protocol."""
    # Callers test `type(item) in _RANGED` first, which mypy cannot narrow on.
    port = cast("Port | SourcePort", item)
    return (type(port), port.scope, port.protocol), parse_range(port.port)
