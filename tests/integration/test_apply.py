"""`fwrecon check|plan|apply` against a real firewalld in a network namespace."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, Fwrecon, firewalld_snapshot
from faults import FaultyBackend

from reconciler.backends.firewalld import FirewalldBackend
from reconciler.engine import Reconciler
from reconciler.policydir import load_policy_dir
from reconciler.state import StateStore

WEB = (ROOT / "policies" / "web.toml").read_text()


def test_shipped_policy_applies_every_item_kind_and_goes_away_again(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    before = firewalld_snapshot(sb)
    fwrecon.write_policy("web", WEB)

    result = fwrecon.apply()
    assert result.returncode == 0, result.stdout + result.stderr

    def listed(what: str) -> set[str]:
        return set(sb.firewall_cmd("--zone=public", f"--list-{what}", check=True).stdout.split())

    assert {"http", "https"} <= listed("services")
    assert listed("ports") == {"8080/tcp", "60000-60010/udp"}
    assert listed("protocols") == {"gre"}
    assert listed("source-ports") == {"5353/udp"}
    assert listed("icmp-blocks") == {"echo-request"}
    assert sb.firewall_cmd("--zone=public", "--query-masquerade").stdout.strip() == "yes"
    assert listed("forward-ports") == {"port=2222:proto=tcp:toport=22:toaddr="}
    assert sb.firewall_cmd("--zone=public", "--list-rich-rules").stdout.splitlines() == [
        'rule family="ipv4" source address="10.0.0.0/8" service name="ssh" accept'
    ]
    assert listed("sources") == {"192.0.2.0/24"}
    assert listed("interfaces") == {"dummy0"}
    policy = sb.firewall_cmd("--policy=allow-host-ipv6", "--list-rich-rules", check=True).stdout
    assert 'rule family="ipv6" source address="2001:db8::/32" port port="9100" protocol="tcp" accept' in policy
    assert "ipv4 filter FWRECON_IN" in sb.firewall_cmd("--direct", "--get-all-chains", check=True).stdout
    assert (
        "ipv4 filter FWRECON_IN 0 -p tcp --dport 9000 -j ACCEPT"
        in sb.firewall_cmd("--direct", "--get-all-rules", check=True).stdout
    )

    # and the kernel really has them
    ruleset = sb.ruleset()
    assert "tcp dport 8080 accept" in ruleset
    assert "udp dport 60000-60010 accept" in ruleset
    assert "masquerade" in ruleset
    assert re.search(r"chain FWRECON_IN \{[^}]*tcp dport 9000[^}]*accept", ruleset)
    assert "ip6 saddr 2001:db8::/32 tcp dport 9100 accept" in ruleset

    assert len(fwrecon.owned()) == 15

    fwrecon.remove_policy("web")
    result = fwrecon.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert firewalld_snapshot(sb) == before
    assert "tcp dport 8080" not in sb.ruleset()
    assert fwrecon.owned() == []


def test_second_apply_makes_zero_write_calls(fwrecon: Fwrecon) -> None:
    fwrecon.write_policy("web", WEB)
    assert fwrecon.apply().returncode == 0

    async def again() -> tuple[int, int]:
        backend = await FirewalldBackend.connect(fwrecon.sandbox.bus_address)
        try:
            reconciler = Reconciler(backend, StateStore(fwrecon.state_file), names=backend.known_names)
            report = await reconciler.reconcile(load_policy_dir(fwrecon.policy_dir))
            assert report.converged
            return backend.writes, backend.calls
        finally:
            await backend.close()

    writes, calls = asyncio.run(again())
    assert writes == 0
    # reads only: 4 name lists + zone public + policy allow-host-ipv6 + direct chains and rules, and
    # the permanent layer of what it owns (to see a --runtime-to-permanent): zone and policy
    # (lookup + read each) and direct
    assert calls == 13
    assert fwrecon.run("plan").returncode == 0


def test_plan_lists_operations_with_their_policy(fwrecon: Fwrecon) -> None:
    fwrecon.write_policy("web", '[zone.public]\nports = ["8080/tcp"]\nservices = ["http"]\n')
    result = fwrecon.run("plan")
    assert result.returncode == 2, result.stderr
    assert result.stdout.splitlines() == [
        "+ zone public port 8080/tcp  [web]",
        "+ zone public service http  [web]",
    ]
    as_json = json.loads(fwrecon.run("plan", "--json").stdout)
    assert [c["text"] for c in as_json["changes"]] == ["zone public port 8080/tcp", "zone public service http"]
    # plan changed nothing
    assert "8080/tcp" not in fwrecon.sandbox.firewall_cmd("--zone=public", "--list-ports").stdout


def test_check_validates_offline_and_against_firewalld(fwrecon: Fwrecon) -> None:
    fwrecon.write_policy("good", '[zone.public]\nservices = ["http"]\n')
    result = fwrecon.run("check")
    assert (result.returncode, result.stdout.strip()) == (0, "1 policies valid")

    fwrecon.write_policy("bad", '[zone.public]\nports = ["80/tcp", "80/tcpx"]\n')
    fwrecon.write_policy("unknown", '[zone.nozone]\nservices = ["no-such-service"]\n')
    result = fwrecon.run("check")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        'bad.toml: zone.public.ports[1]: "80/tcpx" is not PORT[-PORT]/PROTO with PROTO one of tcp|udp|sctp|dccp',
        "unknown.toml: zone.nozone: zone 'nozone' does not exist in firewalld",
        "unknown.toml: zone.nozone.services[0]: service 'no-such-service' does not exist in firewalld",
    ]
    # check changed nothing
    assert not fwrecon.state_file.exists()


def test_policy_rejected_by_firewalld_is_rolled_back_while_another_applies(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    # the source is bound to another zone already: firewalld refuses with ZONE_CONFLICT
    sb.firewall_cmd("--zone=internal", "--add-source=198.51.100.0/24", check=True)
    before = firewalld_snapshot(sb)
    fwrecon.write_policy(
        "a-bad",
        """
        [zone.public]
        ports = ["7100/tcp"]
        services = ["ftp"]
        sources = ["198.51.100.0/24"]
    """,
    )
    fwrecon.write_policy("b-good", '[zone.public]\nports = ["7200/tcp"]\n')

    result = fwrecon.apply()
    assert result.returncode == 1
    assert "FAILED a-bad" in result.stdout and "ZONE_CONFLICT" in result.stdout
    ports = sb.firewall_cmd("--zone=public", "--list-ports").stdout.split()
    assert ports == ["7200/tcp"]
    assert "ftp" not in sb.firewall_cmd("--zone=public", "--list-services").stdout
    assert {tuple(e["policies"]) for e in fwrecon.owned()} == {("b-good",)}
    after = firewalld_snapshot(sb)
    assert after["internal"] == before["internal"]
    failed = [json.loads(line) for line in result.stderr.splitlines() if '"policy_failed"' in line]
    assert failed and failed[0]["code"] == "ZONE_CONFLICT" and failed[0]["policy"] == "a-bad"


def test_failure_injected_on_nth_call_leaves_nothing_of_the_policy(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    before = firewalld_snapshot(sb)
    fwrecon.write_policy("a", WEB)
    fwrecon.write_policy("b", '[zone.internal]\nports = ["7300/tcp"]\n')

    async def apply_with_fault() -> list[tuple[str, str]]:
        backend = FaultyBackend(await FirewalldBackend.connect(sb.bus_address), fail_on_write=5)
        try:
            reconciler = Reconciler(backend, StateStore(fwrecon.state_file), names=backend.known_names)
            report = await reconciler.reconcile(load_policy_dir(fwrecon.policy_dir))
            return [(o.policy, o.status) for o in report.outcomes]
        finally:
            await backend.close()

    assert asyncio.run(apply_with_fault()) == [("a", "failed"), ("b", "applied")]
    after = firewalld_snapshot(sb)
    assert after["public"] == before["public"]
    assert after["policy"] == before["policy"]
    assert after["direct"] == before["direct"]
    assert "7300/tcp" in after["internal"]
    # the next plain apply converges
    assert fwrecon.apply().returncode == 0
    assert "8080/tcp" in sb.firewall_cmd("--zone=public", "--list-ports").stdout


def test_items_added_by_hand_survive_policy_deletion(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    sb.firewall_cmd("--zone=public", "--add-port=7000/tcp", check=True)
    sb.firewall_cmd("--zone=public", "--add-service=ftp", check=True)
    sb.firewall_cmd(
        "--direct", "--add-rule", "ipv4", "filter", "INPUT", "0", "-p", "tcp", "--dport", "7001", "-j", "ACCEPT", check=True
    )
    fwrecon.write_policy(
        "web",
        """
        [zone.public]
        ports = ["7000/tcp", "7002/tcp"]
        services = ["ftp", "imap"]

        [[direct.rule]]
        family = "ipv4"
        table = "filter"
        chain = "INPUT"
        args = ["-p", "tcp", "--dport", "7001", "-j", "ACCEPT"]
    """,
    )
    assert fwrecon.apply().returncode == 0
    assert "7002/tcp" in sb.firewall_cmd("--zone=public", "--list-ports").stdout

    fwrecon.remove_policy("web")
    assert fwrecon.apply().returncode == 0
    assert sb.firewall_cmd("--zone=public", "--list-ports").stdout.split() == ["7000/tcp"]
    services = sb.firewall_cmd("--zone=public", "--list-services").stdout.split()
    assert "ftp" in services and "imap" not in services
    assert "--dport 7001" in sb.firewall_cmd("--direct", "--get-all-rules").stdout


def test_kill_9_between_two_ops_then_apply_converges_without_orphans(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    before = firewalld_snapshot(sb)
    fwrecon.write_policy("web", WEB)
    crash = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("crash_apply.py")),
            "firewalld",
            sb.bus_address,
            str(fwrecon.policy_dir),
            str(fwrecon.state_file),
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert crash.returncode == -9, crash.stderr
    state = json.loads(fwrecon.state_file.read_text())
    assert state["pending"]["policy"] == "web"  # it died mid-transaction
    # some ops landed (the chain goes first), others did not (direct rules go last)
    assert "FWRECON_IN" in sb.firewall_cmd("--direct", "--get-all-chains").stdout
    assert sb.firewall_cmd("--direct", "--get-all-rules").stdout.strip() == ""

    result = fwrecon.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"interrupted_transaction_found"' in result.stderr
    assert "8080/tcp" in sb.firewall_cmd("--zone=public", "--list-ports").stdout
    assert json.loads(fwrecon.state_file.read_text())["pending"] is None
    assert fwrecon.run("plan").returncode == 0

    fwrecon.remove_policy("web")
    assert fwrecon.apply().returncode == 0
    assert firewalld_snapshot(sb) == before
    assert fwrecon.owned() == []


def test_traffic_refused_before_and_accepted_after(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    assert sb.tcp_probe(8443) == "refused"
    fwrecon.write_policy("web", '[zone.public]\nports = ["8443/tcp"]\n')
    assert fwrecon.apply().returncode == 0
    assert sb.tcp_probe(8443) == "accepted"
    fwrecon.remove_policy("web")
    assert fwrecon.apply().returncode == 0
    assert sb.tcp_probe(8443) == "refused"


def test_invalid_policy_keeps_last_good_and_others_apply(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("web", '[zone.public]\nports = ["7400/tcp"]\n')
    assert fwrecon.apply().returncode == 0
    fwrecon.write_policy("web", '[zone.public]\nports = ["7400/tcpx"]\n')
    fwrecon.write_policy("other", '[zone.public]\nports = ["7500/tcp"]\n')
    result = fwrecon.apply()
    assert result.returncode == 1
    assert 'INVALID web.toml: zone.public.ports[0]: "7400/tcpx"' in result.stdout
    assert sb.firewall_cmd("--zone=public", "--list-ports").stdout.split() == ["7400/tcp", "7500/tcp"]


def test_world_writable_policy_is_refused(fwrecon: Fwrecon) -> None:
    path = fwrecon.write_policy("web", '[zone.public]\nports = ["7600/tcp"]\n')
    path.chmod(0o666)
    result = fwrecon.apply()
    assert result.returncode == 1
    assert "web.toml: refusing file writable by group or others" in result.stdout
    assert "7600" not in fwrecon.sandbox.firewall_cmd("--zone=public", "--list-ports").stdout


def test_unreachable_firewalld_is_a_clear_error(fwrecon: Fwrecon, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "apply",
            "--backend",
            "firewalld",
            "--bus-address",
            f"unix:path={tmp_path}/nobus",
            "--policy-dir",
            str(fwrecon.policy_dir),
            "--state-file",
            str(fwrecon.state_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "cannot connect to the D-Bus system bus" in result.stderr


def test_firewalld_policy_object_items(fwrecon: Fwrecon) -> None:
    """Runtime policies have no per-item methods: items go through get/setPolicySettings."""
    sb = fwrecon.sandbox
    before = firewalld_snapshot(sb)
    fwrecon.write_policy(
        "pol",
        """
        [policy.allow-host-ipv6]
        ports = ["7700/tcp", "7701-7705/udp"]
        services = ["mdns"]
        forward_ports = [{ port = "7710", protocol = "tcp", to_port = "22" }]
    """,
    )
    assert fwrecon.apply().returncode == 0

    def listed(what: str) -> set[str]:
        return set(sb.firewall_cmd("--policy=allow-host-ipv6", f"--list-{what}", check=True).stdout.split())

    assert listed("ports") == {"7700/tcp", "7701-7705/udp"}
    assert "mdns" in listed("services")
    assert listed("forward-ports") == {"port=7710:proto=tcp:toport=22:toaddr="}
    assert fwrecon.run("plan").returncode == 0
    fwrecon.write_policy("pol", '[policy.allow-host-ipv6]\nports = ["7700/tcp"]\n')
    assert fwrecon.apply().returncode == 0
    assert listed("ports") == {"7700/tcp"} and "mdns" not in listed("services")
    fwrecon.remove_policy("pol")
    assert fwrecon.apply().returncode == 0
    assert firewalld_snapshot(sb) == before


def test_zone_forward_is_switched_on_and_off_through_zone_settings(fwrecon: Fwrecon) -> None:
    """firewalld has no addForward call: fwrecon writes the zone's "forward" setting."""
    sb = fwrecon.sandbox
    sb.firewall_cmd("--zone=internal", "--remove-forward", check=True)
    before = firewalld_snapshot(sb)

    def forwards() -> str:
        return sb.firewall_cmd("--zone=internal", "--query-forward").stdout.strip()

    fwrecon.write_policy("fwd", '[zone.internal]\nforward = true\ninterfaces = ["dummy0"]\n')
    result = fwrecon.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert forwards() == "yes"
    assert re.search(r'chain filter_FWD_internal_allow \{[^}]*oifname "dummy0" accept', sb.ruleset())
    assert fwrecon.run("plan").returncode == 0  # observed back as the same item
    fwrecon.remove_policy("fwd")
    assert fwrecon.apply().returncode == 0
    assert forwards() == "no"
    assert firewalld_snapshot(sb) == before


def test_zone_forward_already_on_is_not_claimed(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    assert sb.firewall_cmd("--zone=public", "--query-forward").stdout.strip() == "yes"  # firewalld's own default
    fwrecon.write_policy("fwd", "[zone.public]\nforward = true\n")
    assert fwrecon.apply().returncode == 0
    assert fwrecon.owned() == []
    fwrecon.remove_policy("fwd")
    assert fwrecon.apply().returncode == 0
    assert sb.firewall_cmd("--zone=public", "--query-forward").stdout.strip() == "yes"
