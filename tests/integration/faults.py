"""Fault injection around a real backend, for rollback and crash tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Collection, Hashable, Iterable, Sequence

from reconciler.backends.base import Backend, EventCallback, in_runs
from reconciler.errors import OperationFailed
from reconciler.model import Item, KnownNames, Op, Outcome
from reconciler.view import FirewallView


class FaultyBackend(Backend):
    """Passes everything to ``inner``, in writes as the backend in charge makes them;
    the Nth write fails, or the process is killed right after the Nth write,
    or process ``stop_pid`` (firewalld) is frozen with SIGSTOP right after it."""

    def __init__(
        self,
        inner: Backend,
        *,
        fail_on_write: int | None = None,
        kill_after_writes: int | None = None,
        stop_after_writes: int | None = None,
        stop_pid: int | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.fail_on_write = fail_on_write
        self.kill_after_writes = kill_after_writes
        self.stop_after_writes = stop_after_writes
        self.stop_pid = stop_pid
        self.writes = 0

    async def observe(
        self,
        containers: Collection[tuple[str, ...]],
        known: Iterable[Item] | None = None,
        *,
        removable: Collection[Item] | None = None,
    ) -> FirewallView:
        return await self.inner.observe(containers, known, removable=removable)

    async def refusals(self, items: Collection[Item], *, ask_tools: bool = False) -> dict[Item, str]:
        return await self.inner.refusals(items, ask_tools=ask_tools)

    def read_afresh(self) -> None:
        self.inner.read_afresh()

    async def activate(self) -> bool:
        return await self.inner.activate()

    def refusal_key(self) -> Hashable:
        return self.inner.refusal_key()

    def name_for(self, item: Item) -> str:
        return self.inner.name_for(item)

    async def known_names(self) -> KnownNames | None:
        """What the wrapped router or firewalld knows (the cli validates names with it)."""
        names = getattr(self.inner, "known_names", None)
        return await names() if names is not None else None

    async def subscribe(self, callback: EventCallback) -> None:
        await self.inner.subscribe(callback)

    async def apply(self, ops: Sequence[Op], seen: FirewallView | None = None) -> list[Outcome]:
        """One write per op for firewalld, one per container run for a batch
        backend (the tools write a table per restore), counted as they go."""
        return await in_runs(ops, self._write_unit, self._write, seen)

    def _write_unit(self, op: Op) -> Hashable:
        return op if self.inner.name_for(op.item) == "firewalld" else op.item.container()

    async def _write(self, ops: Sequence[Op], seen: FirewallView | None) -> list[Outcome]:
        self.writes += 1
        if self.writes == self.fail_on_write:
            raise OperationFailed(f"injected failure on write {self.writes}", "INJECTED", ops[0])
        outcomes = await self.inner.apply(ops, seen)
        if self.writes == self.kill_after_writes:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 right after this write: nothing recorded it yet
        if self.writes == self.stop_after_writes and self.stop_pid is not None:
            os.kill(self.stop_pid, signal.SIGSTOP)  # the firewall stops answering; later calls time out
        return outcomes

    async def close(self) -> None:
        await self.inner.close()
