#!/usr/bin/env python3
"""Benchmark large address lists in one run: N addresses as an nft set, as a
firewalld ipset, and as rich rules.

Run as root (it starts its own sandboxed firewalld in a network namespace):

    .venv/bin/python tests/perf/bench_addresses.py [--sizes 10000 100000] [--rounds 3] [--ipset-rounds 1] [--rich-sample 200]

Everything runs as the daemon runs it (backends, state store and parsed files
kept between reconciles; the garbage collector paused), each figure the
whole reconcile: parse, observe, plan, writes, the state file's writes; a
resync that changes nothing comes between from empty and the change, as in
a running daemon.

* **nft set** (a hash set of addresses in fwrecon's own table, beside
  firewalld in the sandbox's namespace; `bench_sets.py` run there): from
  empty, one-element change, and after ``nft flush set``.  Baseline: nft
  itself, one ``nft -f`` with the whole set, one ``add``/``delete element``.
* **firewalld ipset** (``hash:ip`` and a zone source using it): from empty
  (creating it, the one reload, one ``setEntries``), one-entry change (one
  ``removeEntry``, one ``addEntry``), and after a reload emptied it (one
  ``setEntries`` again).
  Baseline: the same D-Bus calls alone, on an ipset of their own:
  ``config.addIPSet``, the reload and one ``setEntries``; one ``removeEntry``
  plus one ``addEntry``.
* **rich rules** (``rule family="ipv4" source address=... drop``, one D-Bus
  call each): a sample from empty, extrapolated per address.

The issue's targets are printed with the verdicts.  Not part of the test
suite; figures and ratios from this run only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "contrib"))
sys.path.insert(0, str(ROOT / "tests" / "perf"))

from bench_backends import Daemon, Run, write  # noqa: E402
from fwsandbox import Sandbox  # noqa: E402

from reconciler.backends.firewalld import IFACE_MAIN, RELOAD_TIMEOUT, FirewalldBackend  # noqa: E402
from reconciler.backends.firewalld_ipsets import IFACE_IPSET, SETTINGS_SIGNATURE  # noqa: E402
from reconciler.backends.firewalld_settings import CONFIG_PATH, IFACE_CONFIG  # noqa: E402
from reconciler.backends.router import routes_for  # noqa: E402
from reconciler.logsetup import configure_logging  # noqa: E402


def addresses(n: int, offset: int = 0) -> list[str]:
    return [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(1 + offset, n + 1 + offset)]


def ipset_policy(entries: list[str]) -> str:
    maxelem = max(65536, len(entries))
    return (
        f'[ipset.bench]\ntype = "hash:ip"\noptions = {{ maxelem = {maxelem} }}\nentries = {json.dumps(entries)}\n\n'
        '[zone.drop]\nsources = ["ipset:bench"]\n'
    )


def rich_policy(entries: list[str]) -> str:
    rules = ", ".join(f'\'rule family="ipv4" source address="{e}" drop\'' for e in entries)
    return f"[zone.public]\nrich_rules = [{rules}]\n"


@dataclass
class IpsetRound:
    empty: Run
    change: Run
    reloaded: Run
    raw_empty: float
    raw_change: float


class Firewalld:
    """A daemon's reconciles against the sandbox's firewalld, on one connection."""

    def __init__(self, sb: Sandbox, work: Path) -> None:
        self.sb = sb
        self.policy_dir = Path(tempfile.mkdtemp(dir=work))
        self.state = self.policy_dir.with_suffix(".state.json")

    async def rounds(self, steps: list[str | None]) -> list[Run]:
        """Reconcile after writing each step's policy (None: firewalld's reload instead)."""
        backend = await FirewalldBackend.connect(self.sb.bus_address, timeout=120)
        try:
            daemon = Daemon(routes_for(backend, None, None), self.policy_dir, self.state)
            runs = []
            for text in steps:
                if text is None:
                    self.sb.reload()
                else:
                    write(self.policy_dir, text)
                runs.append(await daemon.reconcile())
            return runs
        finally:
            await backend.close()


async def raw_ipset(sb: Sandbox, entries: list[str], spare: str) -> tuple[float, float]:
    """The D-Bus calls alone: an ipset made, loaded and filled; then one entry out and one in."""
    backend = await FirewalldBackend.connect(sb.bus_address, timeout=RELOAD_TIMEOUT)
    try:
        started = time.perf_counter()
        settings = ["", "", "", "hash:ip", {"family": "inet", "maxelem": str(max(65536, len(entries)))}, []]
        await backend.call(IFACE_CONFIG, "addIPSet", "s" + SETTINGS_SIGNATURE, ["raw", settings], path=CONFIG_PATH)
        await backend.call(IFACE_MAIN, "reload", timeout=RELOAD_TIMEOUT)
        await backend.call(IFACE_IPSET, "setEntries", "sas", ["raw", entries], timeout=RELOAD_TIMEOUT)
        empty = time.perf_counter() - started
        started = time.perf_counter()
        await backend.call(IFACE_IPSET, "removeEntry", "ss", ["raw", entries[0]])
        await backend.call(IFACE_IPSET, "addEntry", "ss", ["raw", spare])
        return empty, time.perf_counter() - started
    finally:
        await backend.close()


def rich_rule_seconds(sb: Sandbox, work: Path, sample: int) -> float:
    """Seconds per rich rule, from empty, on a sample."""
    sb.reset()
    (empty, _removed) = asyncio.run(Firewalld(sb, work).rounds([rich_policy(addresses(sample)), ""]))
    return empty.seconds / sample


def ipset_round(sb: Sandbox, work: Path, n: int) -> IpsetRound:
    sb.reset()
    entries = addresses(n)
    changed = [*entries[1:], addresses(1, offset=n)[0]]
    empty, resync, change, reloaded, _removed = asyncio.run(
        Firewalld(sb, work).rounds([ipset_policy(entries), ipset_policy(entries), ipset_policy(changed), None, ""])
    )
    assert resync.write_ops == 0 and change.write_ops == 2, (resync.write_ops, change.write_ops)
    raw_empty, raw_change = asyncio.run(raw_ipset(sb, entries, changed[-1]))
    return IpsetRound(empty, change, reloaded, raw_empty, raw_change)


def nft_set_medians(sb: Sandbox, sizes: list[int], rounds: int) -> dict[int, dict[str, float]]:
    """bench_sets.py's medians for a hash set, run in the sandbox's namespace (beside firewalld)."""
    sb.reset()
    argv = [sys.executable, str(ROOT / "tests/perf/bench_sets.py"), "--inside-netns", "--json", "--kinds", "hash"]
    argv += ["--rounds", str(rounds), "--sizes", *map(str, sizes)]
    done = sb.netns_exec(argv, check=True, timeout=3600)
    return {row["n"]: row for row in json.loads(done.stdout.splitlines()[-1])}


def verdict(seconds: float, target: float) -> str:
    """met or MISSED, with the time in the unit of the target (ms below a second)."""
    shown = f"{seconds * 1000:.0f} ms" if target < 1 else f"{seconds:.2f} s"
    return f"{'met' if seconds <= target else 'MISSED'} ({shown})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the nft set (each a few seconds)")
    parser.add_argument("--ipset-rounds", type=int, default=1, help="rounds of the ipset (100,000 take minutes)")
    parser.add_argument("--rich-sample", type=int, default=200)
    args = parser.parse_args()
    configure_logging("console", logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="fwrecon-bench-addresses-"))
    sb = Sandbox(work / "sandbox", f"fwrecon-ba{work.name[-6:]}")
    sb.start()
    med = statistics.median
    try:
        per_rule = rich_rule_seconds(sb, work, args.rich_sample)
        nft = nft_set_medians(sb, args.sizes, args.rounds)
        ipset = {n: [ipset_round(sb, work, n) for _ in range(args.ipset_rounds)] for n in args.sizes}
        print(f"rich rules: {per_rule * 1000:.1f} ms each (a sample of {args.rich_sample} from empty)")
        print(
            f"{'N':>7} {'as':>8} {'from empty':>11} {'1 change':>9} {'refill':>8}"
            f" {'baseline empty':>15} {'baseline 1':>11} {'rich rules':>11} {'x rich':>7}"
        )
        verdicts = []
        for n in args.sizes:
            rich = per_rule * n
            row = nft[n]
            print(
                f"{n:>7} {'nft set':>8} {row['empty']:>10.2f}s {row['change'] * 1000:>7.0f}ms {row['flushed']:>7.2f}s"
                f" {row['raw_empty']:>14.2f}s {row['raw_change'] * 1000:>9.0f}ms {rich:>10.0f}s {rich / row['empty']:>6.0f}x"
            )
            rounds = ipset[n]
            empty = med(r.empty.seconds for r in rounds)
            change = med(r.change.seconds for r in rounds)
            print(
                f"{n:>7} {'ipset':>8} {empty:>10.2f}s {change * 1000:>7.0f}ms {med(r.reloaded.seconds for r in rounds):>7.2f}s"
                f" {med(r.raw_empty for r in rounds):>14.2f}s {med(r.raw_change for r in rounds) * 1000:>9.0f}ms"
                f" {rich:>10.0f}s {rich / empty:>6.0f}x"
            )
            if n == 100000:
                verdicts.append(f"nft set of 100,000 from empty <= 1 s: {verdict(row['empty'], 1)}")
                verdicts.append(f"nft set of 100,000, one-element change <= 50 ms: {verdict(row['change'], 0.05)}")
            if n == 10000:
                verdicts.append(f"ipset of 10,000 from empty <= 1.5 s: {verdict(empty, 1.5)}")
                verdicts.append(
                    f"ipset of 10,000 >= 40x the rich-rule route: {'met' if rich / empty >= 40 else 'MISSED'} ({rich / empty:.0f}x)"
                )
                verdicts.append(f"ipset of 10,000, one-entry change <= 50 ms: {verdict(change, 0.05)}")
        for line in verdicts:
            print(line)
    finally:
        sb.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
