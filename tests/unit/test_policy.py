"""Unit tests for reconciler.policy: finding, loading and validating policy files.

Plain functions on tmp_path; no firewall, no network.  Error strings are
asserted in full, so a changed message or key path fails a test.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from prereq import skip_or_fail

from reconciler.errors import PolicyError
from reconciler.model import (
    DirectChain,
    DirectRule,
    Forward,
    ForwardPort,
    IcmpBlock,
    Interface,
    IpsetEntry,
    Item,
    KnownNames,
    Masquerade,
    NftElement,
    Port,
    Protocol,
    RichRule,
    Scope,
    Service,
    Source,
    SourcePort,
)
from reconciler.policy import LoadResult, PolicyFileInvalid, check_references
from reconciler.policydir import is_policy_file, load_policy_dir, load_policy_file, policy_files

WEB_TOML = Path(__file__).resolve().parents[2] / "policies" / "web.toml"
PUBLIC = Scope("zone", "public")
PORT_MSG = "is not PORT[-PORT]/PROTO with PROTO one of tcp|udp|sctp|dccp"
IFACE_MSG = "is not a valid interface name (1-15 characters, no '/', ':', '!', '*' or spaces)"
SOURCE_MSG = "is not an address, network, MAC address or ipset:NAME"


# -- helpers ---------------------------------------------------------------------


def write(directory: Path, name: str, text: str, mode: int = 0o644) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def load(tmp_path: Path, text: str, name: str = "t.toml"):
    return load_policy_file(write(tmp_path, name, text))


def errors(tmp_path: Path, text: str, name: str = "t.toml") -> list[str]:
    """Every error for a file that must be invalid, as strings, in report order."""
    with pytest.raises(PolicyFileInvalid) as info:
        load(tmp_path, text, name)
    return [str(err) for err in info.value.errors]


def zone(body: str, name: str = "public") -> str:
    return f"[zone.{name}]\n{body}\n"


def toml_list(values: list[str]) -> str:
    """A TOML array of basic strings (escapes written by hand, not by repr)."""

    def quote(value: str) -> str:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\0", "\\u0000")
        return f'"{escaped}"'

    return "[" + ", ".join(quote(v) for v in values) + "]"


# -- the shipped example -----------------------------------------------------------

WEB_ITEMS = frozenset(
    {
        Service(PUBLIC, "http"),
        Service(PUBLIC, "https"),
        Port(PUBLIC, "8080", "tcp"),
        Port(PUBLIC, "60000-60010", "udp"),
        Protocol(PUBLIC, "gre"),
        SourcePort(PUBLIC, "5353", "udp"),
        IcmpBlock(PUBLIC, "echo-request"),
        Masquerade(PUBLIC),
        ForwardPort(PUBLIC, "2222", "tcp", "22", ""),
        RichRule(PUBLIC, 'rule family="ipv4" source address="10.0.0.0/8" service name="ssh" accept'),
        Source(PUBLIC, "192.0.2.0/24"),
        Interface(PUBLIC, "dummy0"),
        RichRule(
            Scope("policy", "allow-host-ipv6"),
            'rule family="ipv6" source address="2001:db8::/32" port port="9100" protocol="tcp" accept',
        ),
        DirectChain("ipv4", "filter", "FWRECON_IN"),
        DirectRule("ipv4", "filter", "FWRECON_IN", 0, ("-p", "tcp", "--dport", "9000", "-j", "ACCEPT")),
    }
)


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    shutil.copyfile(WEB_TOML, directory / "web.toml")
    os.chmod(directory / "web.toml", 0o644)
    return directory


def test_shipped_web_policy_loads_exact_items(web_dir: Path) -> None:
    policy = load_policy_file(web_dir / "web.toml")
    assert policy.name == "web"
    assert policy.file == "web.toml"
    assert policy.description == "Public web server"
    assert policy.items == WEB_ITEMS


def test_shipped_web_policy_through_load_policy_dir(web_dir: Path) -> None:
    result = load_policy_dir(web_dir)
    assert result.errors == {}
    assert result.all_errors() == []
    assert list(result.policies) == ["web"]
    assert result.policies["web"].items == WEB_ITEMS


def test_shipped_web_policy_references_all_resolve(web_dir: Path) -> None:
    policy = load_policy_file(web_dir / "web.toml")
    assert {(r.key, r.kind, r.name) for r in policy.references} == {
        ("zone.public", "zone", "public"),
        ("zone.public.services[0]", "service", "http"),
        ("zone.public.services[1]", "service", "https"),
        ("zone.public.icmp_blocks[0]", "icmp_type", "echo-request"),
        ("zone.public.rich_rules[0]", "service", "ssh"),
        ("policy.allow-host-ipv6", "policy", "allow-host-ipv6"),
    }
    known = KnownNames(
        zones=frozenset({"public"}),
        policies=frozenset({"allow-host-ipv6"}),
        services=frozenset({"http", "https", "ssh"}),
        icmp_types=frozenset({"echo-request"}),
    )
    assert check_references(policy, known) == []


def test_canonical_forms(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        zone(
            'ports = ["9000-9000/tcp", " 443/udp "]\n'
            'source_ports = ["1000-1000/sctp"]\n'
            'sources = ["aa:bb:cc:0d:ee:ff", " 10.1.0.0/16 "]\n'
            "rich_rules = ['rule  family=ipv4   source address=10.0.0.0/8 service name=ssh accept']\n"
            'forward_ports = [{ port = 8080, protocol = "tcp", to_port = 80 },'
            ' { port = "9000-9000", protocol = "udp", to_port = "9001-9001", to_addr = " 192.0.2.7 " }]'
        ),
    )
    assert policy.items == frozenset(
        {
            Port(PUBLIC, "9000", "tcp"),
            Port(PUBLIC, "443", "udp"),
            SourcePort(PUBLIC, "1000", "sctp"),
            Source(PUBLIC, "AA:BB:CC:0D:EE:FF"),
            Source(PUBLIC, "10.1.0.0/16"),
            RichRule(PUBLIC, 'rule family="ipv4" source address="10.0.0.0/8" service name="ssh" accept'),
            ForwardPort(PUBLIC, "8080", "tcp", "80", ""),
            ForwardPort(PUBLIC, "9000", "udp", "9001", "192.0.2.7"),
        }
    )


def test_policy_scope_items(tmp_path: Path) -> None:
    scope = Scope("policy", "int-to-ext")
    policy = load(
        tmp_path,
        "[policy.int-to-ext]\n"
        'services = ["dns"]\nports = ["53/udp"]\nprotocols = ["icmp"]\nsource_ports = ["68/udp"]\n'
        'icmp_blocks = ["echo-reply"]\nmasquerade = true\n'
        'forward_ports = [{ port = "80", protocol = "tcp", to_addr = "10.0.0.2" }]\n',
    )
    assert policy.items == frozenset(
        {
            Service(scope, "dns"),
            Port(scope, "53", "udp"),
            Protocol(scope, "icmp"),
            SourcePort(scope, "68", "udp"),
            IcmpBlock(scope, "echo-reply"),
            Masquerade(scope),
            ForwardPort(scope, "80", "tcp", "", "10.0.0.2"),
        }
    )


# -- file selection ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "selected"),
    [
        ("web.toml", True),
        ("web.v2.toml", True),
        ("_base.toml", True),
        (".hidden.toml", False),
        (".toml", False),
        ("web.toml~", False),
        ("~web.toml", False),
        ("#web.toml#", False),
        ("web.toml.swp", False),
        (".web.toml.swp", False),
        (".#web.toml", False),
        ("web.toml.tmp", False),
        ("web.toml.bak", False),
        ("web.TOML", False),
        ("notes.txt", False),
    ],
)
def test_is_policy_file(name: str, selected: bool) -> None:
    assert is_policy_file(Path(name)) is selected


def test_load_policy_dir_ignores_hidden_backup_and_temp_files(tmp_path: Path) -> None:
    write(tmp_path, "web.toml", zone('services = ["http"]'))
    for name in (".hidden.toml", "web.toml~", "#web.toml#", "web.toml.swp", ".#web.toml", "web.toml.tmp", "notes.txt"):
        write(tmp_path, name, "this is [not toml")  # would be an error if it were read
    assert [p.name for p in policy_files(tmp_path)] == ["web.toml"]
    result = load_policy_dir(tmp_path)
    assert result.errors == {}
    assert list(result.policies) == ["web"]
    assert result.policies["web"].items == frozenset({Service(PUBLIC, "http")})


def test_directory_named_like_a_policy_is_reported_not_read(tmp_path: Path) -> None:
    (tmp_path / "x.toml").mkdir()
    os.chmod(tmp_path / "x.toml", 0o755)
    write(tmp_path, "web.toml", zone('services = ["http"]'))
    result = load_policy_dir(tmp_path)
    assert list(result.policies) == ["web"]
    assert [str(e) for e in result.errors["x"]] == ["x.toml: not a regular file"]


def test_policy_files_are_sorted(tmp_path: Path) -> None:
    for name in ("b.toml", "a.toml", "c.toml"):
        write(tmp_path, name, "")
    assert [p.name for p in policy_files(tmp_path)] == ["a.toml", "b.toml", "c.toml"]
    assert list(load_policy_dir(tmp_path).policies) == ["a", "b", "c"]


def test_empty_directory_has_no_policies_and_no_errors(tmp_path: Path) -> None:
    result = load_policy_dir(tmp_path)
    assert result.policies == {} and result.errors == {}


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = load_policy_dir(missing)
    assert result.policies == {}
    assert [str(e) for e in result.errors[str(missing)]] == [f"{missing}: does not exist"]


def test_file_stem_must_be_a_valid_policy_name(tmp_path: Path) -> None:
    assert errors(tmp_path, "", name="my web.toml") == [
        "my web.toml: policy name 'my web' (the file stem) may only hold letters, digits, '_', '.', '-'"
    ]


def test_empty_file_is_an_empty_policy(tmp_path: Path) -> None:
    policy = load(tmp_path, "")
    assert policy.name == "t" and policy.description == "" and policy.items == frozenset()


# -- a policy only ever adds ---------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        zone("masquerade = false"),
        zone("forward = false"),
        zone(""),
        zone(
            "services = []\nports = []\nprotocols = []\nsource_ports = []\nicmp_blocks = []\n"
            "rich_rules = []\nsources = []\ninterfaces = []\nforward_ports = []"
        ),
        "[policy.p]\nmasquerade = false\nservices = []\nforward_ports = []\n",
        "[direct]\nchain = []\nrule = []\n",
        'description = "nothing managed"\n[zone]\n[policy]\n',
    ],
    ids=[
        "masquerade-false",
        "forward-false",
        "empty-zone",
        "empty-arrays",
        "policy-false-and-empty",
        "empty-direct",
        "empty-tables",
    ],
)
def test_false_absent_and_empty_produce_no_items(tmp_path: Path, text: str) -> None:
    assert load(tmp_path, text).items == frozenset()


@pytest.mark.parametrize(("key", "item"), [("masquerade", Masquerade(PUBLIC)), ("forward", Forward(PUBLIC))])
def test_a_switch_set_to_true_adds_one_item(tmp_path: Path, key: str, item: Item) -> None:
    assert load(tmp_path, zone(f"{key} = true")).items == frozenset({item})


# -- TOML syntax and encoding ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("x = 1\n[zone.public\n", 2, 13),
        ('[zone.public]\nports = ["80/tcp" "x"]\n', 2, 19),
        ("a = 1\na = 2\n", 2, 6),
        ("a = ", 1, 5),  # tomllib says only "at end of document"; line and column are added
        ('description = """never closed\n', 2, 1),
    ],
)
def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path, text: str, line: int, column: int) -> None:
    [message] = errors(tmp_path, text)
    assert message.startswith("t.toml: TOML syntax error: ")
    assert re.search(rf"\(at (end of document, )?line {line}, column {column}\)$", message), message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_bytes(b'a = "\xff"\n')
    os.chmod(path, 0o644)
    with pytest.raises(PolicyFileInvalid) as info:
        load_policy_file(path)
    assert [str(e) for e in info.value.errors] == ["t.toml: not UTF-8 text: invalid start byte at byte 5"]


