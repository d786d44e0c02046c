#!/usr/bin/env python3
"""Benchmark the reload gap: how long fwrecon's items are missing after a reload.

Run as root (it starts its own sandboxed firewalld in a network namespace):

    .venv/bin/python tests/perf/bench_reload.py [--sizes 300 1000]

With N owned items (a third each: zone ports, rich rules, direct rules), the
gap runs from the reload request until every item is in force again, told by
firewalld's own signals (no polling):

* ``permanent``: `fwrecon run --persist permanent` owns the items; firewalld
  restores them itself, so the gap ends with its ``Reloaded`` signal (checked
  with one read per container: every item is there). The daemon's reconcile
  after it must make no write call.
* ``runtime``: `fwrecon run --persist runtime`; the gap ends with the last
  ``PortAdded`` / ``RichRuleAdded`` / ``RuleAdded`` of fwrecon's re-adds.
* ``raw loop``: what every peer does, a dbus-fast loop re-adding the same
  items one call each on ``Reloaded``; it ends with the last signal too.
* ``firewalld reload``: the reload alone with the same items in the permanent
  configuration and no fwrecon running: the floor ``permanent`` is held to.

Then an apply from empty in each mode (`fwrecon apply`, the duration it logs
and the whole command), and the ratio permanent / runtime.
Not part of the test suite; prints figures and ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "contrib"))
sys.path.insert(0, str(ROOT / "tests" / "perf"))
sys.path.insert(0, str(ROOT))

from bench_daemon import Daemon, items, policy_text  # noqa: E402
from dbus_fast import Message, MessageType, Variant  # noqa: E402
from fwsandbox import Sandbox  # noqa: E402

from reconciler.backends.firewalld import IFACE_DIRECT, IFACE_MAIN, IFACE_ZONE, FirewalldBackend  # noqa: E402
from reconciler.backends.firewalld_settings import BUS_NAME  # noqa: E402

CONFIG = BUS_NAME + ".config"
CONFIG_PATH = "/org/fedoraproject/FirewallD1/config"
ADDED = {(IFACE_ZONE, "PortAdded"), (IFACE_ZONE, "RichRuleAdded"), (IFACE_DIRECT, "RuleAdded")}


class Watcher:
    """firewalld's Reloaded and item-added signals, time-stamped as they arrive."""

    def __init__(self, backend: FirewalldBackend) -> None:
        self.backend = backend
        self.reloaded: float | None = None
        self.added: list[float] = []
        self.reloaded_seen = asyncio.Event()
        self._wake = asyncio.Event()
        backend.bus.add_message_handler(self._on_message)

    async def subscribe(self) -> None:
        for interface in (IFACE_MAIN, IFACE_ZONE, IFACE_DIRECT):
            await self.backend.bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="AddMatch",
                    signature="s",
                    body=[f"type='signal',sender='{BUS_NAME}',interface='{interface}'"],
                )
            )

    def _on_message(self, message: Message) -> None:
        if message.message_type != MessageType.SIGNAL:
            return
        now = time.perf_counter()
        if message.interface == IFACE_MAIN and message.member == "Reloaded":
            self.reloaded = now
            self.reloaded_seen.set()
        elif (message.interface, message.member) in ADDED and self.reloaded is not None:
            self.added.append(now)
        self._wake.set()

    async def reload(self, until: Callable[[Watcher], bool], timeout: float = 300) -> float:
        """Seconds from the reload request until ``until`` holds (judged on each signal)."""
        self.reloaded, self.added = None, []
        self.reloaded_seen.clear()
        started = time.perf_counter()
        await self.backend.call(IFACE_MAIN, "reload", "", [])
        deadline = time.monotonic() + timeout
        while not until(self):
            self._wake.clear()
            await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - time.monotonic()))
        last = max([self.reloaded or started, *self.added])
        return last - started


async def all_in_force(backend: FirewalldBackend, n: int) -> bool:
    """One read per container: every bench item is in the runtime configuration."""
    ports, rich, rules = items(n)
    (zone,) = await backend.call(IFACE_ZONE, "getZoneSettings2", "s", ["public"])
    have_ports = {int(p) for p, proto in zone.get("ports", Variant("a(ss)", [])).value if proto == "tcp"}
    have_rich = set(zone.get("rules_str", Variant("as", [])).value)
    (direct,) = await backend.call(IFACE_DIRECT, "getAllRules", "", [])
    have_rules = {tuple(args) for _ipv, _table, _chain, _prio, args in direct}
    return set(ports) <= have_ports and set(rich) <= have_rich and {tuple(r) for r in rules} <= have_rules


async def gap(sb: Sandbox, n: int, until: Callable[[Watcher], bool], readd: bool = False) -> float:
    backend = await FirewalldBackend.connect(sb.bus_address, timeout=300)
    try:
        watcher = Watcher(backend)
        await watcher.subscribe()
        if not readd:
            seconds = await watcher.reload(until)
        else:
            task = asyncio.ensure_future(watcher.reload(until))
            await watcher.reloaded_seen.wait()  # the raw loop starts on Reloaded, as peers do
            await raw_readd(backend, n)
            seconds = await task
        assert await all_in_force(backend, n), "not every item is in force after the gap"
        return seconds
    finally:
        await backend.close()


async def raw_readd(backend: FirewalldBackend, n: int) -> None:
    ports, rich, rules = items(n)
    for port in ports:
        await backend.call(IFACE_ZONE, "addPort", "sssi", ["public", str(port), "tcp", 0])
    for rule in rich:
        await backend.call(IFACE_ZONE, "addRichRule", "ssi", ["public", rule, 0])
    for args in rules:
        await backend.call(IFACE_DIRECT, "addRule", "sssias", ["ipv4", "filter", "INPUT", 0, args])


