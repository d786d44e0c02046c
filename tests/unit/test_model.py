"""Items: the derived values the state file and the firewall depend on.

Tags are written into the firewall (rule comments) and JSON texts into the
state file, so both must stay exactly as they were: a changed tag would make
fwrecon see its own rules as foreign and add them a second time.
"""

import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.model import (
    ITEM_KINDS,
    DirectChain,
    DirectRule,
    Forward,
    ForwardPort,
    IcmpBlock,
    Interface,
    Ipset,
    IpsetEntry,
    Item,
    Masquerade,
    NftChain,
    NftElement,
    NftRule,
    NftSet,
    Permanent,
    Port,
    Protocol,
    RichRule,
    Scope,
    Service,
    Source,
    SourcePort,
)

Z = Scope("zone", "public")
P = Scope("policy", "int-to-ext")
ODD = 'é "q" \\ \t ✓ \x01'  # non-ASCII, quotes, backslash, controls

EVERY_KIND = [
    Service(Z, "http"),
    Port(Z, "8000-8080", "tcp"),
    SourcePort(P, "53", "udp"),
    Protocol(Z, "gre"),
    IcmpBlock(Z, "echo-request"),
    Masquerade(P),
    Forward(Z),
    ForwardPort(Z, "2222", "tcp", "22", "10.0.0.2"),
    RichRule(Z, f'rule family="ipv4" source address="10.0.0.0/8" log prefix="{ODD}" accept'),
    Source(Z, "ipset:blocked"),
    Interface(Z, "eth0"),
    DirectChain("ipv4", "filter", "FWR_IN"),
    DirectRule("ipv6", "filter", "FWR_IN", -7, ("-p", "tcp", "-m", "comment", "--comment", ODD, "-j", "ACCEPT")),
    NftChain("inet", "input", "filter", "input", -150, "drop"),
    NftRule("inet", "input", "tcp dport 9000 accept"),
    NftSet("inet", "blocklist", "ipv4_addr", ("interval",)),
    NftElement("inet", "blocklist", "192.0.2.0/24"),
    Ipset("partners", "hash:ip", "inet6", ("hashsize=4096",)),
    IpsetEntry("partners", "2001:db8::7"),
    Permanent(IpsetEntry("partners", "2001:db8::8")),
    Permanent(DirectRule("ipv4", "filter", "FWR_IN", 0, ("-m", "comment", "--comment", ODD, "-j", "ACCEPT"))),
]


def test_every_kind_is_covered():
    assert {type(item) for item in EVERY_KIND} == set(ITEM_KINDS.values())


@pytest.mark.parametrize("item", EVERY_KIND, ids=lambda item: item.kind)
def test_texts_are_exactly_what_json_dumps_makes(item: Item):
    assert item.json_text() == json.dumps(item.to_json(), separators=(",", ":"))
    assert Item.from_json(json.loads(item.json_text())) == item


# Pinned: these tags are in rule comments on hosts already.
GOLDEN_TAGS = {
    DirectRule(
        "ipv4", "filter", "X", -3, ("-p", "tcp", "--dport", "22", "-m", "comment", "--comment", 'é "q" \\')
    ): "fwrecon:05cedfda83822052",
    NftRule("inet", "input", "tcp dport 9000 accept"): "fwrecon:5883c8d1a64a736a",
    Service(Scope("zone", "public"), "http"): "fwrecon:a24eee128be0b981",
    ForwardPort(Scope("policy", "p1"), "80", "tcp", "8080", "10.0.0.1"): "fwrecon:2a4eca3b6025c968",
    Masquerade(Scope("zone", "z")): "fwrecon:e4bd53d05868f642",
}


@pytest.mark.parametrize("item", GOLDEN_TAGS, ids=lambda item: item.kind)
def test_tags_never_change(item: Item):
    assert item.tag() == GOLDEN_TAGS[item]


@pytest.mark.parametrize("item", EVERY_KIND, ids=lambda item: item.kind)
def test_tag_is_the_hash_of_the_sorted_json(item: Item):
    import hashlib

    expected = "fwrecon:" + hashlib.sha256(json.dumps(item.to_json(), sort_keys=True).encode()).hexdigest()[:16]
    assert item.tag() == expected