# -- unknown keys and wrong types ---------------------------------------------------------

ZONE_KEYS_TEXT = (
    "services, ports, protocols, source_ports, icmp_blocks, rich_rules, masquerade, forward, forward_ports, sources, interfaces"
)
POLICY_KEYS_TEXT = "services, ports, protocols, source_ports, icmp_blocks, rich_rules, masquerade, forward_ports"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("foo = 1\n", "t.toml: foo: unknown key (expected one of: description, zone, policy, direct, nft, ipset)"),
        (zone("service = []"), f"t.toml: zone.public.service: unknown key (expected one of: {ZONE_KEYS_TEXT})"),
        ('[policy.p]\nsources = ["10.0.0.1"]\n', f"t.toml: policy.p.sources: unknown key (expected one of: {POLICY_KEYS_TEXT})"),
        (
            '[policy.p]\ninterfaces = ["eth0"]\n',
            f"t.toml: policy.p.interfaces: unknown key (expected one of: {POLICY_KEYS_TEXT})",
        ),
        ("[policy.p]\nforward = true\n", f"t.toml: policy.p.forward: unknown key (expected one of: {POLICY_KEYS_TEXT})"),
        ("[direct]\ntables = []\n", "t.toml: direct.tables: unknown key (expected one of: chain, rule)"),
    ],
    ids=["top-level", "zone", "policy-sources", "policy-interfaces", "policy-forward", "direct"],
)
def test_unknown_key(tmp_path: Path, text: str, expected: str) -> None:
    assert errors(tmp_path, text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (zone('services = "http"'), "t.toml: zone.public.services: expected an array of strings, got string"),
        (zone('ports = ["80/tcp", 80]'), "t.toml: zone.public.ports[1]: expected a string, got integer"),
        (zone('masquerade = "yes"'), "t.toml: zone.public.masquerade: expected true or false, got string"),
        (zone("forward = 1"), "t.toml: zone.public.forward: expected true or false, got integer"),
        ("description = 3\n", "t.toml: description: expected a string, got integer"),
        ("zone = 5\n", "t.toml: zone: expected a table, got integer"),
        ("[zone]\npublic = 5\n", "t.toml: zone.public: expected a table, got integer"),
        ('policy = ["p"]\n', "t.toml: policy: expected a table, got array"),
        ("direct = 5\n", "t.toml: direct: expected a table, got integer"),
        (zone("rich_rules = [true]"), "t.toml: zone.public.rich_rules[0]: expected a string, got boolean"),
    ],
    ids=[
        "string-not-array",
        "int-in-array",
        "masquerade-string",
        "forward-int",
        "description-int",
        "zone-int",
        "zone-body-int",
        "policy-array",
        "direct-int",
        "bool-in-array",
    ],
)
def test_wrong_type(tmp_path: Path, text: str, expected: str) -> None:
    assert errors(tmp_path, text) == [expected]


