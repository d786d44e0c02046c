"""Items another tool also holds stay that tool's, across reloads, restarts and kill -9.

`other_holder.py` plays libvirt/docker/netavark: it binds an interface to a
zone and binds it again some hundreds of milliseconds after every reload.
A policy that lists the same binding must never come to own it, even though
fwrecon re-applies faster than the other tool after a reload; dropping the
line must leave the binding in place.  Reloads are counted as reloads, never
as drift.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, Fwrecon, wait_until
from fwsandbox import Sandbox

HOLDER = Path(__file__).with_name("other_holder.py")
IFACE = "holder0"
POLICY = """
    [zone.internal]
    interfaces = ["holder0"]
    ports = ["9500/tcp"]
"""
WITHOUT_LINE = """
    [zone.internal]
    ports = ["9500/tcp"]
"""


class Holder:
    """The other tool, as a subprocess; counts its re-adds."""

    def __init__(self, sandbox: Sandbox, delay: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HOLDER), sandbox.bus_address, "internal", IFACE, str(delay)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_until(lambda: "ready" in self.lines or self.proc.poll() is not None, 10, "the other tool")
        assert "ready" in self.lines, self.proc.stderr.read() if self.proc.stderr else ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def readds(self) -> int:
        return sum(1 for line in self.lines if line.startswith("re-added"))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def holder_factory(fw: Sandbox) -> Iterator[Callable[[float], Holder]]:
    started: list[Holder] = []

    def start(delay: float) -> Holder:
        started.append(Holder(fw, delay))
        return started[-1]

    yield start
    for holder in started:
        holder.stop()


def zone_of(sandbox: Sandbox) -> str:
    return sandbox.firewall_cmd(f"--get-zone-of-interface={IFACE}").stdout.strip()


def owned_kinds(fwrecon: Fwrecon) -> list[tuple[str, str]]:
    return [(entry["item"]["kind"], entry["item"].get("name") or entry["item"].get("port", "")) for entry in fwrecon.owned()]


def held_by_others(fwrecon: Fwrecon) -> list[dict]:
    return json.loads(fwrecon.state_file.read_text()).get("held_by_others", []) if fwrecon.state_file.exists() else []


def drift_repairs(daemon: Daemon) -> list[dict]:
    return [event for event in daemon.reconciles() if event.get("trigger") == "drift" and event.get("ops")]


def test_a_binding_another_tool_holds_survives_reloads_and_the_policy_dropping_it(
    fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon], holder_factory: Callable[[float], Holder]
) -> None:
    sb = fwrecon.sandbox
    holder = holder_factory(0.4)
    assert zone_of(sb) == "internal"
    fwrecon.in_netns = True
    fwrecon.write_policy("lab", POLICY)
    daemon = daemon_factory()
    daemon.settled()
    assert owned_kinds(fwrecon) == [("port", "9500")]
    assert [entry["item"]["name"] for entry in held_by_others(fwrecon)] == [IFACE]
    for n in range(1, 4):
        sb.reload()
        wait_until(lambda n=n: holder.readds() >= n, 10, f"the other tool's re-add after reload {n}")
        daemon.settled()
        assert zone_of(sb) == "internal"
        assert owned_kinds(fwrecon) == [("port", "9500")], f"after reload {n}"
    assert not drift_repairs(daemon)
    plan = fwrecon.run("plan")
    assert plan.returncode == 0 and f"= zone internal interface {IFACE}  [lab] held by others" in plan.stdout, plan.stdout

    fwrecon.write_policy("lab", WITHOUT_LINE)
    wait_until(lambda: not held_by_others(fwrecon), 10, "the record to go")
    daemon.settled()
    assert zone_of(sb) == "internal"  # the other tool's binding is still there
    assert "9500/tcp" in sb.firewall_cmd("--zone=internal", "--list-ports").stdout


def test_kill_9_between_a_reload_and_the_other_tools_re_add(
    fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon], holder_factory: Callable[[float], Holder]
) -> None:
    sb = fwrecon.sandbox
    holder = holder_factory(2.0)
    fwrecon.in_netns = True
    fwrecon.write_policy("lab", POLICY)
    first = daemon_factory()
    first.settled()
    sb.reload()
    wait_until(lambda: zone_of(sb) == "internal", 5, "fwrecon to put the binding back")
    assert holder.readds() == 0  # fwrecon was first, the other tool has not come back yet
    first.stop(signal.SIGKILL)
    wait_until(lambda: holder.readds() == 1, 10, "the other tool's re-add")
    second = daemon_factory()
    second.settled()
    assert owned_kinds(fwrecon) == [("port", "9500")]
    fwrecon.write_policy("lab", WITHOUT_LINE)
    wait_until(lambda: not held_by_others(fwrecon), 10, "the record to go")
    second.settled()
    assert zone_of(sb) == "internal"


def test_a_burst_of_reloads_is_never_counted_as_drift(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    sb = fwrecon.sandbox
    fwrecon.in_netns = True
    fwrecon.write_policy(
        "web",
        """
        [zone.public]
        ports = ["9501/tcp", "9502/tcp", "9503/tcp"]
        rich_rules = ['rule family="ipv4" source address="198.51.100.0/24" drop']
    """,
    )
    daemon = daemon_factory()
    daemon.settled()
    for _ in range(5):
        sb.reload()
        time.sleep(0.05)
    daemon.settled(quiet=1.0)
    assert "9503/tcp" in sb.firewall_cmd("--zone=public", "--list-ports").stdout
    assert not drift_repairs(daemon), drift_repairs(daemon)
    assert any(event.get("trigger") == "reload" for event in daemon.reconciles())
    assert daemon.value("fwrecon_firewalld_reloads") == 5
    assert daemon.value("fwrecon_drift_repairs") == 0
    assert daemon.value("fwrecon_reconciles", trigger="drift", result="success") == 0
    # Drift by hand, outside a reload, still counts.
    time.sleep(3.2)  # past the reload's settle window
    sb.firewall_cmd("--zone=public", "--remove-port=9501/tcp", check=True)
    wait_until(lambda: daemon.value("fwrecon_drift_repairs") == 1, 10, "the drift repair")


def test_iptables_rule_another_tool_also_holds_survives_a_flush_and_the_policy_dropping_it(bare: Fwrecon) -> None:
    sb = bare.sandbox
    bare.backend = "iptables"
    theirs = ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9600", "-j", "ACCEPT"]
    sb.netns_exec(theirs, check=True)
    bare.write_policy(
        "lab",
        """
        [[direct.rule]]
        family = "ipv4"
        table = "filter"
        chain = "INPUT"
        args = ["-p", "tcp", "--dport", "9600", "-j", "ACCEPT"]
    """,
    )
    assert "0 operations" in bare.apply().stdout
    assert bare.owned() == [] and len(held_by_others(bare)) == 1
    sb.netns_exec(["iptables", "-F", "INPUT"], check=True)  # flushed: both copies gone
    assert "1 operations" in bare.apply().stdout  # put back first by fwrecon ...
    sb.netns_exec(theirs, check=True)  # ... then by the other tool
    assert bare.owned() == []
    bare.remove_policy("lab")
    assert "0 operations" in bare.apply().stdout
    rules = [line for line in sb.netns_exec(["iptables-save", "-t", "filter"], check=True).stdout.splitlines() if "9600" in line]
    assert "-A INPUT -p tcp -m tcp --dport 9600 -j ACCEPT" in rules, rules
    assert held_by_others(bare) == []


def test_nft_chain_another_tool_also_holds_survives_a_table_flush_and_the_policy_dropping_it(bare: Fwrecon) -> None:
    sb = bare.sandbox
    bare.backend = "nftables"
    theirs = ["nft", "add table inet fwrecon; add chain inet fwrecon shared"]
    sb.netns_exec(theirs, check=True)
    bare.write_policy(
        "lab",
        """
        [[nft.chain]]
        family = "inet"
        chain = "shared"
    """,
    )
    assert "0 operations" in bare.apply().stdout and bare.owned() == []
    sb.nft("delete", "table", "inet", "fwrecon", check=True)
    assert "1 operations" in bare.apply().stdout
    sb.netns_exec(theirs, check=True)
    bare.remove_policy("lab")
    assert "0 operations" in bare.apply().stdout
    assert "chain shared" in sb.nft("list", "table", "inet", "fwrecon", check=True).stdout
