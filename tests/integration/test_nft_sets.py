"""nft sets end to end: `fwrecon apply --backend nftables` in the sandbox namespace.

Each element is an item of its own: sets grow and shrink by the difference,
two policies share one set, elements and rules fwrecon did not add stay, hand
deletions are repaired, and a rule matching on the set filters real traffic
(the sandbox's peer is 198.18.0.2).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from conftest import Daemon, Fwrecon, wait_until
from fwsandbox import SANDBOX_IFACE
from test_backends import crash_after_writes

PEER = "198.18.0.2"
PORT = 8443


def set_policy(elements: list[str], *, name: str = "blocklist", rule: bool = True, flags: str = '["interval"]') -> str:
    text = f"""
        [[nft.set]]
        family = "inet"
        name = "{name}"
        type = "ipv4_addr"
        flags = {flags}
        elements = {json.dumps(elements)}
    """
    if rule:
        text += f"""
        [[nft.chain]]
        family = "inet"
        chain = "input"
        hook = "input"

        [[nft.rule]]
        family = "inet"
        chain = "input"
        rule = "ip saddr @{name} tcp dport {PORT} drop"
    """
    return text


def elements(fwrecon: Fwrecon, name: str = "blocklist") -> list[str] | None:
    """The set's elements as nft prints them; None when there is no such set."""
    listed = fwrecon.sandbox.nft("-j", "list", "set", "inet", "fwrecon", name)
    if listed.returncode != 0:
        return None
    (body,) = [obj["set"] for obj in json.loads(listed.stdout)["nftables"] if "set" in obj]
    found = []
    for value in body.get("elem", []):
        if isinstance(value, dict) and "prefix" in value:
            value = f"{value['prefix']['addr']}/{value['prefix']['len']}"
        elif isinstance(value, dict) and "range" in value:
            value = "-".join(map(str, value["range"]))
        found.append(str(value))
    return sorted(found)


def applied(fwrecon: Fwrecon) -> str:
    result = fwrecon.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_set_grows_and_shrinks_by_the_difference_and_filters_traffic(bare: Fwrecon) -> None:
    sb = bare.sandbox
    bare.backend = "nftables"
    bare.write_policy("bl", set_policy(["192.0.2.0/24"]))
    applied(bare)
    assert elements(bare) == ["192.0.2.0/24"]
    assert sb.tcp_probe(PORT) == "accepted"
    # Someone else's element in our set: never owned, never removed.
    sb.nft("add", "element", "inet", "fwrecon", "blocklist", "{ 203.0.113.9 }", check=True)

    bare.write_policy("bl", set_policy(["192.0.2.0/24", f"{PEER}/32", "10.0.0.1-10.0.0.5"]))
    out = applied(bare)
    assert out.count("element") == 2, out  # the two new elements, nothing else
    assert elements(bare) == sorted(["10.0.0.1-10.0.0.5", "192.0.2.0/24", "203.0.113.9", PEER])
    assert sb.tcp_probe(PORT) == "timeout", "the peer is in the blocklist now"
    assert "0 operations" in applied(bare)  # nft prints what the policy wrote: no churn

    bare.write_policy("bl", set_policy(["10.0.0.1-10.0.0.5"]))
    out = applied(bare)
    assert "- nft inet fwrecon set blocklist element 192.0.2.0/24" in out and f"element {PEER}" in out, out
    assert elements(bare) == ["10.0.0.1-10.0.0.5", "203.0.113.9"]
    assert sb.tcp_probe(PORT) == "accepted"

    bare.remove_policy("bl")
    applied(bare)
    # The set stays while it holds someone else's element; the rule and our elements are gone.
    assert elements(bare) == ["203.0.113.9"]
    assert "@blocklist" not in sb.ruleset()
    sb.nft("delete", "element", "inet", "fwrecon", "blocklist", "{ 203.0.113.9 }", check=True)
    applied(bare)
    assert elements(bare) is None and "fwrecon" not in sb.ruleset()
    assert bare.owned() == []