def test_invalid_scope_name(tmp_path: Path) -> None:
    assert errors(tmp_path, '[zone."bad name"]\n') == [
        "t.toml: zone.bad name: zone name 'bad name' may only hold letters, digits, '_' and '-'"
    ]


# -- ports, protocols, names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("80/tcpx", ""),
        ("0/tcp", " ('0': ports must be between 1 and 65535)"),
        ("70000/udp", " ('70000': ports must be between 1 and 65535)"),
        ("90-80/tcp", " ('90-80': range start is above its end)"),
        ("abc/tcp", ""),
        ("80", ""),
        ("80/TCP", ""),
        ("/tcp", ""),
        ("80-/tcp", ""),
    ],
)
def test_invalid_port(tmp_path: Path, value: str, detail: str) -> None:
    text = zone(f'ports = ["22/tcp", "{value}"]\nsource_ports = ["{value}"]')
    assert errors(tmp_path, text) == [
        f't.toml: zone.public.ports[1]: "{value}" {PORT_MSG}{detail}',
        f't.toml: zone.public.source_ports[0]: "{value}" {PORT_MSG}{detail}',
    ]


def test_issue_example_port_error(tmp_path: Path) -> None:
    [message] = errors(tmp_path, zone('ports = ["80/tcp", "80/tcpx"]'), name="web.toml")
    assert message.startswith('web.toml: zone.public.ports[1]: "80/tcpx" is not PORT[-PORT]/PROTO')


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("256", '"256" is not a protocol number (0-255)'),
        ("notaproto", '"notaproto" is not a known IP protocol (see /etc/protocols)'),
        ("", '"" is not a known IP protocol (see /etc/protocols)'),
        ("-1", '"-1" is not a known IP protocol (see /etc/protocols)'),
        ("\u00b2", '"\\u00b2" is not a known IP protocol (see /etc/protocols)'),  # isdigit() but not int()
        ("a\0b", '"a\\u0000b" is not a known IP protocol (see /etc/protocols)'),  # getprotobyname: ValueError
    ],
    ids=["256", "unknown", "empty", "negative", "superscript-two", "nul"],
)
def test_invalid_protocol(tmp_path: Path, value: str, message: str) -> None:
    assert errors(tmp_path, zone(f"protocols = {toml_list([value])}")) == [f"t.toml: zone.public.protocols[0]: {message}"]


def test_valid_protocols(tmp_path: Path) -> None:
    policy = load(tmp_path, zone('protocols = ["gre", "icmp", "47", "0", "255"]'))
    assert policy.items == frozenset(Protocol(PUBLIC, p) for p in ("gre", "icmp", "47", "0", "255"))


@pytest.mark.parametrize("value", ["bad name", "-x", "", "http\n", "ht/tp", "h\u00e9"])
def test_invalid_service_name(tmp_path: Path, value: str) -> None:
    shown = toml_list([value])[1:-1].replace("\u00e9", "\\u00e9")
    assert errors(tmp_path, zone(f"services = {toml_list(['http', value])}")) == [
        f"t.toml: zone.public.services[1]: {shown} is not a valid service name"
    ]


def test_invalid_icmp_block_name(tmp_path: Path) -> None:
    assert errors(tmp_path, zone('icmp_blocks = ["echo reply"]')) == [
        't.toml: zone.public.icmp_blocks[0]: "echo reply" is not a valid icmp type name'
    ]


def test_valid_service_names(tmp_path: Path) -> None:
    policy = load(tmp_path, zone('services = ["http", "a+b.c_d-e", "9p"]'))
    assert policy.items == frozenset(Service(PUBLIC, s) for s in ("http", "a+b.c_d-e", "9p"))


# -- sources and interfaces ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "300.1.1.1",
        "10.0.0.0/33",
        "not-an-ip",
        "2001:db8::/129",
        "ipset:",
        "ipset:bad name",
        "00:11:22:33:44:gg",
        "00:11:22:33:44",
        "fe80::1%eth0",
        "",
    ],
)
def test_invalid_source(tmp_path: Path, value: str) -> None:
    assert errors(tmp_path, zone(f'sources = ["{value}"]')) == [f't.toml: zone.public.sources[0]: "{value}" {SOURCE_MSG}']


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("192.0.2.0/24", "192.0.2.0/24"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("2001:db8::1", "2001:db8::1"),
        ("00:1a:2b:3c:4d:5e", "00:1A:2B:3C:4D:5E"),
        ("ipset:foo", "ipset:foo"),
    ],
)
def test_valid_source(tmp_path: Path, value: str, stored: str) -> None:
    assert load(tmp_path, zone(f'sources = ["{value}"]')).items == frozenset({Source(PUBLIC, stored)})


