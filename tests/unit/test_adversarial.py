"""Adversarial properties: hypothesis hunts for input that escapes the error paths.

Policy files and the state file come from outside the process; whatever they
hold must end in a Policy / State or in the one error type the callers
handle (`PolicyFileInvalid`, `StateError`), never in another exception that
would crash a reconcile.  The planner properties pin down the promises the
rest of fwrecon relies on: never remove what it does not own, reach what the
policies want without touching foreign items, and plan nothing once there.

Every property is bounded to a few seconds.  With CI=true the examples are
derandomized, so a CI run is reproducible; locally each run explores anew.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from reconciler.errors import StateError
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
    Ownership,
    Permanent,
    Port,
    Protocol,
    RichRule,
    Scope,
    Service,
    Source,
    SourcePort,
)
from reconciler.planner import PolicyPlan, plan_all, settle_others, settle_ownership
from reconciler.policy import POLICY_KEYS, TOP_KEYS, ZONE_KEYS, Policy, PolicyFileInvalid
from reconciler.policydir import load_policy_file
from reconciler.state import State, StateStore, render
from reconciler.view import FirewallView

# -- hypothesis settings: bounded, and reproducible in CI ---------------------------------

CI = os.environ.get("CI") == "true"
# Hypothesis keeps caches (.hypothesis/) in the working directory; .pytest_cache/ is
# ignored by git already, so they go there rather than into the work tree.
set_hypothesis_home_dir(str(Path(__file__).resolve().parents[2] / ".pytest_cache" / "hypothesis"))


def bounded(max_examples: int) -> settings:
    """A property's settings: no per-example deadline (the machine is shared), no
    example database (no .hypothesis/ in the work tree), derandomized in CI."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=CI,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One directory for the whole module: hypothesis runs many examples per test call."""
    with tempfile.TemporaryDirectory(prefix="fwrecon-adversarial-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


# -- policy files: random bytes -------------------------------------------------------------

# Fragments that steer random bytes towards what the TOML parser and the validator look at.
TOML_FRAGMENTS = [
    b"[",
    b"]",
    b"{",
    b"}",
    b"[[",
    b"]]",
    b"=",
    b",",
    b".",
    b'"',
    b"'",
    b'"""',
    b"'''",
    b"\\",
    b"\n",
    b"\r\n",
    b"#",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"1",
    b"-",
    b"+",
    b"0x",
    b"inf",
    b"nan",
    b"true",
    b"1979-05-27T07:32:00Z",
    b"zone",
    b"public",
    b"policy",
    b"direct",
    b"nft",
    b"ports",
    b"services",
    b"rich_rules",
    b"chain",
    b"rule",
    b"args",
    b"priority",
    b"family",
    b"ipv4",
    b'"80/tcp"',
    b'"http"',
    b"x = ",
    b"9" * 5000,
    b"[" * 600,
    b"{a = " * 400,  # past int()'s digit limit, past tomllib's recursion
]
FRAGMENTS = st.lists(st.sampled_from(TOML_FRAGMENTS), max_size=60).map(b"".join)
POLICY_BYTES = st.one_of(
    st.binary(max_size=300),
    FRAGMENTS,
    # a valid start, so the parser gets as far as the value made of fragments
    st.tuples(
        st.sampled_from([b"", b'description = "x"\n', b"[zone.public]\n"]),
        st.sampled_from([b"x = ", b"ports = ", b"services = [", b"[[direct.rule]]\nargs = "]),
        FRAGMENTS,
    ).map(b"".join),
    st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


def write_policy(directory: Path, content: bytes, name: str = "fuzz.toml") -> Path:
    path = directory / name
    path.write_bytes(content)
    path.chmod(0o644)
    return path


def load_or_errors(path: Path) -> Policy | PolicyFileInvalid:
    """The loader's verdict: a Policy, or the PolicyFileInvalid it raised (anything else propagates)."""
    try:
        return load_policy_file(path)
    except PolicyFileInvalid as invalid:
        return invalid


def assert_valid_verdict(verdict: Policy | PolicyFileInvalid, label: str) -> None:
    if isinstance(verdict, PolicyFileInvalid):
        assert verdict.errors, "PolicyFileInvalid without an error"
        for error in verdict.errors:
            assert error.file == label and str(error).startswith(f"{label}: "), str(error)
            assert len(str(error).splitlines()) == 1, str(error)  # one line per error
            assert "internal error" not in error.message, str(error)  # a bug in validation, reported
    else:
        for item in verdict.items:
            assert Item.from_json(item.to_json()) == item
            assert Item.from_json(json.loads(item.json_text())) == item


@bounded(300)
@given(content=POLICY_BYTES)
@example(content=b"x = " + b"[" * 100_000)  # tomllib's RecursionError, which once crashed the reconcile
@example(content=b"x = " + b"9" * 5000)  # int()'s ValueError, from inside tomllib
def test_random_bytes_as_a_policy_file_give_a_policy_or_policy_file_invalid(scratch: Path, content: bytes) -> None:
    assert_valid_verdict(load_or_errors(write_policy(scratch, content)), "fuzz.toml")


# -- policy files: random TOML documents ------------------------------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string for any text (controls as \\uXXXX, as TOML requires)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


@dataclass(frozen=True)
class Digits:
    """An integer literal of ``count`` nines: an int that large cannot even be repr()'d."""

    count: int


def toml_value(value: Any) -> str:
    """Inline TOML for a value: arrays and inline tables nest, so one line holds any document."""
    if isinstance(value, Digits):
        return "9" * value.count
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(data: Mapping[str, Any]) -> str:
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in data.items())


OFFSETS = [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-23, minutes=-59))]
SCALARS = st.one_of(
    st.text(max_size=30),
    st.integers(),
    st.sampled_from(
        [2**63 - 1, -(2**63), 2**64, -(2**64), 10**100, 0, -1, Digits(4400)]
    ),  # past TOML's 64 bits and int()'s digit limit
    st.booleans(),
    st.floats(),
    st.datetimes(timezones=st.none() | st.sampled_from(OFFSETS)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
    ),
    st.dates(),
    st.times().map(lambda t: t.replace(microsecond=0)),
)
ANY_VALUE = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Per key: (valid values, near misses).  Documents built from the valid ones
# alone load and yield items, so the round-trip half of the property is exercised.
STRINGS = {
    "services": (["http", "ssh", "dns"], ["bad name", "", "http\n"]),
    "ports": (
        ["80/tcp", "8000-8010/udp", "443/tcp", "1-65535/sctp", " 22/tcp "],
        ["0/tcp", "65536/tcp", "80/tcpx", "90-80/tcp", "٨٠/tcp"],
    ),
    "source_ports": (["5353/udp", "1-65535/sctp", "53/dccp"], ["x/udp"]),
    "protocols": (["gre", "6", "255"], ["256", "٦", "bogus", "a\0b"]),
    "icmp_blocks": (["echo-request", "timestamp-reply"], ["echo request"]),
    "rich_rules": (
        [
            'rule family="ipv4" source address="10.0.0.0/8" service name="ssh" accept',
            "rule port port=80 protocol=tcp accept",
            'rule family="ipv6" source address="2001:db8::/32" log prefix="é\\"x" level="info" limit value="1/m" drop',
        ],
        ["rule", 'rule family="ipv4" EOL accept', 'rule service name="ssh" accept limit value="0/s"'],
    ),
    "sources": (["192.0.2.0/24", "2001:db8::/32", "00:11:22:33:44:aa", "ipset:x"], ["fe80::1%eth0", "ipset:", "300.1.1.1"]),
    "interfaces": (["eth0", "dummy0"], ["a/b", ".", "x" * 16]),
}
FORWARD_PORT_VALUES = {
    "port": (["80", "8000-8010", 22], ["0", "x"]),
    "protocol": (["tcp", "udp"], ["icmp"]),
    "to_port": (["8080"], ["x"]),
    "to_addr": (["10.0.0.2", "::1"], ["fe80::1%eth0", "10.0.0.256"]),
}
DIRECT_VALUES = {
    "family": (["ipv4", "ipv6"], ["eb", "inet"]),
    "table": (["filter", "nat"], ["broute", "bogus"]),
    "chain": (["FWR_IN", "INPUT"], ["x" * 29, "a b"]),
    "priority": ([0, -5], [2**31, True]),
    "args": ([["-j", "ACCEPT"], ["-p", "tcp", "--dport", "22", "-j", "DROP"]], [[], ["a\nb"], [""]]),
}
NFT_VALUES = {
    "family": (["inet", "ip"], ["netdev", "ipv4"]),
    "chain": (["input", "fwd"], ["9bad", "a b"]),
    "hook": (["input", "forward"], ["ingress"]),
    "type": (["filter"], ["nat", "bogus"]),
    "priority": ([0, -150], ["x"]),
    "policy": (["accept", "drop"], ["reject"]),
    "rule": (
        ["tcp dport 9000 accept", "counter", "ip saddr @blocklist drop"],
        ["accept; drop", 'counter comment "x"', " ", "ip saddr @ drop"],
    ),
}
NFT_SET_VALUES = {
    "family": (["inet", "ip"], ["ipv4"]),
    "name": (["blocklist", "allow"], ["9bad", "a/b"]),
    "type": (["ipv4_addr"], ["ipv6_addr", "inet_service", "ether_addr", "bogus"]),
    "flags": ([["interval"], []], [["constant"], ["bogus"], "interval"]),
    "elements": (
        [["192.0.2.1"], ["192.0.2.0/24", "198.51.100.7"], []],
        [["10.0.0.0/8", "10.1.0.0/16"], ["300.1.1.1"], ["::1", "10.0.0.1-10.0.0.0"], [22, "aa:bb:cc:dd:ee:ff"], "192.0.2.1"],
    ),
}
IPSET_VALUES = {  # level 0 keeps to one valid combination: hash:net, inet
    "type": (["hash:net"], ["hash:ip", "hash:mac", "hash:port", "HASH:NET", ""]),
    "family": (["inet"], ["inet6", "ipv4", ""]),
    "options": ([{}, {"maxelem": 100000}, {"hashsize": 4096}], [{"timeout": 60}, {"maxelem": 0}, {"maxelem": "5"}, {"x": 1}]),
    "entries": (
        [[], ["192.0.2.0/24"], ["192.0.2.0/24", "198.51.100.7"]],
        [["10.0.0.0/8", "10.1.0.0/16"], ["nope"], ["0.0.0.0/0"], ["2001:db8::1"], ["AA:BB:CC:00:11:22"], [1], "10.0.0.1"],
    ),
}
IPSET_NAMES = (["blocklist", "partners"], ["bad name", "", "x" * 40])
SCOPE_NAMES = (["public", "internal"], ["bad name", "", "x.y"])


