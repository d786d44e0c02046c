"""nft sets without nft: canonical elements, the policy schema, listings,
golden scripts, and hostile input (hypothesis).

What nft really prints for these forms is pinned by `REAL_LISTING` (captured
from nft 1.0.6) and checked live by tests/integration/test_nft_sets.py.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.backends.nft_text import (
    CONFLICT_CODE,
    ELEMENTS_PER_LINE,
    IN_USE_CODE,
    RuleEntry,
    TableListing,
    build_script,
    check_script,
    failure_for,
    is_drift_line,
    parse_listing,
    set_references,
)
from reconciler.errors import BackendUnavailable, OperationFailed
from reconciler.model import NftChain, NftElement, NftRule, NftSet, Op, Outcome
from reconciler.nftsets import canonical_element, conflicts, listed_element
from reconciler.planner import plan_all
from reconciler.policy import Policy, conflicting_sets, declarations, parse_policy, unresolved_references
from reconciler.view import FirewallView

BLOCK = NftSet("inet", "blocklist", "ipv4_addr", ("interval",))

# `nft -s -j list table inet fwrecon` after adding sets of each type with odd
# forms (IPv6 in capitals, a /32, a one-value range, a range that is a /24,
# an element with a timeout), and rules using two of them.
REAL_LISTING = json.dumps(
    {
        "nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "fwrecon", "handle": 1}},
            {
                "set": {
                    "family": "inet",
                    "name": "b4",
                    "table": "fwrecon",
                    "type": "ipv4_addr",
                    "handle": 1,
                    "flags": ["interval"],
                    "elem": [
                        {"range": ["10.0.0.1", "10.0.0.5"]},
                        {"prefix": {"addr": "10.1.0.0", "len": 24}},
                        "10.2.0.9",
                        "10.3.0.1",
                        {"prefix": {"addr": "192.0.2.0", "len": 24}},
                    ],
                }
            },
            {
                "set": {
                    "family": "inet",
                    "name": "b6",
                    "table": "fwrecon",
                    "type": "ipv6_addr",
                    "handle": 3,
                    "flags": ["interval"],
                    "elem": [
                        "::ffff:192.0.2.1",
                        "2001:db7:1::1",
                        {"prefix": {"addr": "2001:db8::", "len": 32}},
                        {"range": ["2001:db9::1", "2001:db9::5"]},
                    ],
                }
            },
            {
                "set": {
                    "family": "inet",
                    "name": "p",
                    "table": "fwrecon",
                    "type": "inet_service",
                    "handle": 4,
                    "flags": ["interval"],
                    "elem": [22, {"range": [1000, 2000]}, 3000],
                }
            },
            {
                "set": {
                    "family": "inet",
                    "name": "m",
                    "table": "fwrecon",
                    "type": "ether_addr",
                    "handle": 5,
                    "elem": ["aa:bb:cc:dd:ee:ff"],
                }
            },
            {
                "set": {
                    "family": "inet",
                    "name": "t",
                    "table": "fwrecon",
                    "type": "ipv4_addr",
                    "handle": 6,
                    "flags": ["timeout"],
                    "elem": [{"elem": {"val": "192.0.2.9", "timeout": 3600, "expires": 3599}}, "192.0.2.10"],
                }
            },
            {
                "set": {
                    "family": "inet",
                    "name": "pairs",
                    "table": "fwrecon",
                    "type": ["ipv4_addr", "inet_service"],
                    "handle": 7,
                    "elem": [{"concat": ["192.0.2.1", 22]}],
                }
            },
            {"chain": {"family": "inet", "table": "fwrecon", "name": "input", "handle": 8}},
            {
                "rule": {
                    "family": "inet",
                    "table": "fwrecon",
                    "chain": "input",
                    "handle": 9,
                    "expr": [
                        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@b4"}},
                        {"drop": None},
                    ],
                }
            },
        ]
    }
)
# What a policy writes for each listed element above, in another form each.
POLICY_FORMS = {
    ("b4", "ipv4_addr"): ["10.0.0.1-10.0.0.5", "10.1.0.0-10.1.0.255", "10.2.0.9-10.2.0.9", "10.3.0.1/32", "192.0.2.77/24"],
    ("b6", "ipv6_addr"): ["::FFFF:192.0.2.1", "2001:DB7:1:0:0:0:0:1", "2001:db8::/32", "2001:db9::1-2001:db9:0::5"],
    ("p", "inet_service"): ["22", "1000-2000", "3000-3000"],
    ("m", "ether_addr"): ["AA-BB-CC-DD-EE-FF"],
}


# -- canonical elements ------------------------------------------------------------


def test_the_forms_a_policy_writes_become_what_nft_lists():
    listing = parse_listing("inet", REAL_LISTING)
    for (name, set_type), forms in POLICY_FORMS.items():
        assert sorted(canonical_element(set_type, True, form) for form in forms) == sorted(listing.elements[name]), name


@pytest.mark.parametrize(
    ("set_type", "interval", "text", "message"),
    [
        ("ipv4_addr", False, "192.0.2.0/24", 'needs flags = ["interval"]'),
        ("ipv4_addr", True, "300.1.1.1", "is not an IPv4 address"),
        ("ipv4_addr", True, "2001:db8::1", "is not an IPv4 address"),
        ("ipv4_addr", True, "10.0.0.9-10.0.0.1", "first value is above its last"),
        ("ipv6_addr", True, "192.0.2.1", "is not an IPv6 address"),
        ("ipv6_addr", True, "fe80::1%eth0", "is not an IPv6 address"),
        ("inet_service", True, "ssh", "service names are not resolved"),
        ("inet_service", True, "65536", "not a port number"),
        ("ether_addr", False, "aa:bb:cc", "is not a MAC address"),
        ("ipv4_addr", True, "192.0.2.1; flush ruleset", "is not an IPv4 address"),
    ],
)
def test_bad_elements_say_why(set_type: str, interval: bool, text: str, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        canonical_element(set_type, interval, text)


ADDRESSES = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: ("ipv4_addr", ipaddress.IPv4Address(n))),
    st.integers(0, 2**128 - 1).map(lambda n: ("ipv6_addr", ipaddress.IPv6Address(n))),
)


@given(first=ADDRESSES, length=st.integers(0, 128), span=st.integers(0, 2**20))
def test_canonical_forms_are_stable_and_agree_with_what_listings_hold(first, length, span):
    set_type, address = first
    bits = 32 if set_type == "ipv4_addr" else 128
    network = ipaddress.ip_network(f"{address}/{min(length, bits)}", strict=False)
    last = type(address)(min(int(address) + span, 2**bits - 1))
    for text in (str(network), f"{address}-{last}", str(address).upper()):
        element = canonical_element(set_type, True, text)
        assert canonical_element(set_type, True, element) == element  # idempotent: no churn
        low, high = (
            (int(network.network_address), int(network.broadcast_address))
            if "/" in text
            else (int(address), int(last) if "-" in text else int(address))
        )
        listed = {"range": [str(type(address)(low)), str(type(address)(high))]} if low != high else str(address)
        assert listed_element(set_type, listed) == element  # nft's range form of the same values


@given(st.text(max_size=40))
def test_random_text_is_an_element_or_a_value_error(text: str):
    for set_type in ("ipv4_addr", "ipv6_addr", "inet_service", "ether_addr"):
        for interval in (True, False):
            try:
                element = canonical_element(set_type, interval, text)
            except ValueError:
                continue
            assert canonical_element(set_type, interval, element) == element  # (an edit trusts the last version's)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


@given(JSON)
def test_any_listed_value_is_an_element_or_none(value):
    for set_type in ("ipv4_addr", "ipv6_addr", "inet_service", "ether_addr", "ipv4_addr . inet_service"):
        assert listed_element(set_type, value) is None or isinstance(listed_element(set_type, value), str)


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=8))
def test_conflicts_finds_an_overlap_exactly_when_there_is_one(spans):
    elements = sorted({canonical_element("inet_service", True, f"{low}-{low + width}") for low, width in spans})
    bounds = [tuple(int(x) for x in (e.split("-") if "-" in e else (e, e))) for e in elements]
    overlapping = any(a[0] <= b[1] and b[0] <= a[1] for i, a in enumerate(bounds) for b in bounds[i + 1 :])
    assert bool(conflicts("inet_service", elements)) == overlapping


# -- listings -------------------------------------------------------------------


def test_a_listing_holds_sets_elements_and_what_fwrecon_never_writes():
    listing = parse_listing("inet", REAL_LISTING)
    assert listing.sets["b4"] == NftSet("inet", "b4", "ipv4_addr", ("interval",))
    assert listing.sets["pairs"].type == "ipv4_addr . inet_service"
    assert listing.elements["t"] == ["192.0.2.9", "192.0.2.10"]  # a timeout does not change the element
    assert listing.odd_elements == {"pairs": 1}
    assert listing.others == []
    assert set_references(listing.rules[0].expr) == {"b4"}


@pytest.mark.parametrize(
    "body",
    [
        {"family": "inet", "table": "fwrecon"},  # no name
        {"family": "inet", "table": "fwrecon", "name": "x"},  # no type
        {"family": "inet", "table": "fwrecon", "name": "x", "type": "ipv4_addr", "flags": 5},
    ],
)
def test_a_listing_that_is_not_nfts_is_unavailable(body):
    text = json.dumps({"nftables": [{"table": {"family": "inet", "name": "fwrecon"}}, {"set": body}]})
    with pytest.raises(BackendUnavailable, match="not an nft listing"):
        parse_listing("inet", text)


def test_nft_monitors_warning_about_a_set_it_lost_counts_as_drift():
    assert is_drift_line("W: Received event for an unknown set.")
    assert is_drift_line("delete element inet fwrecon blocklist { 192.0.2.1 }")
    assert not is_drift_line("add element inet fwrecon blocklist { 192.0.2.1 }")


# -- golden scripts ---------------------------------------------------------------


def listing(*sets: NftSet, elements: dict[str, list[str]] | None = None, odd: dict[str, int] | None = None, rules=()):
    return TableListing(
        "inet",
        exists=True,
        sets={s.name: s for s in sets},
        elements={s.name: list((elements or {}).get(s.name, [])) for s in sets},
        odd_elements=dict(odd or {}),
        rules=list(rules),
    )


def element(text: str, name: str = "blocklist") -> NftElement:
    return NftElement("inet", name, text)


def test_a_new_set_and_its_elements_are_one_statement_each():
    ops = [Op("add", BLOCK), Op("add", element("192.0.2.0/24")), Op("add", element("198.51.100.7"))]
    script = build_script(ops, {"inet": TableListing("inet")})
    assert script.lines == [
        "add table inet fwrecon",
        "add set inet fwrecon blocklist { type ipv4_addr; flags interval; }",
        "add element inet fwrecon blocklist { 192.0.2.0/24, 198.51.100.7 }",
    ]
    assert script.outcomes == [Outcome.APPLIED] * 3


def test_an_edit_is_the_difference_and_present_elements_are_unchanged():
    ops = [Op("add", element("192.0.2.1")), Op("add", element("192.0.2.2")), Op("remove", element("192.0.2.3"))]
    script = build_script(ops, {"inet": listing(BLOCK, elements={"blocklist": ["192.0.2.1", "192.0.2.3"]})})
    assert script.lines == [
        "add table inet fwrecon",
        "add element inet fwrecon blocklist { 192.0.2.2 }",
        "delete element inet fwrecon blocklist { 192.0.2.3 }",
    ]
    assert script.outcomes == [Outcome.UNCHANGED, Outcome.APPLIED, Outcome.APPLIED]


def test_removing_a_set_with_all_its_elements_is_one_delete_set():
    ops = [Op("remove", element("192.0.2.1")), Op("remove", element("192.0.2.2")), Op("remove", BLOCK)]
    script = build_script(ops, {"inet": listing(BLOCK, elements={"blocklist": ["192.0.2.1", "192.0.2.2"]})})
    assert script.lines == ["delete set inet fwrecon blocklist", "delete table inet fwrecon"]


@pytest.mark.parametrize(
    ("left", "why"),
    [
        ({"elements": {"blocklist": ["203.0.113.9"]}}, "1 element(s)"),
        ({"odd": {"blocklist": 1}}, "1 element(s)"),
        ({"rules": [RuleEntry("input", 4, None, [{"match": {"right": "@blocklist"}}])]}, "used by 1 rule(s)"),
    ],
)
def test_a_set_still_in_use_is_not_deleted(left, why):
    with pytest.raises(OperationFailed, match=re.escape(why)) as info:
        build_script([Op("remove", BLOCK)], {"inet": listing(BLOCK, **left)})
    assert info.value.code == IN_USE_CODE


def test_a_set_of_that_name_with_other_flags_is_a_conflict():
    with pytest.raises(OperationFailed) as info:
        build_script([Op("add", BLOCK)], {"inet": listing(NftSet("inet", "blocklist", "ipv4_addr"))})
    assert info.value.code == CONFLICT_CODE and "cannot change a set's type or flags" in str(info.value)


def test_an_element_for_a_missing_set_is_refused_and_its_removal_is_unchanged():
    with pytest.raises(OperationFailed, match="does not exist"):
        build_script([Op("add", element("192.0.2.1"))], {"inet": TableListing("inet")})
    assert build_script([Op("remove", element("192.0.2.1"))], {"inet": TableListing("inet")}).outcomes == [Outcome.UNCHANGED]


def test_long_lists_are_cut_and_nfts_complaint_names_the_element():
    texts = [f"10.{n // 65536}.{n // 256 % 256}.{n % 256}" for n in range(ELEMENTS_PER_LINE + 3)]
    ops = [Op("add", element(text, "big")) for text in texts]
    big = NftSet("inet", "big", "ipv4_addr")
    script = build_script(ops, {"inet": listing(big)})
    assert [line.count(",") + 1 for line in script.lines[1:]] == [ELEMENTS_PER_LINE, 3]
    line = script.lines[1]
    column = line.index("10.0.0.7,") + 1  # nft's columns are 1-based
    stderr = f"/dev/stdin:2:{column}-{column + 7}: Error: conflicting intervals specified\n{line}\n"
    failure = failure_for(script, stderr, 1)
    assert failure.op == ops[7]
    assert str(failure) == "nft: conflicting intervals specified (in: nft inet fwrecon set big element 10.0.0.7)"


def test_nft_c_declares_sets_before_the_rules_that_use_them():
    rule = NftRule("inet", "input", "ip saddr @blocklist drop")
    lines, owners = check_script([rule, element("192.0.2.1"), BLOCK, NftChain("inet", "input")], "scratch")
    assert lines == [
        "add table inet scratch",
        "add set inet scratch blocklist { type ipv4_addr; flags interval; }",
        "add chain inet scratch input",
        f'add rule inet scratch input ip saddr @blocklist drop comment "{rule.tag()}"',
    ]
    assert owners[1] == BLOCK


# -- planning -----------------------------------------------------------------------


def test_a_set_holding_someone_elses_element_is_kept_and_stays_owned():
    mine, theirs = element("192.0.2.1"), element("203.0.113.9")
    view = FirewallView([BLOCK, mine, theirs], [("nft", "inet")])
    owned = {BLOCK: frozenset({"bl"}), mine: frozenset({"bl"})}
    (plan,) = plan_all({}, view, owned)
    assert plan.ops == (Op("remove", mine),)


def test_a_set_a_foreign_rule_uses_is_kept():
    view = FirewallView([BLOCK], [("nft", "inet")], users={BLOCK: ["foreign rule in input (handle 4) using it"]})
    (plan,) = plan_all({}, view, {BLOCK: frozenset({"bl"})})
    assert plan.ops == ()


# -- policies -----------------------------------------------------------------------


def policy(name: str, body: str):
    return parse_policy(f"{name}.toml", body.encode())


def set_table(elements: list[str], flags: str = '["interval"]', set_type: str = "ipv4_addr") -> str:
    return f'[[nft.set]]\nfamily = "inet"\nname = "blocklist"\ntype = "{set_type}"\nflags = {flags}\nelements = {json.dumps(elements)}\n'


def test_a_policy_set_is_one_item_per_element_keyed_by_index():
    parsed = policy("a", set_table(["192.0.2.0/24", "192.0.2.1/24", "198.51.100.7"]))
    assert parsed.items == {BLOCK, element("192.0.2.0/24"), element("198.51.100.7")}  # two forms of one network
    assert parsed.key_of(element("198.51.100.7")) == "nft.set[0].elements[2]"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (set_table(["10.0.0.1"], set_type="ipv6_addr"), "nft.set[0].elements[0]: '10.0.0.1' is not"),
        (set_table(["10.2.0.0/24"], flags="[]"), "nft.set[0].elements[0]: '10.2.0.0/24'"),
    ],
)
def test_an_edit_trusts_the_last_versions_elements_only_for_the_very_same_set(edit: str, expected: str):
    """An edit skips the checks of elements its last version held, but not
    when the set's type or flags changed: the same text may not fit any more."""
    last = parse_policy("t.toml", set_table(["10.0.0.1", "10.2.0.0/24"]).encode())
    again = parse_policy("t.toml", set_table(["10.0.0.1", "10.2.0.0/24", "10.1.0.1"]).encode(), last)
    assert {i for i in again.items if isinstance(i, NftElement)} == {
        element("10.0.0.1"),
        element("10.2.0.0/24"),
        element("10.1.0.1"),
    }
    with pytest.raises(Exception) as info:
        parse_policy("t.toml", edit.encode(), last)
    assert f"t.toml: {expected}" in str(info.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            set_table(["10.0.0.0/8", "10.1.0.0/16"]),
            "nft.set[0].elements[1]: '10.1.0.0/16' overlaps '10.0.0.0/8' (nft.set[0].elements[0])",
        ),
        (set_table([], '["constant"]'), 'nft.set[0].flags[0]: "constant" is not supported'),
        (set_table([], '["auto-merge"]'), 'nft.set[0].flags[0]: "auto-merge" is not supported'),
        (set_table([], '["dynamic"]'), 'nft.set[0].flags[0]: "dynamic" is not supported: nft does not report it back'),
        (set_table([], '["bogus"]'), 'nft.set[0].flags[0]: "bogus" is not one of interval|timeout'),
        (set_table([], set_type="ipv4_addr . inet_service"), "nft.set[0].type:"),
        ('[[nft.set]]\nfamily = "inet"\nname = "a/b"\ntype = "ipv4_addr"\n', 'nft.set[0].name: "a/b" is not a set name'),
        ('[[nft.set]]\nfamily = "inet"\ntype = "ipv4_addr"\n', "nft.set[0].name: missing"),
        (
            '[[nft.set]]\nfamily = "inet"\nname = "x"\ntype = "ipv4_addr"\nelements = "192.0.2.1"\n',
            "nft.set[0].elements: expected an array",
        ),
    ],
)
def test_set_errors_name_the_key(body: str, expected: str):
    with pytest.raises(Exception) as info:
        policy("t", body)
    assert f"t.toml: {expected}" in str(info.value)


