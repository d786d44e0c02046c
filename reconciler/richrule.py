"""Parse firewalld rich-language rules and produce firewalld's canonical text.

Why this module exists: fwrecon decides whether a rich rule must be added or
removed by comparing the rule written in a policy file with the rules
firewalld reports back.  firewalld re-prints every rule it stores in its own
canonical form (attribute values double-quoted, elements in a fixed order,
``not`` spelled ``NOT``, limit units shortened, ...).  Unless both sides are
compared in that exact form the daemon would see a difference on every pass
and churn forever.  This module reproduces, byte for byte, the text that
firewalld 1.3.3 prints for a rule, and rejects offline everything firewalld's
own parser and ``check()`` would reject, so a bad rule is reported with a
short message instead of failing half-way through a D-Bus transaction.

It is an independent implementation written against firewalld's documented
language (firewalld.richlanguage(5)) and its observed behaviour; it needs only
the standard library.  Checks that need a running firewalld (does the named
service, icmp type or ipset exist?) are left to the caller, which is why the
referenced names are returned.

A few inputs that firewalld 1.3.3 accepts only by silently discarding or
moving part of the text are rejected here on purpose (see ``_DELIBERATE``
notes): an attribute or limit repeated with a different value (firewalld keeps
the last), a ``limit`` directly under ``rule`` (firewalld hands it to the next
log/action or drops it unchecked), ``tcp-mss-clamp`` after another element (it
replaces it), the literal word ``EOL`` (firewalld's internal end marker: text
after it is ignored), and the empty string (firewalld's constructor skips
parsing and yields a bare "rule").
"""

from __future__ import annotations

import shlex
import socket
import string
from dataclasses import dataclass, field

from .ports import PORT_PROTOCOLS

__all__ = ["ParsedRichRule", "RichRuleError", "canonical_rich_rule", "parse_rich_rule"]


class RichRuleError(ValueError):
    """Raised with a short human message, e.g. 'unknown element "servce"' or 'missing action'."""


@dataclass(frozen=True)
class ParsedRichRule:
    """A validated rich rule and the facts a caller may want to check."""

    family: str | None
    canonical: str
    services: tuple[str, ...] = ()
    icmp_types: tuple[str, ...] = ()
    ipsets: tuple[str, ...] = ()
    priority: int = 0
    element: str | None = None  # "service", "port", ..., or None
    action: str | None = None  # "accept" | "reject" | "drop" | "mark" | None


# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

PRIORITY_MIN = -32768
PRIORITY_MAX = 32767
FAMILIES = ("ipv4", "ipv6")
LOG_LEVELS = ("emerg", "alert", "crit", "error", "warning", "notice", "info", "debug")
LOG_PREFIX_MAX = 127
IPSET_NAME_MAX = 32
TCP_MSS_MIN = 536
REJECT_TYPES: dict[str, tuple[str, ...]] = {
    "ipv4": (
        "icmp-host-prohibited",
        "host-prohib",
        "icmp-net-unreachable",
        "net-unreach",
        "icmp-host-unreachable",
        "host-unreach",
        "icmp-port-unreachable",
        "port-unreach",
        "icmp-proto-unreachable",
        "proto-unreach",
        "icmp-net-prohibited",
        "net-prohib",
        "tcp-reset",
        "tcp-rst",
        "icmp-admin-prohibited",
        "admin-prohib",
    ),
    "ipv6": (
        "icmp6-adm-prohibited",
        "adm-prohibited",
        "icmp6-no-route",
        "no-route",
        "icmp6-addr-unreachable",
        "addr-unreach",
        "icmp6-port-unreachable",
        "port-unreach",
        "tcp-reset",
    ),
}
LIMIT_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LIMIT_LONG_UNITS = ("second", "minute", "hour", "day")

# Elements that fill the single "element" slot of a rule.
MATCH_ELEMENTS = (
    "service",
    "port",
    "protocol",
    "icmp-block",
    "icmp-type",
    "masquerade",
    "forward-port",
    "source-port",
    "tcp-mss-clamp",
)
LOG_ELEMENTS = ("log", "nflog")
ACTIONS = ("accept", "reject", "drop", "mark")
# Elements that do not need a log, audit or action next to them.
SELF_ACTING = ("icmp-block", "forward-port", "masquerade", "tcp-mss-clamp")

