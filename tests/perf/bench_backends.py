#!/usr/bin/env python3
"""Benchmark the iptables and nftables backends on a host without firewalld.

Run as root; everything happens in a network namespace of its own:

    .venv/bin/python tests/perf/bench_backends.py [--sizes 1000 10000] [--loop-n 1000]

For each N: N direct rules through ``--backend iptables`` and N nft rules
through ``--backend nftables``, applied from empty and re-applied after the
chain/table was flushed by hand (as the daemon does it: files unchanged since
the last reconcile are not parsed again).  "apply" is the full fwrecon path (parse
and validate the TOML, observe, plan, transaction, two crash-safe state
writes); "batch" is the part inside the backend's one atomic
``*-restore``/``nft -f`` (with its fresh read).  The baseline is a loop of
one ``iptables -A`` process per rule, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from reconciler.backends.iptables import IptablesBackend  # noqa: E402
from reconciler.backends.nftables import NftablesBackend  # noqa: E402
from reconciler.backends.router import routes_for  # noqa: E402
from reconciler.engine import Reconciler  # noqa: E402
from reconciler.logsetup import configure_logging  # noqa: E402
from reconciler.policy import PolicyCache, load_policy_dir  # noqa: E402
from reconciler.state import StateStore  # noqa: E402

BASE = 10000


def netns_run(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True)


def write(directory: Path, text: str) -> None:
    for old in directory.glob("*.toml"):
        old.unlink()
    path = directory / "bench.toml"
    path.write_text(text)
    path.chmod(0o644)


def iptables_policy(n: int) -> str:
    text = '[[direct.chain]]\nfamily = "ipv4"\ntable = "filter"\nchain = "FWRECON_BENCH"\n'
    for i in range(n):
        text += (
            '\n[[direct.rule]]\nfamily = "ipv4"\ntable = "filter"\nchain = "FWRECON_BENCH"\n'
            f'args = ["-p", "tcp", "--dport", "{BASE + i % 50000}", "-s", "10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", "-j", "ACCEPT"]\n'
        )
    return text


def nft_policy(n: int) -> str:
    text = '[[nft.chain]]\nfamily = "inet"\nchain = "bench"\n'
    for i in range(n):
        text += f'\n[[nft.rule]]\nfamily = "inet"\nchain = "bench"\nrule = "ip saddr 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256} tcp dport {BASE + i % 50000} accept"\n'
    return text


async def reconcile(router, policy_dir: Path, state: Path, cache: PolicyCache | None = None) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    """(end-to-end seconds, seconds inside the backend's batch apply, write ops)."""
    spent = 0.0
    batch = router.execute_batch

    async def timed(ops):  # type: ignore[no-untyped-def]
        nonlocal spent
        t0 = time.perf_counter()
        try:
            return await batch(ops)
        finally:
            spent += time.perf_counter() - t0

    router.execute_batch = timed
    started = time.perf_counter()
    report = await Reconciler(router, StateStore(state)).reconcile(load_policy_dir(policy_dir, cache))
    elapsed = time.perf_counter() - started
    assert report.converged, [o.error for o in report.failed]
    return elapsed, spent, report.write_ops


def per_rule_loop(ns: str, n: int) -> float:
    netns_run(ns, "iptables", "-N", "LOOP")
    started = time.perf_counter()
    for i in range(n):
        netns_run(ns, "iptables", "-A", "LOOP", "-p", "tcp", "--dport", str(BASE + i % 50000),
                  "-s", f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", "-j", "ACCEPT")
    elapsed = time.perf_counter() - started
    netns_run(ns, "iptables", "-F", "LOOP")
    netns_run(ns, "iptables", "-X", "LOOP")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--loop-n", type=int, default=1000, help="rules for the one-process-per-rule loop")
    args = parser.parse_args()
    configure_logging("console", logging.WARNING)

    ns = f"fwrecon-bb{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    work = Path(tempfile.mkdtemp(prefix="fwrecon-bench-"))
    policy_dir = work / "policies"
    policy_dir.mkdir(mode=0o755)
    try:
        netns_run(ns, "ip", "link", "set", "lo", "up")
        loop = per_rule_loop(ns, args.loop_n)
        per_rule = loop / args.loop_n
        print(f"iptables loop, one process per rule: {args.loop_n} rules in {loop:.2f} s ({per_rule * 1000:.2f} ms per rule)")
        print(f"{'backend':>9} {'N':>6} {'apply s':>8} {'(batch s)':>9} {'re-apply after flush s':>23} {'vs loop':>8} {'batch vs loop':>14}")
        for n in args.sizes:
            for name, text, flush, make in (
                ("iptables", iptables_policy(n), ["iptables", "-F", "FWRECON_BENCH"],
                 lambda: routes_for(None, IptablesBackend(netns=ns), None)),
                ("nftables", nft_policy(n), ["nft", "flush", "table", "inet", "fwrecon"],
                 lambda: routes_for(None, None, NftablesBackend(netns=ns))),
            ):
                write(policy_dir, text)
                state = work / f"state-{name}-{n}.json"
                cache = PolicyCache()  # as the daemon keeps it: a re-apply needs no re-parse
                first, in_batch, ops = asyncio.run(reconcile(make(), policy_dir, state, cache))
                assert ops == n + 1, ops
                netns_run(ns, *flush)
                again, _, ops = asyncio.run(reconcile(make(), policy_dir, state, cache))
                assert ops == n, ops
                print(f"{name:>9} {n:>6} {first:>8.3f} {in_batch:>9.3f} {again:>23.3f} "
                      f"{per_rule * n / first:>7.0f}x {per_rule * n / in_batch:>13.0f}x")
                write(policy_dir, "")
                asyncio.run(reconcile(make(), policy_dir, state))  # clean up through fwrecon
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
