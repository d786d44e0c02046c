"""Firewall items: immutable, hashable, one canonical form each.

Every piece of firewall state fwrecon manages is one `Item`.  Because items
are frozen dataclasses holding only canonical strings, the difference between
desired and actual state is plain set arithmetic, and the same item read back
from firewalld compares equal to the one parsed from a policy file.

Items are grouped into *containers* (a firewalld zone, a firewalld policy, a
direct table): observing reads one container at a time.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import operator
import re
from collections.abc import Callable
from dataclasses import Field, dataclass, fields
from json.encoder import encode_basestring_ascii as _quote  # json.dumps' own (C) quoting
from typing import Any, ClassVar, Literal, NamedTuple, ParamSpec, TypeVar, cast

ScopeKind = Literal["zone", "policy"]


@dataclass(frozen=True, order=True)
class Scope:
    """A firewalld zone or firewalld policy object that holds items."""

    kind: ScopeKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, order=True)
class Item:
    """Base of all items.  `kind` names the item type in state and output.

    Not an ABC: isinstance on an ABC costs a Python-level ``__instancecheck__``,
    and a reconcile of 100,000 set elements makes millions of those checks.
    """

    kind: ClassVar[str] = "item"
    # Lower numbers are added first and removed last (chains before rules).
    layer: ClassVar[int] = 1
    # The cached hash: declared without a value, so reading it raises
    # AttributeError until `__hash__` stores it in the instance's __dict__.
    _hash: ClassVar[int]

    def container(self) -> tuple[str, ...]:
        """The unit that one observe call reads (zone, policy, direct)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Human text, e.g. ``zone public port 8080/tcp``."""
        raise NotImplementedError

    def sort_key(self) -> tuple[Any, ...]:
        """Total order across kinds, so plans and output are deterministic.

        Within a layer, zone and policy items come before direct rules: each
        firewalld nftables call gets slower as the iptables-nft ruleset grows
        (measured: 1000 ports + rules take ~25% longer with rules first).
        """
        quick = _QUICK_SORT_KEYS.get(type(self))
        return _memo(self, "_sort_key", _sort_key) if quick is None else quick(self)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for name, to_plain in _to_plain(type(self)):
            value = getattr(self, name)
            data[name] = value if to_plain is None else to_plain(value)
        return data

    def json_text(self) -> str:
        """`to_json` as compact JSON text, computed once (the state file holds thousands)."""
        return _memo(self, "_json_text", _json_text)

    @staticmethod
    def from_json(data: Any) -> Item:
        """Inverse of `to_json`; raises ValueError on anything malformed.

        Strict, never coercing: the state file decides what fwrecon may
        remove, so ``123`` is not the string ``"123"``, ``"abc"`` is not
        ``["a", "b", "c"]`` and ``"5"`` is not the priority 5; a missing or
        unknown field is an error too.
        """
        try:
            if type(data) is not dict:
                raise ValueError(f"expected an object, got {json_type_name(data)}")
            kind = data.get("kind")
            if type(kind) is not str or kind not in ITEM_KINDS:
                raise ValueError(f"unknown kind {_short(kind)}")
            cls = ITEM_KINDS[kind]
            converters = _converters(cls)
            unknown = data.keys() - {"kind"} - {name for name, _ in converters}
            if unknown:
                raise ValueError(f"unknown field {_short(sorted(unknown)[0])}")
            values = {}
            for name, convert in converters:
                if name not in data:
                    raise ValueError(f"missing field {name!r}")
                try:
                    values[name] = convert(data[name])
                except ValueError as exc:
                    raise ValueError(f"field {name!r}: {exc}") from None
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"malformed item {_short(data)}: {exc}") from exc

    def tag(self) -> str:
        """A short, stable ownership tag for backends that can label rules.

        A hash of the canonical item, not the policy name: an item shared by
        two policies is one rule in the firewall, and the state file says
        which policies want it.
        """
        return _memo(self, "_tag", _tag)

    def __hash__(self) -> int:
        # Items are hashed millions of times per large reconcile (sets, dicts,
        # caches); a frozen item's hash never changes, so compute it once.
        # (Inlined rather than through _memo: this is the hottest call.)
        try:
            return self._hash  # (an instance attribute once computed; see the class)
        except AttributeError:
            cached: int = _field_hash(self)
            self.__dict__["_hash"] = cached
            return cached

    def __getstate__(self) -> dict[str, Any]:
        # str hashes differ between processes: a copy carries no cached values.
        return {name: getattr(self, name) for name in _field_names(type(self))}


_T = TypeVar("_T")
_P = ParamSpec("_P")


def _cached(compute: Callable[_P, _T]) -> Callable[_P, _T]:
    """`functools.cache`, keeping the signature: mypy cannot see an item class
    (whose instances hash by value) as the Hashable argument the cache wants."""
    return cast("Callable[_P, _T]", functools.cache(compute))


# Derived values are kept in the instance's __dict__ (a frozen dataclass only
# forbids attribute assignment): they never count in eq, repr or fields.
def _memo(item: Item, name: str, compute: Callable[[Item], _T]) -> _T:
    cached: _T | None = item.__dict__.get(name)  # (a miss via KeyError would cost more than the work)
    if cached is None:
        cached = item.__dict__[name] = compute(item)
    return cached


@_cached
def _field_names(cls: type[Item]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _field_hash(item: Item) -> int:
    # The kind too: a `Permanent` copy must not collide with the item it wraps.
    return hash((item.kind, _field_values(type(item))(item)))


@_cached
def _field_values(cls: type[Item]) -> Callable[[Any], Any]:
    """The fields' values in one C call (a tuple; the value itself for one field)."""
    return operator.attrgetter(*_field_names(cls))


