"""--persist permanent against a real firewalld: both layers, reloads with no
writes, races with an admin, rollback, kill -9 and switching modes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from conftest import ROOT, Daemon, Fwrecon, wait_until
from fwsandbox import Sandbox
from test_backends import crash_after_writes

WEB = (ROOT / "policies" / "web.toml").read_text()


def listed(sb: Sandbox, what: str, *, permanent: bool, zone: str = "public") -> set[str]:
    layer = ["--permanent"] if permanent else []
    return set(sb.firewall_cmd(*layer, f"--zone={zone}", f"--list-{what}", check=True).stdout.split())


def direct_rules(sb: Sandbox, *, permanent: bool) -> str:
    layer = ["--permanent"] if permanent else []
    return sb.firewall_cmd(*layer, "--direct", "--get-all-rules", check=True).stdout


def policy_rich_rules(sb: Sandbox, *, permanent: bool) -> str:
    layer = ["--permanent"] if permanent else []
    return sb.firewall_cmd(*layer, "--policy=allow-host-ipv6", "--list-rich-rules", check=True).stdout


def apply(fwrecon: Fwrecon, persist: str = "permanent") -> str:
    result = fwrecon.run("apply", "--persist", persist)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stderr


def plan_is_empty(fwrecon: Fwrecon, persist: str = "permanent") -> bool:
    result = fwrecon.run("plan", "--persist", persist)  # exit 0: no changes (2: changes pending)
    return result.returncode == 0 and not any(line[:1] in "+-~" for line in result.stdout.splitlines())


def test_every_kind_is_in_both_layers_and_goes_from_both_leaving_foreign_items(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    sb.firewall_cmd("--permanent", "--zone=public", "--add-port=7777/tcp", check=True)  # an admin's
    sb.firewall_cmd("--permanent", "--zone=public", "--add-service=http", check=True)  # an admin's, wanted by web too
    fwrecon.write_policy("web", WEB)
    plan = fwrecon.run("plan", "--persist", "permanent")
    assert "+ zone public port 8080/tcp  [web]  runtime+permanent" in plan.stdout, plan.stdout
    changes = json.loads(fwrecon.run("plan", "--persist", "permanent", "--json").stdout)["changes"]
    assert {c["layer"] for c in changes} == {"runtime", "permanent"}
    apply(fwrecon)
    for permanent in (False, True):
        assert listed(sb, "ports", permanent=permanent) >= {"8080/tcp", "60000-60010/udp"}
        assert listed(sb, "interfaces", permanent=permanent) == {"dummy0"}
        assert listed(sb, "sources", permanent=permanent) == {"192.0.2.0/24"}
        assert "gre" in listed(sb, "protocols", permanent=permanent)
        assert "port=2222:proto=tcp:toport=22:toaddr=" in listed(sb, "forward-ports", permanent=permanent)
        rich = sb.firewall_cmd(*(["--permanent"] if permanent else []), "--zone=public", "--list-rich-rules").stdout
        assert 'source address="10.0.0.0/8" service name="ssh" accept' in rich
        assert 'source address="2001:db8::/32" port port="9100"' in policy_rich_rules(sb, permanent=permanent)
        assert "FWRECON_IN 0 -p tcp --dport 9000 -j ACCEPT" in direct_rules(sb, permanent=permanent)
    assert sb.firewall_cmd("--permanent", "--zone=public", "--query-masquerade").stdout.strip() == "yes"
    assert plan_is_empty(fwrecon)  # a second apply has nothing to write
    admins_http = {"kind": "permanent", "item": {"kind": "service", "scope": ["zone", "public"], "name": "http"}}
    assert admins_http not in [entry["item"] for entry in fwrecon.owned()]

    fwrecon.remove_policy("web")
    apply(fwrecon)
    assert listed(sb, "ports", permanent=True) == {"7777/tcp"}
    assert "http" in listed(sb, "services", permanent=True)  # theirs before fwrecon wanted it
    assert listed(sb, "interfaces", permanent=True) == set() and listed(sb, "sources", permanent=True) == set()
    assert direct_rules(sb, permanent=True).strip() == "" and direct_rules(sb, permanent=False).strip() == ""
    assert "2001:db8::/32" not in policy_rich_rules(sb, permanent=True)
    assert sb.firewall_cmd("--permanent", "--zone=public", "--query-masquerade").stdout.strip() == "no"
    assert fwrecon.owned() == []


def _reconciles_after(daemon: Daemon, count: int, trigger: str) -> list[dict]:
    return [r for r in daemon.reconciles()[count:] if r["trigger"] == trigger]


def test_a_reload_or_restart_needs_no_writes_in_permanent_mode_and_re_adds_in_runtime_mode(
    fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]
) -> None:
    sb = fwrecon.sandbox
    fwrecon.backend = "firewalld"  # waits for firewalld (auto would move direct rules to iptables meanwhile)
    fwrecon.write_policy("web", WEB)
    daemon = daemon_factory(extra=("--persist", "permanent"))
    wait_until(lambda: "8080/tcp" in listed(sb, "ports", permanent=True), 5, "the permanent copies")
    daemon.settled()
    before = len(daemon.reconciles())
    sb.firewall_cmd("--reload", check=True)
    wait_until(lambda: _reconciles_after(daemon, before, "reload"), 10, "the reconcile after the reload")
    daemon.settled()
    assert "8080/tcp" in listed(sb, "ports", permanent=False)
    assert "FWRECON_IN 0 -p tcp --dport 9000" in direct_rules(sb, permanent=False)
    assert [r["ops"] for r in daemon.reconciles()[before:]] and all(r["ops"] == 0 for r in daemon.reconciles()[before:])
    before = len(daemon.reconciles())
    sb.kill_firewalld()
    sb.start_firewalld()
    wait_until(lambda: _reconciles_after(daemon, before, "owner"), 15, "the reconcile after the restart")
    daemon.settled()
    assert all(r["ops"] == 0 for r in daemon.reconciles()[before:])
    assert plan_is_empty(fwrecon)
    assert daemon.value("fwrecon_writes_after_reload") >= 2  # the reload's reconcile and the restart's
    assert daemon.histogram_sum("fwrecon_writes_after_reload") == 0
    daemon.stop()

    runtime = daemon_factory(extra=("--persist", "runtime"))  # takes the permanent copies out again
    wait_until(lambda: "8080/tcp" not in listed(sb, "ports", permanent=True), 5, "the copies to go")
    runtime.settled()
    before = len(runtime.reconciles())
    sb.firewall_cmd("--reload", check=True)
    wait_until(lambda: "8080/tcp" in listed(sb, "ports", permanent=False), 10, "the re-adds")
    runtime.settled()
    assert sum(r["ops"] for r in runtime.reconciles()[before:]) >= 10  # every runtime item, one call each
    assert runtime.histogram_sum("fwrecon_writes_after_reload") >= 10


def test_an_admins_permanent_change_during_a_long_apply_is_kept(fwrecon: Fwrecon) -> None:
    """The permanent write is built on a read made right before it, not on the
    plan's read seconds earlier: the admin's port, added in between, stays."""
    sb = fwrecon.sandbox
    ports = ", ".join(f'"{20000 + i}/tcp"' for i in range(300))  # ~2 s of runtime calls before the permanent write
    fwrecon.write_policy("many", f"[zone.public]\nports = [{ports}]\n")
    admin = threading.Thread(
        target=lambda: (time.sleep(0.5), sb.firewall_cmd("--permanent", "--zone=public", "--add-port=7777/tcp", check=True))
    )
    admin.start()
    try:
        apply(fwrecon)
    finally:
        admin.join()
    permanent = listed(sb, "ports", permanent=True)
    assert "7777/tcp" in permanent and "20299/tcp" in permanent
    fwrecon.remove_policy("many")
    apply(fwrecon)
    assert listed(sb, "ports", permanent=True) == {"7777/tcp"}


def test_a_permanent_write_firewalld_refuses_rolls_back_both_layers(fwrecon: Fwrecon) -> None:
    """The runtime accepts the interface; the permanent configuration binds it
    to another zone already, so firewalld refuses the copy (ZONE_CONFLICT)."""
    sb = fwrecon.sandbox
    sb.firewall_cmd("--permanent", "--zone=internal", "--add-interface=fwx0", check=True)
    fwrecon.write_policy("bad", '[zone.public]\nports = ["7301/tcp"]\ninterfaces = ["fwx0"]\n')
    result = fwrecon.run("apply", "--persist", "permanent")
    assert result.returncode == 1 and "ZONE_CONFLICT" in result.stdout + result.stderr, result.stdout + result.stderr
    assert "7301/tcp" not in listed(sb, "ports", permanent=False) | listed(sb, "ports", permanent=True)
    assert "fwx0" not in listed(sb, "interfaces", permanent=False) | listed(sb, "interfaces", permanent=True)
    assert listed(sb, "interfaces", permanent=True, zone="internal") == {"fwx0"}
    assert fwrecon.owned() == []


def test_kill_9_between_the_runtime_and_the_permanent_write_converges(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("p", '[zone.public]\nports = ["7301/tcp", "7302/tcp"]\n')
    crash_after_writes(fwrecon, 3, policy="p", persist="permanent")  # both runtime ports, one permanent
    apply(fwrecon)
    assert {"7301/tcp", "7302/tcp"} <= listed(sb, "ports", permanent=False) & listed(sb, "ports", permanent=True)
    assert plan_is_empty(fwrecon)
    fwrecon.remove_policy("p")
    apply(fwrecon)
    assert not {"7301/tcp", "7302/tcp"} & (listed(sb, "ports", permanent=False) | listed(sb, "ports", permanent=True))
    assert fwrecon.owned() == []


def test_owned_items_an_admin_made_permanent_are_said_and_stay_theirs(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("p", '[zone.public]\nports = ["7301/tcp"]\n')
    apply(fwrecon, "runtime")
    assert listed(sb, "ports", permanent=True) == set()
    sb.firewall_cmd("--runtime-to-permanent", check=True)
    log = apply(fwrecon, "runtime")
    assert "owned_items_made_permanent" in log and "zone public port 7301/tcp" in log
    apply(fwrecon, "permanent")  # the copy is there already, and not fwrecon's
    fwrecon.remove_policy("p")
    apply(fwrecon, "permanent")
    assert "7301/tcp" not in listed(sb, "ports", permanent=False)
    assert "7301/tcp" in listed(sb, "ports", permanent=True)  # the admin's copy stays


def test_the_daemon_repairs_a_permanent_copy_removed_by_hand(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    sb = fwrecon.sandbox
    fwrecon.backend = "firewalld"
    fwrecon.write_policy("web", WEB)
    daemon = daemon_factory(extra=("--persist", "permanent"))
    wait_until(lambda: "8080/tcp" in listed(sb, "ports", permanent=True), 5, "the permanent copies")
    daemon.settled()
    sb.firewall_cmd("--permanent", "--zone=public", "--remove-port=8080/tcp", check=True)
    sb.firewall_cmd(
        "--permanent", "--direct", "--remove-rule", "ipv4", "filter", "FWRECON_IN", "0", "-p", "tcp", "--dport", "9000",
        "-j", "ACCEPT", check=True,
    )  # fmt: skip
    wait_until(lambda: "8080/tcp" in listed(sb, "ports", permanent=True), 5, "the port's permanent copy back")
    wait_until(lambda: "--dport 9000" in direct_rules(sb, permanent=True), 5, "the direct rule's permanent copy back")
    daemon.settled()
    assert "8080/tcp" in listed(sb, "ports", permanent=False)  # the runtime layer was never touched
    assert plan_is_empty(fwrecon)