def policy_document(level: int) -> st.SearchStrategy[dict[str, Any]]:
    """A policy document: level 0 only valid values, 1 also near misses and random
    text, 2 also any value anywhere and junk keys."""

    def pick(pools: tuple[list[Any], list[Any]], text: bool = False) -> st.SearchStrategy[Any]:
        valid, near = pools
        choice = st.sampled_from(valid)
        if level >= 1:
            choice = choice | st.sampled_from(near)
            if text:
                choice = choice | st.text(max_size=12)
        return choice | ANY_VALUE if level >= 2 else choice

    def noise(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return strategy | ANY_VALUE if level >= 2 else strategy

    def table(
        pools: dict[str, tuple[list[Any], list[Any]]], needs: tuple[str, ...], allows: tuple[str, ...]
    ) -> st.SearchStrategy[dict[str, Any]]:
        """An entry: at level 0 exactly the keys it needs plus some it allows; above, any of the pools' keys."""
        if level == 0:
            return st.fixed_dictionaries(
                {key: pick(pools[key]) for key in needs}, optional={key: pick(pools[key]) for key in allows}
            )
        optional = {key: pick(pool) for key, pool in pools.items()}
        if level >= 2:
            optional["junk"] = ANY_VALUE
        return st.fixed_dictionaries({}, optional=optional)

    def scope_body(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
        optional = {key: noise(st.lists(pick(STRINGS[key], text=True), max_size=4)) for key in keys if key in STRINGS}
        for switch in ("masquerade", "forward"):  # a policy's forward is a near miss (zones only)
            if switch in keys or level >= 1:
                optional[switch] = pick(([True, False], ["yes"]))
        forward_port = st.fixed_dictionaries(
            {"port": pick(FORWARD_PORT_VALUES["port"]), "protocol": pick(FORWARD_PORT_VALUES["protocol"])},
            optional={"to_port": pick(FORWARD_PORT_VALUES["to_port"]), "to_addr": pick(FORWARD_PORT_VALUES["to_addr"])},
        )
        if level == 0:  # needs to_port, to_addr or both
            forward_port = forward_port.filter(lambda entry: "to_port" in entry or "to_addr" in entry)
        optional["forward_ports"] = noise(st.lists(noise(forward_port), max_size=3))
        if level >= 2:
            optional["junk_key"] = ANY_VALUE
        return st.fixed_dictionaries({}, optional=optional)

    names = st.sampled_from(SCOPE_NAMES[0]) | (st.sampled_from(SCOPE_NAMES[1]) | st.text(max_size=12) if level else st.nothing())
    scopes = st.dictionaries(names, noise(scope_body(ZONE_KEYS)), max_size=3)
    policies = st.dictionaries(names, noise(scope_body(POLICY_KEYS)), max_size=2)

    def sections(
        pools: dict[str, tuple[list[Any], list[Any]]],
        chain: tuple[tuple[str, ...], tuple[str, ...]],
        rule: tuple[tuple[str, ...], tuple[str, ...]],
        extra: dict[str, st.SearchStrategy[dict[str, Any]]] | None = None,
    ) -> st.SearchStrategy[dict[str, Any]]:
        optional = {
            "chain": noise(st.lists(noise(table(pools, *chain)), max_size=3)),
            "rule": noise(st.lists(noise(table(pools, *rule)), max_size=3)),
        }
        optional.update({key: noise(st.lists(noise(entry), max_size=2)) for key, entry in (extra or {}).items()})
        return st.fixed_dictionaries({}, optional=optional)

    nft_set = table(NFT_SET_VALUES, ("family", "name", "type"), ("flags", "elements"))
    ipset_names = st.sampled_from(IPSET_NAMES[0]) | (st.sampled_from(IPSET_NAMES[1]) if level else st.nothing())
    ipsets = st.dictionaries(ipset_names, noise(table(IPSET_VALUES, ("type",), ("family", "options", "entries"))), max_size=2)

    document = st.fixed_dictionaries(
        {},
        optional={
            "description": noise(st.text(max_size=30)),
            "zone": noise(scopes),
            "policy": noise(policies),
            "direct": noise(
                sections(DIRECT_VALUES, (("family", "table", "chain"), ()), (("family", "table", "chain", "args"), ("priority",)))
            ),
            "nft": noise(
                sections(NFT_VALUES, (("family", "chain"), ("hook",)), (("family", "chain", "rule"), ()), {"set": nft_set})
            ),
            "ipset": noise(ipsets),
        },
    )
    if level < 2:
        return document
    junk = st.dictionaries(st.text(max_size=8).filter(lambda key: key not in TOP_KEYS), ANY_VALUE, max_size=2)
    return st.tuples(document, junk).map(lambda pair: {**pair[0], **pair[1]})


POLICY_DOCUMENT = policy_document(0) | policy_document(1) | policy_document(2)


@bounded(250)
@given(document=POLICY_DOCUMENT, name=st.sampled_from(["web", "a.b-c_d", "bad name", "é"]))
def test_random_toml_documents_give_a_policy_or_errors_naming_the_file(
    scratch: Path, document: dict[str, Any], name: str
) -> None:
    text = toml_document(document)
    path = write_policy(scratch, text.encode("utf-8"), f"{name}.toml")
    verdict = load_or_errors(path)
    assert_valid_verdict(verdict, path.name)
    if isinstance(verdict, Policy):
        assert verdict.name == name and verdict.file == path.name


def _plain(value: Any) -> bool:
    """No NaN (never equal to itself) and no integer past int()'s digit limit."""
    if isinstance(value, float):
        return not math.isnan(value)
    if isinstance(value, Digits):
        return False
    if isinstance(value, list):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(map(_plain, value.values()))
    return True


@bounded(150)
@given(document=st.dictionaries(st.text(max_size=8), ANY_VALUE, max_size=4).filter(_plain))
def test_the_test_serializer_writes_toml_that_reads_back_equal(document: dict[str, Any]) -> None:
    """Guards the property above: a broken serializer would test only the syntax-error path."""
    assert tomllib.loads(toml_document(document)) == document


# -- the state file ----------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)
FIELD_NAMES = sorted({f.name for cls in ITEM_KINDS.values() for f in fields(cls)})
Z = Scope("zone", "public")
P = Scope("policy", "int-to-ext")
REAL_ITEMS: list[Item] = [  # one of every kind
    Service(Z, "http"),
    Port(Z, "8000-8010", "tcp"),
    SourcePort(P, "53", "udp"),
    Protocol(Z, "gre"),
    IcmpBlock(Z, "echo-request"),
    Masquerade(P),
    Forward(Z),
    ForwardPort(Z, "2222", "tcp", "22", "10.0.0.2"),
    RichRule(Z, 'rule family="ipv4" source address="10.0.0.0/8" log prefix="é \\"q\\"" accept'),
    Source(Z, "ipset:blocked"),
    Interface(Z, "eth0"),
    DirectChain("ipv4", "filter", "FWR"),
    DirectRule("ipv6", "filter", "FWR", -7, ("-p", "tcp", "-j", "ACCEPT")),
    NftChain("inet", "input", "filter", "input", -150, "drop"),
    NftRule("inet", "input", "tcp dport 9000 accept"),
    NftSet("inet", "blocklist", "ipv4_addr", ("interval",)),
    NftElement("inet", "blocklist", "192.0.2.0/24"),
    Ipset("blocked", "hash:net", "inet", ("maxelem=200000",)),
    IpsetEntry("blocked", "192.0.2.0/24"),
    Permanent(RichRule(Z, 'rule family="ipv4" source address="10.0.0.0/8" drop')),
]
FIELD_VALUE = (
    st.sampled_from([["zone", "public"], ["policy", "p"], ["host", "x"], "80", 80, "tcp", ["-j", "ACCEPT"], "abc", True, None])
    | ANY_JSON
)
ITEM_LIKE = st.one_of(
    st.sampled_from(REAL_ITEMS).map(Item.to_json),
    st.sampled_from(REAL_ITEMS).flatmap(
        lambda item: st.tuples(st.sampled_from(sorted(item.to_json())), FIELD_VALUE).map(
            lambda change: {**item.to_json(), change[0]: change[1]}
        )
    ),
    st.fixed_dictionaries(
        {"kind": st.sampled_from(sorted(ITEM_KINDS)) | ANY_JSON}, optional={name: FIELD_VALUE for name in FIELD_NAMES}
    ),
    ANY_JSON,
)
ENTRY_LIKE = st.fixed_dictionaries(
    {"item": ITEM_LIKE},
    optional={
        "policies": st.lists(st.sampled_from(["web", "api", ""]), max_size=3) | ANY_JSON,
        "backend": st.sampled_from(["firewalld", "iptables", "", None]) | ANY_JSON,
        "extra": ANY_JSON,
    },
)
REAL_STATE = st.fixed_dictionaries(
    {
        "version": st.just(1),
        "owned": st.lists(
            st.fixed_dictionaries(
                {
                    "item": st.sampled_from(REAL_ITEMS).map(Item.to_json),
                    "policies": st.lists(st.sampled_from(["web", "api", "db"]), min_size=1, max_size=3, unique=True),
                },
                optional={"backend": st.sampled_from(["firewalld", "iptables", "nftables", None])},
            ),
            max_size=5,
            unique_by=lambda entry: json.dumps(entry["item"], sort_keys=True),
        ),
    },
    optional={
        "pending": st.none()
        | st.fixed_dictionaries(
            {
                "policy": st.text(max_size=6),
                "op_count": st.integers(0, 9),
                "ops": st.lists(st.text(max_size=10), max_size=3),
                "started": st.floats(0, 2e9),
            }
        )
    },
)
GROUP_LIKE = st.fixed_dictionaries(
    {
        "of": st.fixed_dictionaries(
            {"kind": st.sampled_from(["nft_element", "ipset_entry", "port"]) | ANY_JSON},
            optional={name: FIELD_VALUE for name in ("family", "set", "ipset", "element", "entry")},
        )
        | ANY_JSON,
        "values": st.lists(st.sampled_from(["192.0.2.1", "10.0.0.0/8", ""]) | ANY_JSON, max_size=3) | ANY_JSON,
    },
    optional={
        "policies": st.lists(st.sampled_from(["web", "api", ""]), max_size=3) | ANY_JSON,
        "backend": st.sampled_from(["nftables", "firewalld", None]) | ANY_JSON,
    },
)
STATE_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from([1, 2, 2, 0, 3, True, "2", 2.0, None]),
        "owned": st.lists(ENTRY_LIKE | ANY_JSON, max_size=4) | ANY_JSON,
        "owned_groups": st.lists(GROUP_LIKE | ANY_JSON, max_size=3) | ANY_JSON,
        "pending": st.none() | st.dictionaries(st.text(max_size=6), ANY_JSON, max_size=3) | ANY_JSON,
    },
)


