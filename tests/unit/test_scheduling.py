"""The controller's scheduling, against the in-memory backend: coalescing,
the upper bound on delay, backoff, waiting while firewalld is away, stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from reconciler.backends.base import BackendEvent, ServiceBackend
from reconciler.backends.memory import MemoryBackend
from reconciler.backends.select import BackendSet
from reconciler.daemon import Controller, DaemonSettings, Trigger
from reconciler.errors import BackendUnavailable
from reconciler.metrics import Metrics
from reconciler.model import Port, Scope


class FakeFirewall(MemoryBackend, ServiceBackend):
    """MemoryBackend plus the service side of the interface (events, up/down;
    no names to check policies against)."""

    def __init__(self, up: bool = True) -> None:
        super().__init__()
        self.up = up
        self.callback = None
        self.observes = 0
        self.unavailable = 0  # fail this many reconciles with BackendUnavailable
        self.closed = asyncio.Event()
        self.afresh = 0  # read_afresh calls

    def read_afresh(self) -> None:
        self.afresh += 1

    async def observe(self, containers, known=None, *, removable=None):  # type: ignore[no-untyped-def]
        self.observes += 1
        if self.unavailable:
            self.unavailable -= 1
            raise BackendUnavailable("firewalld is not available (test)")
        return await super().observe(containers, known, removable=removable)

    async def subscribe(self, callback):  # type: ignore[no-untyped-def]
        self.callback = callback

    async def is_up(self) -> bool:
        return self.up

    async def wait_closed(self) -> None:
        await self.closed.wait()

    async def known_names(self) -> None:
        return None


def settings(tmp_path: Path) -> DaemonSettings:
    policies = tmp_path / "policies"
    policies.mkdir(mode=0o755, exist_ok=True)
    return DaemonSettings(
        policy_dir=policies,
        state_file=tmp_path / "state.json",
        resync_interval=0,
        quiet_window=0.05,
        max_delay=0.3,
        backoff_initial=0.05,
        backoff_max=0.2,
        shutdown_grace=0.5,
    )


async def run_with(controller: Controller, scenario) -> int:  # type: ignore[no-untyped-def]
    task = asyncio.create_task(controller.run())
    try:
        await scenario()
    finally:
        controller.stop()
    return await asyncio.wait_for(task, 5)


async def eventually(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Poll instead of sleeping a fixed time, so a slow machine is not a failure."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


class FakeBackends(BackendSet):
    """BackendSet in firewalld mode (its connection loop and routing as they
    are) whose routing is the fake firewall alone: no tool backend, no nft monitor."""

    def __init__(self) -> None:
        super().__init__("firewalld")
        self.iptables = self.nftables = None

    def router(self, firewalld_up: bool):  # type: ignore[no-untyped-def]
        return self.firewalld if firewalld_up else None


def make(tmp_path: Path, firewall: FakeFirewall) -> tuple[Controller, Metrics]:
    async def connect(_address):  # type: ignore[no-untyped-def]
        return firewall

    metrics = Metrics()
    return Controller(settings(tmp_path), metrics, connect=connect, backends=FakeBackends()), metrics  # type: ignore[arg-type]


def count(metrics: Metrics, trigger: str, result: str = "success") -> float:
    return metrics.reconciles.labels(trigger=trigger, result=result)._value.get()


def test_burst_of_requests_is_one_reconcile(tmp_path: Path) -> None:
    firewall = FakeFirewall()
    controller, metrics = make(tmp_path, firewall)

    async def scenario() -> None:
        await eventually(lambda: count(metrics, "startup") == 1)
        before = firewall.observes
        for _ in range(50):
            controller.request(Trigger.POLICY)
        await eventually(lambda: count(metrics, "policy") == 1)
        await asyncio.sleep(0.2)
        assert firewall.observes - before == 1

    assert asyncio.run(run_with(controller, scenario)) == 0
    assert count(metrics, "startup") == 1


def test_a_steady_trickle_still_converges_within_the_bound(tmp_path: Path) -> None:
    firewall = FakeFirewall()
    controller, metrics = make(tmp_path, firewall)

    async def scenario() -> None:
        await eventually(lambda: count(metrics, "startup") == 1)
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0
        while loop.time() < end:  # never 50 ms of quiet
            controller.request(Trigger.DRIFT)
            await asyncio.sleep(0.02)
        assert count(metrics, "drift") >= 2  # bounded by max_delay, not starved

    asyncio.run(run_with(controller, scenario))


def test_only_a_policy_edit_or_drift_may_build_on_reads_kept_since_the_last_reconcile(tmp_path: Path) -> None:
    """A resync repairs what an event stream missed: it reads afresh, as a
    reload and a signal do; a policy edit and drift an event told of need not."""
    firewall = FakeFirewall()
    controller, metrics = make(tmp_path, firewall)

    async def scenario() -> None:
        await eventually(lambda: count(metrics, "startup") == 1)
        afresh = firewall.afresh
        for trigger in (Trigger.POLICY, Trigger.DRIFT):
            controller.request(trigger)
            await eventually(lambda trigger=trigger: count(metrics, trigger.value) == 1)
        assert firewall.afresh == afresh
        controller.request(Trigger.RESYNC)
        await eventually(lambda: count(metrics, "resync") == 1)
        assert firewall.afresh == afresh + 1
        controller.request(Trigger.SIGNAL)
        await eventually(lambda: count(metrics, "signal") == 1)
        assert firewall.afresh == afresh + 2

    asyncio.run(run_with(controller, scenario))


def test_reconcile_applies_policy_files(tmp_path: Path) -> None:
    firewall = FakeFirewall()
    controller, metrics = make(tmp_path, firewall)
    policy = controller.settings.policy_dir / "web.toml"

    async def scenario() -> None:
        await eventually(lambda: count(metrics, "startup") == 1)
        policy.write_text('[zone.public]\nports = ["80/tcp"]\n')
        policy.chmod(0o644)
        await eventually(lambda: firewall.state.has(Port(Scope("zone", "public"), "80", "tcp")))
        await eventually(lambda: count(metrics, "policy") >= 1)
        assert firewall.calls == ["+ zone public port 80/tcp"]
        assert metrics.owned_items._value.get() == 1

    asyncio.run(run_with(controller, scenario))
    assert metrics.event_to_converged._sum.get() > 0


def test_unavailable_backs_off_then_recovers(tmp_path: Path) -> None:
    firewall = FakeFirewall()
    firewall.unavailable = 3
    controller, metrics = make(tmp_path, firewall)

    async def scenario() -> None:
        await eventually(lambda: count(metrics, "startup", "success") == 1)  # retried, same trigger
        assert count(metrics, "startup", "error") == 3

    asyncio.run(run_with(controller, scenario))


def test_nothing_is_attempted_while_firewalld_is_away(tmp_path: Path) -> None:
    firewall = FakeFirewall(up=False)
    controller, metrics = make(tmp_path, firewall)

    async def scenario() -> None:
        await asyncio.sleep(0.4)
        assert firewall.observes == 0
        assert metrics.firewalld_up._value.get() == 0
        firewall.up = True
        firewall.callback(BackendEvent.APPEARED)
        await eventually(lambda: firewall.observes == 1)
        assert metrics.firewalld_up._value.get() == 1
        firewall.callback(BackendEvent.VANISHED)
        controller.request(Trigger.DRIFT)
        await asyncio.sleep(0.3)
        assert firewall.observes == 1

    asyncio.run(run_with(controller, scenario))


def test_reload_event_counts_and_reapplies(tmp_path: Path) -> None:
    firewall = FakeFirewall()
    controller, metrics = make(tmp_path, firewall)

    async def scenario() -> None:
        await eventually(lambda: count(metrics, "startup") == 1)
        for _ in range(10):
            firewall.callback(BackendEvent.RELOADED)
        await eventually(lambda: count(metrics, "reload") == 1)
        await asyncio.sleep(0.2)
        assert count(metrics, "reload") == 1
        assert metrics.firewalld_reloads._value.get() == 10
        assert metrics.reapply_after_reload._sum.get() > 0
        assert metrics.registry.get_sample_value("fwrecon_writes_after_reload_count") == 1  # one reconcile for ten

    asyncio.run(run_with(controller, scenario))


def test_its_own_reload_is_counted_apart_and_reapplies_nothing_more(tmp_path: Path) -> None:
    firewall = FakeFirewall()
    controller, metrics = make(tmp_path, firewall)

    async def scenario() -> None:
        await eventually(lambda: count(metrics, "startup") == 1)
        firewall.callback(BackendEvent.OWN_RELOAD)
        await asyncio.sleep(0.3)
        assert metrics.own_reloads._value.get() == 1 and metrics.firewalld_reloads._value.get() == 0
        assert firewall.observes == 1  # the reconcile that made it applied everything after it
        firewall.callback(BackendEvent.CHANGED)  # a change signal moments later: the reload's echo
        await eventually(lambda: count(metrics, "reload") == 1)

    asyncio.run(run_with(controller, scenario))


def test_an_invalid_policy_is_degraded_and_its_unchanged_errors_are_logged_once(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    firewall = FakeFirewall()
    controller, metrics = make(tmp_path, firewall)
    broken = controller.settings.policy_dir / "broken.toml"
    broken.write_text('[zone.public]\nports = ["80/tcpx"]\n')
    broken.chmod(0o644)

    async def scenario() -> None:
        await eventually(lambda: count(metrics, "startup", "degraded") == 1)
        for _ in range(3):  # resyncs with the same broken file
            before = count(metrics, "resync", "degraded")
            controller.request(Trigger.RESYNC)
            await eventually(lambda before=before: count(metrics, "resync", "degraded") == before + 1)
        broken.write_text('[zone.public]\nports = ["81/tcpx"]\n')  # a new error is said again
        controller.request(Trigger.POLICY)
        await eventually(lambda: count(metrics, "policy", "degraded") == 1)
        broken.write_text('[zone.public]\nports = ["81/tcp"]\n')
        controller.request(Trigger.POLICY)
        await eventually(lambda: count(metrics, "policy", "success") == 1)

    with capture_logs() as logs:
        asyncio.run(run_with(controller, scenario))
    said = [e["error"] for e in logs if e["event"] == "policy_invalid"]
    assert len(said) == 2 and "80/tcpx" in said[0] and "81/tcpx" in said[1]
    assert [e["policy"] for e in logs if e["event"] == "policy_valid_again"] == ["broken"]
    assert [e["result"] for e in logs if e["event"] == "reconcile"] == ["degraded"] * 5 + ["success"]
    assert count(metrics, "startup", "success") == 0 and count(metrics, "resync", "error") == 0