async def make_permanent(sb: Sandbox, n: int) -> None:
    """The bench items in firewalld's permanent configuration, written without fwrecon."""
    ports, rich, rules = items(n)
    backend = await FirewalldBackend.connect(sb.bus_address, timeout=300)
    try:
        (path,) = await backend.call(CONFIG, "getZoneByName", "s", ["public"], path=CONFIG_PATH)
        settings: dict[str, Any] = {
            "ports": Variant("a(ss)", [[str(p), "tcp"] for p in ports]),
            "rules_str": Variant("as", rich),  # (zones name rich rules so)
        }
        await backend.call(CONFIG + ".zone", "update2", "a{sv}", [settings], path=path)
        await backend.call(
            CONFIG + ".direct",
            "update",
            "(a(sss)a(sssias)a(sas))",
            [[[], [["ipv4", "filter", "INPUT", 0, args] for args in rules], []]],
            path=CONFIG_PATH,
        )
    finally:
        await backend.close()


def daemon_gap(sb: Sandbox, work: Path, n: int, persist: str, repeat: int) -> tuple[float, int]:
    """The median gap over ``repeat`` reloads with `fwrecon run --persist persist` owning
    the items, and the most writes one of its reconciles after a reload made."""
    sb.reset()
    daemon = Daemon(sb, Path(tempfile.mkdtemp(dir=work)), extra=("--persist", persist))
    try:
        daemon.write("bench", policy_text(n))
        daemon.wait_for(lambda r: r["ops"] >= n and r["result"] == "success")
        gaps, writes = [], 0
        for _ in range(repeat):
            time.sleep(0.5)  # the echoes of its own writes settle
            seen = len(daemon.reconciles())
            if persist == "permanent":
                gaps.append(asyncio.run(gap(sb, n, lambda w: w.reloaded is not None)))
            else:
                gaps.append(asyncio.run(gap(sb, n, lambda w: len(w.added) >= n)))
            record = daemon.wait_for(lambda r: r["trigger"] == "reload" and r["result"] == "success", after=seen)
            writes = max(writes, record["ops"])
        return statistics.median(gaps), writes
    finally:
        daemon.stop()


def apply_from_empty(sb: Sandbox, work: Path, n: int, persist: str) -> tuple[float, float]:
    """(the duration `fwrecon apply` logs, the whole command's wall time) from empty."""
    sb.reset()
    run = Path(tempfile.mkdtemp(dir=work))
    (run / "policies").mkdir(mode=0o755)
    policy = run / "policies" / "bench.toml"
    policy.write_text(policy_text(n))
    policy.chmod(0o644)
    argv = [sys.executable, "-m", "reconciler", "apply", "--persist", persist, "--bus-address", sb.bus_address]
    argv += ["--policy-dir", str(run / "policies"), "--state-file", str(run / "state.json"), "--log-format", "json"]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"apply --persist {persist} failed: {proc.stdout}{proc.stderr}")
    done = next(json.loads(line) for line in proc.stderr.splitlines() if '"event": "reconcile_done"' in line)
    return done["duration_ms"] / 1000, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--repeat", type=int, default=3, help="reloads per figure (the median is shown)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fwrecon-bench-"))
    sb = Sandbox(work / "sandbox", f"fwrecon-br{work.name[-6:]}")
    sb.start()
    try:
        sb.reset()
        empty = statistics.median(asyncio.run(gap(sb, 0, lambda w: w.reloaded is not None)) for _ in range(args.repeat))
        print(f"empty reload: {empty:.3f} s (medians of {args.repeat} reloads below)")
        print(
            f"{'N':>6} {'fw reload s':>12} {'permanent s':>12} {'writes':>7} {'runtime s':>10} {'writes':>7}"
            f" {'raw loop s':>11} {'perm/fw':>8} {'runtime/perm':>13} {'raw/perm':>9}"
        )
        for n in args.sizes:
            sb.reset()
            asyncio.run(make_permanent(sb, n))
            sb.reload()  # load them into the runtime; the reloads after it are the ones timed
            floor = statistics.median(asyncio.run(gap(sb, n, lambda w: w.reloaded is not None)) for _ in range(args.repeat))
            permanent, permanent_writes = daemon_gap(sb, work, n, "permanent", args.repeat)
            runtime, runtime_writes = daemon_gap(sb, work, n, "runtime", args.repeat)
            raws = []
            for _ in range(args.repeat):
                sb.reset()
                raws.append(asyncio.run(gap(sb, n, lambda w, n=n: len(w.added) >= n, readd=True)))  # one *Added per item
            raw = statistics.median(raws)
            print(
                f"{n:>6} {floor:>12.3f} {permanent:>12.3f} {permanent_writes:>7} {runtime:>10.3f} {runtime_writes:>7}"
                f" {raw:>11.3f} {permanent / floor:>7.2f}x {runtime / permanent:>12.1f}x {raw / permanent:>8.1f}x"
            )
        print(f"\napply from empty{'':>4} {'runtime s':>10} {'permanent s':>12} {'perm/runtime':>13}  (whole command)")
        for n in args.sizes:
            runtime, runtime_wall = apply_from_empty(sb, work, n, "runtime")
            permanent, permanent_wall = apply_from_empty(sb, work, n, "permanent")
            print(
                f"{n:>20} {runtime:>10.3f} {permanent:>12.3f} {permanent / runtime:>12.2f}x"
                f"  ({runtime_wall:.2f} s, {permanent_wall:.2f} s: {permanent_wall / runtime_wall:.2f}x)"
            )
    finally:
        sb.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