def test_two_policies_share_a_set(bare: Fwrecon) -> None:
    bare.backend = "nftables"
    bare.write_policy("a", set_policy(["192.0.2.1", "192.0.2.2"], rule=False, flags="[]"))
    bare.write_policy("b", set_policy(["192.0.2.2", "192.0.2.3"], rule=False, flags="[]"))
    applied(bare)
    assert elements(bare) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    bare.remove_policy("a")
    applied(bare)
    assert elements(bare) == ["192.0.2.2", "192.0.2.3"]  # the shared one stays for b
    bare.remove_policy("b")
    applied(bare)
    assert elements(bare) is None


def test_an_element_already_there_is_not_owned(bare: Fwrecon) -> None:
    sb = bare.sandbox
    bare.backend = "nftables"
    sb.netns_exec(["nft", "add table inet fwrecon; add set inet fwrecon blocklist { type ipv4_addr; }"], check=True)
    sb.nft("add", "element", "inet", "fwrecon", "blocklist", "{ 192.0.2.7 }", check=True)
    bare.write_policy("bl", set_policy(["192.0.2.7", "192.0.2.8"], rule=False, flags="[]"))
    plan = bare.run("plan")
    assert "+ nft inet fwrecon set blocklist element 192.0.2.8  [bl]" in plan.stdout, plan.stdout
    assert "= nft inet fwrecon set blocklist element 192.0.2.7  [bl] held by others" in plan.stdout, plan.stdout
    applied(bare)
    bare.remove_policy("bl")
    applied(bare)
    assert elements(bare) == ["192.0.2.7"]  # the set and its element were there before: both stay


def test_a_bad_element_applies_nothing_of_that_policy(bare: Fwrecon) -> None:
    sb = bare.sandbox
    bare.backend = "nftables"
    bare.write_policy("good", set_policy(["192.0.2.1"], name="good", rule=False, flags="[]"))
    bare.write_policy("bad", set_policy(["192.0.2.9", "192.0.2.300", "198.51.100.0/24"], name="bad", rule=False, flags="[]"))
    result = bare.apply()
    assert result.returncode == 1
    assert "bad.toml: nft.set[0].elements[1]: '192.0.2.300' is not an IPv4 address, network or range" in result.stdout
    assert (
        "bad.toml: nft.set[0].elements[2]: '198.51.100.0/24' is a range or network: the set needs flags = [\"interval\"]"
        in result.stdout
    )
    assert elements(bare, "good") == ["192.0.2.1"]
    assert elements(bare, "bad") is None and "192.0.2.9" not in sb.ruleset()
    check = bare.run("check")
    assert check.returncode == 1 and "elements[1]" in check.stdout


def test_overlaps_and_conflicting_declarations_are_policy_errors(bare: Fwrecon) -> None:
    bare.backend = "nftables"
    bare.write_policy("a", set_policy(["10.0.0.0/8"], rule=False))
    bare.write_policy("b", set_policy(["10.1.0.0/16"], rule=False))
    bare.write_policy("c", set_policy(["192.0.2.1"], rule=False, flags="[]"))
    result = bare.apply()
    assert result.returncode == 1
    assert "b.toml: nft.set[0].elements[0]: '10.1.0.0/16' overlaps '10.0.0.0/8' of policy 'a'" in result.stdout, result.stdout
    assert "c.toml: nft.set[0]: policy 'a' declares the set 'blocklist' (inet) as" in result.stdout, result.stdout
    assert elements(bare) == ["10.0.0.0/8"]


def test_the_edit_that_overlaps_what_is_in_force_is_the_one_refused(bare: Fwrecon) -> None:
    bare.backend = "nftables"
    bare.write_policy("b", set_policy(["10.1.0.0/16"], rule=False))
    applied(bare)
    bare.write_policy("a", set_policy(["10.0.0.0/8"], rule=False))  # named first, but the edit is a's
    result = bare.apply()
    assert result.returncode == 1
    assert "a.toml: nft.set[0].elements[0]: '10.0.0.0/8' overlaps '10.1.0.0/16' of policy 'b'" in result.stdout, result.stdout
    assert "b.toml" not in result.stdout, result.stdout
    assert elements(bare) == ["10.1.0.0/16"]
    # b's file breaks: its element stays in force, and still refuses an overlap, as b's.
    bare.remove_policy("a")
    bare.write_policy("b", "[[nft.set]\n")
    bare.write_policy("c", set_policy(["10.1.2.0/24"], rule=False))
    result = bare.apply()
    assert result.returncode == 1
    assert "c.toml: nft.set[0].elements[0]: '10.1.2.0/24' overlaps '10.1.0.0/16' of policy 'b'" in result.stdout, result.stdout
    assert elements(bare) == ["10.1.0.0/16"]


