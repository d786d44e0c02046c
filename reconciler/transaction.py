"""Transactions: ordered operations that all take effect or none do.

Modelled on libvirt's virFirewall: build first, apply once.  Usage::

    txn = Transaction("web")
    txn.add(Op("add", DirectChain("ipv4", "filter", "FWRECON_IN")))
    txn.add(Op("add", DirectRule("ipv4", "filter", "FWRECON_IN", 0, ("-j", "ACCEPT"))))
    txn.add_query(hook)            # runs in sequence; may add ops right after itself
    results = await txn.apply(backend)

`apply` runs the steps in order, each run of consecutive ops in one
`Backend.apply` (the backend batches as it can).  If an operation fails, the undo of every
operation already applied runs in reverse order and `TransactionFailed` is
raised (after the rollback) carrying the failing op, the firewall's error and
any undo that failed too.  A firewall that stopped answering (a timeout, the
bus gone: `BackendUnavailable`) gets no further call: the rollback stops at
once, so a hung firewall costs one call timeout, not one per undo.  The undos
not run are in ``skipped`` (and in ``rollback_errors``, so whoever restores
ownership keeps what they would have taken out), and the failure's ``cause``
is that `BackendUnavailable` (what landed cannot be known: the caller keeps
its intent and retries once the firewall answers again).  An operation that found the firewall already in the
wanted state (`Outcome.UNCHANGED`) changed nothing and so has nothing to undo.
Operations marked ``ignore_failure`` never abort the transaction (libvirt's
IGNORE_ERRORS).  A query hook is ``async def hook(txn, backend)``: it may read
the firewall and call ``txn.add`` to schedule operations that depend on what
it found (libvirt's query callbacks); those run next, before later steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import structlog

from .backends.base import Backend
from .errors import BackendError, BackendUnavailable, FwreconError
from .model import Op, Outcome
from .view import FirewallView

log = structlog.get_logger(__name__)

QueryHook = Callable[["Transaction", Backend], Awaitable[None]]


class StepResult(NamedTuple):
    op: Op
    outcome: Outcome


@dataclass
class _Step:
    op: Op | None = None
    query: QueryHook | None = None
    ignore_failure: bool = False


@dataclass(eq=False)
class TransactionFailed(FwreconError):
    """The transaction was rolled back (as far as the undo steps allowed)."""

    name: str
    failed_op: Op | None
    cause: BaseException
    undone: list[Op] = field(default_factory=list)
    rollback_errors: list[tuple[Op, BaseException]] = field(default_factory=list)
    skipped: list[Op] = field(default_factory=list)  # undos not tried: the firewall stopped answering

    def __str__(self) -> str:
        what = self.failed_op.describe() if self.failed_op else "query hook"
        text = f"transaction {self.name!r} failed at {what}: {self.cause}"
        failed = len(self.rollback_errors) - len(self.skipped)
        if failed:
            text += f" (rollback incomplete: {failed} undo step(s) failed)"
        if self.skipped:
            text += f" (rollback stopped, the firewall is not answering: {len(self.skipped)} undo step(s) not tried)"
        return text


class Transaction:
    """Ordered operations with automatic rollback; see module docstring."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._steps: list[_Step] = []
        self._cursor: int | None = None  # index of the running step while applying

    def add(self, op: Op, *, ignore_failure: bool = False) -> None:
        """Append an operation, or, from inside a query hook, run it next."""
        self._insert(_Step(op=op, ignore_failure=ignore_failure))

    def add_query(self, hook: QueryHook) -> None:
        self._insert(_Step(query=hook))

    @property
    def ops(self) -> list[Op]:
        return [step.op for step in self._steps if step.op is not None]

    def _insert(self, step: _Step) -> None:
        if self._cursor is None:
            self._steps.append(step)
        else:
            self._inserted += 1
            self._steps.insert(self._cursor + self._inserted, step)

    async def apply(self, backend: Backend, seen: FirewallView | None = None) -> list[StepResult]:
        """Run every step; on failure roll back and raise TransactionFailed.

        Each run of consecutive ops (up to the next query hook or op that may
        fail) goes to the backend in one `Backend.apply`, which batches as it
        can, with ``seen`` (the view the ops were planned on) less the reads of
        containers written since.
        """
        applied: list[StepResult] = []
        index = 0
        while index < len(self._steps):
            step = self._steps[index]
            self._cursor, self._inserted = index, 0
            run = self._run_at(index)
            try:
                if step.query is not None:
                    await step.query(self, backend)
                else:
                    try:
                        outcomes = await backend.apply(run, seen)
                    except BackendError as exc:
                        applied.extend(StepResult(op, outcome) for op, outcome in zip(run, exc.done, strict=False))
                        raise
                    applied.extend(StepResult(op, outcome) for op, outcome in zip(run, outcomes, strict=True))
                    index += len(run) - 1
                    if seen is not None:
                        seen = seen.without_reads({op.item.container() for op in run})
            except BackendError as exc:
                if step.ignore_failure:
                    log.info("op_failure_ignored", transaction=self.name, op=step.op and step.op.describe(), error=str(exc))
                else:
                    self._cursor = None
                    culprit = getattr(exc, "op", None) or (run[len(exc.done)] if len(exc.done) < len(run) else None)
                    raise await self._rollback(backend, applied, culprit, exc) from exc
            except BaseException as exc:  # cancellation or a bug in a hook: still undo
                self._cursor = None
                failure = await self._rollback(backend, applied, step.op, exc)
                raise exc from failure
            index += 1
        self._cursor = None
        return applied

    def _run_at(self, index: int) -> list[Op]:
        """The plain ops from ``index`` up to the next query hook; an op whose
        failure is ignored goes alone (its failure must not undo its neighbours)."""
        first = self._steps[index]
        if first.op is None:
            return []
        if first.ignore_failure:
            return [first.op]
        run = [first.op]
        for step in self._steps[index + 1 :]:
            if step.op is None or step.ignore_failure:
                break
            run.append(step.op)
        return run

    async def _rollback(
        self, backend: Backend, applied: list[StepResult], failed_op: Op | None, cause: BaseException
    ) -> TransactionFailed:
        """Undo what took effect, newest first, in as few `Backend.apply` calls
        as the undos allow: an undo the firewall refuses is recorded and the
        rest is tried again without it."""
        failure = TransactionFailed(self.name, failed_op, cause)
        undos = [result.op.inverse() for result in reversed(applied) if result.outcome is Outcome.APPLIED]
        if isinstance(cause, BackendUnavailable):
            undos, failure.skipped = [], undos  # unreachable: another call would only wait out its timeout again
            failure.rollback_errors.extend((undo, cause) for undo in failure.skipped)
        while undos:
            try:
                await backend.apply(undos)
                failure.undone.extend(undos)
                undos = []
            except BackendUnavailable as exc:
                # Stop here; the firewall's answer on what landed is unknown now.
                failure.undone.extend(undos[: len(exc.done)])
                failure.skipped = undos[len(exc.done) :]
                failure.rollback_errors.extend((undo, exc) for undo in failure.skipped)
                undos = []
                if not isinstance(cause, (BackendUnavailable, asyncio.CancelledError, KeyboardInterrupt)):
                    failure.cause = BackendUnavailable(f"{exc} (while rolling back after: {cause})")
                    failure.cause.__cause__ = exc
            except BackendError as exc:
                failure.undone.extend(undos[: len(exc.done)])
                rest = undos[len(exc.done) :]
                culprit = getattr(exc, "op", None)
                if culprit not in rest:  # a batch that could not tell which: none of it was undone
                    failure.rollback_errors.extend((undo, exc) for undo in rest)
                    break
                failure.rollback_errors.append((culprit, exc))
                rest.remove(culprit)
                undos = rest
        log.warning(
            "transaction_rolled_back",
            transaction=self.name,
            failed_op=failed_op.describe() if failed_op else None,
            error=str(cause),
            code=getattr(cause, "code", None),
            undone=len(failure.undone),
            rollback_errors=len(failure.rollback_errors),
            skipped=len(failure.skipped),
        )
        return failure
