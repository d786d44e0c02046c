#!/usr/bin/env python3
"""Benchmark `fwrecon run`: re-apply after reload, event-to-converged, RSS.

Run as root (it starts its own sandboxed firewalld in a network namespace):

    .venv/bin/python tests/perf/bench_daemon.py [--sizes 100 500 1000] [--edits 50]

1. Re-apply after ``reload`` with N owned items (a third each: zone ports,
   rich rules, direct rules).  fwrecon's time is what the daemon measures from
   the Reloaded signal to converged (its ``reapply_ms`` log field, the same
   figure as fwrecon_reapply_after_reload_seconds); the baseline is a raw
   dbus-fast loop re-adding the same items right after a reload, and a
   firewall-cmd loop (one process per item) on a small sample, per item.
2. Policy-file event to converged for one small policy: 50 edits, each adding
   a port; median and p95 of the daemon's ``event_to_converged_ms``.
3. The daemon's RSS with the largest N owned.
Not part of the test suite; prints figures and ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
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

BASE = 30000


def items(n: int) -> tuple[list[int], list[str], list[list[str]]]:
    third = n // 3
    ports = [BASE + i for i in range(third)]
    rich = [f'rule family="ipv4" port port="{BASE + 10000 + i}" protocol="tcp" accept' for i in range(third)]
    rules = [["-p", "tcp", "--dport", str(BASE + 20000 + i), "-j", "ACCEPT"] for i in range(n - 2 * third)]
    return ports, rich, rules


def policy_text(n: int) -> str:
    ports, rich, rules = items(n)
    text = "[zone.public]\nports = [" + ", ".join(f'"{p}/tcp"' for p in ports) + "]\n"
    text += "rich_rules = [" + ", ".join(f"'{r}'" for r in rich) + "]\n"
    for args in rules:
        text += '\n[[direct.rule]]\nfamily = "ipv4"\ntable = "filter"\nchain = "INPUT"\nargs = ' + json.dumps(args) + "\n"
    return text


async def raw_readd(bus: str, n: int) -> float:
    ports, rich, rules = items(n)
    backend = await FirewalldBackend.connect(bus)
    try:
        started = time.perf_counter()
        for port in ports:
            await backend.call(IFACE_ZONE, "addPort", "sssi", ["public", str(port), "tcp", 0])
        for rule in rich:
            await backend.call(IFACE_ZONE, "addRichRule", "ssi", ["public", rule, 0])
        for args in rules:
            await backend.call(IFACE_DIRECT, "addRule", "sssias", ["ipv4", "filter", "INPUT", 0, args])
        return time.perf_counter() - started
    finally:
        await backend.close()


def firewall_cmd_per_item(sb: Sandbox, n: int) -> float:
    ports, rich, rules = items(n)
    started = time.perf_counter()
    for port in ports:
        sb.firewall_cmd("--zone=public", f"--add-port={port}/tcp", check=True)
    for rule in rich:
        sb.firewall_cmd("--zone=public", f"--add-rich-rule={rule}", check=True)
    for args in rules:
        sb.firewall_cmd("--direct", "--add-rule", "ipv4", "filter", "INPUT", "0", *args, check=True)
    return (time.perf_counter() - started) / n


class Daemon:
    def __init__(self, sb: Sandbox, work: Path, extra: tuple[str, ...] = ()) -> None:
        self.policy_dir = work / "policies"
        self.policy_dir.mkdir(mode=0o755)
        self.log = work / "daemon.log"
        with open(self.log, "w") as log:  # the daemon keeps its own copy
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reconciler",
                    "run",
                    "--bus-address",
                    sb.bus_address,
                    "--policy-dir",
                    str(self.policy_dir),
                    "--state-file",
                    str(work / "state.json"),
                    "--log-format",
                    "json",
                    "--metrics-address",
                    "off",
                    "--resync-interval",
                    "0",
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def reconciles(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            if '"event": "reconcile"' in line:
                out.append(json.loads(line))
        return out

    def wait_for(self, predicate, timeout: float = 300, after: int = 0) -> dict:  # type: ignore[no-untyped-def]
        """The newest reconcile record (past the first `after`) matching predicate."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in reversed(self.reconciles()[after:]):
                if predicate(record):
                    return record
            time.sleep(0.05)
        raise TimeoutError("daemon did not converge")

    def write(self, name: str, text: str) -> None:
        path = self.policy_dir / f"{name}.toml"
        tmp = self.policy_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.rename(path)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--cmd-n", type=int, default=15, help="items for the firewall-cmd sample")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fwrecon-bench-"))
    sb = Sandbox(work / "sandbox", f"fwrecon-bd{work.name[-6:]}")
    sb.start()
    try:
        per_cmd = firewall_cmd_per_item(sb, args.cmd_n)
        print(f"{'N':>6} {'raw re-add s':>13} {'fwrecon s':>10} {'vs raw':>7} {'vs firewall-cmd':>16}")
        rss = 0.0
        for n in args.sizes:
            sb.reset()
            sb.reload()
            raw = asyncio.run(raw_readd(sb.bus_address, n))
            sb.reset()
            daemon = Daemon(sb, Path(tempfile.mkdtemp(dir=work)))
            try:
                daemon.write("bench", policy_text(n))
                daemon.wait_for(lambda r, n=n: r["ops"] >= n and r["result"] == "success")
                time.sleep(0.5)
                seen = len(daemon.reconciles())
                sb.reload()
                record = daemon.wait_for(lambda r, n=n: "reapply_ms" in r and r["ops"] >= n, after=seen)
                ours = record["reapply_ms"] / 1000
                print(f"{n:>6} {raw:>13.3f} {ours:>10.3f} {ours / raw:>6.2f}x {per_cmd * n / ours:>15.0f}x")
                rss = daemon.rss_mb()
                largest = n
            finally:
                daemon.stop()
        print(f"daemon RSS with {largest} owned items: {rss:.1f} MB")

        sb.reset()
        daemon = Daemon(sb, Path(tempfile.mkdtemp(dir=work)))
        try:
            daemon.write("small", '[zone.public]\nports = ["40000/tcp"]\n')
            daemon.wait_for(lambda r: r.get("ops") == 1)
            latencies = []
            for i in range(args.edits):
                count = len(daemon.reconciles())
                ports = ", ".join(f'"{40000 + j}/tcp"' for j in range(i + 2))
                daemon.write("small", f"[zone.public]\nports = [{ports}]\n")
                record = daemon.wait_for(lambda r: "event_to_converged_ms" in r and r["ops"] >= 1, 30, after=count)
                latencies.append(record["event_to_converged_ms"])
                time.sleep(0.3)  # let the echo of our own change settle
            latencies.sort()
            p95 = latencies[min(len(latencies) - 1, round(0.95 * len(latencies)) - 1)]
            print(
                f"policy event to converged over {len(latencies)} edits: median {statistics.median(latencies):.0f} ms, p95 {p95:.0f} ms"
            )
        finally:
            daemon.stop()
    finally:
        sb.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