def load_state(path: Path, content: bytes) -> State | StateError:
    path.write_bytes(content)
    try:
        return StateStore(path).load()
    except StateError as err:
        assert str(err).startswith(f"{path}: "), str(err)
        assert "\n" not in str(err), str(err)
        return err


def assert_sound_state(state: State, path: Path) -> None:
    """A loaded State holds only real items with policy names, and survives a save and load."""
    for item, owners in state.owned.items():
        assert isinstance(item, Item) and Item.from_json(item.to_json()) == item
        assert owners and all(isinstance(owner, str) for owner in owners)
    assert all(isinstance(backend, str) and item in state.owned for item, backend in state.placed.items())
    assert state.pending is None or isinstance(state.pending, dict)
    path.write_text(render(state))
    again = StateStore(path).load()
    assert (again.owned, again.placed, again.pending) == (state.owned, state.placed, state.pending)


@bounded(300)
@given(content=st.binary(max_size=300) | st.sampled_from([b"\xff", b"{", b"[" * 5000, b"9" * 5000, b"\x00"]))
def test_random_bytes_as_the_state_file_give_a_state_or_state_error(scratch: Path, content: bytes) -> None:
    path = scratch / "state-bytes.json"
    verdict = load_state(path, content)
    if isinstance(verdict, State):
        assert_sound_state(verdict, path)


