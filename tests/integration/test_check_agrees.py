"""`check`, `plan` and `apply` judge a policy alike.

`check` passing means `apply` can only fail for reasons it cannot know
offline; `plan` never lists an operation that `check` rejects.  Runs in the
sandbox namespace (nft rules land there, never on the host).
"""

from __future__ import annotations

import json

from conftest import Fwrecon

HUGE_PRIORITY = """
    [[nft.chain]]
    family = "inet"
    chain = "input"
    hook = "input"
    priority = 99999999999999999

    [[nft.rule]]
    family = "inet"
    chain = "input"
    rule = "tcp dport 9400 accept"
"""

UNDECLARED_CHAIN = """
    [[nft.rule]]
    family = "inet"
    chain = "nowhere"
    rule = "tcp dport 9401 accept"
"""

NFT_REJECTS = """
    [[nft.chain]]
    family = "inet"
    chain = "mine"

    [[nft.rule]]
    family = "inet"
    chain = "mine"
    rule = "tcp dport 9402 acept"
"""

GOOD = """
    [zone.public]
    ports = ["9403/tcp"]
"""


def test_check_plan_and_apply_refuse_the_same_policies(fwrecon: Fwrecon) -> None:
    fwrecon.in_netns = True
    fwrecon.write_policy("huge", HUGE_PRIORITY)
    fwrecon.write_policy("stray", UNDECLARED_CHAIN)
    fwrecon.write_policy("typo", NFT_REJECTS)
    fwrecon.write_policy("good", GOOD)

    checked = fwrecon.run("check")
    assert checked.returncode == 1
    lines = checked.stdout.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["huge.toml", "stray.toml", "typo.toml"], checked.stdout
    assert lines[0].startswith("huge.toml: nft.chain[0].priority: 99999999999999999 is out of range")
    assert lines[1].startswith("stray.toml: nft.rule[0]: the rule's chain 'nowhere' (inet) is declared by no [[nft.chain]]")
    assert lines[2].startswith("typo.toml: nft.rule[0]: nft rejects 'tcp dport 9402 acept'")

    plan = fwrecon.run("plan", "--json")
    assert plan.returncode == 1
    result = json.loads(plan.stdout)
    assert {change["policy"] for change in result["changes"]} == {"good"}
    assert sorted(line.split(":", 1)[0] for line in result["errors"]) == ["huge.toml", "stray.toml", "typo.toml"]

    applied = fwrecon.apply()
    assert applied.returncode == 1
    assert "FAILED" not in applied.stdout, applied.stdout  # refused as invalid, not tried and rolled back
    assert "9403/tcp" in fwrecon.sandbox.firewall_cmd("--zone=public", "--list-ports", check=True).stdout
    ruleset = fwrecon.sandbox.ruleset()
    assert "9400" not in ruleset and "9401" not in ruleset
    # The huge priority never reached the kernel, so nothing of it can outlive the policy.
    assert (
        "table inet fwrecon" not in ruleset or "hook input" not in fwrecon.sandbox.nft("list", "table", "inet", "fwrecon").stdout
    )
