#!/usr/bin/env python3
"""Benchmark firewalld ipsets: N addresses as one ipset against the same
addresses as rich rules.

Run as root (it starts its own sandboxed firewalld in a network namespace):

    .venv/bin/python tests/perf/bench_ipsets.py [--sizes 10000 100000] [--rich-sample 200]

For each N, with `fwrecon apply` (`--persist runtime`), each figure the whole
command and the duration it logs (parse, observe, plan, writes, state):

* *from empty*: a policy with a ``hash:ip`` ipset of N addresses and a zone
  source using it (creating the ipset, the one reload, one ``setEntries``);
* *1 change*: the file swaps one address for another (one ``removeEntry``,
  one ``addEntry``);
* *after reload*: ``firewall-cmd --reload`` emptied the runtime ipset; the
  refill is one ``setEntries`` again.

The rich-rule route is measured on a sample (``rule family="ipv4" source
address=... drop``, one D-Bus call each) and extrapolated per address.
nft sets are measured by ``bench_sets.py``. Not part of the test suite;
prints figures and ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "contrib"))

from fwsandbox import Sandbox  # noqa: E402


def addresses(n: int, offset: int = 0) -> list[str]:
    return [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(1 + offset, n + 1 + offset)]


def ipset_policy(entries: list[str], maxelem: int) -> str:
    listed = ", ".join(json.dumps(e) for e in entries)
    return (
        f'[ipset.bench]\ntype = "hash:ip"\noptions = {{ maxelem = {maxelem} }}\nentries = [{listed}]\n\n'
        '[zone.drop]\nsources = ["ipset:bench"]\n'
    )


def rich_policy(entries: list[str]) -> str:
    rules = ", ".join(f'\'rule family="ipv4" source address="{e}" drop\'' for e in entries)
    return f"[zone.public]\nrich_rules = [{rules}]\n"


class Run:
    """One policy directory and state file, applied with `fwrecon apply`."""

    def __init__(self, sb: Sandbox, work: Path) -> None:
        self.sb = sb
        self.dir = Path(tempfile.mkdtemp(dir=work))
        (self.dir / "policies").mkdir(mode=0o755)

    def write(self, text: str) -> None:
        path = self.dir / "policies" / "bench.toml"
        path.write_text(text)
        path.chmod(0o644)

    def apply(self) -> tuple[float, float, int]:
        """(wall time, logged duration, write ops)."""
        argv = [sys.executable, "-m", "reconciler", "apply", "--bus-address", self.sb.bus_address, "--log-format", "json"]
        argv += ["--policy-dir", str(self.dir / "policies"), "--state-file", str(self.dir / "state.json")]
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"apply failed: {proc.stderr[-2000:]}")
        done = [json.loads(line) for line in proc.stderr.splitlines() if '"event": "reconcile_done"' in line][-1]
        return wall, done["duration_ms"] / 1000, done["ops"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--rich-sample", type=int, default=200)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fwrecon-bench-"))
    sb = Sandbox(work / "sandbox", f"fwrecon-bi{work.name[-6:]}")
    sb.start()
    try:
        sb.reset()
        rich = Run(sb, work)
        rich.write(rich_policy(addresses(args.rich_sample)))
        rich_wall, rich_logged, _ = rich.apply()
        per_rule = rich_logged / args.rich_sample
        print(f"rich rules: {args.rich_sample} in {rich_logged:.2f} s ({rich_wall:.2f} s command): {per_rule * 1000:.1f} ms each")
        print(
            f"{'N':>7} {'from empty':>11} {'(command)':>10} {'1 change':>9} {'(command)':>10} {'after reload':>13}"
            f" {'(command)':>10} {'rich rules (extrap.)':>21} {'vs ipset':>9}"
        )
        for n in args.sizes:
            sb.reset()
            run = Run(sb, work)
            entries = addresses(n)
            run.write(ipset_policy(entries, max(65536, n)))
            empty_wall, empty, _ = run.apply()
            run.write(ipset_policy([*entries[1:], addresses(1, offset=n)[0]], max(65536, n)))
            change_wall, change, change_ops = run.apply()
            assert change_ops == 2, change_ops
            sb.reload()
            refill_wall, refill, _ = run.apply()
            extrapolated = per_rule * n
            print(
                f"{n:>7} {empty:>10.2f}s {empty_wall:>9.2f}s {change * 1000:>7.0f}ms {change_wall:>9.2f}s"
                f" {refill:>12.2f}s {refill_wall:>9.2f}s {extrapolated:>20.0f}s {extrapolated / empty:>8.0f}x"
            )
    finally:
        sb.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