@pytest.mark.parametrize(
    "value",
    ["a/b", "eth 0", "eth0:1", "abcdefghijklmnop", "", ".", "..", "eth*", "eth!", "eth0\n", "eth\0"],
)
def test_invalid_interface(tmp_path: Path, value: str) -> None:
    shown = toml_list([value])[1:-1]
    assert errors(tmp_path, zone(f"interfaces = {toml_list([value])}")) == [
        f"t.toml: zone.public.interfaces[0]: {shown} {IFACE_MSG}"
    ]


def test_valid_interfaces(tmp_path: Path) -> None:
    names = ("eth0", "br-lan.10", "wg+", "abcdefghijklmno")
    assert load(tmp_path, zone(f"interfaces = {toml_list(list(names))}")).items == frozenset(Interface(PUBLIC, n) for n in names)


# -- forward ports ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ('[{ port = "2222", protocol = "tcp" }]', ["forward_ports[0]: needs to_port, to_addr or both"]),
        (
            '[{ port = "80", protocol = "tcp", to_addr = "10.0.0.999" }]',
            ['forward_ports[0].to_addr: "10.0.0.999" is not an IP address'],
        ),
        (
            '[{ port = "80", protocol = "tcp", to_addr = "fe80::1%eth0" }]',
            ['forward_ports[0].to_addr: "fe80::1%eth0" is not an IP address'],
        ),
        (
            '[{ port = "80", protocol = "tcpx", to_port = "8080" }]',
            ['forward_ports[0].protocol: "tcpx" is not one of tcp|udp|sctp|dccp'],
        ),
        (
            '[{ port = "80", protocol = "tcp", to_port = "8080", toport = "1" }]',
            ["forward_ports[0].toport: unknown key (expected one of: port, protocol, to_port, to_addr)"],
        ),
        (
            '["80:tcp:8080"]',
            ['forward_ports[0]: expected a table like { port = "80", protocol = "tcp", to_port = "8080" }, got string'],
        ),
        ('{ port = "80", protocol = "tcp", to_port = "8080" }', ["forward_ports: expected an array of tables, got table"]),
        ('[{ protocol = "tcp", to_port = "22" }]', ["forward_ports[0].port: missing"]),
        (
            '[{ port = 0, protocol = "tcp", to_port = "70000" }]',
            ['forward_ports[0].port: "0" is not PORT or PORT-PORT', 'forward_ports[0].to_port: "70000" is not PORT or PORT-PORT'],
        ),
        ('[{ port = "80", protocol = "tcp", to_port = true }]', ["forward_ports[0].to_port: expected a string, got boolean"]),
        ('[{ port = "80", protocol = 6, to_port = "8080" }]', ["forward_ports[0].protocol: expected a string, got integer"]),
    ],
    ids=[
        "no-target",
        "bad-to_addr",
        "scoped-to_addr",
        "bad-protocol",
        "unknown-key",
        "not-a-table",
        "table-not-array",
        "missing-port",
        "bad-ports",
        "bool-to_port",
        "int-protocol",
    ],
)
def test_invalid_forward_port(tmp_path: Path, entries: str, expected: list[str]) -> None:
    assert errors(tmp_path, zone(f"forward_ports = {entries}")) == [f"t.toml: zone.public.{e}" for e in expected]


def test_valid_forward_ports(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        zone(
            'forward_ports = [{ port = "80-81", protocol = "udp", to_addr = "2001:db8::1" },'
            ' { port = "443", protocol = "sctp", to_port = "8443", to_addr = "10.0.0.1" }]'
        ),
    )
    assert policy.items == frozenset(
        {
            ForwardPort(PUBLIC, "80-81", "udp", "", "2001:db8::1"),
            ForwardPort(PUBLIC, "443", "sctp", "8443", "10.0.0.1"),
        }
    )


# -- rich rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    ['rule family="ipv4" bogus', 'rule family="ipv5" accept', "rule", 'rule service name="ssh"', "accept"],
)
def test_malformed_rich_rule(tmp_path: Path, rule: str) -> None:
    text = f"[policy.p]\nrich_rules = ['rule service name=\"ssh\" accept', '{rule}']\n"
    [message] = errors(tmp_path, text)
    assert message.startswith("t.toml: policy.p.rich_rules[1]: invalid rich rule: ")


# -- direct chains and rules ---------------------------------------------------------------------

CHAIN_OK = {"family": '"ipv4"', "table": '"filter"', "chain": '"X"'}
RULE_OK = {**CHAIN_OK, "priority": "0", "args": '["-j", "ACCEPT"]'}


def direct(section: str, fields: dict[str, str | None]) -> str:
    body = "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)
    return f"[[direct.{section}]]\n{body}"