def test_equal_items_hash_equal_and_cached_values_stay_out_of_eq_and_copies():
    a = DirectRule("ipv4", "filter", "X", 0, ("-j", "ACCEPT"))
    b = DirectRule("ipv4", "filter", "X", 0, ("-j", "ACCEPT"))
    a.tag(), a.sort_key(), hash(a)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != DirectRule("ipv4", "filter", "X", 1, ("-j", "ACCEPT"))
    assert repr(a) == repr(b)
    copy = pickle.loads(pickle.dumps(a))
    assert copy == a and "_hash" not in copy.__dict__ and "_tag" not in copy.__dict__


def test_sort_key_puts_chains_first_and_zone_items_before_direct_rules():
    items = [
        NftRule("inet", "c", "accept"),
        DirectRule("ipv4", "filter", "X", 0, ("-j", "ACCEPT")),
        Service(Z, "http"),
        DirectChain("ipv4", "filter", "X"),
        NftChain("inet", "c"),
    ]
    ordered = sorted(items, key=Item.sort_key)
    assert {type(i) for i in ordered[:2]} == {DirectChain, NftChain}
    assert ordered[-1] == DirectRule("ipv4", "filter", "X", 0, ("-j", "ACCEPT"))


DR = {"kind": "direct_rule", "family": "ipv4", "table": "filter", "chain": "X", "priority": 0, "args": ["-j"]}
SVC = {"kind": "service", "scope": ["zone", "public"], "name": "http"}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({**SVC, "name": 123}, "field 'name': expected a string, got integer"),  # once str(123)
        (
            {**DR, "args": "abc"},
            "field 'args': expected an array of strings, got 'abc'",
        ),  # tuple("abc") once refused only by luck
        ({**DR, "priority": "5"}, "field 'priority': expected an integer, got string"),  # once int("5")
        ({**DR, "priority": 1.0}, "field 'priority': expected an integer, got number"),
        ({**DR, "priority": False}, "field 'priority': expected an integer, got boolean"),
        ({**DR, "args": ["-j", 1]}, "field 'args': expected an array of strings, got ['-j', 1]"),
        ({**DR, "args": ("-j",)}, "field 'args': expected an array of strings, got ('-j',)"),
        ({**SVC, "scope": ("zone", "public")}, "field 'scope': expected [\"zone\" or \"policy\", NAME], got ('zone', 'public')"),
        ({**SVC, "scope": ["zone", None]}, "field 'scope': expected [\"zone\" or \"policy\", NAME], got ['zone', None]"),
        ({**SVC, "scope": {"zone": "public"}}, "field 'scope': expected [\"zone\" or \"policy\", NAME], got {'zone': 'public'}"),
        ({**SVC, "scope": ["host", "public"]}, "field 'scope': bad scope kind 'host'"),
        ({**SVC, "port": "80"}, "unknown field 'port'"),
        ({"kind": "service", "scope": ["zone", "public"]}, "missing field 'name'"),
        ({**SVC, "kind": ["service"]}, "unknown kind ['service']"),
        ({"scope": ["zone", "public"], "name": "http"}, "unknown kind None"),
        (["service", ["zone", "public"], "http"], "expected an object, got array"),
        (None, "expected an object, got null"),
    ],
    ids=[
        "int-for-str",
        "str-for-array",
        "str-for-int",
        "float-for-int",
        "bool-for-int",
        "int-in-array",
        "tuple-for-array",
        "tuple-scope",
        "null-scope-name",
        "object-scope",
        "bad-scope-kind",
        "unknown-field",
        "missing-field",
        "list-kind",
        "no-kind",
        "array",
        "null",
    ],
)
def test_from_json_rejects_wrong_json_types_instead_of_coercing(data: object, reason: str):
    """The state file decides what fwrecon removes: what it holds must be exactly what was written."""
    with pytest.raises(ValueError) as info:
        Item.from_json(data)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("malformed item ") and message.endswith(f": {reason}"), message