def test_policies_that_declare_one_set_differently_or_overlap_are_told():
    a = policy("a", set_table(["10.0.0.0/8"]))
    b = policy("b", set_table(["10.1.0.0/16", "192.0.2.1"]))
    c = policy("c", set_table(["192.0.2.9"], "[]"))
    d = policy("d", set_table(["10.0.0.0/8", "203.0.113.1"]))  # the same network as a's: one shared element
    errors = {name: [str(e) for e in found] for name, found in conflicting_sets({"a": a, "b": b, "c": c, "d": d}).items()}
    assert errors == {
        "b": [
            "b.toml: nft.set[0].elements[0]: '10.1.0.0/16' overlaps '10.0.0.0/8' of policy 'a'; nft refuses overlapping intervals"
        ],
        "c": [f"c.toml: nft.set[0]: policy 'a' declares the set 'blocklist' (inet) as {BLOCK.describe()}"],
    }


def test_what_is_in_force_keeps_its_place_and_the_edit_that_overlaps_it_is_told():
    in_force = {BLOCK: frozenset({"b"}), element("10.1.0.0/16"): frozenset({"b"})}
    a = policy("a", set_table(["10.0.0.0/8"]))  # a's edit brings the overlap in: a is told, not b
    b = policy("b", set_table(["10.1.0.0/16"]))
    errors = {name: [str(e) for e in found] for name, found in conflicting_sets({"a": a, "b": b}, in_force).items()}
    assert errors == {
        "a": [
            "a.toml: nft.set[0].elements[0]: '10.0.0.0/8' overlaps '10.1.0.0/16' of policy 'b'; nft refuses overlapping intervals"
        ]
    }
    # Without what is in force, name order decides (as `check` judges files alone).
    assert set(conflicting_sets({"a": a, "b": b})) == {"b"}