@bounded(400)
@given(document=REAL_STATE | STATE_LIKE | ANY_JSON)
def test_random_json_as_the_state_file_gives_a_state_or_state_error(scratch: Path, document: Any) -> None:
    path = scratch / "state-json.json"
    verdict = load_state(path, json.dumps(document).encode())
    if isinstance(verdict, State):
        assert_sound_state(verdict, path)


# -- the planner ---------------------------------------------------------------------------------

CHAIN = DirectChain("ipv4", "filter", "FWR")
RANGE, INSIDE = Port(Z, "8000-8010", "tcp"), Port(Z, "8005", "tcp")
UNIVERSE: list[Item] = [
    RANGE,
    INSIDE,
    Port(Z, "8000", "tcp"),
    Port(Z, "8010", "tcp"),
    Port(Z, "8011", "tcp"),
    Port(Z, "8005-8020", "tcp"),
    Port(Z, "8005", "udp"),
    Service(Z, "http"),
    Service(Z, "ssh"),
    Service(Scope("zone", "internal"), "http"),
    CHAIN,
    DirectRule("ipv4", "filter", "FWR", 0, ("-j", "ACCEPT")),
    DirectRule("ipv4", "filter", "FWR", 1, ("-p", "tcp", "-j", "DROP")),
]
POLICIES = ["a", "b", "c"]
Inputs = tuple[dict[str, frozenset[Item]], frozenset[Item], Ownership, Ownership]