KNOWN_WORDS = frozenset(
    ("rule", "source", "destination", "not", "NOT", "limit", "audit", *MATCH_ELEMENTS, *LOG_ELEMENTS, *ACTIONS)
)
KNOWN_ATTRS = frozenset(
    (
        "priority",
        "family",
        "address",
        "mac",
        "ipset",
        "invert",
        "value",
        "port",
        "protocol",
        "to-port",
        "to-addr",
        "name",
        "group",
        "prefix",
        "level",
        "queue-size",
        "type",
        "set",
    )
)

# Attributes each element may carry (any number, in any order), whether it
# takes `not` and whether it takes a trailing `limit value=...`.
ELEMENT_ATTRS: dict[str, tuple[str, ...]] = {
    "source": ("address", "mac", "ipset", "invert"),
    "destination": ("address", "ipset", "invert"),
    "port": ("port", "protocol"),
    "source-port": ("port", "protocol"),
    "forward-port": ("port", "protocol", "to-port", "to-addr"),
    "tcp-mss-clamp": ("value",),
    "masquerade": (),
    "log": ("prefix", "level"),
    "nflog": ("group", "prefix", "queue-size"),
    "audit": (),
    "accept": (),
    "drop": (),
    "reject": ("type",),
    "mark": ("set",),
}
TAKES_NOT = ("source", "destination")
TAKES_LIMIT = ("log", "nflog", "audit", *ACTIONS)
# Elements made of exactly one mandatory attribute.
SINGLE_ATTR: dict[str, str] = {
    "service": "name",
    "protocol": "value",
    "icmp-block": "name",
    "icmp-type": "name",
}

_PORT_PROTOCOLS_TEXT = f"{', '.join(PORT_PROTOCOLS[:-1])} or {PORT_PROTOCOLS[-1]}"  # "tcp, udp, sctp or dccp"

# firewalld drops C0 and C1 control characters before parsing.
_CONTROL_CHARS = {c: None for c in range(160) if c < 32 or c >= 127}


# --------------------------------------------------------------------------
# Lexing
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    """Either a bare word (``word`` set) or an attribute (``key``/``value`` set)."""

    word: str | None = None
    key: str | None = None
    value: str | None = None


def _tokenize(text: str) -> list[_Token]:
    """Split shell-style (both quote kinds, backslash escapes) into tokens."""
    cleaned = text.translate(_CONTROL_CHARS)
    try:
        pieces = shlex.split(cleaned)
    except ValueError as exc:
        raise RichRuleError(f"cannot split rule: {str(exc).lower()}") from None
    tokens = [_make_token(piece) for piece in pieces]
    if not tokens:
        raise RichRuleError("empty rule")
    return tokens


def _make_token(piece: str) -> _Token:
    if "=" not in piece:
        if piece not in KNOWN_WORDS:
            raise RichRuleError(f'unknown element "{piece}"')
        return _Token(word=piece)
    key, _, value = piece.partition("=")
    if not key or not value or "=" in value:
        raise RichRuleError(f'malformed attribute "{piece}" (values cannot be empty or contain "=")')
    if key not in KNOWN_ATTRS:
        raise RichRuleError(f'unknown attribute "{key}"')
    return _Token(key=key, value=value)


# --------------------------------------------------------------------------
# Syntax tree
# --------------------------------------------------------------------------


@dataclass
class _Part:
    """One element of a rule: its keyword, attributes and options."""

    kind: str
    attrs: dict[str, str] = field(default_factory=dict)
    limit: str | None = None

    def get(self, key: str) -> str | None:
        return self.attrs.get(key)


@dataclass
class _Rule:
    family: str | None = None
    priority: int = 0
    source: _Part | None = None
    destination: _Part | None = None
    element: _Part | None = None
    log: _Part | None = None
    audit: _Part | None = None
    action: _Part | None = None
    seen_rule_attrs: set[str] = field(default_factory=set)