def test_a_held_policys_elements_in_force_block_an_overlap_and_a_deleted_ones_do_not():
    in_force = {BLOCK: frozenset({"h"}), element("10.0.0.0/8"): frozenset({"h"})}
    b = policy("b", set_table(["10.1.0.0/16"]))
    errors = {name: [str(e) for e in found] for name, found in conflicting_sets({"b": b}, in_force, {"h"}).items()}
    assert errors == {
        "b": [
            "b.toml: nft.set[0].elements[0]: '10.1.0.0/16' overlaps '10.0.0.0/8' of policy 'h'; nft refuses overlapping intervals"
        ]
    }
    assert conflicting_sets({"b": b}, in_force, set()) == {}  # h's file is gone: its elements go


def test_an_element_in_force_counts_only_while_an_owner_keeps_it():
    in_force = {
        BLOCK: frozenset({"a", "b"}),
        element("10.1.0.0/16"): frozenset({"a"}),
        element("192.0.2.0/24"): frozenset({"a", "b"}),  # shared; b drops it, a keeps it
    }
    a = policy("a", set_table(["10.0.0.0/8", "192.0.2.0/24"]))  # widens its own /16: it goes in the same nft -f
    b = policy("b", set_table(["192.0.2.0/25"]))
    errors = {name: [str(e) for e in found] for name, found in conflicting_sets({"a": a, "b": b}, in_force).items()}
    assert errors == {
        "b": [
            "b.toml: nft.set[0].elements[0]: '192.0.2.0/25' overlaps '192.0.2.0/24' of policy 'a'; nft refuses overlapping intervals"
        ]
    }
    assert conflicting_sets({"a": policy("a", set_table(["10.0.0.0/8"])), "b": b}, in_force) == {}  # a drops the /24 too