@pytest.mark.parametrize(
    ("section", "change", "expected"),
    [
        ("chain", {"family": '"ipv5"'}, 'direct.chain[0].family: "ipv5" is not one of ipv4|ipv6|eb'),
        (
            "chain",
            {"family": '"eb"', "table": '"raw"'},
            'direct.chain[0].table: "raw" is not a table of family eb (filter|nat|broute)',
        ),
        (
            "chain",
            {"table": '"broute"'},
            'direct.chain[0].table: "broute" is not a table of family ipv4 (filter|nat|mangle|raw|security)',
        ),
        ("chain", {"chain": None}, "direct.chain[0].chain: missing"),
        ("chain", {"family": None}, "direct.chain[0].family: missing"),
        (
            "chain",
            {"chain": '"' + "C" * 29 + '"'},
            f"direct.chain[0].chain: \"{'C' * 29}\" is not a chain name (1-28 of letters, digits, '_', '.', '-', not starting with '-')",
        ),
        (
            "chain",
            {"chain": '"X\\n"'},
            "direct.chain[0].chain: \"X\\n\" is not a chain name (1-28 of letters, digits, '_', '.', '-', not starting with '-')",
        ),
        ("chain", {"family": "4"}, "direct.chain[0].family: expected a string, got integer"),
        ("chain", {"priority": "1"}, "direct.chain[0].priority: unknown key (expected one of: family, table, chain)"),
        ("rule", {"family": '"ipv5"'}, 'direct.rule[0].family: "ipv5" is not one of ipv4|ipv6|eb'),
        (
            "rule",
            {"family": '"eb"', "table": '"raw"'},
            'direct.rule[0].table: "raw" is not a table of family eb (filter|nat|broute)',
        ),
        ("rule", {"chain": None}, "direct.rule[0].chain: missing"),
        (
            "rule",
            {"chain": '"' + "C" * 29 + '"'},
            f"direct.rule[0].chain: \"{'C' * 29}\" is not a chain name (1-28 of letters, digits, '_', '.', '-', not starting with '-')",
        ),
        ("rule", {"priority": '"1"'}, "direct.rule[0].priority: expected an integer, got string"),
        ("rule", {"priority": "true"}, "direct.rule[0].priority: expected an integer, got boolean"),
        ("rule", {"priority": "1.5"}, "direct.rule[0].priority: expected an integer, got float"),
        ("rule", {"priority": "2147483648"}, "direct.rule[0].priority: 2147483648 is out of range (-2147483648 to 2147483647)"),
        ("rule", {"args": None}, 'direct.rule[0].args: missing (the rule\'s arguments, e.g. ["-p", "tcp", "-j", "ACCEPT"])'),
        ("rule", {"args": "[]"}, "direct.rule[0].args: expected a non-empty array of strings"),
        ("rule", {"args": '"-j ACCEPT"'}, "direct.rule[0].args: expected a non-empty array of strings"),
        ("rule", {"args": '["-j", 5]'}, "direct.rule[0].args[1]: expected a non-empty single-line string, got 5"),
        ("rule", {"args": '["-j", ""]'}, 'direct.rule[0].args[1]: expected a non-empty single-line string, got ""'),
        ("rule", {"args": '["-j", "A\\nB"]'}, 'direct.rule[0].args[1]: expected a non-empty single-line string, got "A\\nB"'),
        ("rule", {"args": '["-j", ["x"]]'}, "direct.rule[0].args[1]: expected a non-empty single-line string, got list"),
        ("rule", {"prio": "1"}, "direct.rule[0].prio: unknown key (expected one of: family, table, chain, priority, args)"),
    ],
)
def test_invalid_direct_entry(tmp_path: Path, section: str, change: dict[str, str | None], expected: str) -> None:
    fields = {**(CHAIN_OK if section == "chain" else RULE_OK), **change}
    assert errors(tmp_path, direct(section, fields)) == [f"t.toml: {expected}"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[direct]\nchain = { family = "ipv4" }\n', "direct.chain: expected an array of tables ([[direct.chain]]), got table"),
        ('[direct]\nrule = ["-j ACCEPT"]\n', "direct.rule[0]: expected a table, got string"),
    ],
)
def test_invalid_direct_structure(tmp_path: Path, text: str, expected: str) -> None:
    assert errors(tmp_path, text) == [f"t.toml: {expected}"]


def test_valid_direct_entries(tmp_path: Path) -> None:
    text = (
        direct("chain", {"family": '"eb"', "table": '"broute"', "chain": '"my.chain-1"'})
        + direct(
            "rule",
            {
                "family": '"ipv6"',
                "table": '"mangle"',
                "chain": '"PREROUTING"',
                "priority": "-2147483648",
                "args": '["-j", "MARK", "--set-mark", "1"]',
            },
        )
        + direct("rule", {"family": '"ipv4"', "table": '"raw"', "chain": '"' + "C" * 28 + '"', "args": '["-j", "NOTRACK"]'})
    )
    assert load(tmp_path, text).items == frozenset(
        {
            DirectChain("eb", "broute", "my.chain-1"),
            DirectRule("ipv6", "mangle", "PREROUTING", -2147483648, ("-j", "MARK", "--set-mark", "1")),
            DirectRule("ipv4", "raw", "C" * 28, 0, ("-j", "NOTRACK")),  # priority defaults to 0
        }
    )


# -- several errors; invalid files are skipped ----------------------------------------------------

MANY_ERRORS = (
    "descripton = 'typo'\n"
    "[zone.public]\n"
    'ports = ["80/tcpx", "443/tcp"]\n'
    'sources = ["not-an-ip"]\n'
    "masquerade = 1\n"
    "[[direct.rule]]\n"
    'family = "ipv4"\ntable = "filter"\nchain = "X"\nargs = []\n'
)
MANY_ERRORS_EXPECTED = [
    ("descripton", "unknown key (expected one of: description, zone, policy, direct, nft, ipset)"),
    ("zone.public.ports[0]", f'"80/tcpx" {PORT_MSG}'),
    ("zone.public.sources[0]", f'"not-an-ip" {SOURCE_MSG}'),
    ("zone.public.masquerade", "expected true or false, got integer"),
    ("direct.rule[0].args", "expected a non-empty array of strings"),
]


def test_all_errors_in_a_file_are_reported_separately(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileInvalid) as info:
        load(tmp_path, MANY_ERRORS, name="bad.toml")
    errs = info.value.errors
    assert all(isinstance(e, PolicyError) and e.file == "bad.toml" for e in errs)
    assert [(e.key, e.message) for e in errs] == MANY_ERRORS_EXPECTED
    assert str(info.value) == "; ".join(f"bad.toml: {k}: {m}" for k, m in MANY_ERRORS_EXPECTED)


def test_invalid_file_yields_no_policy_and_valid_neighbour_still_loads(tmp_path: Path) -> None:
    write(tmp_path, "bad.toml", MANY_ERRORS)
    write(tmp_path, "good.toml", zone('services = ["http"]', name="internal"))
    result = load_policy_dir(tmp_path)
    assert list(result.policies) == ["good"]
    assert result.policies["good"].items == frozenset({Service(Scope("zone", "internal"), "http")})
    assert list(result.errors) == ["bad"]
    assert [(e.file, e.key, e.message) for e in result.errors["bad"]] == [("bad.toml", k, m) for k, m in MANY_ERRORS_EXPECTED]


def test_all_errors_sorted_by_policy_name(tmp_path: Path) -> None:
    write(tmp_path, "b.toml", "x = 1\n")
    write(tmp_path, "a.toml", "y = 1\nz = 2\n")
    write(tmp_path, "c.toml", "")
    result = load_policy_dir(tmp_path)
    assert list(result.policies) == ["c"]
    top = "unknown key (expected one of: description, zone, policy, direct, nft, ipset)"
    assert [str(e) for e in result.all_errors()] == [f"a.toml: y: {top}", f"a.toml: z: {top}", f"b.toml: x: {top}"]