def test_an_element_someone_else_put_in_our_set_refuses_an_overlapping_edit(bare: Fwrecon) -> None:
    bare.backend = "nftables"
    bare.write_policy("a", set_policy(["192.0.2.0/24"], rule=False))
    applied(bare)
    bare.sandbox.nft("add", "element", "inet", "fwrecon", "blocklist", "{ 10.1.0.0/16 }", check=True)  # no policy wants it
    bare.write_policy("a", set_policy(["192.0.2.0/24", "10.0.0.0/8"], rule=False))
    told = "a.toml: nft.set[0].elements[1]: '10.0.0.0/8' overlaps '10.1.0.0/16', which someone else put there"
    for command in ("check", "plan", "apply"):
        result = bare.run(command)
        said = result.stdout + result.stderr
        assert result.returncode == 1 and told in said, (command, said)
        assert "policy_failed" not in said, said  # held and told, not tried and refused by nft
    assert elements(bare) == ["10.1.0.0/16", "192.0.2.0/24"]


def test_check_judges_an_edit_beside_what_fwrecon_owns_as_plan_and_apply_do(bare: Fwrecon) -> None:
    # a widens its own 10.1.0.0/16 to 10.0.0.0/8: the /16 is fwrecon's (it goes first), not someone else's.
    bare.backend = "nftables"
    bare.write_policy("a", set_policy(["10.1.0.0/16"], rule=False))
    applied(bare)
    bare.write_policy("a", set_policy(["10.0.0.0/8"], rule=False))
    check = bare.run("check")
    assert check.returncode == 0 and "1 policies valid" in check.stdout, check.stdout + check.stderr
    assert elements(bare) == ["10.1.0.0/16"]  # check changed nothing
    applied(bare)
    assert elements(bare) == ["10.0.0.0/8"]
    # Where the state file cannot be read, check says so and takes nothing in the set for someone else's.
    state = bare.state_file
    saved = state.read_bytes()
    bare.write_policy("a", set_policy(["10.0.0.0/8", "192.0.2.0/24"], rule=False))
    state.unlink()
    state.mkdir()
    try:
        check = bare.run("check")
    finally:
        state.rmdir()
        state.write_bytes(saved)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "note: judged without what fwrecon owns" in check.stderr, check.stderr


def test_a_rule_using_a_set_that_stays_in_use_passes_check_as_it_passes_apply(bare: Fwrecon) -> None:
    # b's file (declaring the set) is gone; d's rule keeps the set in place. nft -c judged d's rule in a
    # scratch table without that set: check and plan said "No such file or directory", apply applied.
    bare.backend = "nftables"
    bare.write_policy("b", set_policy(["192.0.2.1"], rule=False, flags="[]"))
    bare.write_policy(
        "d",
        """
        [[nft.chain]]
        family = "inet"
        chain = "d_input"

        [[nft.rule]]
        family = "inet"
        chain = "d_input"
        rule = "ip saddr @blocklist drop"
        """,
    )
    applied(bare)
    bare.remove_policy("b")
    for command in ("check", "plan", "apply", "check"):
        result = bare.run(command)
        assert result.returncode in (0, 2) and "rejects" not in result.stdout + result.stderr, (command, result.stdout)
    assert elements(bare) == [] and "ip saddr @blocklist" in bare.sandbox.ruleset()