def test_a_declaration_in_force_keeps_its_place():
    in_force = {BLOCK: frozenset({"b"})}
    a = policy("a", set_table([], "[]"))
    b = policy("b", set_table([]))
    errors = {name: [str(e) for e in found] for name, found in conflicting_sets({"a": a, "b": b}, in_force).items()}
    assert errors == {"a": [f"a.toml: nft.set[0]: policy 'b' declares the set 'blocklist' (inet) as {BLOCK.describe()}"]}


def test_a_rule_using_an_undeclared_set_or_a_set_held_otherwise_is_an_error():
    rule_policy = policy("r", '[[nft.rule]]\nfamily = "inet"\nchain = "input"\nrule = "ip saddr @nosuch drop"\n')
    errors = [str(e) for e in unresolved_references(rule_policy, declarations([NftChain("inet", "input")], None))]
    assert errors == ["r.toml: nft.rule[0]: the set @nosuch (inet) is declared by no [[nft.set]]"]
    set_policy = policy("s", set_table([]))
    held = [NftSet("inet", "blocklist", "ipv4_addr")]
    (error,) = unresolved_references(set_policy, declarations([BLOCK], held))
    assert "the set exists as nft inet fwrecon set blocklist { type ipv4_addr; }" in str(error)


def test_a_hundred_thousand_elements_parse(tmp_path: Path):
    texts = [f"10.{n // 65536}.{n // 256 % 256}.{n % 256}" for n in range(100_000)]
    parsed = policy("big", set_table(texts, "[]"))
    assert len(parsed.items) == 100_001


