"""The long-running controller behind ``fwrecon run``.

One asyncio loop; everything that happens only *requests* a reconcile:

    policy file event ─┐
    Reloaded signal ───┤
    owner change ──────┼─▶ request(trigger) ─▶ coalesce ─▶ reconcile ─▶ metrics, log
    change signal ─────┤     (quiet window,       (level-triggered: re-read files,
    resync timer ──────┤      upper bound)          observe, plan, apply)
    SIGHUP ────────────┘

Requests carry no payload and are never replayed: a reconcile always starts
from the files and the firewall as they are now, so a burst of 50 writes or
10 reloads costs one reconcile.  A failed reconcile is retried with capped
exponential backoff; while firewalld is off the bus nothing is attempted
until it returns.  SIGTERM lets the reconcile in flight finish (or, after a
grace period, cancels it, which rolls its transaction back) and exits 0,
leaving every rule in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import structlog

from . import status as status_record  # (`status` is a local name below)
from .backends.base import NO_BACKEND, BackendEvent
from .backends.router import Router
from .backends.select import BACKEND_NAMES, BackendMode, BackendSet, Connect, connect_firewalld
from .engine import Reconciler, ReconcileReport, RefusalMemo, Said, gc_paused, log_policy_errors
from .errors import BackendUnavailable, FwreconError, PolicyError
from .metrics import Metrics
from .model import Item, Op
from .policy import LoadResult
from .policydir import PolicyCache, load_policy_dir
from .sdnotify import SystemdNotifier
from .state import StateStore
from .watch import PolicyWatcher

log = structlog.get_logger(__name__)


class Trigger(enum.Enum):
    STARTUP = "startup"
    POLICY = "policy"
    RELOAD = "reload"
    OWNER = "owner"
    DRIFT = "drift"
    RESYNC = "resync"
    SIGNAL = "signal"
    SETTLE = "settle"  # adds that waited for a reload to settle


# Triggers whose reconcile may build on reads a backend kept because its
# events showed nothing changed them (`Backend.read_afresh`).
_MAY_KEEP_READS = frozenset({Trigger.POLICY, Trigger.DRIFT, Trigger.SETTLE})

# A coalesced batch is labelled by its most significant trigger.
_LABEL_ORDER = (
    Trigger.RELOAD,
    Trigger.STARTUP,
    Trigger.OWNER,
    Trigger.SETTLE,
    Trigger.POLICY,
    Trigger.SIGNAL,
    Trigger.DRIFT,
    Trigger.RESYNC,
)


@dataclass
class DaemonSettings:
    policy_dir: Path
    state_file: Path
    bus_address: str | None = None
    metrics_address: str | None = None
    resync_interval: float = 60.0  # 0 disables the periodic resync
    quiet_window: float = 0.1  # a burst ends after this much silence ...
    max_delay: float = 1.0  # ... or this long after its first event
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    shutdown_grace: float = 2.0
    backend_mode: BackendMode = "auto"
    persist: str = "runtime"  # engine.PERSIST_MODES
    # After a reload or firewalld's return: change signals in this window are
    # the reload's, not drift, and items no record mentions wait this long
    # before fwrecon adds (and so owns) them, so tools that hold the same item
    # (libvirt, docker, netavark) put theirs back first.
    reload_settle: float = 3.0


class Controller:
    """See module docstring.  ``await Controller(settings).run()``."""

    def __init__(
        self,
        settings: DaemonSettings,
        metrics: Metrics | None = None,
        notifier: SystemdNotifier | None = None,
        connect: Connect = connect_firewalld,
        backends: BackendSet | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.notifier = notifier or SystemdNotifier()
        self._connect = connect
        self.store = StateStore(settings.state_file)
        self.backends = backends or BackendSet(settings.backend_mode)
        self.last_good: dict[str, frozenset[Item]] = {}
        self._policy_cache = PolicyCache()
        self._refusal_memo = RefusalMemo()
        self._said = Said()  # notes logged once (`engine.Said`)
        self._pending: dict[Trigger, float] = {}  # trigger -> monotonic time first requested
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._busy = False
        self._backoff = settings.backoff_initial
        self._retry: asyncio.TimerHandle | None = None
        self._retry_batch: dict[Trigger, float] = {}
        self._ready_sent = False
        self._last_reload = -float("inf")  # monotonic time of the last reload or firewalld return
        self._reloads = 0  # reloads and returns seen so far
        self._reloads_at_last_start = 0  # ... when the previous reconcile started
        self._settle_handle: asyncio.TimerHandle | None = None
        self._unresponsive = False  # firewalld owns its name but did not answer a call
        self._logged_errors: dict[str, list[PolicyError]] = {}  # policy errors already logged (said once)
        for name in BACKEND_NAMES:  # all 0 (none in charge) is news too: firewalld mode, firewalld away
            self.metrics.active_backend.labels(backend=name).set(0)

    # -- requests ----------------------------------------------------------------

    def request(self, trigger: Trigger, at: float | None = None) -> None:
        """Ask for a reconcile (call from the loop thread)."""
        when = time.monotonic() if at is None else at
        self._pending[trigger] = min(self._pending.get(trigger, when), when)
        self.metrics.last_queued.set(time.time())
        self._wake.set()

    def _schedule_retry(self, batch: dict[Trigger, float], delay: float) -> None:
        self._retry_batch = batch
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        """Run the failed batch again, keeping its original request times."""
        if self._retry is not None:
            self._retry.cancel()
        self._retry = None
        batch, self._retry_batch = self._retry_batch, {}
        for trigger, at in batch.items():
            self.request(trigger, at)

    def on_backend_event(self, event: BackendEvent) -> None:
        if event is BackendEvent.RELOADED:
            self.metrics.firewalld_reloads.inc()
            log.info("firewalld_reloaded")
            self._reloaded()
            self.request(Trigger.RELOAD)
        elif event is BackendEvent.OWN_RELOAD:
            # The reconcile that made it applied everything again after it; the
            # other tools put their items back now: a reload to settle all the same.
            self.metrics.own_reloads.inc()
            self._reloaded()
        elif event is BackendEvent.APPEARED:
            log.info("firewalld_appeared")
            self._reloaded()
            self._set_up(True)
            self.request(Trigger.OWNER)
        elif event is BackendEvent.VANISHED:
            log.warning("firewalld_vanished")
            self._set_up(False)
            if self.backend is not None:  # auto mode: iptables takes over now
                self.request(Trigger.OWNER)
        elif event is BackendEvent.CHANGED:
            # The change signals a reload sends after Reloaded are the reload's.
            self.request(Trigger.RELOAD if self._settling() else Trigger.DRIFT)

    def _reloaded(self) -> None:
        self._last_reload = time.monotonic()
        self._reloads += 1

    def _settling(self) -> bool:
        """firewalld reloaded or came back moments ago (see `reload_settle`)."""
        return time.monotonic() - self._last_reload < self.settings.reload_settle

    def _come_back_after_settling(self) -> None:
        """Items waited for the reload to settle: reconcile again once it has."""
        if self._settle_handle is not None:
            self._settle_handle.cancel()
        delay = max(0.0, self._last_reload + self.settings.reload_settle - time.monotonic()) + 0.05
        self._settle_handle = asyncio.get_running_loop().call_later(delay, self.request, Trigger.SETTLE)

    @property
    def backend(self) -> Router | None:
        """The routing in force; None while the mode cannot work (firewalld mode, firewalld away)."""
        return self.backends.in_charge

    def _set_up(self, up: bool) -> None:
        self.metrics.firewalld_up.set(1 if up and not self._unresponsive else 0)
        self._route(up)
        if up and self._retry is not None:
            # firewalld is back: retry now rather than at the end of a long backoff
            self._backoff = self.settings.backoff_initial
            self._retry_now()

    def _check_responsive(self) -> None:
        """Mirror whether firewalld answers its calls (see the firewalld backend's `call`).

        A firewalld that stops answering (SIGSTOP, a deadlock) still owns its
        bus name: it is marked down (``fwrecon_firewalld_up`` 0, one
        ``firewalld_unresponsive`` event) but stays in charge, as moving its
        items to iptables would double them the moment it thaws.  The failed
        reconcile is retried with the usual backoff; the first one that gets
        answers marks it up again.
        """
        firewalld = self.backends.firewalld
        unresponsive = firewalld is not None and not getattr(firewalld, "responsive", True)  # (test doubles lack it)
        if unresponsive == self._unresponsive:
            return
        self._unresponsive = unresponsive
        if unresponsive:
            log.error(
                "firewalld_unresponsive",
                timeout_seconds=getattr(firewalld, "timeout", None),
                hint="still in charge; retrying with backoff",
            )
            self.metrics.firewalld_up.set(0)
        else:
            log.info("firewalld_responsive")
            self.metrics.firewalld_up.set(1 if self.backends.firewalld_up else 0)

    def _route(self, firewalld_up: bool) -> None:
        """Put the backends for the mode and firewalld's presence in charge."""
        if self.backends.route(firewalld_up):
            current = self.backend.name if self.backend else None
            for name in BACKEND_NAMES:
                self.metrics.active_backend.labels(backend=name).set(1 if name == current else 0)

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or `stop()`); 0 on a clean stop."""
        loop = asyncio.get_running_loop()
        with self.store.locked():
            self.store.load()  # a corrupt state file is fatal here, not later
            if self.settings.metrics_address:
                self.metrics.serve(self.settings.metrics_address)
                log.info("metrics_listening", address=self.settings.metrics_address)

            def policy_changed() -> None:  # called from watchdog's thread
                loop.call_soon_threadsafe(self.request, Trigger.POLICY)

            watcher = PolicyWatcher(self.settings.policy_dir, policy_changed)
            watcher.start()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            log.info("fwrecon_started", policy_dir=str(self.settings.policy_dir), state_file=str(self.settings.state_file))
            self.request(Trigger.STARTUP)
            if not self.backends.uses_firewalld:
                self._route(False)  # with firewalld in play, the first bus connection decides
            if self.backends.nftables is not None:
                await self.backends.nftables.subscribe(self.on_backend_event)
            background = [
                self._guarded(self._connection_loop(), "connection"),
                self._guarded(self._resync_loop(), "resync"),
                self._guarded(self._watchdog_loop(), "watchdog"),
            ]
            worker = asyncio.create_task(self._worker(), name="fwrecon-worker")
            try:
                await self._stopping.wait()
                self.notifier.stopping()
                await self._finish(worker)
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(signum)
                watcher.stop()
                await self.backends.close()
        log.info("fwrecon_stopped")
        return 0

    def stop(self) -> None:
        log.info("shutdown_requested")
        self._stopping.set()
        self._wake.set()

    def _on_sighup(self) -> None:
        log.info("sighup_reread_policies")
        self.request(Trigger.SIGNAL)

    async def _finish(self, worker: asyncio.Task[None]) -> None:
        """Let the reconcile in flight finish; after the grace period cancel it (rollback)."""
        if self._retry is not None:
            self._retry.cancel()
        if self._settle_handle is not None:
            self._settle_handle.cancel()
        if not self._busy:
            worker.cancel()
        else:
            try:
                async with asyncio.timeout(self.settings.shutdown_grace):
                    await asyncio.shield(worker)
            except TimeoutError:
                log.warning("shutdown_cancelling_reconcile", grace_seconds=self.settings.shutdown_grace)
                worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    def _guarded(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        """A background task whose unexpected end is logged and stops the daemon."""

        async def guard() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background_task_crashed", task=name)
                self.stop()

        return asyncio.create_task(guard(), name=f"fwrecon-{name}")

    # -- background loops ----------------------------------------------------------

    async def _connection_loop(self) -> None:
        """The bus connection to firewalld, kept by the backend selection."""
        if not self.backends.uses_firewalld:
            return
        await self.backends.keep_connected(
            self._connect,
            self.settings.bus_address,
            backoff=(self.settings.backoff_initial, self.settings.backoff_max),
            on_event=self.on_backend_event,
            on_presence=self._on_presence,
        )

    def _on_presence(self, up: bool, back: bool) -> None:
        self._set_up(up)
        if back:  # what firewalld holds may have changed while the bus was away
            self.request(Trigger.OWNER)

    async def _resync_loop(self) -> None:
        if self.settings.resync_interval <= 0:
            return
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            self.request(Trigger.RESYNC)

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- the worker ------------------------------------------------------------------

    async def _worker(self) -> None:
        while not self._stopping.is_set():
            await self._wake.wait()
            await self._settle()
            if self._stopping.is_set():
                return
            if not self._pending or self.backend is None:
                self._wake.clear()  # keep what is pending until firewalld is back
                continue
            batch, self._pending = self._pending, {}
            self._wake.clear()
            self._busy = True
            try:
                converged = await self._reconcile(batch)
            finally:
                self._busy = False
            if converged:
                self._backoff = self.settings.backoff_initial
            elif not self._stopping.is_set():
                delay = self._backoff
                self._backoff = min(self._backoff * 2, self.settings.backoff_max)
                log.info("reconcile_retry_scheduled", retry_in=delay)
                self._schedule_retry(batch, delay)

    async def _settle(self) -> None:
        """Wait for a quiet window after the first request, bounded by max_delay.

        Not after a reload or restart: firewalld announces those once it is
        ready, our rules are gone, and every millisecond of waiting is a hole.
        """
        if not self._pending or self._pending.keys() & {Trigger.RELOAD, Trigger.OWNER}:
            return
        deadline = min(self._pending.values()) + self.settings.max_delay
        while not self._stopping.is_set():
            self._wake.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(min(self.settings.quiet_window, remaining)):
                    await self._wake.wait()
            except TimeoutError:
                return

    async def _reconcile(self, batch: dict[Trigger, float]) -> bool:
        trigger = next(t for t in _LABEL_ORDER if t in batch)
        # A reload since the previous reconcile started explains missing items
        # as well as drift does: never count that as drift.
        reloads, previous = self._reloads, self._reloads_at_last_start
        self._reloads_at_last_start = reloads
        if trigger in (Trigger.DRIFT, Trigger.RESYNC) and reloads != previous:
            trigger = Trigger.RELOAD
        started = time.monotonic()
        assert self.backend is not None
        if not batch.keys() <= _MAY_KEEP_READS:
            self.backend.read_afresh()  # a resync repairs what events missed: it never builds on them
        try:
            with gc_paused():
                loaded = load_policy_dir(self.settings.policy_dir, self._policy_cache)
                reconciler = Reconciler(
                    self.backend,
                    self.store,
                    names=self.backend.known_names,
                    memo=self._refusal_memo,
                    persist=self.settings.persist,
                    said=self._said,
                )
                report = await reconciler.reconcile(loaded, self.last_good, settling=self._settling())
            if report.deferred:
                self._come_back_after_settling()
        except BackendUnavailable as exc:
            return self._record_error(trigger, started, exc, "backend_unavailable")
        except FwreconError as exc:
            return self._record_error(trigger, started, exc, "reconcile_error")
        except Exception as exc:  # a bug must not kill the daemon: log, back off, retry
            log.exception("reconcile_crashed", trigger=trigger.value)
            return self._record_error(trigger, started, exc, "reconcile_crashed")
        self._check_responsive()
        self._remember_last_good(loaded, report)
        self._record(trigger, batch, loaded, report, time.monotonic() - started)
        return report.converged

    def _remember_last_good(self, loaded: LoadResult, report: ReconcileReport) -> None:
        failed = {o.policy for o in report.failed}
        for name, policy in loaded.policies.items():
            if name not in report.invalid and name not in failed:
                self.last_good[name] = policy.items
        for name in list(self.last_good):
            if not loaded.unreadable and name not in loaded.policies and name not in loaded.errors:
                del self.last_good[name]  # the file is gone: nothing of it is wanted

    def _record_error(self, trigger: Trigger, started: float, exc: BaseException, event: str) -> bool:
        self._check_responsive()
        duration = time.monotonic() - started
        self.metrics.reconcile_duration.labels(trigger=trigger.value).observe(duration)
        self.metrics.reconciles.labels(trigger=trigger.value, result="error").inc()
        log.error(
            event,
            trigger=trigger.value,
            error=str(exc),
            code=getattr(exc, "code", None),
            duration_ms=round(duration * 1000, 2),
            result="error",
        )
        status_record.record_error(self.settings.state_file, trigger.value, exc, duration)  # for `fwrecon status`
        return False

    def _name_for(self, op: Op) -> str:
        if op.via is not None:  # out of the backend that held it before a switch
            return op.via
        return self.backend.name_for(op.item) if self.backend else NO_BACKEND

    def _record(
        self, trigger: Trigger, batch: dict[Trigger, float], loaded: LoadResult, report: ReconcileReport, duration: float
    ) -> None:
        m = self.metrics
        self._logged_errors = log_policy_errors(report.invalid, self._logged_errors)
        # error: the reconcile could not run (see _record_error); degraded: it
        # ran to its end, but some policy is invalid or was rolled back.
        result = "success" if report.converged and not report.invalid else "degraded"
        m.reconcile_duration.labels(trigger=trigger.value).observe(duration)
        m.reconciles.labels(trigger=trigger.value, result=result).inc()
        for outcome in report.outcomes:
            for op, op_result in outcome.ops:
                m.operations.labels(backend=self._name_for(op), action=op.action, result=op_result.value).inc()
            if outcome.status == "failed":
                m.rollbacks.labels(policy=outcome.policy).inc()
                if outcome.failed_op:
                    m.operations.labels(
                        backend=self._name_for(outcome.failed_op), action=outcome.failed_op.action, result="failed"
                    ).inc()
                for undo in outcome.undone:
                    m.operations.labels(backend=self._name_for(undo), action=undo.action, result="rollback").inc()
        invalid = len(report.invalid)
        m.policies.labels(state="invalid").set(invalid)
        m.policies.labels(state="valid").set(len(loaded.policies.keys() - report.invalid.keys()))
        m.owned_items.set(report.owned_items)
        m.set_elements.clear()  # (a set fwrecon no longer owns elements in goes from the output)
        for (family, name), count in report.set_elements.items():
            m.set_elements.labels(family=family, set=name).set(count)
        m.ipset_entries.clear()
        for name, count in report.ipset_entries.items():
            m.ipset_entries.labels(ipset=name).set(count)
        if trigger in (Trigger.DRIFT, Trigger.RESYNC) and report.write_ops and self._reloads == self._reloads_at_last_start:
            m.drift_repairs.inc(report.write_ops)
        if Trigger.RELOAD in batch or Trigger.OWNER in batch:
            m.writes_after_reload.observe(report.write_ops)
        now = time.monotonic()
        latencies: dict[str, float] = {}
        if report.converged:
            m.last_success.set(time.time())
            for kind in (Trigger.RELOAD, Trigger.OWNER):
                if kind in batch:
                    latencies["reapply_ms"] = round((now - batch[kind]) * 1000, 2)
                    m.reapply_after_reload.observe(now - batch[kind])
                    break
            if Trigger.POLICY in batch:
                latencies["event_to_converged_ms"] = round((now - batch[Trigger.POLICY]) * 1000, 2)
                m.event_to_converged.observe(now - batch[Trigger.POLICY])
        status = (
            f"{result}: {report.write_ops} ops, {report.owned_items} owned, {invalid} invalid policies, "
            f"{len(report.failed)} failed"
        )
        if not self._ready_sent:
            # Ready once a reconcile ran to its end, each policy applied or rolled
            # back and reported: a policy the firewall refuses (retried with
            # backoff) must not keep the service from starting, nor hold up the
            # network that waits for it, nor get it killed by TimeoutStartSec=.
            self.notifier.ready(status)
            self._ready_sent = True
        else:
            self.notifier.status(status)
        log.info(
            "reconcile",
            trigger=trigger.value,
            ops=report.write_ops,
            duration_ms=round(duration * 1000, 2),
            result=result,
            failed=[o.policy for o in report.failed],
            invalid=sorted(report.invalid),
            **latencies,
        )
        status_record.record_reconcile(
            self.settings.state_file, trigger.value, result, loaded, report, duration
        )  # for `fwrecon status`