def _sort_key(item: Item) -> tuple[Any, ...]:
    container = item.container()
    permanent = container[0] == PERMANENT  # after the runtime items: firewalld names a bad item there first
    # The JSON text starts with the kind and orders items of one kind by value.
    return (item.layer, permanent, container[permanent] == "direct", container, item.json_text())


# fwrecon's ownership tags: "fwrecon:" and 16 hex digits.  Anything in that
# namespace is fwrecon's to write; policies may not (see policy.py).
TAG_PREFIX = "fwrecon:"
TAG_RE = re.compile(re.escape(TAG_PREFIX) + r"[0-9a-f]{16}")


def _tag(item: Item) -> str:
    digest = hashlib.sha256(_encode(item, sort_keys=True).encode()).hexdigest()
    return f"{TAG_PREFIX}{digest[:16]}"


def _json_text(item: Item) -> str:
    return _encode(item, sort_keys=False)


def _encode(item: Item, *, sort_keys: bool) -> str:
    """Exactly ``json.dumps(item.to_json())`` with ``sort_keys=True`` (the tag's
    input, default separators) or compact separators, built directly: the
    json module makes a new encoder per call, 4x slower for small dicts."""
    sep, pieces = _layout(type(item), sort_keys)
    return (
        "{" + sep.join([key if encode is None else key + encode(getattr(item, name), sep) for key, name, encode in pieces]) + "}"
    )


_ENCODERS: dict[str, Callable[[Any, str], str]] = {
    "str": lambda value, sep: _quote(value),
    "int": lambda value, sep: int.__repr__(value),
    "tuple[str, ...]": lambda value, sep: "[" + sep.join(map(_quote, value)) + "]",
    "Scope": lambda value, sep: f"[{_quote(value.kind)}{sep}{_quote(value.name)}]",
    # (the separator tells which of the two layouts is being built)
    "Item": lambda value, sep: value.json_text() if sep == "," else _encode(value, sort_keys=True),
}
_Piece = tuple[str, str, Callable[[Any, str], str] | None]


@_cached
def _layout(cls: type[Item], sort_keys: bool) -> tuple[str, tuple[_Piece, ...]]:
    """Per class: the separator and, per key in output order, its fixed text
    (``"name":``, or the whole ``"kind":"..."``), field and value encoder."""
    sep, colon = (", ", ": ") if sort_keys else (",", ":")
    pieces: list[_Piece] = [(f'"kind"{colon}{_quote(cls.kind)}', "kind", None)]
    pieces += [(f'"{f.name}"{colon}', f.name, _ENCODERS[_annotation(f)]) for f in fields(cls)]
    if sort_keys:
        pieces.sort(key=lambda piece: piece[1])
    return sep, tuple(pieces)