def planner_inputs(universe: list[Item]) -> st.SearchStrategy[Inputs]:
    """(desired by policy, what firewalld holds, ownership, items held by others)
    over a small universe, so items collide often."""
    items = st.frozensets(st.sampled_from(universe), max_size=6)
    desired = st.dictionaries(st.sampled_from(POLICIES), items, max_size=3)
    wanters = st.frozensets(st.sampled_from([*POLICIES, "gone"]), min_size=1)
    owned = st.dictionaries(st.sampled_from(universe), wanters, max_size=6)
    others = st.dictionaries(st.sampled_from(universe), wanters, max_size=3)
    return st.tuples(desired, items, owned, others).map(
        lambda t: (t[0], t[1], t[2], {i: w for i, w in t[3].items() if i not in t[2]})
    )


def firewalld_view(items: frozenset[Item]) -> FirewallView:
    """What firewalld would list after these items were added: overlapping port ranges merged."""
    view = FirewallView()
    for item in sorted(items, key=Item.sort_key):
        view.add(item)
    return FirewallView(view.items())


def run_plans(
    plans: list[PolicyPlan], actual: FirewallView, owned: Mapping[Item, frozenset[str]], others: Mapping[Item, frozenset[str]]
) -> tuple[FirewallView, Ownership, Ownership]:
    """Every plan's ops applied in order, as the backend would, and the records they leave."""
    view = actual.copy()
    ownership: Ownership = dict(owned)
    held: Ownership = dict(others)
    for plan in plans:
        for op in plan.ops:
            (view.add if op.action == "add" else view.remove)(op.item)
        ownership = settle_ownership(ownership, plan, plan.ops)
        held = settle_others(held, plan)
    return view, ownership, held


