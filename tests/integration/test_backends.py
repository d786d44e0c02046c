"""`--backend` end to end: iptables and nftables on a host without firewalld,
nft beside firewalld, `auto` choosing and switching while running.

"A host without firewalld" is the sandbox's network namespace with firewalld
stopped; fwrecon then runs inside that namespace (``ip netns exec``), so every
iptables/nft command it runs stays there.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemon, Fwrecon, wait_until

DIRECT_V4_POLICY = """
    [[direct.chain]]
    family = "ipv4"
    table = "filter"
    chain = "FWRECON_IN"

    [[direct.rule]]
    family = "ipv4"
    table = "filter"
    chain = "FWRECON_IN"
    args = ["-p", "tcp", "--dport", "9000", "-j", "ACCEPT"]
"""

DIRECT_POLICY = (
    DIRECT_V4_POLICY
    + """
    [[direct.rule]]
    family = "ipv6"
    table = "filter"
    chain = "INPUT"
    priority = 5
    args = ["-p", "tcp", "--dport", "9001", "-j", "ACCEPT"]

    [[direct.rule]]
    family = "eb"
    table = "filter"
    chain = "INPUT"
    args = ["-p", "ARP", "-j", "ACCEPT"]
"""
)

NFT_POLICY = """
    [[nft.chain]]
    family = "inet"
    chain = "input"
    hook = "input"
    priority = 0
    policy = "drop"

    [[nft.rule]]
    family = "inet"
    chain = "input"
    rule = "tcp dport 8443 accept"