def test_a_jump_loop_through_chains_a_held_policy_keeps_is_refused_by_check_as_by_apply(bare: Fwrecon) -> None:
    # b's chains input -> X -> Y stay in force (b's file broke); d's rule "jump X" in Y closes a loop.
    # nft refuses it at apply ("Too many links"): check and plan must not pass it.
    bare.backend = "nftables"
    chains = "".join(f'[[nft.chain]]\nfamily = "inet"\nchain = "{c}"\n' for c in ("X", "Y"))
    rules = "".join(f'[[nft.rule]]\nfamily = "inet"\nchain = "{c}"\nrule = "jump {t}"\n' for c, t in (("input", "X"), ("X", "Y")))
    bare.write_policy("b", '[[nft.chain]]\nfamily = "inet"\nchain = "input"\nhook = "input"\n' + chains + rules)
    applied(bare)
    bare.write_policy("b", "this is = not toml [")
    bare.write_policy("d", '[[nft.rule]]\nfamily = "inet"\nchain = "Y"\nrule = "jump X"\n')
    for command in ("check", "plan", "apply"):
        result = bare.run(command)
        said = result.stdout + result.stderr
        assert result.returncode == 1 and "d.toml: nft.rule[0]" in said and "Too many links" in said, (command, said)
    assert "jump X" not in bare.sandbox.nft("list", "chain", "inet", "fwrecon", "Y").stdout


def test_a_jump_loop_among_new_chains_is_refused_by_check_as_by_apply(bare: Fwrecon) -> None:
    # nft -c leaves loop checks to the commit when the base chain is new in the same batch: check passed
    # the loop, apply failed at every run.
    bare.backend = "nftables"
    chains = "".join(f'[[nft.chain]]\nfamily = "inet"\nchain = "{c}"\n' for c in ("X", "Y"))
    rules = "".join(
        f'[[nft.rule]]\nfamily = "inet"\nchain = "{c}"\nrule = "jump {t}"\n' for c, t in (("input", "X"), ("X", "Y"), ("Y", "X"))
    )
    bare.write_policy("l", '[[nft.chain]]\nfamily = "inet"\nchain = "input"\nhook = "input"\n' + chains + rules)
    for command in ("check", "plan", "apply"):
        result = bare.run(command)
        said = result.stdout + result.stderr
        assert result.returncode == 1 and "l.toml: nft.rule[" in said and "Too many links" in said, (command, said)
    assert "fwrecon" not in bare.sandbox.ruleset()


def loop_policy(entry: str = "jump X") -> str:
    """input (a base chain) -> X -> Y -> X, entered by the rule ``entry`` in input."""
    chains = "".join(f'[[nft.chain]]\nfamily = "inet"\nchain = "{c}"\n' for c in ("X", "Y"))
    rules = "".join(
        f'[[nft.rule]]\nfamily = "inet"\nchain = "{c}"\nrule = {json.dumps(r)}\n'
        for c, r in (("input", entry), ("X", "jump Y"), ("Y", "jump X"))
    )
    return '[[nft.chain]]\nfamily = "inet"\nchain = "input"\nhook = "input"\n' + chains + rules


def test_a_loop_is_blamed_on_its_own_policy_only_and_the_others_apply(bare: Fwrecon) -> None:
    # After the rule closing a loop the kernel answers "Too many links" for every later rule of the table:
    # z (its own chain, no jump) must not be refused with it.
    bare.backend = "nftables"
    bare.write_policy("a", loop_policy())
    bare.write_policy(
        "z",
        '[[nft.chain]]\nfamily = "inet"\nchain = "zz"\n\n[[nft.rule]]\nfamily = "inet"\nchain = "zz"\nrule = "tcp dport 22 accept"\n',
    )
    for command in ("check", "plan", "apply"):
        result = bare.run(command)
        said = result.stdout + result.stderr
        assert result.returncode == 1 and "a.toml: nft.rule[" in said and "Too many links" in said, (command, said)
        assert "z.toml" not in said, (command, said)
    assert "tcp dport 22 accept" in bare.sandbox.nft("list", "chain", "inet", "fwrecon", "zz").stdout


def test_a_loop_entered_through_an_interface_the_check_namespace_lacks_is_still_refused(bare: Fwrecon) -> None:
    # The throwaway namespace of the loop check has no fwsb0: the entry rule stands in by its bare jump.
    bare.backend = "nftables"
    bare.write_policy("l", loop_policy(f'iif "{SANDBOX_IFACE}" jump X'))
    result = bare.run("check")
    said = result.stdout + result.stderr
    assert result.returncode == 1 and "l.toml: nft.rule[" in said and "Too many links" in said, said
    # Without the loop the same entry passes (the interface exists where it applies).
    bare.write_policy("l", loop_policy(f'iif "{SANDBOX_IFACE}" jump X').replace('rule = "jump X"', 'rule = "counter"'))
    assert bare.run("check").returncode == 0
    applied(bare)