def test_load_result_defaults() -> None:
    assert LoadResult().policies == {} and LoadResult().all_errors() == []


# -- permissions and ownership ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o666, 0o660, 0o646, 0o620, 0o602])
def test_file_writable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, "t.toml", zone('services = ["http"]'), mode=mode)
    with pytest.raises(PolicyFileInvalid) as info:
        load_policy_file(path)
    assert [str(e) for e in info.value.errors] == [
        f"t.toml: refusing file writable by group or others (mode {mode:o}); chmod go-w it"
    ]


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o400, 0o755])
def test_file_not_writable_by_others_is_accepted(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, "t.toml", zone('services = ["http"]'), mode=mode)
    assert load_policy_file(path).items == frozenset({Service(PUBLIC, "http")})


def test_unsafe_file_is_skipped_others_still_load(tmp_path: Path) -> None:
    write(tmp_path, "open.toml", zone('services = ["http"]'), mode=0o666)
    write(tmp_path, "web.toml", zone('services = ["https"]'))
    result = load_policy_dir(tmp_path)
    assert list(result.policies) == ["web"]
    assert [str(e) for e in result.errors["open"]] == [
        "open.toml: refusing file writable by group or others (mode 666); chmod go-w it"
    ]


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_directory_writable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "policies"
    directory.mkdir()
    write(directory, "web.toml", zone('services = ["http"]'))
    os.chmod(directory, mode)
    result = load_policy_dir(directory)
    assert result.policies == {}
    assert [str(e) for e in result.errors[str(directory)]] == [
        f"{directory}: refusing directory writable by group or others (mode {mode:o}); chmod go-w it"
    ]


def test_file_instead_of_directory_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "t.toml", "")
    result = load_policy_dir(path)
    assert result.policies == {}
    assert [str(e) for e in result.errors[str(path)]] == [f"{path}: not a regular directory"]


def _need_root() -> None:
    if os.geteuid() != 0:
        skip_or_fail("chown to another uid needs root")


def test_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    _need_root()
    path = write(tmp_path, "t.toml", zone('services = ["http"]'))
    os.chown(path, 12345, 12345)
    with pytest.raises(PolicyFileInvalid) as info:
        load_policy_file(path)
    assert [str(e) for e in info.value.errors] == [
        f"t.toml: refusing file owned by uid 12345 (must be root or uid {os.geteuid()})"
    ]


def test_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    _need_root()
    directory = tmp_path / "policies"
    directory.mkdir()
    os.chmod(directory, 0o755)
    write(directory, "web.toml", zone('services = ["http"]'))
    os.chown(directory, 12345, 12345)
    result = load_policy_dir(directory)
    assert result.policies == {}
    assert [str(e) for e in result.errors[str(directory)]] == [
        f"{directory}: refusing directory owned by uid 12345 (must be root or uid {os.geteuid()})"
    ]


# -- references to names firewalld must know ------------------------------------------------------

KNOWN = KnownNames(
    zones=frozenset({"public"}),
    policies=frozenset({"allow"}),
    services=frozenset({"http", "ssh"}),
    icmp_types=frozenset({"echo-request"}),
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (zone("", name="nosuch"), ["zone.nosuch: zone 'nosuch' does not exist in firewalld"]),
        ("[policy.nopol]\n", ["policy.nopol: policy 'nopol' does not exist in firewalld"]),
        (zone('services = ["http", "nosvc"]'), ["zone.public.services[1]: service 'nosvc' does not exist in firewalld"]),
        (
            zone('rich_rules = [\'rule service name="ssh" accept\', \'rule family="ipv4" service name="ftp" drop\']'),
            ["zone.public.rich_rules[1]: service 'ftp' does not exist in firewalld"],
        ),
        (
            zone('icmp_blocks = ["echo-request", "bogus-type"]'),
            ["zone.public.icmp_blocks[1]: icmp type 'bogus-type' does not exist in firewalld"],
        ),
        (
            zone("rich_rules = ['rule icmp-block name=\"bogus-type\"']"),
            ["zone.public.rich_rules[0]: icmp type 'bogus-type' does not exist in firewalld"],
        ),
        ('[policy.allow]\nservices = ["http"]\n[zone.public]\nicmp_blocks = ["echo-request"]\n', []),
    ],
    ids=["zone", "policy", "service", "rich-rule-service", "icmp-block", "rich-rule-icmp", "all-known"],
)
def test_check_references(tmp_path: Path, text: str, expected: list[str]) -> None:
    policy = load(tmp_path, text)
    assert [str(e) for e in check_references(policy, KNOWN)] == [f"t.toml: {e}" for e in expected]


def test_check_references_reports_every_unknown_name(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        '[zone.dmz]\nservices = ["smtp"]\nicmp_blocks = ["timestamp-request"]\n'
        'rich_rules = [\'rule family="ipv4" source address="10.0.0.0/8" service name="imap" accept\']\n'
        "[policy.out]\n",
    )
    errs = check_references(policy, KNOWN)
    assert all(e.file == "t.toml" for e in errs)
    assert sorted((e.key, e.message) for e in errs) == [
        ("policy.out", "policy 'out' does not exist in firewalld"),
        ("zone.dmz", "zone 'dmz' does not exist in firewalld"),
        ("zone.dmz.icmp_blocks[0]", "icmp type 'timestamp-request' does not exist in firewalld"),
        ("zone.dmz.rich_rules[0]", "service 'imap' does not exist in firewalld"),
        ("zone.dmz.services[0]", "service 'smtp' does not exist in firewalld"),
    ]


# -- nftables sections --------------------------------------------------------


def test_nft_sections_load(tmp_path: Path) -> None:
    from reconciler.model import NftChain, NftRule

    policy = load(
        tmp_path,
        """
[[nft.chain]]
family = "inet"
chain = "input"
hook = "input"
priority = -5
policy = "drop"

[[nft.chain]]
family = "ip"
chain = "helper"

[[nft.rule]]
family = "inet"
chain = "input"
rule = "  tcp dport { 80, 443 }   accept "
""",
    )
    assert policy.items == {
        NftChain("inet", "input", "filter", "input", -5, "drop"),
        NftChain("ip", "helper", "", "", 0, ""),
        NftRule("inet", "input", "tcp dport { 80, 443 } accept"),
    }


