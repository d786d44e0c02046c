"""Fault injection around a real backend, for rollback and crash tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Collection

from reconciler.backends.base import Backend, KnownNames, Outcome
from reconciler.errors import OperationFailed
from reconciler.planner import Op
from reconciler.view import FirewallView


class FaultyBackend(Backend):
    """Passes everything to ``inner``; the Nth write fails, or kills the process."""

    def __init__(self, inner: Backend, *, fail_on_write: int | None = None, kill_after_writes: int | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.fail_on_write = fail_on_write
        self.kill_after_writes = kill_after_writes
        self.writes = 0

    async def observe(self, containers: Collection[tuple[str, ...]]) -> FirewallView:
        return await self.inner.observe(containers)

    async def known_names(self) -> KnownNames | None:
        return await self.inner.known_names()

    async def execute(self, op: Op) -> Outcome:
        if self.kill_after_writes is not None and self.writes == self.kill_after_writes:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 between two ops
        self.writes += 1
        if self.writes == self.fail_on_write:
            raise OperationFailed(f"injected failure on write {self.writes}", "INJECTED")
        return await self.inner.execute(op)

    async def close(self) -> None:
        await self.inner.close()