def test_a_jump_to_a_chain_a_held_policy_keeps_passes_check_as_it_passes_apply(bare: Fwrecon) -> None:
    # b's chain X stays in force (b's file broke); d's rule jumps to it. nft -c judged d's rule without X:
    # check and plan said "No such file or directory" while the firewall holds X and apply applied it.
    bare.backend = "nftables"
    b = '[[nft.chain]]\nfamily = "inet"\nchain = "X"\n\n[[nft.rule]]\nfamily = "inet"\nchain = "X"\nrule = "counter"\n'
    bare.write_policy("b", b)
    applied(bare)
    bare.write_policy("b", "this is = not toml [")
    bare.write_policy(
        "d",
        '[[nft.chain]]\nfamily = "inet"\nchain = "d_chain"\n\n[[nft.rule]]\nfamily = "inet"\nchain = "d_chain"\nrule = "jump X"\n',
    )
    for command in ("check", "plan", "apply"):
        result = bare.run(command)
        said = result.stdout + result.stderr
        assert "b.toml" in said and "d.toml" not in said and "No such file" not in said, (command, said)
    assert "jump X" in bare.sandbox.nft("list", "chain", "inet", "fwrecon", "d_chain").stdout
    assert "counter" in bare.sandbox.nft("list", "chain", "inet", "fwrecon", "X").stdout  # b's, untouched


def test_a_rule_using_an_undeclared_set_is_refused_before_anything_runs(bare: Fwrecon) -> None:
    bare.backend = "nftables"
    policy = set_policy([], name="blocklist").replace("@blocklist", "@nosuchset")
    bare.write_policy("r", policy)
    for command in ("check", "apply"):
        result = bare.run(command)
        assert result.returncode == 1
        assert "the set @nosuchset (inet) is declared by no [[nft.set]]" in result.stdout, result.stdout
    assert "fwrecon" not in bare.sandbox.ruleset()


def test_many_elements_print_as_one_line_and_json_lists_them(bare: Fwrecon) -> None:
    bare.backend = "nftables"
    many = [f"10.{i // 256}.{i % 256}.1" for i in range(3000)]
    bare.write_policy("big", set_policy(many, rule=False, flags="[]"))
    plan = bare.run("plan")
    assert plan.returncode == 2
    assert "+ nft inet fwrecon set blocklist: 3,000 elements added  [big]" in plan.stdout, plan.stdout
    assert len(plan.stdout.splitlines()) == 2  # the set, and its elements in one line
    listed = json.loads(bare.run("plan", "--json").stdout)["changes"]
    assert len([c for c in listed if c["item"]["kind"] == "nft_element"]) == 3000
    applied(bare)
    assert len(elements(bare) or []) == 3000
    status = bare.status().stdout
    assert "  owns on nftables: nft inet fwrecon set blocklist: 3,000 elements" in status, status
    assert len(status.splitlines()) < 10
    bare.write_policy("big", set_policy([*many[1:], "192.0.2.1"], rule=False, flags="[]"))
    out = applied(bare)
    assert "+ nft inet fwrecon set blocklist element 192.0.2.1  [big]" in out
    assert "- nft inet fwrecon set blocklist element 10.0.0.1  [big]" in out
    assert "2 operations" in out


