#!/usr/bin/env python3
"""Benchmark: fwrecon apply vs a raw dbus-fast loop vs a firewall-cmd loop.

Run as root (it starts its own sandboxed firewalld in a network namespace):

    .venv/bin/python tests/perf/bench_apply.py [--sizes 100 500 1000] [--cmd-n 20]

For each N it applies N zone ports and N direct rules (2N items) from empty:
once with a raw loop of dbus-fast calls (the floor: the same calls, nothing
else), once with fwrecon (load + validate + observe + plan + transaction +
state file), and prints fwrecon's time as a ratio of the raw loop measured in
the same run.  A firewall-cmd loop (one process per rule) runs on a smaller N
and is compared per item.  Finally it times a no-op apply at the largest N.
Not part of the test suite: timings are noisy and prove nothing on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "contrib"))
sys.path.insert(0, str(ROOT))

from fwsandbox import Sandbox  # noqa: E402

from reconciler.backends.firewalld import IFACE_DIRECT, IFACE_ZONE, FirewalldBackend  # noqa: E402
from reconciler.engine import Reconciler  # noqa: E402
from reconciler.logsetup import configure_logging  # noqa: E402
from reconciler.policydir import load_policy_dir  # noqa: E402
from reconciler.state import StateStore  # noqa: E402

BASE_PORT = 20000


def rule_args(i: int) -> list[str]:
    return ["-p", "tcp", "--dport", str(BASE_PORT + i), "-j", "ACCEPT"]


def write_policy(directory: Path, n: int) -> None:
    ports = ", ".join(f'"{BASE_PORT + i}/tcp"' for i in range(n))
    rules = "".join(
        f'\n[[direct.rule]]\nfamily = "ipv4"\ntable = "filter"\nchain = "INPUT"\npriority = 0\nargs = {rule_args(i)!r}\n'.replace(
            "'", '"'
        )
        for i in range(n)
    )
    path = directory / "bench.toml"
    path.write_text(f"[zone.public]\nports = [{ports}]\n{rules}")
    path.chmod(0o644)


async def raw_loop(bus: str, n: int) -> float:
    backend = await FirewalldBackend.connect(bus)
    try:
        started = time.perf_counter()
        # the same calls in the same order as fwrecon's plan (zones before direct rules)
        for i in range(n):
            await backend.call(IFACE_ZONE, "addPort", "sssi", ["public", str(BASE_PORT + i), "tcp", 0])
        for i in range(n):
            await backend.call(IFACE_DIRECT, "addRule", "sssias", ["ipv4", "filter", "INPUT", 0, rule_args(i)])
        return time.perf_counter() - started
    finally:
        await backend.close()


async def fwrecon_apply(bus: str, policy_dir: Path, state: Path) -> tuple[float, int, int]:
    backend = await FirewalldBackend.connect(bus)
    try:
        started = time.perf_counter()
        report = await Reconciler(backend, StateStore(state), names=backend.known_names).reconcile(load_policy_dir(policy_dir))
        elapsed = time.perf_counter() - started
        assert report.converged, report.failed
        return elapsed, backend.writes, backend.calls
    finally:
        await backend.close()


async def noop_dbus_time(bus: str, policy_dir: Path, state: Path) -> tuple[float, float, int]:
    """Total time of a no-op reconcile and the part spent waiting on D-Bus."""
    backend = await FirewalldBackend.connect(bus)
    spent = 0.0
    call = backend.call

    async def timed_call(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal spent
        t0 = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        finally:
            spent += time.perf_counter() - t0

    backend.call = timed_call  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        report = await Reconciler(backend, StateStore(state), names=backend.known_names).reconcile(load_policy_dir(policy_dir))
        total = time.perf_counter() - started
        assert report.write_ops == 0 and backend.writes == 0
        return total, spent, backend.calls
    finally:
        await backend.close()


def firewall_cmd_loop(sb: Sandbox, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        sb.firewall_cmd("--zone=public", f"--add-port={BASE_PORT + i}/tcp", check=True)
        sb.firewall_cmd("--direct", "--add-rule", "ipv4", "filter", "INPUT", "0", *rule_args(i), check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--cmd-n", type=int, default=20, help="rules for the firewall-cmd loop (it is slow)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the median is reported")
    args = parser.parse_args()
    configure_logging("console", logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="fwrecon-bench-"))
    sb = Sandbox(work / "sandbox", f"fwrecon-bench{Path(work).name[-6:]}")
    sb.start()
    try:
        bus = sb.bus_address
        print(f"{'N':>6} {'items':>6} {'raw dbus s':>11} {'fwrecon s':>10} {'ratio':>6} {'writes':>7}")
        for n in args.sizes:
            raws, ours = [], []
            for attempt in range(args.repeat):
                sb.reset()
                raws.append(asyncio.run(raw_loop(bus, n)))
                sb.reset()
                policy_dir = work / f"p{n}-{attempt}"
                policy_dir.mkdir(mode=0o755)
                write_policy(policy_dir, n)
                state = work / f"state-{n}-{attempt}.json"
                elapsed, writes, _ = asyncio.run(fwrecon_apply(bus, policy_dir, state))
                ours.append(elapsed)
            raw, our = statistics.median(raws), statistics.median(ours)
            print(f"{n:>6} {2 * n:>6} {raw:>11.3f} {our:>10.3f} {our / raw:>5.2f}x {writes:>7}")
        total, dbus, calls = asyncio.run(noop_dbus_time(bus, policy_dir, state))
        print(
            f"no-op apply at N={n} ({2 * n} owned items): {total * 1000:.1f} ms total, "
            f"{dbus * 1000:.1f} ms in {calls} D-Bus calls (reads only)"
        )
        sb.reset()
        per_cmd = firewall_cmd_loop(sb, args.cmd_n) / (2 * args.cmd_n)
        per_ours = our / (2 * n)
        print(
            f"firewall-cmd loop: {per_cmd * 1000:.1f} ms per item (N={args.cmd_n}); "
            f"fwrecon {per_ours * 1000:.2f} ms per item: {per_cmd / per_ours:.0f}x faster"
        )
    finally:
        sb.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