@pytest.mark.parametrize(
    "body,expected",
    [
        (
            '[[nft.chain]]\nfamily = "inet6"\nchain = "x"',
            'nft.chain[0].family: "inet6" is not one of ip|ip6|inet|arp|bridge|netdev',
        ),
        ('[[nft.chain]]\nfamily = "inet"', "nft.chain[0].chain: missing"),
        (
            '[[nft.chain]]\nfamily = "inet"\nchain = "x"\nhook = "ingress2"',
            'nft.chain[0].hook: "ingress2" is not a inet hook (prerouting|input|forward|output|postrouting)',
        ),
        (
            '[[nft.chain]]\nfamily = "inet"\nchain = "x"\npolicy = "drop"',
            "nft.chain[0].policy: only a base chain (one with a hook) has a type, priority or policy",
        ),
        (
            '[[nft.chain]]\nfamily = "inet"\nchain = "x"\nhook = "input"\ntype = "mangle"',
            'nft.chain[0].type: "mangle" is not one of filter|nat|route',
        ),
        (
            '[[nft.chain]]\nfamily = "inet"\nchain = "x"\nhook = "input"\npolicy = "reject"',
            'nft.chain[0].policy: "reject" is not accept|drop',
        ),
        (
            '[[nft.chain]]\nfamily = "inet"\nchain = "x"\nhook = "input"\npriority = "0"',
            "nft.chain[0].priority: expected an integer, got string",
        ),
        (
            '[[nft.chain]]\nfamily = "inet"\nchain = "x"\nhooks = "input"',
            "nft.chain[0].hooks: unknown key (expected one of: family, chain, type, hook, priority, policy)",
        ),
        (
            '[[nft.rule]]\nfamily = "inet"\nchain = "x"\nrule = "accept; flush ruleset"',
            "nft.rule[0].rule: rule text contains ';' (one rule per item)",
        ),
        (
            '[[nft.chain]]\nfamily = "inet"\nchain = "x"\nhook = "input"\npriority = 99999999999999999',
            "nft.chain[0].priority: 99999999999999999 is out of range (-2147483648 to 2147483647; the kernel keeps 32 bits)",
        ),
        (
            '[[nft.rule]]\nfamily = "inet"\nchain = "x"\nrule = "accept comment \\"x\\""',
            'nft.rule[0].rule: rule has its own comment; fwrecon needs the comment for its ownership tag "fwrecon:<hash>"',
        ),
        ('[[nft.rule]]\nfamily = "inet"\nchain = "x"\nrule = "   "', "nft.rule[0].rule: is empty"),
        (
            '[[nft.rule]]\nfamily = "inet"\nchain = "bad chain"\nrule = "accept"',
            "nft.rule[0].chain: \"bad chain\" is not a chain name (letters, digits, '_', '.', '-'; up to 64)",
        ),
        ("[nft]\nrules = []", "nft.rules: unknown key (expected one of: chain, rule, set)"),
    ],
)
def test_nft_section_errors(tmp_path: Path, body: str, expected: str) -> None:
    assert errors(tmp_path, body) == [f"t.toml: {expected}"]


def test_policy_cache_skips_parsing_unchanged_files_but_sees_every_change(tmp_path: Path) -> None:
    from reconciler.policydir import PolicyCache, load_policy_dir

    cache = PolicyCache()
    path = write(tmp_path, "web.toml", zone('ports = ["80/tcp"]'))
    first = load_policy_dir(tmp_path, cache).policies["web"]
    assert load_policy_dir(tmp_path, cache).policies["web"] is first  # not parsed again
    # same size, same second: a content change is still seen
    path.write_text(zone('ports = ["81/tcp"]'))
    second = load_policy_dir(tmp_path, cache).policies["web"]
    assert second is not first and "81" in str(second.items)
    # safety checks run on every read, cached or not
    path.chmod(0o666)
    assert "web" in load_policy_dir(tmp_path, cache).errors


@pytest.mark.parametrize("kind", ["nft", "ipset"])
def test_an_edited_file_reuses_the_elements_of_its_last_version(tmp_path: Path, kind: str) -> None:
    # The other 99,999 of 100,000 elements come back as the same objects (identity settles every later
    # comparison); the result is exactly what a fresh parse gives, keys included.
    from reconciler.policydir import PolicyCache, load_policy_dir

    def body(values: list[str]) -> str:
        listed = ", ".join(f'"{v}"' for v in values)
        if kind == "nft":
            return f'[[nft.set]]\nfamily = "inet"\nname = "s"\ntype = "ipv4_addr"\nflags = ["interval"]\nelements = [{listed}]\n'
        return f'[ipset.s]\ntype = "hash:net"\nentries = [{listed}]\n'

    def member(text: str) -> Item:
        return NftElement("inet", "s", text) if kind == "nft" else IpsetEntry("s", text)

    cache = PolicyCache()
    path = write(tmp_path, "bl.toml", body(["192.0.2.0/24", "198.51.100.0/25"]))
    first = load_policy_dir(tmp_path, cache).policies["bl"]
    path.write_text(body(["203.0.113.0/24", "198.51.100.0/25"]))
    second = load_policy_dir(tmp_path, cache).policies["bl"]
    fresh = load_policy_dir(tmp_path).policies["bl"]
    assert second.items == fresh.items and second.keys == fresh.keys
    kept = {i for i in second.items if i == member("198.51.100.0/25")}.pop()
    assert kept is {i for i in first.items if i == member("198.51.100.0/25")}.pop()
    new = {i for i in second.items if i == member("203.0.113.0/24")}.pop()
    assert second.key_of(kept).endswith("[1]") and second.key_of(new).endswith("[0]")
    # Another set of the same name under another type reuses nothing it should not: equal values only.
    path.write_text(body(["198.51.100.0/25"]).replace("ipv4_addr", "ipv6_addr").replace("hash:net", "hash:ip"))
    assert "bl" in load_policy_dir(tmp_path, cache).errors


# -- hostile files: one line naming the file, never a traceback ------------------------

