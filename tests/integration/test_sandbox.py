"""The test infrastructure itself: if these fail, no other integration test means anything."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from fwsandbox import PEER_ADDR, SANDBOX_IFACE, Sandbox

PORT = 4711


def _root_ruleset() -> str:
    """The host's (root netns) ruleset; read-only."""
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout


def _port_rule_present(fw: Sandbox, port: int) -> bool:
    return f"tcp dport {port} accept" in fw.ruleset()


def test_firewalld_is_running(fw: Sandbox) -> None:
    assert fw.firewall_cmd("--state").stdout.strip() == "running"


def test_firewalld_runs_in_its_own_netns(fw: Sandbox) -> None:
    pid = int((fw.dir / "firewalld.pid").read_text())
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert fw.netns_exec(["readlink", "/proc/self/ns/net"]).stdout.strip() == os.readlink(f"/proc/{pid}/ns/net")


def test_nft_shows_firewalld_table(fw: Sandbox) -> None:
    assert "table inet firewalld" in fw.nft("list", "tables", check=True).stdout


def test_added_port_shows_up_and_reset_removes_it(fw: Sandbox) -> None:
    fw.firewall_cmd(f"--add-port={PORT}/tcp", check=True)
    assert _port_rule_present(fw, PORT)
    fw.reset()
    assert not _port_rule_present(fw, PORT)
    assert fw.firewall_cmd("--list-ports").stdout.strip() == ""


def test_reset_clears_bindings_direct_rules_permanent_config_and_panic(fw: Sandbox) -> None:
    fw.firewall_cmd("--zone=trusted", f"--change-interface={SANDBOX_IFACE}", check=True)
    fw.firewall_cmd(
        "--direct", "--add-rule", "ipv4", "filter", "INPUT", "0", "-p", "tcp", "--dport", "7777", "-j", "ACCEPT", check=True
    )
    fw.firewall_cmd("--permanent", f"--add-port={PORT}/tcp", check=True)
    fw.firewall_cmd("--permanent", "--new-zone=scratch", check=True)
    fw.firewall_cmd("--panic-on", check=True)

    fw.reset()

    assert fw.firewall_cmd(f"--get-zone-of-interface={SANDBOX_IFACE}").returncode != 0
    assert fw.firewall_cmd("--direct", "--get-all-rules").stdout.strip() == ""
    assert fw.firewall_cmd("--permanent", "--list-ports").stdout.strip() == ""
    assert "scratch" not in fw.firewall_cmd("--get-zones").stdout.split()
    assert fw.firewall_cmd("--query-panic").stdout.strip() == "no"
    assert fw.nft("list", "tables").stdout.split("\n") == ["table inet firewalld", ""]


def test_veth_lands_in_default_zone_public(fw: Sandbox) -> None:
    """Unbound interfaces get the default zone; firewalld reports no binding for them."""
    assert fw.firewall_cmd("--get-default-zone").stdout.strip() == "public"
    assert fw.firewall_cmd(f"--get-zone-of-interface={SANDBOX_IFACE}").returncode != 0


def test_tcp_probe_refused_then_accepted(fw: Sandbox) -> None:
    assert fw.tcp_probe(PORT) == "refused"  # public rejects: icmp admin-prohibited
    fw.firewall_cmd("--zone=public", f"--add-port={PORT}/tcp", check=True)
    assert fw.tcp_probe(PORT) == "accepted"


def test_tcp_probe_timeout_when_dropped(fw: Sandbox) -> None:
    fw.firewall_cmd("--zone=drop", f"--change-interface={SANDBOX_IFACE}", check=True)
    assert fw.tcp_probe(PORT, timeout=0.3) == "timeout"


def test_tcp_probe_by_source(fw: Sandbox) -> None:
    fw.firewall_cmd("--zone=trusted", f"--add-source={PEER_ADDR}/32", check=True)
    assert fw.tcp_probe(PORT) == "accepted"


def test_firewalld_stop_start_round_trip(fw: Sandbox) -> None:
    fw.stop_firewalld()
    assert fw.state() is None
    state = fw.firewall_cmd("--state")
    assert (state.returncode, state.stderr.strip()) == (252, "not running")
    assert "table inet firewalld" not in fw.ruleset()  # CleanupOnExit
    fw.start_firewalld()
    assert fw.firewall_cmd("--state").stdout.strip() == "running"
    assert "table inet firewalld" in fw.ruleset()


def test_reset_recovers_from_a_crash(fw: Sandbox) -> None:
    fw.firewall_cmd(f"--add-port={PORT}/tcp", check=True)
    fw.kill_firewalld()
    assert fw.state() is None
    assert _port_rule_present(fw, PORT)  # SIGKILL leaves the rules behind
    fw.reset()
    assert fw.state() == "RUNNING"
    assert not _port_rule_present(fw, PORT)


def test_bus_client_survives_firewalld_restart(bus_address: str, fw: Sandbox) -> None:
    """The bus outlives firewalld, so a connected client sees it leave and come back."""
    dbus_fast = pytest.importorskip("dbus_fast")
    from dbus_fast.aio import MessageBus

    async def get_default_zone(bus: MessageBus) -> dbus_fast.Message:
        return await bus.call(
            dbus_fast.Message(
                destination="org.fedoraproject.FirewallD1",
                path="/org/fedoraproject/FirewallD1",
                interface="org.fedoraproject.FirewallD1",
                member="getDefaultZone",
            )
        )

    async def scenario() -> None:
        bus = await MessageBus(bus_address=bus_address).connect()
        try:
            assert (await get_default_zone(bus)).body == ["public"]
            await asyncio.to_thread(fw.stop_firewalld)
            reply = await get_default_zone(bus)
            assert reply.message_type == dbus_fast.MessageType.ERROR
            assert reply.error_name == "org.freedesktop.DBus.Error.ServiceUnknown"
            await asyncio.to_thread(fw.start_firewalld)
            assert (await get_default_zone(bus)).body == ["public"]
        finally:
            bus.disconnect()

    assert bus_address == f"unix:path={fw.dir}/bus"
    asyncio.run(scenario())


def _host_config() -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in Path("/etc/firewalld").rglob("*") if p.is_file()}


def test_host_ruleset_and_config_untouched(fw: Sandbox) -> None:
    before, config_before = _root_ruleset(), _host_config()
    fw.firewall_cmd("--permanent", "--new-zone=scratch", check=True)
    fw.firewall_cmd("--permanent", f"--add-port={PORT}/tcp", check=True)
    fw.firewall_cmd(f"--add-port={PORT}/tcp", check=True)
    fw.firewall_cmd(
        "--direct", "--add-rule", "ipv4", "filter", "INPUT", "0", "-p", "tcp", "--dport", "7777", "-j", "ACCEPT", check=True
    )
    fw.stop_firewalld()
    fw.start_firewalld()
    fw.reset()
    assert _root_ruleset() == before
    assert _host_config() == config_before