_NETS = ["10.0.0.0/8", "10.0.0.0/9", "10.128.0.0/9", "10.0.0.0/10", "10.64.0.0/10", "10.192.0.0/10", "10.0.0.1", "10.200.0.1"]


def _apart(elements: list[str]) -> bool:
    return not conflicts("ipv4_addr", elements)


@given(
    in_force=st.dictionaries(st.sampled_from(_NETS), st.frozensets(st.sampled_from("abch"), min_size=1)).filter(
        lambda found: _apart(list(found))
    ),
    loaded=st.dictionaries(st.sampled_from("abc"), st.frozensets(st.sampled_from(_NETS)).filter(lambda e: _apart(list(e)))),
    broken=st.frozensets(st.sampled_from("abch")),
)
@settings(max_examples=500, deadline=None)
def test_what_passes_the_check_applies_beside_what_stays_in_force(in_force, loaded, broken):
    # h is never loaded: held when broken, its file gone otherwise.  A broken
    # a, b or c is held too, at what it owns.
    policies = {
        name: Policy(name, f"{name}.toml", "", frozenset({BLOCK, *(element(e) for e in elements)}))
        for name, elements in loaded.items()
        if name not in broken
    }
    owned = {element(e): owners for e, owners in in_force.items()}
    owned[BLOCK] = frozenset(o for owners in in_force.values() for o in owners) or frozenset("a")
    told = conflicting_sets(policies, owned, broken)
    held = broken | told.keys()
    final = {e for e, owners in in_force.items() if owners & held}
    final |= {e for name, elements in loaded.items() if name in policies and name not in told for e in elements}
    assert _apart(sorted(final)), (told, final)
    for name, errors in told.items():  # only a policy bringing something new is told
        assert policies[name].items - {element(e) for e, owners in in_force.items() if name in owners} - {BLOCK}, errors