HOSTILE_DEPTH = 100_000


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * HOSTILE_DEPTH + "]" * HOSTILE_DEPTH,
        "a = " + "{b = " * HOSTILE_DEPTH + "1" + "}" * HOSTILE_DEPTH,
        "a = " + "[{b = " * HOSTILE_DEPTH + "1" + "}]" * HOSTILE_DEPTH,
    ],
    ids=["arrays", "inline-tables", "mixed"],
)
def test_deeply_nested_file_is_one_error_and_its_neighbour_loads(tmp_path: Path, text: str) -> None:
    write(tmp_path, "nested.toml", text)
    write(tmp_path, "good.toml", zone('ports = ["8080/tcp"]'))
    result = load_policy_dir(tmp_path)
    assert result.policies["good"].items == frozenset({Port(PUBLIC, "8080", "tcp")})
    assert [str(e) for e in result.all_errors()] == [
        "nested.toml: nested too deeply: arrays and inline tables may nest about 200 levels deep (a policy needs three)"
    ]


def test_moderate_nesting_is_parsed_and_reported_as_a_type_error(tmp_path: Path) -> None:
    """Depth within tomllib's reach is ordinary input: a type error, not "nested too deeply"."""
    assert errors(tmp_path, "[zone.public]\nports = " + "[" * 50 + "]" * 50 + "\n") == [
        "t.toml: zone.public.ports[0]: expected a string, got array"
    ]


def test_integer_beyond_pythons_digit_limit_is_one_error(tmp_path: Path) -> None:
    assert errors(tmp_path, "description = " + "9" * 5000 + "\n") == [
        "t.toml: TOML syntax error: an integer has more than 4300 digits"
    ]


def test_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import reconciler.policy as policy_module
    import reconciler.policydir as policydir_module

    monkeypatch.setattr(policydir_module, "MAX_POLICY_FILE_BYTES", 64)
    write(tmp_path, "fits.toml", 'description = "' + "x" * 47 + '"\n')  # exactly 64 bytes
    write(tmp_path, "big.toml", 'description = "' + "x" * 48 + '"\n')  # 65
    monkeypatch.setattr(policy_module.tomllib, "loads", _refuse_if_called(policy_module.tomllib.loads, "big"))
    result = load_policy_dir(tmp_path)
    assert list(result.policies) == ["fits"]
    assert [str(e) for e in result.all_errors()] == [
        "big.toml: file is larger than 64 bytes, the limit for one policy file (65 bytes)"
    ]


def _refuse_if_called(real, marker: str):
    """tomllib.loads that fails the test when handed the text of the file that must not be read."""

    def loads(text: str, **kwargs):
        assert "x" * 48 not in text, f"the {marker} file was read and parsed"
        return real(text, **kwargs)

    return loads


def test_default_size_limit_leaves_room_for_large_address_lists() -> None:
    from reconciler.policydir import MAX_POLICY_FILE_BYTES

    assert MAX_POLICY_FILE_BYTES == 64 * 2**20


def test_size_limit_holds_while_reading_a_file_that_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stat says 0 bytes but reading yields more (like a file still being written): the read stops at the limit."""
    import reconciler.policydir as policydir_module

    source = Path("/proc/self/maps")
    if source.stat().st_size != 0 or len(source.read_bytes()) <= 128:
        pytest.skip("needs /proc/self/maps: a regular file that stat calls empty")
    monkeypatch.setattr(policydir_module, "MAX_POLICY_FILE_BYTES", 128)
    (tmp_path / "growing.toml").symlink_to(source)
    with pytest.raises(PolicyFileInvalid) as info:
        load_policy_file(tmp_path / "growing.toml")
    assert [str(e) for e in info.value.errors] == ["growing.toml: file is larger than 128 bytes, the limit for one policy file"]


def test_bug_in_validation_is_one_internal_error_line_with_a_logged_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from structlog.testing import capture_logs

    import reconciler.policy as policy_module

    real_parse = policy_module._PolicyParser.parse

    def parse(self, name, data):  # a stand-in for any bug, on one file only
        if name == "buggy":
            raise KeyError("boom\nsecond line")
        return real_parse(self, name, data)

    monkeypatch.setattr(policy_module._PolicyParser, "parse", parse)
    write(tmp_path, "buggy.toml", zone('ports = ["80/tcp"]'))
    write(tmp_path, "good.toml", zone('ports = ["8080/tcp"]'))
    with capture_logs() as logs:
        result = load_policy_dir(tmp_path)
    assert list(result.policies) == ["good"]
    assert [str(e) for e in result.all_errors()] == [
        "buggy.toml: internal error while validating this file (KeyError: 'boom\\nsecond line'); please report it with the log"
    ]
    [entry] = [e for e in logs if e["event"] == "policy_internal_error"]
    assert entry["log_level"] == "error" and entry["file"] == "buggy.toml" and entry["error_type"] == "KeyError"
    assert isinstance(entry["exc_info"], KeyError) and entry["exc_info"].__traceback__ is not None


@pytest.mark.parametrize(
    ("exception", "expected"),
    [
        (MemoryError(), "t.toml: out of memory while reading this file"),
        (
            RecursionError("maximum recursion depth exceeded"),
            "t.toml: nested too deeply: arrays and inline tables may nest about 200 levels deep (a policy needs three)",
        ),
        (
            TypeError("unhashable type: 'list'"),
            "t.toml: internal error while validating this file (TypeError: unhashable type: 'list'); please report it with the log",
        ),
    ],
    ids=["memory", "recursion", "type"],
)
def test_any_failure_in_validation_is_policy_file_invalid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exception: BaseException, expected: str
) -> None:
    import reconciler.policy as policy_module

    def parse(self, name, data):
        raise exception

    monkeypatch.setattr(policy_module._PolicyParser, "parse", parse)
    assert errors(tmp_path, zone('ports = ["80/tcp"]')) == [expected]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "t.toml",
            '"a\\nb" = 1\n',
            "t.toml: a\\nb: unknown key (expected one of: description, zone, policy, direct, nft, ipset)",
        ),
        (
            "t.toml",
            '[zone."x\\u2028y"]\n',
            "t.toml: zone.x\\u2028y: zone name 'x\\u2028y' may only hold letters, digits, '_' and '-'",
        ),
        ("x\ny.toml", "", "x\\ny.toml: policy name 'x\\ny' (the file stem) may only hold letters, digits, '_', '.', '-'"),
    ],
    ids=["key", "scope-name", "file-name"],
)
def test_every_error_stays_on_one_line(tmp_path: Path, name: str, text: str, expected: str) -> None:
    """A quoted key or a file name may hold a line break; the report must not (one line per error)."""
    write(tmp_path, name, text)
    result = load_policy_dir(tmp_path)
    assert [str(e) for e in result.all_errors()] == [expected]