class _Parser:
    """Recursive-descent parser over the token list."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.rule = _Rule()

    # -- token access ------------------------------------------------------

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    # -- grammar -----------------------------------------------------------

    def parse(self) -> _Rule:
        first = self.take()
        if first.word != "rule":
            raise RichRuleError(_outside_rule_message(first))
        while self.peek() is not None:
            token = self.take()
            if token.key is not None:
                self.rule_attribute(token)
            else:
                self.rule_element(token.word or "")
        return self.rule

    def rule_attribute(self, token: _Token) -> None:
        key, value = token.key or "", token.value or ""
        if key not in ("family", "priority"):
            if key == "protocol":
                raise RichRuleError('misplaced "protocol": use "protocol value=..." or "port ... protocol=..."')
            raise RichRuleError(f'attribute "{key}" outside of any element')
        parsed: str | int = _parse_family(value) if key == "family" else _parse_priority(value)
        previous = self.rule.family if key == "family" else self.rule.priority
        if key in self.rule.seen_rule_attrs and previous != parsed:
            # _DELIBERATE: firewalld silently keeps the last value.
            raise RichRuleError(f'conflicting values for "{key}"')
        self.rule.seen_rule_attrs.add(key)
        if key == "family":
            self.rule.family = str(parsed)
        else:
            self.rule.priority = int(parsed)

    def rule_element(self, word: str) -> None:
        if word in ("rule", "not", "NOT", "limit"):
            raise RichRuleError(_misplaced_word_message(word))
        part = self.element_body(word)
        self.store(part)

    def store(self, part: _Part) -> None:
        rule = self.rule
        kind = part.kind
        if kind == "source":
            _require_empty(rule.source, "more than one source")
            rule.source = part
        elif kind == "destination":
            _require_empty(rule.destination, "more than one destination")
            rule.destination = part
        elif kind in MATCH_ELEMENTS:
            if rule.element is not None:
                raise RichRuleError(f'more than one element: "{rule.element.kind}" and "{kind}"')
            rule.element = part
        elif kind in LOG_ELEMENTS:
            _require_empty(rule.log, "more than one log element")
            rule.log = part
        elif kind == "audit":
            _require_empty(rule.audit, "more than one audit element")
            rule.audit = part
        else:
            if rule.action is not None:
                raise RichRuleError(f'more than one action: "{rule.action.kind}" and "{kind}"')
            rule.action = part

    def element_body(self, kind: str) -> _Part:
        if kind in SINGLE_ATTR:
            return self.single_attr_body(kind, SINGLE_ATTR[kind])
        part = _Part(kind)
        allowed = ELEMENT_ATTRS[kind]
        while (token := self.peek()) is not None:
            if token.key in allowed:
                self.take()
                _set_once(part, token.key or "", token.value or "")
            elif token.word in ("not", "NOT") and kind in TAKES_NOT:
                self.take()
                _set_once(part, "invert", "yes")
            elif token.word == "limit" and kind in TAKES_LIMIT:
                self.take()
                self.limit_body(part)
            else:
                break
        return part

    def single_attr_body(self, kind: str, key: str) -> _Part:
        token = self.peek()
        if token is None or token.key != key:
            raise RichRuleError(f'"{kind}" needs {key}=...')
        self.take()
        return _Part(kind, {key: token.value or ""})

    def limit_body(self, part: _Part) -> None:
        token = self.peek()
        if token is None or token.key != "value":
            raise RichRuleError('"limit" needs value=...')
        self.take()
        limit = _normalise_limit(token.value or "")
        if part.limit is not None and part.limit != limit:
            # _DELIBERATE: firewalld silently keeps the last limit.
            raise RichRuleError(f'conflicting limits in "{part.kind}"')
        part.limit = limit


def _outside_rule_message(token: _Token) -> str:
    if token.key in ("family", "priority"):
        return f'"{token.key}" outside of rule: use "rule {token.key}=..."'
    if token.key is not None:
        return f'attribute "{token.key}" outside of any element'
    return f'rule must start with "rule", not "{token.word}"'


def _misplaced_word_message(word: str) -> str:
    if word == "rule":
        return '"rule" given twice'
    if word == "limit":
        return '"limit" must follow log, nflog, audit or an action'  # _DELIBERATE
    return f'"{word}" must follow source or destination'


def _require_empty(slot: _Part | None, message: str) -> None:
    if slot is not None:
        raise RichRuleError(message)


def _set_once(part: _Part, key: str, value: str) -> None:
    """Store an attribute; repeating it is fine only if nothing would be lost.

    _DELIBERATE: firewalld silently keeps the last of conflicting values.
    Any value of ``invert`` (and ``not``) means the same thing: inverted.
    """
    previous = part.attrs.get(key)
    if previous is not None and previous != value and key != "invert":
        raise RichRuleError(f'conflicting values for "{key}" in "{part.kind}"')
    part.attrs.setdefault(key, value)


def _parse_family(value: str) -> str:
    if value not in FAMILIES:
        raise RichRuleError(f'invalid family "{value}": use ipv4 or ipv6')
    return value


def _parse_priority(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise RichRuleError(f'invalid priority "{value}"') from None


def _normalise_limit(value: str) -> str:
    """firewalld shortens 'second', 'minute', 'hour', 'day' to their initial."""
    pieces = value.split("/")
    if len(pieces) == 2 and pieces[1] in LIMIT_LONG_UNITS:
        return f"{pieces[0]}/{pieces[1][0]}"
    return value


# --------------------------------------------------------------------------
# Value checks (firewalld's offline semantics)
# --------------------------------------------------------------------------


def _parse_int(text: str, base: int = 10) -> int | None:
    try:
        return int(text, base)
    except ValueError:
        return None


def _is_uint(text: str, bits: int) -> bool:
    """Unsigned integer in C-like notation (0x.., 0o.., 0b..), as firewalld reads it."""
    number = _parse_int(text, 0)
    return number is not None and 0 <= number < (1 << bits)


def _inet_ok(family: int, text: str) -> bool:
    try:
        socket.inet_pton(family, text)
    except (OSError, ValueError):
        return False
    return True


def _single_address_ok(family: str | None, text: str) -> bool:
    if family == "ipv4":
        return _inet_ok(socket.AF_INET, text)
    if family == "ipv6":
        return _inet_ok(socket.AF_INET6, text.strip("[]"))
    return False


def _address_ok(family: str | None, text: str) -> bool:
    """Address with an optional /prefix (IPv4 also accepts a dotted netmask)."""
    address, slash, mask = text.partition("/")
    if slash and (not address or not mask):
        return False
    if not _single_address_ok(family, address):
        return False
    if not slash:
        return True
    if family == "ipv4" and "." in mask:
        return _inet_ok(socket.AF_INET, mask)
    bits = _parse_int(mask)
    limit = 32 if family == "ipv4" else 128
    return bits is not None and 0 <= bits <= limit


def _mac_ok(text: str) -> bool:
    if len(text) != 17:
        return False
    for index, char in enumerate(text):
        expected_colon = index % 3 == 2
        if expected_colon != (char == ":") or (not expected_colon and char not in string.hexdigits):
            return False
    return True


def _port_number(text: str) -> int | None:
    """A port given by number or /etc/services name; None if unknown or > 65535."""
    text = text.strip() if text else text
    number = _parse_int(text)
    if number is None:
        try:
            number = socket.getservbyname(text)
        except (OSError, UnicodeError, ValueError):
            return None
    if number > 65535 or number < 0:
        return None
    return number


def _port_ok(text: str | None) -> bool:
    """A port or a range "a-b"; names may contain '-' so every split is tried.

    The spec is ambiguous only when more than one split resolves, which is
    then rejected (as firewalld does).
    """
    if text is None:
        return False
    if text.isdigit():
        return _port_number(text) is not None
    pieces = text.split("-")
    if len(pieces) == 2 and pieces[0].isdigit() and pieces[1].isdigit():
        low, high = _port_number(pieces[0]), _port_number(pieces[1])
        if low is not None and high is not None:
            return True
    return _count_port_splits(pieces) == 1


def _count_port_splits(pieces: list[str]) -> int:
    matches = 0
    for cut in range(len(pieces), 0, -1):
        first = _port_number("-".join(pieces[:cut]))
        rest = "-".join(pieces[cut:])
        if rest:
            if first is not None and _port_number(rest) is not None:
                matches += 1
        elif first is not None:
            matches += 1
            if cut == len(pieces):
                break
    return matches


def _protocol_ok(text: str) -> bool:
    number = _parse_int(text)
    if number is not None:
        return 0 <= number <= 255
    try:
        socket.getprotobyname(text)
    except (OSError, UnicodeError, ValueError):
        return False
    return True


def _tcp_mss_ok(text: str) -> bool:
    if text.isdigit():
        number = _parse_int(text)
        return number is not None and number >= TCP_MSS_MIN
    return text in ("None", "pmtu")


def _check_limit(value: str) -> None:
    pieces = value.split("/")
    if len(pieces) != 2:
        raise RichRuleError(f'invalid limit "{value}": use rate/s|m|h|d')
    rate, unit = _parse_int(pieces[0]), pieces[1]
    if rate is None or rate < 1 or unit not in LIMIT_UNITS:
        raise RichRuleError(f'invalid limit "{value}": use rate/s|m|h|d')
    if 10000 * LIMIT_UNITS[unit] / rate == 0:
        raise RichRuleError(f'limit "{value}" too fast')
    if rate == 1 and unit == "d":
        raise RichRuleError(f'limit "{value}" too slow')


# --------------------------------------------------------------------------
# Rule checks
# --------------------------------------------------------------------------


def _kind(part: _Part | None) -> str | None:
    return part.kind if part is not None else None


def _check_rule(rule: _Rule) -> None:
    _check_family_needed(rule)
    if not PRIORITY_MIN <= rule.priority <= PRIORITY_MAX:
        raise RichRuleError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
    _check_combination(rule)
    if rule.source is not None:
        _check_source(rule.source, rule.family)
    if rule.destination is not None:
        _check_destination(rule.destination, rule.family)
    if rule.element is not None:
        _check_element(rule.element, rule)
    if rule.log is not None:
        _check_log(rule.log)
    if rule.audit is not None:
        _check_audit(rule.audit, rule.action)
    if rule.action is not None:
        _check_action(rule.action, rule.family)


def _check_family_needed(rule: _Rule) -> None:
    if rule.family is not None:
        return
    if rule.source is not None and rule.source.get("address") is not None:
        raise RichRuleError("source address needs rule family")
    if rule.destination is not None:
        raise RichRuleError("destination needs rule family")
    if _kind(rule.element) == "forward-port":
        raise RichRuleError("forward-port needs rule family")


def _check_combination(rule: _Rule) -> None:
    """Which of element / log / audit / action must be present together."""
    no_element = rule.element is None
    if no_element and (rule.log is None or rule.priority == 0):
        if rule.action is None:
            raise RichRuleError("missing element or action")
        if rule.source is None and rule.destination is None and rule.priority == 0:
            raise RichRuleError("missing element, source or destination")
    if _kind(rule.element) not in SELF_ACTING and rule.log is None and rule.audit is None and rule.action is None:
        raise RichRuleError("missing action")
    kind = _kind(rule.element)
    if kind in ("masquerade", "icmp-block", "forward-port", "tcp-mss-clamp") and rule.action:
        raise RichRuleError(f'"{kind}" cannot have an action')
    if kind == "masquerade" and rule.source is not None and rule.source.get("mac"):
        raise RichRuleError('"masquerade" cannot have a mac source')


def _check_source(part: _Part, family: str | None) -> None:
    address, mac, ipset = part.get("address"), part.get("mac"), part.get("ipset")
    _check_one_target(part, "address", "mac", "ipset")
    if address is not None and not _address_ok(family, address):
        raise RichRuleError(f'invalid {family} source address "{address}"')
    if mac is not None and not _mac_ok(mac.upper()):
        raise RichRuleError(f'invalid mac "{mac}"')
    if ipset is not None and len(ipset) > IPSET_NAME_MAX:
        raise RichRuleError(f'ipset name "{ipset}" too long')


def _check_destination(part: _Part, family: str | None) -> None:
    address, ipset = part.get("address"), part.get("ipset")
    _check_one_target(part, "address", "ipset")
    if address is not None and not _address_ok(family, address):
        raise RichRuleError(f'invalid {family} destination address "{address}"')
    if ipset is not None and len(ipset) > IPSET_NAME_MAX:
        raise RichRuleError(f'ipset name "{ipset}" too long')


def _check_one_target(part: _Part, *keys: str) -> None:
    given = [key for key in keys if part.get(key) is not None]
    if not given:
        raise RichRuleError(f'"{part.kind}" needs {" or ".join(keys)}')
    if len(given) > 1:
        raise RichRuleError(f'"{part.kind}" takes only one of {", ".join(given)}')


def _check_element(part: _Part, rule: _Rule) -> None:
    kind = part.kind
    if kind in ("port", "source-port", "forward-port"):
        _check_port_and_protocol(part)
    if kind == "forward-port":
        _check_forward_target(part, rule.family)
    elif kind == "protocol" and not _protocol_ok(part.attrs["value"]):
        raise RichRuleError(f'invalid protocol "{part.attrs["value"]}"')
    elif kind == "tcp-mss-clamp":
        value = part.get("value")
        if value and not _tcp_mss_ok(value):
            raise RichRuleError(f'invalid tcp-mss-clamp value "{value}"')


def _check_port_and_protocol(part: _Part) -> None:
    port, protocol = part.get("port"), part.get("protocol")
    if not _port_ok(port):
        raise RichRuleError(f'"{part.kind}" has invalid or missing port "{port or ""}"')
    if protocol not in PORT_PROTOCOLS:
        raise RichRuleError(f'"{part.kind}" needs protocol {_PORT_PROTOCOLS_TEXT}, not "{protocol or ""}"')


def _check_forward_target(part: _Part, family: str | None) -> None:
    to_port, to_addr = part.get("to-port"), part.get("to-addr")
    if to_port is None and to_addr is None:
        raise RichRuleError('"forward-port" needs to-port or to-addr')
    if to_port is not None and not _port_ok(to_port):
        raise RichRuleError(f'invalid to-port "{to_port}"')
    if to_addr is not None and not _single_address_ok(family, to_addr):
        raise RichRuleError(f'invalid {family} to-addr "{to_addr}"')


def _check_log(part: _Part) -> None:
    prefix, level = part.get("prefix"), part.get("level")
    if prefix is not None and len(prefix) > LOG_PREFIX_MAX:
        raise RichRuleError(f"log prefix longer than {LOG_PREFIX_MAX} characters")
    if level is not None and level not in LOG_LEVELS:
        raise RichRuleError(f'invalid log level "{level}"')
    for key in ("group", "queue-size"):
        value = part.get(key)
        if value is not None and not _is_uint(value, 16):
            raise RichRuleError(f'nflog {key} must be an integer 0..65535, not "{value}"')
    if part.limit is not None:
        _check_limit(part.limit)


def _check_audit(part: _Part, action: _Part | None) -> None:
    if _kind(action) not in ("accept", "reject", "drop"):
        raise RichRuleError('"audit" needs action accept, reject or drop')
    if part.limit is not None:
        _check_limit(part.limit)


def _check_action(part: _Part, family: str | None) -> None:
    if part.kind == "reject" and part.get("type") is not None:
        _check_reject_type(part.attrs["type"], family)
    if part.kind == "mark":
        _check_mark(part.get("set"))
    if part.limit is not None:
        _check_limit(part.limit)


def _check_reject_type(reject_type: str, family: str | None) -> None:
    if family is None:
        raise RichRuleError("reject type needs rule family")
    if reject_type not in REJECT_TYPES[family]:
        raise RichRuleError(f'invalid {family} reject type "{reject_type}"')


def _check_mark(value: str | None) -> None:
    if value is None:
        raise RichRuleError('"mark" needs set=...')
    pieces = value.split("/") if "/" in value else [value]
    if len(pieces) > 2 or not all(_is_uint(piece, 32) for piece in pieces):
        raise RichRuleError(f'invalid mark "{value}": use value[/mask], 32-bit integers')


# --------------------------------------------------------------------------
# Canonical text
# --------------------------------------------------------------------------


def _quoted(key: str, value: str | None) -> str:
    return f' {key}="{value}"' if value else ""


def _limit_text(part: _Part) -> str:
    return f' limit value="{part.limit}"' if part.limit else ""


def _render_address(part: _Part, keys: tuple[str, ...]) -> str:
    head = part.kind + (" NOT" if part.get("invert") else "")
    for key in keys:
        value = part.get(key)
        if value is not None:
            shown = value.upper() if key == "mac" else value
            return f'{head} {key}="{shown}"'
    raise AssertionError("checked before rendering")


def _render_element(part: _Part) -> str:
    kind = part.kind
    if kind in SINGLE_ATTR:
        key = SINGLE_ATTR[kind]
        return f'{kind} {key}="{part.attrs[key]}"'
    if kind in ("port", "source-port"):
        return f'{kind} port="{part.get("port")}" protocol="{part.get("protocol")}"'
    if kind == "forward-port":
        return (
            f'forward-port port="{part.get("port")}" protocol="{part.get("protocol")}"'
            + _quoted("to-port", part.get("to-port"))
            + _quoted("to-addr", part.get("to-addr"))
        )
    if kind == "tcp-mss-clamp":
        return "tcp-mss-clamp" + _quoted("value", part.get("value"))
    return kind  # masquerade


def _render_log(part: _Part) -> str:
    keys = ("prefix", "level") if part.kind == "log" else ("group", "prefix", "queue-size")
    return part.kind + "".join(_quoted(key, part.get(key)) for key in keys) + _limit_text(part)


def _render_action(part: _Part) -> str:
    if part.kind == "mark":
        return f"mark set={part.get('set')}" + _limit_text(part)
    return part.kind + _quoted("type", part.get("type")) + _limit_text(part)


def _render(rule: _Rule) -> str:
    words = ["rule"]
    if rule.priority:
        words.append(f'priority="{rule.priority}"')
    if rule.family:
        words.append(f'family="{rule.family}"')
    if rule.source is not None:
        words.append(_render_address(rule.source, ("address", "mac", "ipset")))
    if rule.destination is not None:
        words.append(_render_address(rule.destination, ("address", "ipset")))
    if rule.element is not None:
        words.append(_render_element(rule.element))
    if rule.log is not None:
        words.append(_render_log(rule.log))
    if rule.audit is not None:
        words.append("audit" + _limit_text(rule.audit))
    if rule.action is not None:
        words.append(_render_action(rule.action))
    return " ".join(words)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def _referenced(rule: _Rule, kinds: tuple[str, ...], key: str) -> tuple[str, ...]:
    element = rule.element
    if element is not None and element.kind in kinds:
        return (element.attrs[key],)
    return ()


def _ipsets(rule: _Rule) -> tuple[str, ...]:
    parts = (rule.source, rule.destination)
    return tuple(part.attrs["ipset"] for part in parts if part is not None and "ipset" in part.attrs)


def parse_rich_rule(text: str) -> ParsedRichRule:
    """Parse and check one rich rule; raise RichRuleError if firewalld would refuse it."""
    if not isinstance(text, str):
        raise RichRuleError("rule must be a string")
    rule = _Parser(_tokenize(text)).parse()
    _check_rule(rule)
    return ParsedRichRule(
        family=rule.family,
        canonical=_render(rule),
        services=_referenced(rule, ("service",), "name"),
        icmp_types=_referenced(rule, ("icmp-block", "icmp-type"), "name"),
        ipsets=_ipsets(rule),
        priority=rule.priority,
        element=_kind(rule.element),
        action=_kind(rule.action),
    )


def canonical_rich_rule(text: str) -> str:
    """The text firewalld 1.3.3 stores and prints for this rule."""
    return parse_rich_rule(text).canonical