"""


def save(fwrecon: Fwrecon, tool: str = "iptables") -> str:
    return fwrecon.sandbox.netns_exec([f"{tool}-save"], check=True).stdout


def rule_lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("-A") and needle in line]


def events(result, name: str) -> list[dict]:  # type: ignore[no-untyped-def]
    out = []
    for line in result.stderr.splitlines():
        if f'"{name}"' in line:
            out.append(json.loads(line))
    return out


def test_auto_picks_firewalld_when_it_is_on_the_bus(fwrecon: Fwrecon) -> None:
    fwrecon.write_policy("d", '[zone.public]\nports = ["7900/tcp"]\n')
    result = fwrecon.run("plan")
    assert [e["backend"] for e in events(result, "backend_selected")] == ["firewalld"]


def test_auto_picks_iptables_without_firewalld(bare: Fwrecon) -> None:
    bare.write_policy("d", DIRECT_POLICY)
    result = bare.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert [e["backend"] for e in events(result, "backend_selected")] == ["iptables"]
    assert rule_lines(save(bare), "--dport 9000")


def test_iptables_backend_apply_noop_remove(bare: Fwrecon) -> None:
    bare.backend = "iptables"
    bare.sandbox.netns_exec(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"], check=True)  # foreign
    bare.write_policy("d", DIRECT_POLICY)
    result = bare.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    v4 = save(bare)
    assert ":FWRECON_IN - [0:0]" in v4
    [line] = rule_lines(v4, "--dport 9000")
    assert re.search(r'--comment "?fwrecon:[0-9a-f]{16}"?', line)
    assert rule_lines(save(bare, "ip6tables"), "--dport 9001")
    assert rule_lines(save(bare, "ebtables"), "-p ARP -j ACCEPT")

    again = bare.apply()
    assert again.returncode == 0 and "0 operations" in again.stdout
    assert save(bare) == v4 or rule_lines(save(bare), "--dport 9000") == [line]
    assert bare.run("plan").returncode == 0

    bare.remove_policy("d")
    assert bare.apply().returncode == 0
    v4 = save(bare)
    assert not rule_lines(v4, "--dport 9000") and "FWRECON_IN" not in v4
    assert rule_lines(v4, "--dport 22")  # the foreign rule stays
    assert not rule_lines(save(bare, "ip6tables"), "--dport 9001")
    assert not rule_lines(save(bare, "ebtables"), "-p ARP")


def test_iptables_policy_with_a_bad_rule_leaves_nothing(bare: Fwrecon) -> None:
    bare.backend = "iptables"
    bare.write_policy(
        "a-bad",
        """
        [[direct.rule]]
        family = "ipv4"
        table = "filter"
        chain = "INPUT"
        args = ["-p", "tcp", "--dport", "9100", "-j", "ACCEPT"]

        [[direct.rule]]
        family = "ipv4"
        table = "filter"
        chain = "INPUT"
        args = ["-p", "tcp", "--dport", "99999", "-j", "ACCEPT"]
    """,
    )
    bare.write_policy(
        "b-good",
        """
        [[direct.rule]]
        family = "ipv4"
        table = "filter"
        chain = "INPUT"
        args = ["-p", "tcp", "--dport", "9200", "-j", "ACCEPT"]
    """,
    )
    result = bare.apply()
    assert result.returncode == 1
    assert "FAILED a-bad" in result.stdout
    v4 = save(bare)
    assert not rule_lines(v4, "--dport 9100")
    assert rule_lines(v4, "--dport 9200")


def crash_after_writes(fwrecon: Fwrecon, writes: int, policy: str | None = "d", persist: str = "runtime") -> None:
    """One reconcile in the namespace, SIGKILLed right after ``writes`` batches
    (firewalld: D-Bus write calls) while applying ``policy`` (None: a plan of
    removals only, which records no intent first)."""
    sb = fwrecon.sandbox
    crash = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            sb.netns,
            sys.executable,
            str(Path(__file__).with_name("crash_apply.py")),
            fwrecon.backend or "auto",
            sb.bus_address,
            str(fwrecon.policy_dir),
            str(fwrecon.state_file),
            str(writes),
            persist,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crash.returncode == -9, crash.stderr
    if policy is not None:
        assert json.loads(fwrecon.state_file.read_text())["pending"]["policy"] == policy  # it died mid-transaction


def test_iptables_kill_9_between_two_batches_then_apply_converges(bare: Fwrecon) -> None:
    bare.backend = "iptables"
    bare.write_policy("d", DIRECT_POLICY)
    crash_after_writes(bare, 1)  # the batches: ipv4 (the chain), eb, ipv4 (the rule), ipv6
    v4 = save(bare)
    assert ":FWRECON_IN - [0:0]" in v4 and not rule_lines(v4, "--dport 9000")  # half done

    result = bare.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert events(result, "interrupted_transaction_found")
    assert len(rule_lines(save(bare), "--dport 9000")) == 1
    assert len(rule_lines(save(bare, "ip6tables"), "--dport 9001")) == 1
    assert len(rule_lines(save(bare, "ebtables"), "-p ARP -j ACCEPT")) == 1
    assert json.loads(bare.state_file.read_text())["pending"] is None
    assert bare.run("plan").returncode == 0

    bare.remove_policy("d")  # the crash left nothing unowned behind
    assert bare.apply().returncode == 0
    assert "FWRECON_IN" not in save(bare) and not rule_lines(save(bare, "ip6tables"), "--dport 9001")
    assert not rule_lines(save(bare, "ebtables"), "-p ARP")
    assert bare.owned() == []


def test_nftables_kill_9_after_the_batch_before_the_state_write(bare: Fwrecon) -> None:
    sb = bare.sandbox
    bare.backend = "nftables"
    bare.write_policy("d", NFT_POLICY)
    crash_after_writes(bare, 1)  # the whole transaction is one nft -f: in the kernel, not yet settled in the state
    assert "tcp dport 8443 accept" in sb.ruleset()

    result = bare.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert events(result, "interrupted_transaction_found") and "0 operations" in result.stdout  # adopted, not doubled
    assert sb.nft("list", "table", "inet", "fwrecon", check=True).stdout.count("tcp dport 8443 accept") == 1
    assert json.loads(bare.state_file.read_text())["pending"] is None

    bare.remove_policy("d")
    assert bare.apply().returncode == 0
    assert "8443" not in sb.ruleset() and bare.owned() == []


@pytest.mark.parametrize(("hidden", "refused", "package"), [("iptables-save", "d", "iptables"), ("nft", "fw", "nftables")])
def test_a_missing_tool_fails_only_the_policies_that_need_it(bare: Fwrecon, hidden: str, refused: str, package: str) -> None:
    """A minimal host with nft but no iptables package, or the other way round:
    the policy that needs the missing tool is invalid, saying what to install;
    the other applies. Once the tool is there, both apply."""
    sb = bare.sandbox
    bare.backend = "iptables"
    bare.write_policy("d", DIRECT_V4_POLICY)
    bare.write_policy("fw", NFT_POLICY.replace('policy = "drop"', 'policy = "accept"'))
    without = [sys.executable, str(Path(__file__).with_name("without_tools.py")), hidden, "--"]
    result = subprocess.run([*without, *bare.argv("apply")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    section = "direct" if refused == "d" else "nft"
    assert f"INVALID {refused}.toml: {section}: needs {hidden}, which is not installed (the {package} package)" in result.stdout
    assert ("FWRECON_IN" in save(bare)) == (refused != "d")
    assert ("tcp dport 8443 accept" in sb.ruleset()) == (refused != "fw")

    result = bare.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert rule_lines(save(bare), "--dport 9000") and "tcp dport 8443 accept" in sb.ruleset()


def test_zone_policy_without_firewalld_says_so_and_others_apply(bare: Fwrecon) -> None:
    bare.backend = "iptables"
    bare.write_policy("web", '[zone.public]\nports = ["8080/tcp"]\n')
    bare.write_policy("d", DIRECT_POLICY)
    result = bare.apply()
    assert result.returncode == 1
    assert "INVALID web.toml: zone.public: needs firewalld (backend in charge: iptables)" in result.stdout
    assert rule_lines(save(bare), "--dport 9000")


def test_iptables_traffic_refused_then_accepted(bare: Fwrecon) -> None:
    sb = bare.sandbox
    bare.backend = "iptables"
    sb.netns_exec(["iptables", "-P", "INPUT", "DROP"], check=True)
    assert sb.tcp_probe(8443) == "timeout"
    bare.write_policy(
        "web",
        """
        [[direct.rule]]
        family = "ipv4"
        table = "filter"
        chain = "INPUT"
        args = ["-p", "tcp", "--dport", "8443", "-j", "ACCEPT"]
    """,
    )
    assert bare.apply().returncode == 0
    assert sb.tcp_probe(8443) == "accepted"


def test_nftables_backend_traffic_noop_and_foreign_tables(bare: Fwrecon) -> None:
    sb = bare.sandbox
    bare.backend = "nftables"
    sb.netns_exec(["nft", "add table inet other; add chain inet other c; add rule inet other c tcp dport 1 accept"], check=True)
    other = sb.nft("list", "table", "inet", "other", check=True).stdout
    bare.write_policy("fw", NFT_POLICY.replace('rule = "tcp dport 8443 accept"', 'rule = "tcp dport 8444 accept"'))
    assert bare.apply().returncode == 0
    assert sb.tcp_probe(8443) == "timeout"  # policy drop
    bare.write_policy("fw", NFT_POLICY)
    assert bare.apply().returncode == 0
    assert sb.tcp_probe(8443) == "accepted"
    table = sb.nft("list", "table", "inet", "fwrecon", check=True).stdout
    assert re.search(r'tcp dport 8443 accept comment "fwrecon:[0-9a-f]{16}"', table)
    again = bare.apply()
    assert "0 operations" in again.stdout
    assert sb.nft("list", "table", "inet", "fwrecon", check=True).stdout == table
    assert sb.nft("list", "table", "inet", "other", check=True).stdout == other
    bare.remove_policy("fw")
    assert bare.apply().returncode == 0
    assert "8443" not in sb.ruleset()
    assert sb.nft("list", "table", "inet", "other", check=True).stdout == other


def test_nftables_bad_rule_leaves_nothing(bare: Fwrecon) -> None:
    bare.backend = "nftables"
    before = bare.sandbox.ruleset()
    bare.write_policy("bad", NFT_POLICY + '\n[[nft.rule]]\nfamily = "inet"\nchain = "input"\nrule = "tcp dport 8445 acept"\n')
    result = bare.apply()
    assert result.returncode == 1
    # nft refused the batch (nothing applied); nft -c then finds why, so the
    # policy is reported invalid, as `check` and `plan` report it.
    assert "INVALID bad.toml: nft.rule[1]: nft rejects 'tcp dport 8445 acept'" in result.stdout, result.stdout
    assert bare.sandbox.ruleset() == before


def test_nft_flush_by_hand_is_repaired_without_resync(bare: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    sb = bare.sandbox
    bare.backend = "nftables"
    bare.write_policy("fw", NFT_POLICY)
    daemon = daemon_factory(resync=3600)
    wait_until(lambda: "tcp dport 8443 accept" in sb.ruleset(), 5, "the nft rule")
    daemon.settled()
    sb.nft("flush", "table", "inet", "fwrecon", check=True)
    wait_until(lambda: "tcp dport 8443 accept" in sb.ruleset(), 3, "the repair after a flush")
    sb.nft("flush", "ruleset", check=True)
    wait_until(lambda: "tcp dport 8443 accept" in sb.ruleset(), 3, "the repair after flush ruleset")
    assert daemon.stop() == 0


def test_nft_sections_beside_firewalld(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.in_netns = True  # nft items land in the namespace fwrecon runs in
    fwrecon.backend = "firewalld"
    fwrecon.write_policy(
        "mixed", '[zone.public]\nports = ["7950/tcp"]\n' + NFT_POLICY.replace('policy = "drop"', 'policy = "accept"')
    )
    result = fwrecon.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7950/tcp" in sb.firewall_cmd("--zone=public", "--list-ports").stdout
    assert "tcp dport 8443 accept" in sb.nft("list", "table", "inet", "fwrecon", check=True).stdout
    sb.firewall_cmd("--reload", check=True)  # firewalld leaves foreign tables alone
    assert "tcp dport 8443 accept" in sb.nft("list", "table", "inet", "fwrecon", check=True).stdout
    assert fwrecon.run("plan").returncode == 2  # only the zone port is missing now
    assert fwrecon.apply().returncode == 0


def test_auto_moves_rules_when_firewalld_goes_and_comes_back(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    sb = fwrecon.sandbox
    fwrecon.in_netns = True
    fwrecon.write_policy("d", DIRECT_POLICY)
    fwrecon.write_policy("z", '[zone.public]\nports = ["8765/tcp"]\n')  # waits while firewalld is away
    daemon = daemon_factory()
    wait_until(lambda: "--dport 9000" in sb.firewall_cmd("--direct", "--get-all-rules").stdout, 5, "the rule via firewalld")
    daemon.settled()
    assert len(rule_lines(save(fwrecon), "--dport 9000")) == 1

    sb.stop_firewalld()  # its direct rules go with it; iptables takes over
    wait_until(lambda: len(rule_lines(save(fwrecon), "fwrecon:")) == 1, 5, "the rule via iptables")
    daemon.settled()
    [line] = rule_lines(save(fwrecon), "--dport 9000")
    assert "fwrecon:" in line

    sb.start_firewalld()  # back to firewalld: the tagged copy goes, firewalld's comes
    wait_until(lambda: "--dport 9000" in sb.firewall_cmd("--direct", "--get-all-rules").stdout, 5, "the rule back in firewalld")
    daemon.settled()
    lines = rule_lines(save(fwrecon), "--dport 9000")
    assert len(lines) == 1 and "fwrecon:" not in lines[0]
    wait_until(lambda: "8765/tcp" in sb.firewall_cmd("--zone=public", "--list-ports").stdout, 5, "the zone port back")
    assert [e["backend"] for e in daemon.events("backend_selected")] == ["firewalld", "iptables", "firewalld"]
    assert daemon.events("reconcile_crashed") == []
    assert {e["policy"] for e in daemon.events("policy_invalid")} == {"z"}  # "needs firewalld" while it was away
    assert daemon.proc.poll() is None
    time.sleep(0.2)
    assert daemon.stop() == 0


def test_chain_with_foreign_rules_is_kept_and_the_run_converges(bare: Fwrecon) -> None:
    bare.backend = "iptables"
    bare.write_policy("d", DIRECT_POLICY)
    assert bare.apply().returncode == 0
    bare.sandbox.netns_exec(["iptables", "-A", "FWRECON_IN", "-p", "udp", "--dport", "53", "-j", "ACCEPT"], check=True)
    bare.remove_policy("d")
    result = bare.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    v4 = save(bare)
    assert not rule_lines(v4, "--dport 9000")
    assert rule_lines(v4, "--dport 53") and ":FWRECON_IN" in v4  # kept: someone else uses it
    again = bare.apply()
    assert again.returncode == 0 and "0 operations" in again.stdout


def test_shipped_policies_apply_and_converge(fwrecon: Fwrecon) -> None:
    """Everything in policies/ (zones, a firewalld policy, direct and nft sections)."""
    from conftest import ROOT

    fwrecon.in_netns = True
    for path in sorted((ROOT / "policies").glob("*.toml")):
        fwrecon.write_policy(path.stem, path.read_text())
    result = fwrecon.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    again = fwrecon.apply()
    assert "0 operations" in again.stdout, again.stdout
    assert "ct state new limit rate over 10/minute" in fwrecon.sandbox.nft("list", "table", "inet", "fwrecon", check=True).stdout


def test_check_asks_nft_about_nft_rules(bare: Fwrecon) -> None:
    bare.write_policy("fw", NFT_POLICY + '\n[[nft.rule]]\nfamily = "inet"\nchain = "input"\nrule = "tcp dport 8445 acept"\n')
    before = bare.sandbox.ruleset()
    result = bare.run("check")
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert line.startswith("fw.toml: nft.rule[1]: nft rejects 'tcp dport 8445 acept': "), line
    assert bare.sandbox.ruleset() == before  # checked, not applied
