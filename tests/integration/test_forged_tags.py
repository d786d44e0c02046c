"""Ownership is proven by the state file and the rule's own text, never by a tag.

Anyone can write ``--comment fwrecon:<tag>`` (iptables) or ``comment
"fwrecon:<tag>"`` (nft) onto a rule.  Such a rule is foreign: it never stands
for the owned item (so drift is repaired, not hidden) and it is never removed
when fwrecon lets the item go.  Policies themselves may not write into that
namespace.  Runs on a host without firewalld: the sandbox namespace with
firewalld stopped, fwrecon and every tool inside it.
"""

from __future__ import annotations

import json

from conftest import Fwrecon

WANTED = """
    [[direct.rule]]
    family = "ipv4"
    table = "filter"
    chain = "INPUT"
    args = ["-p", "tcp", "--dport", "9300", "-j", "ACCEPT"]
"""

NFT_WANTED = """
    [[nft.chain]]
    family = "inet"
    chain = "input"
    hook = "input"

    [[nft.rule]]
    family = "inet"
    chain = "input"
    rule = "tcp dport 9300 accept"
"""


def input_rules(fwrecon: Fwrecon) -> list[str]:
    text = fwrecon.sandbox.netns_exec(["iptables-save", "-t", "filter"], check=True).stdout
    return [line for line in text.splitlines() if line.startswith("-A INPUT")]


def owned_tag(fwrecon: Fwrecon, needle: str) -> str:
    (line,) = [line for line in input_rules(fwrecon) if needle in line]
    return line.split('--comment "', 1)[1].split('"', 1)[0]


def test_iptables_rule_with_a_copied_tag_is_foreign(bare: Fwrecon) -> None:
    bare.backend = "iptables"
    bare.write_policy("web", WANTED)
    assert bare.apply().returncode == 0
    tag = owned_tag(bare, "--dport 9300")
    sb = bare.sandbox
    # Someone copies the tag onto an unrelated rule, then removes fwrecon's own rule.
    sb.netns_exec(
        ["iptables", "-A", "INPUT", "-p", "udp", "--dport", "7002", "-m", "comment", "--comment", tag, "-j", "ACCEPT"], check=True
    )
    sb.netns_exec(
        ["iptables", "-D", "INPUT", "-p", "tcp", "--dport", "9300", "-m", "comment", "--comment", tag, "-j", "ACCEPT"], check=True
    )
    plan = bare.run("plan", "--json")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert [c["text"] for c in json.loads(plan.stdout)["changes"]] == [
        "direct ipv4 filter INPUT priority 0 rule -p tcp --dport 9300 -j ACCEPT"
    ]
    repaired = bare.apply()
    assert repaired.returncode == 0 and "1 operations" in repaired.stdout, repaired.stdout + repaired.stderr
    assert any("--dport 9300" in line for line in input_rules(bare))
    # The policy goes: exactly fwrecon's rule goes with it, the forged one stays.
    bare.remove_policy("web")
    plan = bare.run("plan", "--json")
    assert [c["text"] for c in json.loads(plan.stdout)["changes"]] == [
        "direct ipv4 filter INPUT priority 0 rule -p tcp --dport 9300 -j ACCEPT"
    ]
    assert bare.apply().returncode == 0
    rules = input_rules(bare)
    assert not any("--dport 9300" in line for line in rules)
    assert [line for line in rules if "--dport 7002" in line], rules


def test_nft_rule_with_a_copied_tag_is_foreign(bare: Fwrecon) -> None:
    bare.backend = "nftables"
    bare.write_policy("web", NFT_WANTED)
    assert bare.apply().returncode == 0
    sb = bare.sandbox
    listing = sb.nft("-a", "list", "chain", "inet", "fwrecon", "input", check=True).stdout
    (line,) = [line for line in listing.splitlines() if "dport 9300" in line]
    tag = line.split('comment "', 1)[1].split('"', 1)[0]
    handle = line.rsplit("# handle ", 1)[1].strip()
    sb.nft("add", "rule", "inet", "fwrecon", "input", "udp", "dport", "7002", "accept", "comment", f'"{tag}"', check=True)
    sb.nft("delete", "rule", "inet", "fwrecon", "input", "handle", handle, check=True)
    repaired = bare.apply()
    assert repaired.returncode == 0 and "1 operations" in repaired.stdout, repaired.stdout + repaired.stderr
    bare.remove_policy("web")
    assert bare.apply().returncode == 0
    listing = sb.nft("list", "ruleset", check=True).stdout
    assert "dport 9300" not in listing
    assert "udp dport 7002 accept" in listing  # the foreign rule (and so fwrecon's table) stays
    assert "fwrecon-probe" not in listing  # the probe that learnt the rule's form left nothing


def test_policy_may_not_borrow_a_tag(bare: Fwrecon) -> None:
    bare.backend = "iptables"
    bare.write_policy("web", WANTED)
    assert bare.apply().returncode == 0
    tag = owned_tag(bare, "--dport 9300")
    bare.write_policy(
        "thief",
        f"""
        [[direct.rule]]
        family = "ipv4"
        table = "filter"
        chain = "INPUT"
        args = ["-p", "udp", "--dport", "7003", "-m", "comment", "--comment", "{tag}", "-j", "ACCEPT"]
    """,
    )
    checked = bare.run("check")
    assert checked.returncode == 1
    assert "thief.toml: direct.rule[0].args[7]:" in checked.stdout and "fwrecon:" in checked.stdout, checked.stdout
    applied = bare.apply()
    assert applied.returncode == 1
    assert not any("--dport 7003" in line for line in input_rules(bare))