def test_deleted_elements_and_a_flushed_set_are_repaired(bare: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    sb = bare.sandbox
    bare.backend = "nftables"
    bare.write_policy("bl", set_policy(["192.0.2.1", "192.0.2.2"], flags="[]"))
    daemon = daemon_factory(resync=3600)
    wait_until(lambda: elements(bare) == ["192.0.2.1", "192.0.2.2"], 5, "the set")
    daemon.settled()
    sb.nft("delete", "element", "inet", "fwrecon", "blocklist", "{ 192.0.2.1 }", check=True)
    wait_until(lambda: elements(bare) == ["192.0.2.1", "192.0.2.2"], 3, "the element put back")
    sb.nft("flush", "set", "inet", "fwrecon", "blocklist", check=True)
    wait_until(lambda: elements(bare) == ["192.0.2.1", "192.0.2.2"], 3, "the flushed set refilled")
    assert daemon.value("fwrecon_nft_set_elements", family="inet", set="blocklist") == 2
    assert daemon.stop() == 0


def odd_forms(rng: random.Random) -> dict[str, list[str]]:
    """Disjoint elements per set type, each in a form nft prints differently."""
    v4, v6, ports = [], [], []
    for block in rng.sample(range(1, 250), 60):
        base = f"10.{block}"
        v4 += [f"{base}.0.7/32", f"{base}.1.0-{base}.1.255", f"{base}.2.5-{base}.2.9", f"{base}.3.77/24"]
        v6 += [f"2001:DB8:{block:x}::/48", f"2001:db9:{block:x}:1::1-2001:db9:{block:x}:1::1", f"::ffff:10.{block}.0.1"]
    for base in rng.sample(range(1, 600), 60):
        ports += [str(base * 100), f"{base * 100 + 10}-{base * 100 + 20}", f"{base * 100 + 50}-{base * 100 + 50}"]
    return {"ipv4_addr": v4, "ipv6_addr": v6, "inet_service": ports}


def test_elements_in_any_form_never_churn(bare: Fwrecon) -> None:
    """Whatever form a policy writes, the next plan finds it present: nothing to do."""
    bare.backend = "nftables"
    forms = odd_forms(random.Random(1306))
    text = ""
    for set_type, elements_of_type in forms.items():
        for flags in ('["interval"]', '["interval", "timeout"]'):
            name = f"{set_type}_{len(flags)}"
            text += set_policy(elements_of_type, name=name, rule=False, flags=flags).replace(
                'type = "ipv4_addr"', f'type = "{set_type}"'
            )
    text += set_policy(["AA-BB-CC-DD-EE-01", "aa:bb:cc:dd:ee:02"], name="macs", rule=False, flags='["timeout"]').replace(
        'type = "ipv4_addr"', 'type = "ether_addr"'
    )
    bare.write_policy("forms", text)
    applied(bare)
    plan = bare.run("plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "0 operations" in applied(bare)


def test_kill_9_after_an_edit_lands_then_apply_converges(bare: Fwrecon) -> None:
    bare.backend = "nftables"
    bare.write_policy("d", set_policy(["192.0.2.1", "192.0.2.2"], flags="[]"))
    applied(bare)
    bare.write_policy("d", set_policy(["192.0.2.2", "192.0.2.3"], flags="[]"))
    crash_after_writes(bare, 1)  # in the kernel, not yet settled in the state file
    assert elements(bare) == ["192.0.2.2", "192.0.2.3"]
    result = bare.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 operations" in result.stdout  # the new element adopted (the intent said so), not added again
    bare.remove_policy("d")
    applied(bare)
    assert elements(bare) is None and bare.owned() == []  # nothing orphaned, nothing foreign left claimed


def test_an_element_a_policy_lets_go_makes_room_in_the_same_run(bare: Fwrecon) -> None:
    """b's 10.1.0.0/16 goes as a (named first) adds 10.0.0.0/8 over it: one apply converges."""
    bare.backend = "nftables"
    bare.write_policy("b", set_policy(["10.1.0.0/16"], rule=False))
    applied(bare)
    bare.remove_policy("b")
    bare.write_policy("a", set_policy(["10.0.0.0/8"], rule=False))
    result = bare.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert elements(bare) == ["10.0.0.0/8"]
    bare.write_policy("b", set_policy(["10.1.0.0/16"], rule=False))  # and back: now b's edit is refused
    assert bare.apply().returncode == 1
    bare.write_policy("a", set_policy(["192.0.2.0/24"], rule=False))  # a narrows as b widens again
    result = bare.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert elements(bare) == ["10.1.0.0/16", "192.0.2.0/24"]
    # a widens over b's /16 while b swaps it for another network: b runs after a, and a's add is tried again.
    bare.write_policy("a", set_policy(["10.0.0.0/8"], rule=False))
    bare.write_policy("b", set_policy(["198.51.100.0/24"], rule=False))
    result = bare.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"event": "policy_retried"' in result.stdout + result.stderr
    assert elements(bare) == ["10.0.0.0/8", "198.51.100.0/24"]