# From JSON, type by exact type: bool is an int subclass, and True is no priority.
def _scope(value: Any) -> Scope:
    if type(value) is not list or len(value) != 2 or any(type(part) is not str for part in value):
        raise ValueError(f'expected ["zone" or "policy", NAME], got {_short(value)}')
    kind, name = value
    if kind not in ("zone", "policy"):
        raise ValueError(f"bad scope kind {kind!r}")
    return Scope(kind, name)


def _strings(value: Any) -> tuple[str, ...]:
    if type(value) is not list or any(type(a) is not str for a in value):
        raise ValueError(f"expected an array of strings, got {_short(value)}")
    return tuple(value)


def _string(value: Any) -> str:
    if type(value) is not str:
        raise ValueError(f"expected a string, got {json_type_name(value)}")
    return value


def _integer(value: Any) -> int:
    if type(value) is not int:
        raise ValueError(f"expected an integer, got {json_type_name(value)}")
    return value


def json_type_name(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words ("object", "integer"), for errors about fwrecon's JSON files."""
    names = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 200) -> str:
    """repr for error messages, cut short: a corrupt file's values can be huge."""
    try:
        text = repr(value)
    except RecursionError:  # a deeply nested value
        return f"<deeply nested {json_type_name(value)}>"
    return text if len(text) <= limit else text[:limit] + "…"


def _persisted(value: Any) -> Item:
    """The item a `Permanent` copy holds: a firewalld item, never a copy itself
    (checked before decoding, so a forged file cannot nest them without end)."""
    if type(value) is dict and value.get("kind") == Permanent.kind:
        raise ValueError("a permanent copy cannot hold another")
    item = Item.from_json(value)
    if not isinstance(item, PERSISTABLE):
        raise ValueError(f"{item.kind} items have no permanent copy")
    return item


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "Scope": _scope,
    "tuple[str, ...]": _strings,
    "int": _integer,
    "str": _string,
    "Item": _persisted,
}
_TO_PLAIN: dict[str, Callable[[Any], Any] | None] = {
    "Scope": lambda scope: [scope.kind, scope.name],
    "Item": lambda item: item.to_json(),
    "tuple[str, ...]": list,
    "int": None,
    "str": None,
}


@_cached
def _to_plain(cls: type[Item]) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    """Per field: how `to_json` makes it plain JSON (None: as it is)."""
    return tuple((f.name, _TO_PLAIN[_annotation(f)]) for f in fields(cls))


@_cached
def _converters(cls: type[Item]) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    return tuple((f.name, _CONVERTERS[_annotation(f)]) for f in fields(cls))


def _annotation(f: Field[Any]) -> str:
    """A field's annotation as written, the key of the tables above (run once per class and field)."""
    if not isinstance(f.type, str):  # every annotation in this module is postponed, hence a string
        raise TypeError(f"field {f.name!r}: annotation {f.type!r} is not a string")
    return f.type


@dataclass(frozen=True, order=True)
class ScopedItem(Item):
    """An item that lives in a zone or a policy."""

    scope: Scope

    def container(self) -> tuple[str, ...]:
        return (self.scope.kind, self.scope.name)

    def describe(self) -> str:
        return f"{self.scope} {self.kind.replace('_', '-')} {self.value_text()}"

    def value_text(self) -> str:
        """The item's value as firewall-cmd would print it."""
        raise NotImplementedError


@dataclass(frozen=True, order=True)
class Service(ScopedItem):
    kind: ClassVar[str] = "service"
    name: str

    def value_text(self) -> str:
        return self.name


@dataclass(frozen=True, order=True)
class Port(ScopedItem):
    """``port`` is ``N`` or ``LO-HI`` with LO < HI, as firewalld prints it."""

    kind: ClassVar[str] = "port"
    port: str
    protocol: str

    def value_text(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True, order=True)