def check_never_removes_unowned(
    desired: dict[str, frozenset[Item]], actual: frozenset[Item], owned: Ownership, others: Ownership
) -> None:
    for plan in plan_all(desired, firewalld_view(actual), owned, others):
        for op in plan.ops:
            if op.action == "remove":
                assert op.item in owned, f"{plan.policy} removes {op.item.describe()}, which nobody owns"
                assert plan.policy in owned[op.item], f"{plan.policy} removes {op.item.describe()}, owned by {owned[op.item]}"


def check_reaches_desired_and_keeps_foreign(
    desired: dict[str, frozenset[Item]], actual: frozenset[Item], owned: Ownership, others: Ownership
) -> None:
    before = firewalld_view(actual)
    after, ownership, _ = run_plans(plan_all(desired, before, owned, others), before, owned, others)
    for policy, items in desired.items():
        for item in items:
            assert after.has(item), f"{policy} wants {item.describe()}, absent after the plans ran"
    for item in before.items():
        if item not in owned:
            assert after.has(item), f"foreign {item.describe()} is gone"
    for item in others:
        assert item not in ownership or item in owned, f"{item.describe()}, held by others, became fwrecon's"


def check_second_plan_is_empty(
    desired: dict[str, frozenset[Item]], actual: frozenset[Item], owned: Ownership, others: Ownership
) -> None:
    before = firewalld_view(actual)
    after, ownership, held = run_plans(plan_all(desired, before, owned, others), before, owned, others)
    again = plan_all(desired, after, ownership, held)
    assert [(plan.policy, op.describe()) for plan in again for op in plan.ops] == []


