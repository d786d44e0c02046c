#!/usr/bin/env python3
"""Benchmark the iptables and nftables backends on a host without firewalld.

Run as root; everything happens in a network namespace of its own:

    .venv/bin/python tests/perf/bench_backends.py [--sizes 1000 10000] [--loop-n 1000] [--rounds 7] [--repeats 3]

The script re-runs itself inside that namespace (``ip netns exec`` once), so
the loop's ``iptables`` processes and fwrecon's tools run as they would on a
host: no per-process ``ip netns exec`` wrapper, which costs about 1.1 ms and
would double the loop's time.

For each N: N direct rules through ``--backend iptables`` and N nft rules
through ``--backend nftables``, as the daemon runs them (backends, state store
and parsed files kept between reconciles; the garbage collector paused):

* "apply": the policy file was just written; from empty, the full path:
  parse and validate the TOML ("parse"), observe, plan, transaction, two
  crash-safe state writes.  "tools" is the part spent waiting for the tools
  (observe's ``*-save``/``nft list``, the one atomic ``*-restore``/``nft -f``):
  what any program driving these tools pays; the rest is fwrecon's own.
* "re-apply": the chain or table was flushed by hand; the file is unchanged,
  so nothing is parsed again (``--repeats`` times per round; their median).

Both variants of the iptables tools are measured where installed, ``nft``
(nf_tables, Debian's and Fedora's default) and ``legacy`` (x_tables): a
directory of links first on PATH makes the plain names (``iptables``,
``iptables-save``, ``iptables-restore``) the variant's, as the system's
alternatives would.  The nftables backend runs once per round.

The baseline is a loop of one ``iptables -A`` process per rule, of the same
variant; the "tools" ratio is the loop against the apply's tool time alone,
the most any program using these tools could reach.  This machine
kind is noisy (the same CPU loop varies by +-25% minute to minute), so every
round measures the loop and then each scenario, each ratio is taken within its
round, and the medians over the rounds are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from iptables_variants import link_variant  # noqa: E402

from reconciler.backends.iptables import IptablesBackend  # noqa: E402
from reconciler.backends.nftables import MONITOR_SETTLE, NftablesBackend  # noqa: E402
from reconciler.backends.process import ToolRunner  # noqa: E402
from reconciler.backends.router import routes_for  # noqa: E402
from reconciler.engine import Reconciler, RefusalMemo, gc_paused  # noqa: E402
from reconciler.logsetup import configure_logging  # noqa: E402
from reconciler.policydir import PolicyCache, load_policy_dir  # noqa: E402
from reconciler.state import StateStore  # noqa: E402

BASE = 10000


INSIDE = "--inside-netns"


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


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


@dataclass
class Run:
    seconds: float  # end to end: parse (if the file changed), observe, plan, transaction, state writes
    parse: float  # reading and validating the policy file (0 when unchanged since the last run)
    tools: float  # waiting for tool processes (observe's read, the one atomic write)
    write_ops: int


class Daemon:
    """What ``fwrecon run`` keeps between reconciles: backends, state store, parsed files, refusals judged."""

    def __init__(self, router, policy_dir: Path, state: Path) -> None:  # type: ignore[no-untyped-def]
        self.router = router
        self.policy_dir = policy_dir
        self.store = StateStore(state)
        self.cache = PolicyCache()
        self.memo = RefusalMemo()
        self.drifted = asyncio.Event()

    async def watch(self) -> None:
        """Subscribe to the backends' events as the daemon does, and wait for
        ``nft monitor`` to settle (only then are nft listings kept)."""
        await self.router.subscribe(lambda event: self.drifted.set())
        await asyncio.sleep(MONITOR_SETTLE + 0.2)

    async def drift(self) -> None:
        """Wait for the event a change by hand causes (the daemon reconciles on it)."""
        await asyncio.wait_for(self.drifted.wait(), 5)
        self.drifted.clear()

    async def close(self) -> None:
        for backend in self.router.backends:
            await backend.close()

    async def reconcile(self, *, afresh: bool = False) -> Run:
        """One reconcile; ``afresh``: as the periodic resync, which keeps no read."""
        ToolClock.seconds = 0.0
        if afresh:
            self.router.read_afresh()
        started = time.perf_counter()
        with gc_paused():  # as the daemon does
            loaded = load_policy_dir(self.policy_dir, self.cache)
            parsed = time.perf_counter()
            report = await Reconciler(self.router, self.store, names=self.router.known_names, memo=self.memo).reconcile(loaded)
        elapsed = time.perf_counter() - started
        assert report.converged, [o.error for o in report.failed]
        return Run(elapsed, parsed - started, ToolClock.seconds, report.write_ops)


class ToolClock:
    """Sums the time spent in ToolRunner.run, the one way fwrecon runs its tools."""

    seconds = 0.0
    inner = ToolRunner.run

    @staticmethod
    async def run(runner: ToolRunner, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await ToolClock.inner(runner, *args, **kwargs)
        finally:
            ToolClock.seconds += time.perf_counter() - started


ToolRunner.run = ToolClock.run  # type: ignore[method-assign]


def use_variant(links: Path, variant: str) -> bool:
    """Point the plain iptables names on PATH at ``variant``; False when it is not installed."""
    path = link_variant(links, variant)
    if path is None:
        return False
    if not os.environ["PATH"].startswith(f"{links}{os.pathsep}"):
        os.environ["PATH"] = path
    return True


def per_rule_loop(n: int) -> float:
    run("iptables", "-N", "LOOP")
    started = time.perf_counter()
    for i in range(n):
        run(
            "iptables",
            "-A",
            "LOOP",
            "-p",
            "tcp",
            "--dport",
            str(BASE + i % 50000),
            "-s",
            f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
            "-j",
            "ACCEPT",
        )
    elapsed = time.perf_counter() - started
    run("iptables", "-F", "LOOP")
    run("iptables", "-X", "LOOP")
    return elapsed


@dataclass
class Sample:
    """One round of one backend and size, with the loop measured in that round."""

    first: Run
    agains: list[Run]  # re-applies, each after a flush by hand
    loop: float  # the per-rule loop's seconds for N rules (per-rule cost of this round x N)

    @property
    def again(self) -> float:
        return statistics.median(run.seconds for run in self.agains)


def scenario(work: Path, policy_dir: Path, name: str, n: int, repeats: int) -> tuple[Run, list[Run]]:
    """Apply N rules from empty; ``repeats`` times flush by hand and re-apply; then
    remove them again through fwrecon."""
    if name.startswith("iptables"):
        text, flush = iptables_policy(n), ["iptables", "-F", "FWRECON_BENCH"]
        router = routes_for(None, IptablesBackend(), None)
    else:
        text, flush = nft_policy(n), ["nft", "flush", "table", "inet", "fwrecon"]
        router = routes_for(None, None, NftablesBackend())
    daemon = Daemon(router, policy_dir, work / f"state-{name.replace(' ', '')}-{n}.json")
    write(policy_dir, text)
    first = asyncio.run(daemon.reconcile())
    assert first.write_ops == n + 1, first.write_ops
    agains = []
    for _ in range(repeats):
        run(*flush)
        agains.append(asyncio.run(daemon.reconcile()))
        assert agains[-1].write_ops == n and agains[-1].parse < first.parse, agains[-1]
    write(policy_dir, "")
    asyncio.run(daemon.reconcile())
    return first, agains


def report(samples: dict[tuple[str, int], list[Sample]]) -> list[str]:
    """Medians over the rounds; each ratio is taken within its round, then the median."""
    med = statistics.median
    print(
        f"{'backend':>17} {'N':>6} {'apply s':>8} {'parse s':>8} {'tools s':>8} {'re-apply s':>10} "
        f"{'apply':>7} {'w/o parse':>10} {'re-apply':>9} {'tools':>6}   (x faster than the loop)"
    )
    verdicts = []
    for (name, n), rounds in samples.items():
        apply = med(r.first.seconds for r in rounds)
        ratios = [
            med(r.loop / x for r, x in zip(rounds, values, strict=True))
            for values in (
                [r.first.seconds for r in rounds],
                [r.first.seconds - r.first.parse for r in rounds],
                [r.again for r in rounds],
                [r.first.tools for r in rounds],
            )
        ]
        print(
            f"{name:>17} {n:>6} {apply:>8.3f} {med(r.first.parse for r in rounds):>8.3f} "
            f"{med(r.first.tools for r in rounds):>8.3f} {med(r.again for r in rounds):>10.3f} "
            f"{ratios[0]:>6.0f}x {ratios[1]:>9.0f}x {ratios[2]:>8.0f}x {ratios[3]:>5.0f}x"
        )
        if name == "nftables" and n == 10000:
            met = "met" if apply < 1.0 else "MISSED"
            verdicts.append(f"target 10,000 nft rules applied in < 1 s (parse included): {met} ({apply:.2f} s)")
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--loop-n", type=int, default=1000, help="rules for the one-process-per-rule loop")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; each measures the loop and every scenario")
    parser.add_argument("--repeats", type=int, default=3, help="re-applies per scenario and round (their median counts)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["nft", "legacy"],
        choices=["nft", "legacy"],
        help="iptables variants to measure, where installed (the nftables backend runs with the first)",
    )
    parser.add_argument(INSIDE, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inside_netns:
        return in_own_netns()
    work = settle_in("fwrecon-bench-")
    policy_dir = work / "policies"
    policy_dir.mkdir(mode=0o755)
    samples: dict[tuple[str, int], list[Sample]] = {}
    loops: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for variant in args.variants:
                if not use_variant(work / "links", variant):
                    continue
                per_rule = per_rule_loop(args.loop_n) / args.loop_n
                loops.setdefault(variant, []).append(per_rule)
                names = [f"iptables ({variant})"] + (["nftables"] if variant == args.variants[0] else [])
                for n in args.sizes:
                    for name in names:
                        first, agains = scenario(work, policy_dir, name, n, args.repeats)
                        samples.setdefault((name, n), []).append(Sample(first, agains, per_rule * n))
        for variant, values in loops.items():
            print(
                f"iptables ({variant}) loop, one process per rule: {statistics.median(values) * 1000:.2f} ms per rule "
                f"(median of {len(values)} rounds of {args.loop_n}; {min(values) * 1000:.2f}-{max(values) * 1000:.2f})"
            )
        for line in report(samples):
            print(line)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


def settle_in(prefix: str) -> Path:
    """Inside a bench's own namespace: quiet logs, loopback up, and a fresh work directory."""
    configure_logging("console", logging.WARNING)
    run("ip", "link", "set", "lo", "up")
    return Path(tempfile.mkdtemp(prefix=prefix))


def in_own_netns(script: str = __file__) -> int:
    """Run ``script`` (this one) again inside a new network namespace, then delete it."""
    ns = f"fwrecon-bb{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        argv = ["ip", "netns", "exec", ns, sys.executable, str(Path(script).resolve()), *sys.argv[1:], INSIDE]
        return subprocess.run(argv, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