class SourcePort(ScopedItem):
    kind: ClassVar[str] = "source_port"
    port: str
    protocol: str

    def value_text(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True, order=True)
class Protocol(ScopedItem):
    kind: ClassVar[str] = "protocol"
    name: str

    def value_text(self) -> str:
        return self.name


@dataclass(frozen=True, order=True)
class IcmpBlock(ScopedItem):
    kind: ClassVar[str] = "icmp_block"
    name: str

    def value_text(self) -> str:
        return self.name


@dataclass(frozen=True, order=True)
class Masquerade(ScopedItem):
    kind: ClassVar[str] = "masquerade"

    def value_text(self) -> str:
        return "on"

    def describe(self) -> str:
        return f"{self.scope} masquerade"


@dataclass(frozen=True, order=True)
class Forward(ScopedItem):
    """Intra-zone forwarding (``firewall-cmd --add-forward``): packets may pass
    between the zone's own interfaces and sources.  Zones only."""

    kind: ClassVar[str] = "forward"

    def value_text(self) -> str:
        return "on"

    def describe(self) -> str:
        return f"{self.scope} forward"


@dataclass(frozen=True, order=True)
class ForwardPort(ScopedItem):
    """Empty ``to_port`` / ``to_addr`` mean "unchanged", as in firewalld."""

    kind: ClassVar[str] = "forward_port"
    port: str
    protocol: str
    to_port: str
    to_addr: str

    def value_text(self) -> str:
        return f"port={self.port}:proto={self.protocol}:toport={self.to_port}:toaddr={self.to_addr}"


@dataclass(frozen=True, order=True)
class RichRule(ScopedItem):
    """``rule`` is the canonical text firewalld prints (see richrule.py)."""

    kind: ClassVar[str] = "rich_rule"
    rule: str

    def value_text(self) -> str:
        return self.rule


@dataclass(frozen=True, order=True)
class Source(ScopedItem):
    """Zone binding of an address, network, MAC (upper case) or ``ipset:NAME``."""

    kind: ClassVar[str] = "source"
    source: str

    def value_text(self) -> str:
        return self.source


@dataclass(frozen=True, order=True)
class Interface(ScopedItem):
    kind: ClassVar[str] = "interface"
    name: str

    def value_text(self) -> str:
        return self.name


@dataclass(frozen=True, order=True)
class DirectChain(Item):
    kind: ClassVar[str] = "direct_chain"
    layer: ClassVar[int] = 0
    family: str
    table: str
    chain: str

    def container(self) -> tuple[str, ...]:
        return ("direct", self.family, self.table)

    def describe(self) -> str:
        return f"direct {self.family} {self.table} chain {self.chain}"


@dataclass(frozen=True, order=True)
class DirectRule(Item):
    kind: ClassVar[str] = "direct_rule"
    family: str
    table: str
    chain: str
    priority: int
    args: tuple[str, ...]

    def container(self) -> tuple[str, ...]:
        return ("direct", self.family, self.table)

    def describe(self) -> str:
        return f"direct {self.family} {self.table} {self.chain} priority {self.priority} rule {' '.join(self.args)}"


NFT_TABLE = "fwrecon"  # fwrecon's own table in each nftables family


@dataclass(frozen=True, order=True)
class NftChain(Item):
    """A chain in fwrecon's own nftables table; a base chain when ``hook`` is set."""

    kind: ClassVar[str] = "nft_chain"
    layer: ClassVar[int] = 0
    family: str
    chain: str
    type: str = ""  # filter | nat | route (base chains only)
    hook: str = ""
    priority: int = 0
    policy: str = ""  # accept | drop (base chains only)

    def container(self) -> tuple[str, ...]:
        return ("nft", self.family)

    def describe(self) -> str:
        text = f"nft {self.family} {NFT_TABLE} chain {self.chain}"
        if self.hook:
            text += f" {{ type {self.type} hook {self.hook} priority {self.priority};"
            text += f" policy {self.policy}; }}" if self.policy else " }"
        return text