# Found by these properties once: policy 'a' wants 8005/tcp inside a range only
# 'b' (gone) owns, so 'a' added nothing and 'b' then removed the range; and a
# chain kept by 'a' for a rule 'b' then removed.  Kept as fixed examples.
RANGE_COUNTEREXAMPLE: Inputs = ({"a": frozenset({INSIDE})}, frozenset({RANGE}), {RANGE: frozenset({"b"})}, {})
RULE = DirectRule("ipv4", "filter", "FWR", 0, ("-j", "ACCEPT"))
CHAIN_COUNTEREXAMPLE: Inputs = ({}, frozenset({CHAIN, RULE}), {CHAIN: frozenset({"a"}), RULE: frozenset({"b"})}, {})


@bounded(500)
@given(inputs=planner_inputs(UNIVERSE))
def test_planner_never_removes_what_it_does_not_own(inputs: Inputs) -> None:
    check_never_removes_unowned(*inputs)


@bounded(500)
@given(inputs=planner_inputs(UNIVERSE))
@example(inputs=RANGE_COUNTEREXAMPLE)
def test_planned_ops_reach_every_desired_item_keep_every_foreign_one_and_never_take_others_items(inputs: Inputs) -> None:
    check_reaches_desired_and_keeps_foreign(*inputs)


@bounded(500)
@given(inputs=planner_inputs(UNIVERSE))
@example(inputs=RANGE_COUNTEREXAMPLE)
@example(inputs=CHAIN_COUNTEREXAMPLE)
def test_planning_again_after_the_plan_ran_plans_nothing(inputs: Inputs) -> None:
    check_second_plan_is_empty(*inputs)


def test_the_real_items_of_the_state_strategy_cover_every_kind() -> None:
    """A new item kind must show up in the state fuzzing too."""
    assert {type(item) for item in REAL_ITEMS} == set(ITEM_KINDS.values())
