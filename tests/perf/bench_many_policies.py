#!/usr/bin/env python3
"""Benchmark many policies beside one large nft set, against nft itself, in one run.

Run as root; everything happens in a network namespace of its own:

    .venv/bin/python tests/perf/bench_many_policies.py [--n 100000] [--policies 100] [--rounds 3]

One policy holds a hash set of N addresses; P-1 more policies each add one
address to the same set (a fleet's host: one blocklist, many small services).
As the daemon runs it (backends, state store and parsed files kept between
reconciles, ``nft monitor`` watching), timed: from empty; a resync that
changes nothing (it lists afresh); the large policy swapping one element; a
small policy swapping its element (both build on the last listing).  The
baseline is nft's own one-element change (one ``nft add element`` and one
``nft delete element`` into the same set), timed in the same round.  Each
policy is judged on what it owns: before, planning walked every policy's
elements once per policy (13 s a plan at 100 policies and 100,000 elements).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "perf"))

from bench_backends import INSIDE, Daemon, in_own_netns, settle_in  # noqa: E402
from bench_sets import KINDS, nft, policy  # noqa: E402

from reconciler.backends.nftables import NftablesBackend  # noqa: E402
from reconciler.backends.router import routes_for  # noqa: E402

FLAGS, ADDRESS = KINDS["hash"]


def put(directory: Path, name: str, text: str) -> None:
    path = directory / f"{name}.toml"
    path.write_text(text)
    path.chmod(0o644)


def small(address: str) -> str:
    return f'[[nft.set]]\nfamily = "inet"\nname = "bench"\ntype = "ipv4_addr"\nelements = ["{address}"]\n'


async def one_round(work: Path, n: int, policies: int) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="policies-", dir=work))
    directory.chmod(0o755)
    elements = [ADDRESS(i) for i in range(n)]
    put(directory, "big", policy(FLAGS, elements))
    for k in range(1, policies):
        put(directory, f"p{k:03}", small(f"172.16.{k // 256}.{k % 256}"))
    daemon = Daemon(routes_for(None, None, NftablesBackend()), directory, work / f"state-{directory.name}.json")
    await daemon.watch()
    try:
        times = {"empty": (await daemon.reconcile()).seconds}
        resync = await daemon.reconcile(afresh=True)
        assert resync.write_ops == 0, resync.write_ops
        times["resync"] = resync.seconds
        put(directory, "big", policy(FLAGS, [*elements[1:], ADDRESS(n)]))
        times["big change"] = (await daemon.reconcile()).seconds
        put(directory, "p001", small("172.17.0.1"))
        times["small change"] = (await daemon.reconcile()).seconds
        times["nft change"] = nft("add element inet fwrecon bench { 172.18.0.1 }\n") + nft(
            "delete element inet fwrecon bench { 172.18.0.1 }\n"
        )
        for path in directory.glob("*.toml"):
            path.unlink()
        await daemon.reconcile(afresh=True)  # (the by-hand change above is not fwrecon's)
    finally:
        await daemon.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(INSIDE, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inside_netns:
        return in_own_netns(__file__)
    work = settle_in("fwrecon-bench-many-")
    try:
        rounds = [asyncio.run(one_round(work, args.n, args.policies)) for _ in range(args.rounds)]
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print(f"{args.policies} policies, one with {args.n:,} elements; medians of {args.rounds} rounds")
    print(f"  nft alone, one-element change: {med['nft change'] * 1000:.1f} ms")
    for key in ("empty", "resync", "big change", "small change"):
        print(f"  {key:>12}: {med[key]:8.3f} s  ({med[key] / med['nft change']:.0f}x nft's one-element change)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