@dataclass(frozen=True, order=True)
class NftRule(Item):
    """A rule in fwrecon's table; ``rule`` is the policy's text, whitespace folded."""

    kind: ClassVar[str] = "nft_rule"
    family: str
    chain: str
    rule: str

    def container(self) -> tuple[str, ...]:
        return ("nft", self.family)

    def describe(self) -> str:
        return f"nft {self.family} {NFT_TABLE} {self.chain} rule {self.rule}"


@dataclass(frozen=True, order=True)
class NftSet(Item):
    """A named set in fwrecon's table; its elements are items of their own
    (`NftElement`), so two policies can share a set and an edit is a diff."""

    kind: ClassVar[str] = "nft_set"
    layer: ClassVar[int] = 0  # before the rules that use it and the elements in it
    family: str
    name: str
    type: str
    flags: tuple[str, ...] = ()  # sorted

    def container(self) -> tuple[str, ...]:
        return ("nft", self.family)

    def describe(self) -> str:
        flags = f" flags {','.join(self.flags)};" if self.flags else ""
        return f"nft {self.family} {NFT_TABLE} set {self.name} {{ type {self.type};{flags} }}"


@dataclass(frozen=True, order=True)
class NftElement(Item):
    """One element of a set in fwrecon's table, in nft's printed form (`nftsets`)."""

    kind: ClassVar[str] = "nft_element"
    family: str
    set: str
    element: str

    def container(self) -> tuple[str, ...]:
        return ("nft", self.family)

    def describe(self) -> str:
        return f"nft {self.family} {NFT_TABLE} set {self.set} element {self.element}"


@dataclass(frozen=True, order=True)
class Ipset(Item):
    """A firewalld ipset (``[ipset.NAME]``).  firewalld creates ipsets only in
    its permanent configuration, and a reload brings them into the runtime;
    the entries are items of their own (`IpsetEntry`), so two policies can
    share an ipset and an edit is a diff.  ``options``: ``key=value``, sorted
    (hashsize, maxelem); ``family`` is kept apart because it is always set."""

    kind: ClassVar[str] = "ipset"
    layer: ClassVar[int] = 0  # before its entries and the zone sources and rich rules that use it
    name: str
    type: str
    family: str
    options: tuple[str, ...] = ()

    def container(self) -> tuple[str, ...]:
        return ("ipset", self.name)

    def describe(self) -> str:
        options = "".join(f" {option}" for option in self.options)
        return f"ipset {self.name} type {self.type} family {self.family}{options}"


@dataclass(frozen=True, order=True)
class IpsetEntry(Item):
    """One entry of a firewalld ipset, in the canonical form fwrecon writes (`ipsets`)."""

    kind: ClassVar[str] = "ipset_entry"
    ipset: str
    entry: str

    def container(self) -> tuple[str, ...]:
        return ("ipset", self.ipset)

    def describe(self) -> str:
        return f"ipset {self.ipset} entry {self.entry}"


# The first part of a permanent copy's container (`Permanent.container`).
PERMANENT = "permanent"
# What firewalld can keep in its permanent configuration too.
# (An ipset itself exists only there: it needs no copy.)
PERSISTABLE = (ScopedItem, DirectChain, DirectRule, IpsetEntry)


@dataclass(frozen=True, order=True)
class Permanent(Item):
    """A firewalld item's copy in firewalld's permanent configuration
    (``--persist permanent``), which a reload or restart puts back by itself.

    An item of its own, in a container of its own, so that ownership,
    reference counting, "never touch what is not ours" and the diff all work
    per layer with no special case: an item already in the permanent
    configuration is someone else's there even when fwrecon owns its runtime copy.
    """

    kind: ClassVar[str] = "permanent"
    item: Item

    def __post_init__(self) -> None:
        if not isinstance(self.item, PERSISTABLE):
            raise TypeError(f"{self.item.kind} items have no permanent copy")

    @property
    def layer(self) -> int:  # type: ignore[override]  # a copy is added and removed in its item's order
        return self.item.layer

    def container(self) -> tuple[str, ...]:
        return (PERMANENT, *self.item.container())

    def describe(self) -> str:
        return f"{self.item.describe()} (permanent)"


