"""Recording backends that refuse overlaps as the real ones do, for unit tests."""

from __future__ import annotations

from collections.abc import Callable

from reconciler.backends.memory import MemoryBackend
from reconciler.errors import OperationFailed
from reconciler.ipsets import overlapping
from reconciler.model import IpsetEntry, Item, NftElement, Permanent
from reconciler.nftsets import conflicts

Member = Callable[[Item], "tuple[object, str] | None"]  # item -> (its set, its value), for the members judged


class OverlapRefusing(MemoryBackend):
    """An add whose value overlaps a member of the same set already there is
    refused (``member``: which items are members, of which set)."""

    member: Member
    overlaps: Callable[[list[str]], list[tuple[str, str]]]
    refusal: tuple[str, str]  # (message, code)

    def _apply(self, op):  # type: ignore[no-untyped-def]
        found = type(self).member(op.item) if op.action == "add" else None
        if found is not None and not self.state.has(op.item):
            key, value = found
            there = [m[1] for i in self.state.items() if (m := type(self).member(i)) is not None and m[0] == key]
            if type(self).overlaps([*there, value]):
                raise OperationFailed(*self.refusal, op)
        return super()._apply(op)


class IntervalSets(OverlapRefusing):
    """Like nft: an element overlapping one already in its interval set (ipv4_addr) is refused."""

    @staticmethod
    def member(item: Item) -> tuple[object, str] | None:
        return ((item.family, item.set), item.element) if isinstance(item, NftElement) else None

    overlaps = staticmethod(lambda values: conflicts("ipv4_addr", values))
    refusal = ("interval overlaps with an existing one", "NFT_ERROR")


class NetIpsets(OverlapRefusing):
    """Like firewalld's nftables backend: a hash:net ipset refuses an entry overlapping one in it."""

    @staticmethod
    def member(item: Item) -> tuple[object, str] | None:
        return (item.ipset, item.entry) if isinstance(item, IpsetEntry) else None

    overlaps = staticmethod(lambda values: overlapping("hash:net", values))
    refusal = ("overlapping entries", "INVALID_ENTRY")


class PermanentNetIpsets(NetIpsets):
    """firewalld's permanent configuration: the same, for the permanent copies of entries only."""

    @staticmethod
    def member(item: Item) -> tuple[object, str] | None:
        return NetIpsets.member(item.item) if isinstance(item, Permanent) else None
