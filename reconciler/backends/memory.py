"""An in-memory firewall that records every call: the test seam.

Like httpx's mock transport, it ships in the package so tests (and other
programs embedding the transaction engine) can check exact operation
sequences without a firewall.  It follows firewalld's semantics for
presence (port ranges merge and split) and idempotent errors, and can be told
to refuse an item or to fail the Nth write call.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Sequence

from ..errors import OperationFailed
from ..model import Item, Op, Outcome
from ..view import FirewallView
from .base import Backend, EventCallback, by_container, in_runs, one_by_one


class MemoryBackend(Backend):
    name = "memory"

    def __init__(
        self,
        items: Iterable[Item] = (),
        *,
        refuse: Iterable[Item] = (),
        fail_on_call: int | None = None,
        batches: bool = False,
    ) -> None:
        self.state = FirewallView(items)
        self.refuse = set(refuse)
        self.fail_on_call = fail_on_call
        self.batches = batches  # behave like *-restore / nft -f: one atomic call per container
        self.calls: list[str] = []  # every write, as "+ zone public port 80/tcp"
        self.reads: list[tuple[str, ...]] = []

    async def apply(self, ops: Sequence[Op], seen: FirewallView | None = None) -> list[Outcome]:
        if self.batches:
            return await in_runs(ops, by_container, self._batch, seen)
        return await one_by_one(ops, self._execute)

    async def refusals(self, items: Collection[Item], *, ask_tools: bool = False) -> dict[Item, str]:
        """None: it holds every kind (``refuse`` fails the write instead, as a firewall would)."""
        return {}

    def read_afresh(self) -> None:
        """Nothing: the memory is the firewall."""

    async def activate(self) -> bool:
        """Nothing: every write is in force when it returns."""
        return False

    def refusal_key(self) -> Hashable:
        return None

    def name_for(self, item: Item) -> str:
        return self.name

    async def subscribe(self, callback: EventCallback) -> None:
        """No events: nothing but its own writes changes it."""

    async def close(self) -> None:
        """Nothing to release."""

    async def _batch(self, ops: Sequence[Op], seen: FirewallView | None) -> list[Outcome]:
        self.calls.append("batch: " + "; ".join(op.describe() for op in ops))
        saved = self.state.copy()
        try:
            return [self._apply(op) for op in ops]
        except OperationFailed:
            self.state = saved  # all or nothing
            raise

    async def observe(
        self,
        containers: Collection[tuple[str, ...]],
        known: Iterable[Item] | None = None,
        *,
        removable: Collection[Item] | None = None,
    ) -> FirewallView:
        self.reads.extend(sorted(containers))
        wanted = set(containers)
        return FirewallView((i for i in self.state.items() if i.container() in wanted), containers)

    async def _execute(self, op: Op) -> Outcome:
        self.calls.append(op.describe())
        return self._apply(op)

    def _apply(self, op: Op) -> Outcome:
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise OperationFailed(f"injected failure on call {self.fail_on_call}", "INJECTED", op)
        if op.item in self.refuse:
            raise OperationFailed(f"refused {op.item.describe()}", "INVALID_VALUE", op)
        if op.action == "add":
            if self.state.has(op.item):
                return Outcome.UNCHANGED
            self.state.add(op.item)
        else:
            if not self.state.has(op.item):
                return Outcome.UNCHANGED
            self.state.remove(op.item)
        return Outcome.APPLIED