def runtime_of(item: Item) -> Item:
    """The runtime item ``item`` is a copy of, or ``item`` itself."""
    return item.item if isinstance(item, Permanent) else item


# More elements of one set than this (changed by a plan, owned by a policy) and
# the text output of plan, apply and status says them in one line (--json lists them all).
ELEMENTS_LISTED = 20

# Every item kind that lives in fwrecon's nft tables (the nftables backend's).
NFT_ITEMS = (NftChain, NftRule, NftSet, NftElement)


ITEM_KINDS: dict[str, type[Item]] = {
    cls.kind: cls
    for cls in (
        Service,
        Port,
        SourcePort,
        Protocol,
        IcmpBlock,
        Masquerade,
        Forward,
        ForwardPort,
        RichRule,
        Source,
        Interface,
        DirectChain,
        DirectRule,
        NftChain,
        NftRule,
        NftSet,
        NftElement,
        Ipset,
        IpsetEntry,
        Permanent,
    )
}

# @dataclass(frozen=True) writes a __hash__ into every class; use the cached one.
for _cls in ITEM_KINDS.values():
    _cls.__hash__ = Item.__hash__  # type: ignore[method-assign]  # replacing the method is the point


# -- what the planner, the transaction and the backends pass each other ------------------

Action = Literal["add", "remove"]
Ownership = dict[Item, frozenset[str]]  # item -> the policies that own (or want) it


class Op(NamedTuple):
    """One write to the firewall; its undo is the opposite action.

    A named tuple rather than a frozen dataclass: a plan of 10,000 rules
    creates 10,000 of them, three times faster.
    """

    action: Action
    item: Item
    via: str | None = None  # the backend to send it to, when not the one in charge (moving items off it)

    def inverse(self) -> Op:
        return Op("remove" if self.action == "add" else "add", self.item, self.via)

    def describe(self) -> str:
        text = f"{'+' if self.action == 'add' else '-'} {self.item.describe()}"
        return text if self.via is None else f"{text} (on {self.via})"


class Outcome(enum.Enum):
    """What one write did."""

    APPLIED = "applied"  # the firewall changed
    UNCHANGED = "unchanged"  # it was already so (ALREADY_ENABLED / NOT_ENABLED)


@dataclass(frozen=True)
class KnownNames:
    """Names the firewall knows, for validating policies against it."""

    zones: frozenset[str]
    policies: frozenset[str]
    services: frozenset[str]
    icmp_types: frozenset[str]


# Set elements and ipset entries: `Item.sort_key`'s order, built without the
# JSON text (a plan from empty sorts 100,000 of them, and a key kept per
# element would cost megabytes).  After the start of that text, where the
# order tells kinds apart and no other kind shares, come the fields the text
# orders them by, each quoted as the text quotes it: a quoted string ends
# with the only quote it holds unescaped, so no field decides by its length
# what the text after it would decide, and the order is exactly the text's.
_QUICK_SORT_KEYS: dict[type[Item], Callable[[Any], tuple[Any, ...]]] = {
    NftElement: lambda e: (e.layer, False, False, ("nft", e.family), '{"kind":"nft_element"', _quote(e.set), _quote(e.element)),
    IpsetEntry: lambda e: (e.layer, False, False, ("ipset", e.ipset), '{"kind":"ipset_entry"', _quote(e.entry)),
}


# The first part of the container of the kinds that come by the 100,000,
# which does not depend on the item: routing one costs no call then.
_CONTAINER_KINDS: dict[type[Item], str] = {NftElement: "nft", IpsetEntry: "ipset"}


def container_kind(item: Item) -> str:
    """``item.container()[0]``: which backend route an item takes."""
    return _CONTAINER_KINDS.get(type(item)) or item.container()[0]


def set_member(item: Item) -> tuple[tuple[str, str], str] | None:
    """An nft set element's ((family, set), element) or an ipset entry's
    (("ipset", name), entry): the set it is in, and its text; else None."""
    if type(item) is NftElement:
        return (item.family, item.set), item.element
    if type(item) is IpsetEntry:
        return ("ipset", item.ipset), item.entry
    return None