def test_from_json_error_is_short_for_a_huge_value():
    with pytest.raises(ValueError) as info:
        Item.from_json({"kind": "service", "scope": ["zone", "public"], "name": ["x" * 100_000]})
    assert len(str(info.value)) < 1000


def test_a_permanent_copy_is_its_own_item_in_its_own_container_after_the_runtime_ones():
    port = Port(Z, "80", "tcp")
    copy = Permanent(port)
    assert copy != port and hash(copy) != hash(port) and {port, copy} == {copy, port}
    assert copy.container() == ("permanent", "zone", "public")
    assert copy.describe() == "zone public port 80/tcp (permanent)"
    chain, rule = DirectChain("ipv4", "filter", "X"), DirectRule("ipv4", "filter", "X", 0, ("-j", "ACCEPT"))
    assert Permanent(chain).layer == 0 and Permanent(rule).layer == 1
    ordered = sorted([Permanent(rule), rule, Permanent(port), Permanent(chain), chain, port], key=Item.sort_key)
    assert ordered == [chain, Permanent(chain), port, rule, Permanent(port), Permanent(rule)]


@pytest.mark.parametrize(
    "inner, reason",
    [
        ({"kind": "nft_rule", "family": "inet", "chain": "c", "rule": "accept"}, "nft_rule items have no permanent copy"),
        ({"kind": "permanent", "item": {"kind": "masquerade", "scope": ["zone", "z"]}}, "cannot hold another"),
        ("zone public port 80", "expected an object"),
    ],
)
def test_a_forged_permanent_copy_is_refused(inner: object, reason: str):
    with pytest.raises(ValueError, match=reason):
        Item.from_json({"kind": "permanent", "item": inner})
    with pytest.raises(TypeError):
        Permanent(NftRule("inet", "c", "accept"))


def test_permanent_copies_nested_without_end_fail_fast_and_plainly():
    data: dict = {"kind": "masquerade", "scope": ["zone", "z"]}
    for _ in range(100_000):
        data = {"kind": "permanent", "item": data}
    with pytest.raises(ValueError, match="cannot hold another"):
        Item.from_json(data)


def test_every_item_kind_says_its_container_and_description():
    """Item is no longer an ABC (for speed): this test is the check it made.
    Every concrete item class is registered and overrides both methods."""
    from reconciler import model

    kinds = {cls for cls in vars(model).values() if isinstance(cls, type) and issubclass(cls, model.Item)}
    concrete = {cls for cls in kinds if not any(other is not cls and issubclass(other, cls) for other in kinds)}
    assert concrete == set(model.ITEM_KINDS.values())
    for cls in concrete:
        for method in ("container", "describe"):
            assert getattr(cls, method) is not getattr(model.Item, method), f"{cls.__name__} lacks {method}()"


_NAMES = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,8}", fullmatch=True), st.text(alphabet='ab "!\\é', max_size=4))
# (with what JSON escapes, and characters that sort before its closing quote: an interface name, a forged state file)
_VALUES = st.text(alphabet='0123456789abcdef.:/-,tcpud "!\\é\x01#', min_size=1, max_size=12)


@given(
    st.lists(
        st.one_of(
            st.builds(NftElement, st.sampled_from(["inet", "ip"]), _NAMES, _VALUES),
            st.builds(lambda name: NftSet("inet", name, "ipv4_addr", ()), _NAMES),
            st.builds(lambda chain, rule: NftRule("inet", chain, rule), _NAMES, _VALUES),
            st.builds(IpsetEntry, _NAMES, _VALUES),
            st.builds(lambda name: Ipset(name, "hash:net", "inet"), _NAMES),
            st.builds(Permanent, st.builds(IpsetEntry, _NAMES, _VALUES)),
        ),
        max_size=30,
    )
)
def test_elements_and_entries_sort_as_their_json_text_orders_them(items):
    # Their own sort_key skips building the JSON text; the order must stay the one every other kind is sorted by.
    from reconciler.model import _sort_key

    assert sorted(items, key=Item.sort_key) == sorted(items, key=_sort_key)


def test_the_container_kind_of_every_item_is_the_first_part_of_its_container():
    from reconciler.model import container_kind

    for item in EVERY_KIND:
        assert container_kind(item) == item.container()[0], item
