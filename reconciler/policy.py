"""Policy documents: one TOML file's bytes to items, validated before anything applies.

One file is one policy, named after the file stem.  Every problem is reported
as a `PolicyError` naming the file and the key path (``web.toml:
zone.public.ports[1]: "80/tcpx" is not PORT[-PORT]/PROTO``); a file with any
error yields no policy at all, so a half-valid file never applies half its
rules.  Pure: reading files and directories (size limits, who may write them)
is `policydir`'s job.

A policy only ever adds: an absent key, an empty list and ``masquerade =
false`` all mean "not managed here", never "turn off".
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from . import tomlarrays
from .errors import PolicyError
from .ipsets import (
    IPSET_FAMILIES,
    IPSET_NAME_MAX,
    IPSET_NAME_RE,
    IPSET_NAME_TEXT,
    IPSET_OPTIONS,
    IPSET_TYPES,
    OVERLAP_REFUSED,
    REFUSED_OPTIONS,
    canonical_entry,
    canonical_options,
    default_family,
    entries_that_may_overlap,
    overlapping,
)
from .limits import (
    DIRECT_BUILTIN_CHAINS,
    DIRECT_CHAIN_RE,
    DIRECT_CHAIN_TEXT,
    DIRECT_PRIORITY_RANGE,
    DIRECT_TABLES,
    LINE_BREAK_OR_NUL,
    NFT_CHAIN_POLICIES,
    NFT_CHAIN_TYPES,
    NFT_FAMILIES,
    NFT_HOOKS,
    NFT_NAME_RE,
    NFT_NAME_TEXT,
    NFT_PRIORITY_RANGE,
    nft_jump_targets,
    nft_rule_problem,
    nft_set_references,
)
from .model import (
    TAG_PREFIX,
    DirectChain,
    DirectRule,
    Forward,
    ForwardPort,
    IcmpBlock,
    Interface,
    Ipset,
    IpsetEntry,
    Item,
    KnownNames,
    Masquerade,
    NftChain,
    NftElement,
    NftRule,
    NftSet,
    Port,
    Protocol,
    RichRule,
    Scope,
    ScopeKind,
    Service,
    Source,
    SourcePort,
    set_member,
)
from .nftsets import REFUSED_FLAGS, SET_FLAGS, SET_TYPES, canonical_element, conflicts, overlapping_elements
from .ports import PORT_PROTOCOLS, canonical_port
from .richrule import RichRuleError, parse_rich_rule

# tomllib is recursive: arrays and inline tables nested a few hundred levels
# deep (with Python's default recursion limit about 200 levels of arrays of
# inline tables, 330 of inline tables, 500 of arrays) exhaust the stack.  That
# RecursionError is the limit, reported as "nested too deeply" rather than a
# crash; a real policy nests three levels at most.  Not enforced separately:
# the number only goes into the message.
APPROX_MAX_NESTING = 200

TOP_KEYS = ("description", "zone", "policy", "direct", "nft", "ipset")
IPSET_KEYS = ("type", "family", "options", "entries")
NFT_CHAIN_KEYS = ("family", "chain", "type", "hook", "priority", "policy")
NFT_RULE_KEYS = ("family", "chain", "rule")
NFT_SET_KEYS = ("family", "name", "type", "flags", "elements")
SCOPE_LIST_KEYS = ("services", "ports", "protocols", "source_ports", "icmp_blocks", "rich_rules")
ZONE_KEYS = (*SCOPE_LIST_KEYS, "masquerade", "forward", "forward_ports", "sources", "interfaces")
POLICY_KEYS = (*SCOPE_LIST_KEYS, "masquerade", "forward_ports")
FORWARD_PORT_KEYS = ("port", "protocol", "to_port", "to_addr")
DIRECT_CHAIN_KEYS = ("family", "table", "chain")
DIRECT_RULE_KEYS = ("family", "table", "chain", "priority", "args")

# \Z, not $: "$" also matches before a trailing newline ("http\n" would pass).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")
_SCOPE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
_POLICY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_MAC = re.compile(r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}\Z")
_INTERFACE = re.compile(r"^[^/\s:!*\0]{1,15}\Z")


@dataclass(frozen=True)
class Reference:
    """A name the firewall must know (checked when it is reachable)."""

    key: str
    kind: str  # "zone" | "policy" | "service" | "icmp_type"
    name: str


@dataclass(frozen=True)
class Policy:
    name: str
    file: str
    description: str
    items: frozenset[Item]
    references: tuple[Reference, ...] = ()
    keys: dict[Item, str] = field(default_factory=dict, compare=False, hash=False)  # item -> key path

    def key_of(self, item: Item) -> str:
        return self.keys.get(item, "")


@dataclass
class LoadResult:
    policies: dict[str, Policy] = field(default_factory=dict)
    errors: dict[str, list[PolicyError]] = field(default_factory=dict)  # by policy name
    # The directory itself could not be read (missing, unsafe): the set of
    # policies is unknown, so none may be treated as deleted.
    unreadable: bool = False

    def all_errors(self) -> list[PolicyError]:
        return [err for name in sorted(self.errors) for err in self.errors[name]]


class PolicyFileInvalid(Exception):
    """All errors found in one file; ``internal``: the bug behind an internal error, to log."""

    def __init__(self, errors: list[PolicyError], internal: Exception | None = None) -> None:
        self.errors = errors
        self.internal = internal
        super().__init__("; ".join(map(str, errors)))


def parse_policy(file_name: str, raw: bytes, previous: Policy | None = None) -> Policy:
    """Parse and validate one policy file's bytes; raises PolicyFileInvalid with every error.

    Nothing else escapes: whatever goes wrong with one file (not UTF-8,
    nested too deeply, out of memory, even a bug in validation) makes that
    one policy invalid with a line naming the file, and the others apply.
    ``previous``: the file's last parsed version, whose set elements and
    ipset entries are reused where equal (`_Reuse`).
    """
    label = one_line(file_name)  # a file name may hold a line break too
    try:
        return _parse_policy(file_name, raw, previous)
    except PolicyFileInvalid:
        raise
    except RecursionError as exc:
        raise PolicyFileInvalid([PolicyError(label, "", _nested_too_deeply())]) from exc
    except MemoryError as exc:
        raise PolicyFileInvalid([PolicyError(label, "", "out of memory while reading this file")]) from exc
    except Exception as exc:  # a bug must cost this one policy, never the reconcile
        raise PolicyFileInvalid([internal_error(label, exc)], internal=exc) from exc


def internal_error(label: str, exc: Exception) -> PolicyError:
    """A bug met while reading one file, said in its line (the caller logs the traceback)."""
    text = " ".join(str(exc).split())  # one line, whatever the exception says
    if len(text) > 300:
        text = text[:300] + "…"
    return PolicyError(
        label, "", f"internal error while validating this file ({type(exc).__name__}: {text}); please report it with the log"
    )


def _nested_too_deeply() -> str:
    return f"nested too deeply: arrays and inline tables may nest about {APPROX_MAX_NESTING} levels deep (a policy needs three)"


def _parse_policy(file_name: str, raw: bytes, previous: Policy | None = None) -> Policy:
    label = one_line(file_name)
    name = file_name[: -len(".toml")]
    try:
        text = raw.decode("utf-8")
        data = tomlarrays.loads(text)
    except UnicodeDecodeError as exc:
        raise PolicyFileInvalid([PolicyError(label, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileInvalid([PolicyError(label, "", f"TOML syntax error: {_toml_message(exc, text)}")]) from exc
    except RecursionError as exc:
        raise PolicyFileInvalid([PolicyError(label, "", _nested_too_deeply())]) from exc
    except ValueError as exc:  # tomllib lets int()'s own limit through: x = 99…9 (4301+ digits)
        if "digits" in str(exc):
            message = f"an integer has more than {sys.get_int_max_str_digits()} digits"
        else:
            message = f"invalid value: {exc}"
        raise PolicyFileInvalid([PolicyError(label, "", f"TOML syntax error: {message}")]) from exc
    parser = _PolicyParser(label, _Reuse(previous.items if previous is not None else ()))
    if not _POLICY_NAME.match(name):
        parser.error("", f"policy name {name!r} (the file stem) may only hold letters, digits, '_', '.', '-'")
    policy = parser.parse(name, data)
    if parser.errors:
        # A key may be any string ("a\nb" quoted is valid TOML): keep each report on one line.
        raise PolicyFileInvalid([PolicyError(e.file, one_line(e.key), one_line(e.message)) for e in parser.errors])
    return policy


# Everything str.splitlines() breaks at, plus the other C0 controls and DEL.
_LINE_BREAKING = {*range(0x20), 0x7F, 0x85, 0x2028, 0x2029}
_ONE_LINE = {code: f"\\u{code:04x}" for code in _LINE_BREAKING} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def one_line(text: str) -> str:
    """``text`` with line breaks and control characters escaped, as in a TOML string."""
    return text.translate(_ONE_LINE)


def check_references(policy: Policy, known: KnownNames) -> list[PolicyError]:
    """Errors for zones, policies, services and ICMP types firewalld lacks."""
    pools = {
        "zone": known.zones,
        "policy": known.policies,
        "service": known.services,
        "icmp_type": known.icmp_types,
    }
    return [
        PolicyError(policy.file, ref.key, f"{ref.kind.replace('_', ' ')} {ref.name!r} does not exist in firewalld")
        for ref in policy.references
        if ref.name not in pools[ref.kind]
    ]


# What declares a name a rule may use, and what may use one (or clash with a held set).
DECLARING = frozenset({NftChain, NftSet, DirectChain})  # the kinds `declarations` looks at
_REFERRING = frozenset({NftRule, NftSet, DirectRule})


@dataclass(frozen=True)
class Declarations:
    """The chains and sets a rule may use (`declarations`), gathered once:
    judging 100 policies walks 100,000 declared elements once, not 100 times."""

    names: frozenset[tuple[str, ...]]
    held_sets: Mapping[tuple[str, str], NftSet]
    held_known: bool  # whether the backend could be asked what it holds


def declarations(declared: Iterable[Item], held: Iterable[Item] | None) -> Declarations:
    """``declared``: every item that will be applied; ``held``: what the
    backend lists (None when it could not be asked, and then only
    declarations count)."""
    names: set[tuple[str, ...]] = set()
    held = [item for item in held or () if type(item) in DECLARING] if held is not None else None
    held_sets = {(item.family, item.name): item for item in held or () if isinstance(item, NftSet)}
    for item in (*(item for item in declared if type(item) in DECLARING), *(held or ())):
        if isinstance(item, NftChain):
            names.add(("nft", item.family, item.chain))
        elif isinstance(item, NftSet):
            names.add(("nft set", item.family, item.name))
        elif isinstance(item, DirectChain):
            names.add(("direct", item.family, item.table, item.chain))
    return Declarations(frozenset(names), held_sets, held is not None)


def unresolved_references(policy: Policy, known: Declarations) -> list[PolicyError]:
    """Errors for rules in (or nft rules jumping to) a chain that is not built
    in, and nft rules using a set (``@name``), that no applying policy
    declares and that the backend does not hold (``known``); and for a set
    the backend holds with another type or flags.

    Each would pass every offline check and fail at apply.
    """
    names, held_sets = known.names, known.held_sets
    where = " and the backend in charge does not hold it" if known.held_known else ""
    errors: list[PolicyError] = []

    def missing(item: Item, message: str) -> None:
        errors.append(PolicyError(policy.file, policy.key_of(item), message + where))

    # (type() first: a set of 100,000 elements must not cost a sort and an isinstance each)
    for item in sorted((item for item in policy.items if type(item) in _REFERRING), key=Item.sort_key):
        if isinstance(item, NftRule):
            for chain in sorted({item.chain, *nft_jump_targets(item.rule)}):
                if ("nft", item.family, chain) not in names:
                    what = "rule's chain" if chain == item.chain else "chain it jumps to"
                    missing(item, f"the {what} {chain!r} ({item.family}) is declared by no [[nft.chain]]")
            for name in sorted(nft_set_references(item.rule)):
                if ("nft set", item.family, name) not in names:
                    missing(item, f"the set @{name} ({item.family}) is declared by no [[nft.set]]")
        elif isinstance(item, NftSet) and held_sets.get((item.family, item.name), item) != item:
            errors.append(
                PolicyError(
                    policy.file,
                    policy.key_of(item),
                    f"the set exists as {held_sets[item.family, item.name].describe()}; nft cannot change a set's type "
                    "or flags in place: give the set a new name, or drop it from every policy first",
                )
            )
        elif isinstance(item, DirectRule):
            builtin = DIRECT_BUILTIN_CHAINS.get(item.family, {}).get(item.table, frozenset())
            if item.chain not in builtin and ("direct", item.family, item.table, item.chain) not in names:
                missing(
                    item, f"chain {item.chain!r} ({item.family} {item.table}) is not built in and declared by no [[direct.chain]]"
                )
    return errors


_DECLARATIONS = frozenset({NftSet, Ipset})
# The keeper of a foreign element in `conflicting_sets`' tables: sorts before
# every policy name, as it stays whoever else keeps it.
SOMEONE_ELSE = ""


def conflicting_sets(
    policies: Mapping[str, Policy],
    owned: Mapping[Item, frozenset[str]] | None = None,
    held: Collection[str] = (),
    foreign: Collection[Item] = (),
    present: Callable[[Item], bool] | None = None,
) -> dict[str, list[PolicyError]]:
    """Errors, by policy name, for an nft set that policies declare alike in
    name but not in type or flags, or whose elements overlap another
    policy's in an interval set (nft refuses both at apply).

    Likewise for a firewalld ipset declared with another type, family or
    options.  What is in force and stays comes first: the declarations and
    elements fwrecon owns (``owned``) for a policy that keeps them, because it
    still declares them or is ``held`` at its last good version (an invalid
    one).  Then the policies in name order; so the policy whose edit brings
    an overlap in is the one told, never the one already in force beside it.
    Held at what it owns, a policy told keeps that in force: what the others
    add must not clash with it either.  Before all of it: the ``foreign``
    elements and entries, in the firewall but not fwrecon's (an admin's, one
    whose record went with the last policy wanting it), which fwrecon never
    removes; ``present`` says whether the firewall holds one of ours (of
    two that overlap, ours stays beside someone else's only then).
    """
    found = _clashes(policies, {}, {}, {})
    if not (owned or foreign) or not (found or held or foreign):
        # What policies keep is in force together, so it cannot clash: without
        # a clash in name order there is none (and `owned`, 100,000 elements
        # say, is not walked); what is in force changes only who is told.
        return found
    # A policy told is held at what it owns, elements its edit dropped
    # included: judge the others again beside those, until no one more is told.
    told: dict[str, list[PolicyError]] = {}
    judged = dict(policies)
    while True:
        first: dict[tuple[str, str], tuple[str, NftSet]] = {}
        first_ipset: dict[str, tuple[str, Ipset]] = {}
        spans: dict[object, dict[str, str]] = {}
        seeded_as = _seed_in_force(judged, owned or {}, {*held, *told}, first, first_ipset, spans, foreign, present)
        found = _clashes(judged, first, first_ipset, spans, seeded_as)
        if not found:
            return told
        told.update(found)
        for name in found:
            del judged[name]


def _clashes(
    policies: Mapping[str, Policy],
    first: dict[tuple[str, str], tuple[str, NftSet]],
    first_ipset: dict[str, tuple[str, Ipset]],
    spans: dict[object, dict[str, str]],
    seeded_as: dict[object, Item] | None = None,
) -> dict[str, list[PolicyError]]:
    """`conflicting_sets` for the policies in name order, after what the
    tables hold: ``first``, the declaring policy and set by (family, name);
    ``first_ipset``, the same by ipset name; ``spans``, by set or ipset, the
    policy of each element or entry (``seeded_as``: the declaration the
    elements in force were read under; under another one, only those that
    are elements of it count).  A policy told adds nothing to them: it
    applies none of its new items, so they refuse no one after it.

    Only the elements that overlap something in the union of all (the
    suspects) are compared one policy at a time: without them, 100 policies
    of 1,000 elements in one set cost 17 s, each re-sorting the elements
    before it."""
    errors: dict[str, list[PolicyError]] = {}
    grouped = {name: _set_items(policy) for name, policy in policies.items()}
    suspects: dict[Item, set[str]] = {}
    seeded_as = dict(seeded_as or {})

    def spans_under(declaration: Item, key: object, canonical: Callable[[str], str]) -> dict[str, str]:
        """``spans[key]``, its elements in force read under ``declaration``."""
        theirs = spans.setdefault(key, {})
        if seeded_as.get(key, declaration) != declaration:
            theirs = spans[key] = {e: owner for e, owner in theirs.items() if in_canonical_form(canonical, e)}
        seeded_as[key] = declaration
        return theirs

    def suspects_of(declaration: Item, key: object, find: Callable[[set[str]], set[str]]) -> set[str]:
        """Of every element declared like ``declaration`` or in force in its set, those that overlap another."""
        if declaration not in suspects:
            union = set(spans.get(key, ()))
            for declared, elements in grouped.values():
                if declaration in declared:
                    union |= elements.get(key, set())
            suspects[declaration] = find(union)
        return suspects[declaration]

    for name in sorted(policies):
        policy = policies[name]
        told: list[PolicyError] = []
        declared, elements = grouped[name]
        ordered = sorted(declared, key=Item.sort_key)
        ipsets = [item for item in ordered if isinstance(item, Ipset)]
        sets = [item for item in ordered if isinstance(item, NftSet)]
        for ipset in ipsets:
            owner, declared_ipset = first_ipset.get(ipset.name, (name, ipset))
            if declared_ipset != ipset:
                message = f"policy {owner!r} declares the ipset {ipset.name!r} as {declared_ipset.describe()}"
                told.append(PolicyError(policy.file, policy.key_of(ipset), message))
        for nft_set in sets:
            owner, declared_set = first.get((nft_set.family, nft_set.name), (name, nft_set))
            if declared_set != nft_set:
                message = f"policy {owner!r} declares the set {nft_set.name!r} ({nft_set.family}) as {declared_set.describe()}"
                told.append(PolicyError(policy.file, policy.key_of(nft_set), message))
        new: list[tuple[dict[str, str], set[str]]] = []  # (a set's spans, this policy's new elements in it)
        for nft_set in sets:
            key = (nft_set.family, nft_set.name)
            if first.get(key, (name, nft_set))[1] == nft_set and "interval" in nft_set.flags:
                theirs = spans_under(nft_set, key, partial(canonical_element, nft_set.type, True))
                new.append((theirs, elements.get(key, set()) - theirs.keys()))  # (in two policies: one shared element)
                told += _overlaps_across(
                    policy,
                    theirs,
                    new[-1][1] & suspects_of(nft_set, key, partial(overlapping_elements, nft_set.type)),
                    partial(conflicts, nft_set.type),
                    partial(NftElement, nft_set.family, nft_set.name),
                    "nft refuses overlapping intervals",
                )
        for ipset in ipsets:
            key = ("ipset", ipset.name)
            if first_ipset.get(ipset.name, (name, ipset))[1] == ipset:
                theirs = spans_under(ipset, key, partial(canonical_entry, ipset.type, ipset.family))
                new.append((theirs, elements.get(key, set()) - theirs.keys()))
                told += _overlaps_across(
                    policy,
                    theirs,
                    new[-1][1] & suspects_of(ipset, key, partial(entries_that_may_overlap, ipset.type)),
                    partial(overlapping, ipset.type),
                    partial(IpsetEntry, ipset.name),
                    OVERLAP_REFUSED,
                )
        if told:
            errors[name] = told
            continue
        for ipset in ipsets:
            first_ipset.setdefault(ipset.name, (name, ipset))
        for nft_set in sets:
            first.setdefault((nft_set.family, nft_set.name), (name, nft_set))
        for theirs, mine in new:
            theirs.update(dict.fromkeys(mine, name))
    return errors


def _set_items(policy: Policy) -> tuple[set[Item], dict[object, set[str]]]:
    """A policy's set and ipset declarations, and the elements and entries
    that may clash, by interval set ((family, name)) or ipset (("ipset",
    name)); the elements of a hash set, 100,000 say, cannot clash and are
    not gathered."""
    declared = {item for item in policy.items if type(item) in _DECLARATIONS}
    keys = {(i.family, i.name) for i in declared if isinstance(i, NftSet) and "interval" in i.flags}
    keys |= {("ipset", i.name) for i in declared if isinstance(i, Ipset)}
    elements: dict[object, set[str]] = {}
    if not keys:
        return declared, elements
    for item in policy.items:
        if isinstance(item, NftElement) and (key := (item.family, item.set)) in keys:
            elements.setdefault(key, set()).add(item.element)
        elif isinstance(item, IpsetEntry) and (key := ("ipset", item.ipset)) in keys:
            elements.setdefault(key, set()).add(item.entry)
    return declared, elements


def _seed_in_force(
    policies: Mapping[str, Policy],
    owned: Mapping[Item, frozenset[str]],
    held: Collection[str],
    first: dict[tuple[str, str], tuple[str, NftSet]],
    first_ipset: dict[str, tuple[str, Ipset]],
    spans: dict[object, dict[str, str]],
    foreign: Iterable[Item] = (),
    present: Callable[[Item], bool] | None = None,
) -> dict[object, Item]:
    """Fill `conflicting_sets`' tables with what is in force and stays: each
    owned declaration, element and entry under the first policy (by name)
    that keeps it, each ``foreign`` one under ``SOMEONE_ELSE``; return the
    declaration each set's elements were read under.  Only sets and ipsets
    some policy in ``policies`` declares can clash: with none, ``owned`` is
    not walked at all."""
    declared = [i for p in policies.values() for i in p.items if type(i) in _DECLARATIONS]
    if not declared:
        return {}
    sets = {(i.family, i.name) for i in declared if isinstance(i, NftSet)}
    interval_sets = {(i.family, i.name): i for i in declared if isinstance(i, NftSet) and "interval" in i.flags}
    intervals = {key: nft_set.type for key, nft_set in interval_sets.items()}
    ipsets = {i.name: i for i in declared if isinstance(i, Ipset)}
    # (type() first: the elements of a hash set, 100,000 say, cannot clash and cost one test each)
    kinds = {NftSet, Ipset, IpsetEntry} | ({NftElement} if intervals else set())

    def keeper(item: Item, owners: frozenset[str]) -> str | None:
        """The first owner that keeps ``item``: held, or still declaring it (not one whose file is gone)."""
        keeping = [o for o in owners if o in held or (o in policies and item in policies[o].items)]
        return min(keeping) if keeping else None

    def earliest(table: dict[Any, tuple[str, Any]], key: object, item: Item, owners: frozenset[str]) -> None:
        """The declaration in force under its first keeper, unless one before it holds the key."""
        name = keeper(item, owners)
        if name is not None and name <= table.get(key, (name,))[0]:
            table[key] = (name, item)

    seeded: dict[object, list[tuple[str, str]]] = {}  # set or ipset -> (keeper, element or entry)
    for item in foreign:
        if (member := set_member(item)) is not None and (
            member[0] in intervals or (member[0][0] == "ipset" and member[0][1] in ipsets)
        ):
            seeded.setdefault(member[0], []).append((SOMEONE_ELSE, member[1]))
    for item, owners in owned.items():
        if type(item) not in kinds:
            continue
        if isinstance(item, NftElement) and (item.family, item.set) in intervals:
            if (name := keeper(item, owners)) is not None:
                seeded.setdefault((item.family, item.set), []).append((name, item.element))
        elif isinstance(item, IpsetEntry) and item.ipset in ipsets:
            if (name := keeper(item, owners)) is not None:
                seeded.setdefault(("ipset", item.ipset), []).append((name, item.entry))
        elif isinstance(item, NftSet) and (item.family, item.name) in sets:
            earliest(first, (item.family, item.name), item, owners)
        elif isinstance(item, Ipset) and item.name in ipsets:
            earliest(first_ipset, item.name, item, owners)
    seeded_as: dict[object, Item] = {}
    for key, found in seeded.items():
        if key in intervals:
            seeded_as[key] = interval_sets[key]
            canonical: Callable[[str], str] = partial(canonical_element, intervals[key], True)
            pairs_of: Callable[[list[str]], list[tuple[str, str]]] = partial(conflicts, intervals[key])
            item_of: Callable[[str], Item] = partial(NftElement, *key)
        else:
            ipset = seeded_as[key] = ipsets[key[1]]  # type: ignore[index]  # ("ipset", name)
            canonical, pairs_of = partial(canonical_entry, ipset.type, ipset.family), partial(overlapping, ipset.type)
            item_of = partial(IpsetEntry, ipset.name)
        spans[key] = _in_force_spans(found, canonical, pairs_of, _held_there(present, item_of))
    return seeded_as


def _held_there(present: Callable[[Item], bool] | None, item_of: Callable[[str], Item]) -> Callable[[str], bool]:
    """Whether the firewall holds an element (by its text) of one set; without ``present``, none is known to be there."""
    if present is None:
        return lambda text: False
    return lambda text: present(item_of(text))


def in_canonical_form(canonical: Callable[[str], str], text: str) -> bool:
    """``text`` is of the set's type, in the form fwrecon writes and compares (``canonical`` raises ValueError on others)."""
    try:
        return canonical(text) == text
    except ValueError:
        return False


def _in_force_spans(
    found: list[tuple[str, str]],
    canonical: Callable[[str], str],
    pairs_of: Callable[[list[str]], list[tuple[str, str]]],
    there: Callable[[str], bool],
) -> dict[str, str]:
    """What the state file says is in force in one set, element -> keeper:
    only the elements in the form fwrecon writes (a forged or stale file
    may say anything), and of two that overlap (a crash before nft refused
    one, a hand edit) only the first keeper's, so the other's policy is
    judged as bringing it in.  Unless one is someone else's (read from the
    firewall) and the firewall holds the other too (``there``: an ipset type
    the kernel lets nest): then neither is new."""
    spans: dict[str, str] = {}
    for name, text in sorted(found):
        if in_canonical_form(canonical, text):
            spans.setdefault(text, name)
    for one, other in pairs_of(list(spans)):
        if one in spans and other in spans:
            keepers = (spans[one], spans[other])
            if SOMEONE_ELSE in keepers and (keepers == (SOMEONE_ELSE,) * 2 or there(one if keepers[0] else other)):
                continue
            del spans[max(one, other, key=lambda e: (spans[e], e))]
    return spans


def _overlaps_across(
    policy: Policy,
    theirs: dict[str, str],
    mine: set[str],
    pairs_of: Callable[[list[str]], list[tuple[str, str]]],
    item_of: Callable[[str], Item],
    refused: str,
) -> list[PolicyError]:
    """The errors for ``mine`` (one policy's new elements of one set, the
    suspects among them) that overlap an element of the earlier policies
    (``theirs``: element -> policy).  Nothing to compare without suspects."""
    if not mine:
        return []
    found = []
    for pair in pairs_of([*theirs, *mine]):
        ours, other = [e for e in pair if e in mine], [e for e in pair if e not in mine]
        if ours and other:
            holder = theirs[other[0]]
            whose = ", which someone else put there" if holder == SOMEONE_ELSE else f" of policy {holder!r}"
            message = f"{ours[0]!r} overlaps {other[0]!r}{whose}; {refused}"
            found.append(PolicyError(policy.file, policy.key_of(item_of(ours[0])), message))
    return found


def _toml_message(exc: tomllib.TOMLDecodeError, text: str) -> str:
    """tomllib says "(at end of document)" without line and column; add them."""
    message = str(exc)
    suffix = "(at end of document)"
    if message.endswith(suffix):
        line = text.count("\n") + 1
        column = len(text) - text.rfind("\n")
        message = f"{message[: -len(suffix)]}(at end of document, line {line}, column {column})"
    return message


def _in_tag_namespace(args: list[Any], index: int) -> bool:
    """Whether ``args[index]`` is a comment (``--comment X``, ``--comment=X``) in fwrecon's tag namespace."""
    arg = args[index]
    if arg.startswith("--comment="):
        value = arg[len("--comment=") :]
    elif index > 0 and args[index - 1] == "--comment":
        value = arg
    else:
        return False
    return TAG_PREFIX in value.lower()


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, int, float, bool)) else type(value).__name__


def _type_name(value: Any) -> str:
    names = {str: "string", int: "integer", float: "float", bool: "boolean", list: "array", dict: "table"}
    return names.get(type(value), type(value).__name__)


class _Reuse:
    """The set elements and ipset entries of a file's last version, by set
    and text: an edit of one element among 100,000 gets the other 99,999 as
    the same objects (equal values, hashes computed), which every later
    comparison with what fwrecon owns and the firewall holds then settles by
    identity instead of a field-by-field ``==`` in Python."""

    def __init__(self, items: Collection[Item]) -> None:
        self._items = items
        self._by_set: dict[object, dict[str, Item]] | None = None

    def declared(self, item: Item) -> bool:
        """Whether the last version held ``item`` (a set declared exactly so)."""
        return item in self._items

    def of_set(self, key: object) -> dict[str, Item]:
        """The last version's members of one set ((family, name)) or ipset (("ipset", name)), by text."""
        if self._by_set is None:
            self._by_set = {}
            for item in self._items:
                if (member := set_member(item)) is not None:
                    self._by_set.setdefault(member[0], {})[member[1]] = item
        return self._by_set.get(key, {})


class _PolicyParser:
    """Walks one file's TOML document, collecting items and errors."""

    def __init__(self, label: str, reuse: _Reuse | None = None) -> None:
        self.label = label
        self.reuse = reuse if reuse is not None else _Reuse(())
        self.errors: list[PolicyError] = []
        self.items: set[Item] = set()
        self.keys: dict[Item, str] = {}  # where each item was declared, for error messages
        self.references: list[Reference] = []

    def add(self, item: Item, key: str) -> None:
        self.items.add(item)
        self.keys.setdefault(item, key)

    def error(self, key: str, message: str) -> None:
        self.errors.append(PolicyError(self.label, key, message))

    # -- structure -----------------------------------------------------------

    def parse(self, name: str, data: dict[str, Any]) -> Policy:
        self.unknown_keys("", data, TOP_KEYS)
        description = data.get("description", "")
        if not isinstance(description, str):
            self.error("description", f"expected a string, got {_type_name(description)}")
            description = ""
        scope_kinds: tuple[tuple[ScopeKind, tuple[str, ...]], ...] = (("zone", ZONE_KEYS), ("policy", POLICY_KEYS))
        for kind, allowed in scope_kinds:
            for scope_name, body in self.table(kind, data.get(kind, {})).items():
                key = f"{kind}.{scope_name}"
                if not _SCOPE_NAME.match(scope_name):
                    self.error(key, f"{kind} name {scope_name!r} may only hold letters, digits, '_' and '-'")
                    continue
                self.references.append(Reference(key, kind, scope_name))
                self.scope_items(Scope(kind, scope_name), key, self.table(key, body), allowed)
        self.direct(self.table("direct", data.get("direct", {})))
        self.nft(self.table("nft", data.get("nft", {})))
        for ipset_name, body in self.table("ipset", data.get("ipset", {})).items():
            self.ipset(ipset_name, self.table(f"ipset.{ipset_name}", body))
        return Policy(name, self.label, description, frozenset(self.items), tuple(self.references), self.keys)

    def table(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {_type_name(value)}")
            return {}
        return value

    def unknown_keys(self, prefix: str, table: dict[str, Any], allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for key in table:
            if key not in allowed:
                path = f"{prefix}.{key}" if prefix else key
                self.error(path, f"unknown key (expected one of: {', '.join(allowed)})")

    def strings(self, key: str, value: Any) -> list[tuple[str, str]]:
        """(key path of element, element) for an array of strings."""
        if not isinstance(value, list):
            self.error(key, f"expected an array of strings, got {_type_name(value)}")
            return []
        out = []
        for index, element in enumerate(value):
            if isinstance(element, str):
                out.append((f"{key}[{index}]", element))
            else:
                self.error(f"{key}[{index}]", f"expected a string, got {_type_name(element)}")
        return out

    # -- zones and policies ----------------------------------------------------

    def scope_items(self, scope: Scope, prefix: str, body: dict[str, Any], allowed: tuple[str, ...]) -> None:
        self.unknown_keys(prefix, body, allowed)
        simple: dict[str, Callable[[str, str], Item | None]] = {
            "services": lambda k, v: self.named(k, v, "service", lambda n: Service(scope, n)),
            "ports": lambda k, v: self.port(k, v, lambda p, proto: Port(scope, p, proto)),
            "source_ports": lambda k, v: self.port(k, v, lambda p, proto: SourcePort(scope, p, proto)),
            "protocols": lambda k, v: self.protocol(k, v, scope),
            "icmp_blocks": lambda k, v: self.named(k, v, "icmp_type", lambda n: IcmpBlock(scope, n)),
            "rich_rules": lambda k, v: self.rich_rule(k, v, scope),
            "sources": lambda k, v: self.source(k, v, scope),
            "interfaces": lambda k, v: self.interface(k, v, scope),
        }
        for key, build in simple.items():
            if key in body and key in allowed:
                for path, value in self.strings(f"{prefix}.{key}", body[key]):
                    item = build(path, value)
                    if item is not None:
                        self.add(item, path)
        switches: dict[str, Callable[[Scope], Item]] = {"masquerade": Masquerade, "forward": Forward}
        for key, build_switch in switches.items():
            if key in body and key in allowed:
                value = body[key]
                if not isinstance(value, bool):
                    self.error(f"{prefix}.{key}", f"expected true or false, got {_type_name(value)}")
                elif value:
                    self.add(build_switch(scope), f"{prefix}.{key}")
        if "forward_ports" in body:
            self.forward_ports(f"{prefix}.forward_ports", body["forward_ports"], scope)

    def named(self, key: str, value: str, kind: str, build: Callable[[str], Item]) -> Item | None:
        if not _NAME.match(value):
            self.error(key, f"{_show(value)} is not a valid {kind.replace('_', ' ')} name")
            return None
        self.references.append(Reference(key, kind, value))
        return build(value)

    def port(self, key: str, value: str, build: Callable[[str, str], Item]) -> Item | None:
        port, _, proto = value.strip().partition("/")
        try:
            if proto not in PORT_PROTOCOLS:
                raise ValueError("bad protocol")
            return build(canonical_port(port), proto)
        except ValueError as exc:
            detail = "" if str(exc) == "bad protocol" or "is not PORT" in str(exc) else f" ({exc})"
            self.error(key, f"{_show(value)} is not PORT[-PORT]/PROTO with PROTO one of {'|'.join(PORT_PROTOCOLS)}{detail}")
            return None

    def protocol(self, key: str, value: str, scope: Scope) -> Item | None:
        if value.isascii() and value.isdigit():
            if not 0 <= int(value) <= 255:
                self.error(key, f"{_show(value)} is not a protocol number (0-255)")
                return None
            return Protocol(scope, value)
        try:
            socket.getprotobyname(value)
        except (OSError, ValueError):  # ValueError: embedded NUL
            self.error(key, f"{_show(value)} is not a known IP protocol (see /etc/protocols)")
            return None
        return Protocol(scope, value)

    def rich_rule(self, key: str, value: str, scope: Scope) -> Item | None:
        try:
            parsed = parse_rich_rule(value)
        except RichRuleError as exc:
            self.error(key, f"invalid rich rule: {exc}")
            return None
        self.references.extend(Reference(key, "service", s) for s in parsed.services)
        self.references.extend(Reference(key, "icmp_type", i) for i in parsed.icmp_types)
        return RichRule(scope, parsed.canonical)

    def source(self, key: str, value: str, scope: Scope) -> Item | None:
        text = value.strip()
        if _MAC.match(text):
            return Source(scope, text.upper())
        if text.startswith("ipset:") and _NAME.match(text[len("ipset:") :]):
            return Source(scope, text)
        try:
            if "%" in text:  # firewalld refuses IPv6 scope ids (fe80::1%eth0)
                raise ValueError(text)
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            self.error(key, f"{_show(value)} is not an address, network, MAC address or ipset:NAME")
            return None
        return Source(scope, text)

    def interface(self, key: str, value: str, scope: Scope) -> Item | None:
        if not _INTERFACE.match(value) or value in (".", ".."):
            self.error(key, f"{_show(value)} is not a valid interface name (1-15 characters, no '/', ':', '!', '*' or spaces)")
            return None
        return Interface(scope, value)

    def forward_ports(self, key: str, value: Any, scope: Scope) -> None:
        if not isinstance(value, list):
            self.error(key, f"expected an array of tables, got {_type_name(value)}")
            return
        for index, entry in enumerate(value):
            path = f"{key}[{index}]"
            if not isinstance(entry, dict):
                self.error(
                    path, f'expected a table like {{ port = "80", protocol = "tcp", to_port = "8080" }}, got {_type_name(entry)}'
                )
                continue
            self.unknown_keys(path, entry, FORWARD_PORT_KEYS)
            fields = {}
            ok = True
            for field_name in FORWARD_PORT_KEYS:
                if field_name in ("port", "protocol") and field_name not in entry:
                    self.error(f"{path}.{field_name}", "missing")
                    ok = False
                    continue
                raw = entry.get(field_name, "")
                if isinstance(raw, int) and not isinstance(raw, bool) and field_name in ("port", "to_port"):
                    raw = str(raw)
                if not isinstance(raw, str):
                    self.error(f"{path}.{field_name}", f"expected a string, got {_type_name(raw)}")
                    ok = False
                    continue
                fields[field_name] = raw.strip()
            if not ok:
                continue
            ok = self.forward_port_fields(path, fields)
            if ok:
                to_port = canonical_port(fields["to_port"]) if fields["to_port"] else ""
                self.add(ForwardPort(scope, canonical_port(fields["port"]), fields["protocol"], to_port, fields["to_addr"]), path)

    def forward_port_fields(self, path: str, fields: dict[str, str]) -> bool:
        ok = True
        for name in ("port", "to_port"):
            if not fields[name] and name == "to_port":
                continue
            try:
                canonical_port(fields[name])
            except ValueError:
                self.error(f"{path}.{name}", f"{_show(fields[name])} is not PORT or PORT-PORT")
                ok = False
        if fields["protocol"] not in PORT_PROTOCOLS:
            self.error(f"{path}.protocol", f"{_show(fields['protocol'])} is not one of {'|'.join(PORT_PROTOCOLS)}")
            ok = False
        if fields["to_addr"]:
            try:
                if "%" in fields["to_addr"]:  # firewalld refuses IPv6 scope ids
                    raise ValueError(fields["to_addr"])
                ipaddress.ip_address(fields["to_addr"])
            except ValueError:
                self.error(f"{path}.to_addr", f"{_show(fields['to_addr'])} is not an IP address")
                ok = False
        if not fields["to_port"] and not fields["to_addr"]:
            self.error(path, "needs to_port, to_addr or both")
            ok = False
        return ok

    # -- direct ----------------------------------------------------------------

    def direct(self, body: dict[str, Any]) -> None:
        self.arrays_of_tables(
            "direct",
            body,
            {
                "chain": (DIRECT_CHAIN_KEYS, lambda path, entry: self.direct_entry(path, "chain", entry)),
                "rule": (DIRECT_RULE_KEYS, lambda path, entry: self.direct_entry(path, "rule", entry)),
            },
        )

    def arrays_of_tables(
        self,
        prefix: str,
        body: dict[str, Any],
        sections: dict[str, tuple[tuple[str, ...], Callable[[str, dict[str, Any]], Item | None]]],
    ) -> None:
        """``[[prefix.section]]`` entries: check the shape and keys, then build each item."""
        self.unknown_keys(prefix, body, sections)
        for section, (keys, build) in sections.items():
            entries = body.get(section, [])
            key = f"{prefix}.{section}"
            if not isinstance(entries, list):
                self.error(key, f"expected an array of tables ([[{key}]]), got {_type_name(entries)}")
                continue
            for index, entry in enumerate(entries):
                path = f"{key}[{index}]"
                if not isinstance(entry, dict):
                    self.error(path, f"expected a table, got {_type_name(entry)}")
                    continue
                self.unknown_keys(path, entry, keys)
                item = build(path, entry)
                if item is not None:
                    self.add(item, path)

    def direct_entry(self, path: str, section: str, entry: dict[str, Any]) -> Item | None:
        errors_before = len(self.errors)
        family = self.required_string(path, entry, "family")
        table = self.required_string(path, entry, "table")
        chain = self.required_string(path, entry, "chain")
        if family is not None and family not in DIRECT_TABLES:
            self.error(f"{path}.family", f"{_show(family)} is not one of {'|'.join(DIRECT_TABLES)}")
        elif family is not None and table is not None and table not in DIRECT_TABLES[family]:
            self.error(f"{path}.table", f"{_show(table)} is not a table of family {family} ({'|'.join(DIRECT_TABLES[family])})")
        if chain is not None and not DIRECT_CHAIN_RE.fullmatch(chain):
            self.error(f"{path}.chain", f"{_show(chain)} is not a chain name ({DIRECT_CHAIN_TEXT})")
        # A name that is None is missing, an error required_string reported: testing it only tells mypy.
        if section == "chain":
            if len(self.errors) > errors_before or family is None or table is None or chain is None:
                return None
            return DirectChain(family, table, chain)
        priority = entry.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            self.error(f"{path}.priority", f"expected an integer, got {_type_name(priority)}")
        elif not DIRECT_PRIORITY_RANGE[0] <= priority <= DIRECT_PRIORITY_RANGE[1]:
            self.error(
                f"{path}.priority", f"{priority} is out of range ({DIRECT_PRIORITY_RANGE[0]} to {DIRECT_PRIORITY_RANGE[1]})"
            )
        args = entry.get("args")
        if args is None:
            self.error(f"{path}.args", 'missing (the rule\'s arguments, e.g. ["-p", "tcp", "-j", "ACCEPT"])')
        elif not isinstance(args, list) or not args:
            self.error(f"{path}.args", "expected a non-empty array of strings")
        else:
            for index, arg in enumerate(args):
                if not isinstance(arg, str) or not arg or LINE_BREAK_OR_NUL.search(arg):
                    self.error(f"{path}.args[{index}]", f"expected a non-empty single-line string, got {_show(arg)}")
                elif _in_tag_namespace(args, index):
                    self.error(
                        f"{path}.args[{index}]",
                        f"{_show(arg)}: comments starting with {TAG_PREFIX!r} are fwrecon's ownership tags; a policy may not write them",
                    )
        if len(self.errors) > errors_before or family is None or table is None or chain is None or args is None:
            return None
        return DirectRule(family, table, chain, priority, tuple(args))

    # -- nftables ---------------------------------------------------------------

    def nft(self, body: dict[str, Any]) -> None:
        self.arrays_of_tables(
            "nft",
            body,
            {
                "chain": (NFT_CHAIN_KEYS, self.nft_chain),
                "rule": (NFT_RULE_KEYS, self.nft_rule),
                "set": (NFT_SET_KEYS, self.nft_set),
            },
        )

    def nft_family(self, path: str, entry: dict[str, Any]) -> str | None:
        """The entry's nft family, or None (missing or unknown: said)."""
        family = self.required_string(path, entry, "family")
        if family is not None and family not in NFT_FAMILIES:
            self.error(f"{path}.family", f"{_show(family)} is not one of {'|'.join(NFT_FAMILIES)}")
            return None
        return family

    def nft_family_and_chain(self, path: str, entry: dict[str, Any]) -> tuple[str, str] | None:
        errors_before = len(self.errors)
        family = self.nft_family(path, entry)
        chain = self.required_string(path, entry, "chain")
        ok = len(self.errors) == errors_before
        if chain is not None and not NFT_NAME_RE.fullmatch(chain):
            self.error(f"{path}.chain", f"{_show(chain)} is not a chain name ({NFT_NAME_TEXT})")
            ok = False
        if not ok or family is None or chain is None:  # None: missing, reported by required_string
            return None
        return family, chain

    def nft_chain(self, path: str, entry: dict[str, Any]) -> Item | None:
        errors_before = len(self.errors)
        names = self.nft_family_and_chain(path, entry)
        hook = entry.get("hook", "")
        if not isinstance(hook, str):
            self.error(f"{path}.hook", f"expected a string, got {_type_name(hook)}")
            hook = ""
        elif hook and names and hook not in NFT_HOOKS[names[0]]:
            allowed = "|".join(NFT_HOOKS[names[0]]) or "none supported"
            self.error(f"{path}.hook", f"{_show(hook)} is not a {names[0]} hook ({allowed})")
        base_only = {k: entry[k] for k in ("type", "priority", "policy") if k in entry}
        if not hook:
            for key in base_only:
                self.error(f"{path}.{key}", "only a base chain (one with a hook) has a type, priority or policy")
        chain_type = base_only.get("type", "filter" if hook else "")
        if hook and chain_type not in NFT_CHAIN_TYPES:
            self.error(f"{path}.type", f"{_show(chain_type)} is not one of {'|'.join(NFT_CHAIN_TYPES)}")
        priority = base_only.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            self.error(f"{path}.priority", f"expected an integer, got {_type_name(priority)}")
        elif not NFT_PRIORITY_RANGE[0] <= priority <= NFT_PRIORITY_RANGE[1]:
            self.error(
                f"{path}.priority",
                f"{priority} is out of range ({NFT_PRIORITY_RANGE[0]} to {NFT_PRIORITY_RANGE[1]}; the kernel keeps 32 bits)",
            )
        chain_policy = base_only.get("policy", "")
        if hook and chain_policy not in ("", *NFT_CHAIN_POLICIES):
            self.error(f"{path}.policy", f"{_show(chain_policy)} is not {'|'.join(NFT_CHAIN_POLICIES)}")
        if len(self.errors) > errors_before or names is None:
            return None
        family, chain = names
        # nft reports a base chain without a policy as "policy accept": say so here too
        return NftChain(family, chain, chain_type, hook, priority if hook else 0, (chain_policy or "accept") if hook else "")

    def nft_rule(self, path: str, entry: dict[str, Any]) -> Item | None:
        errors_before = len(self.errors)
        names = self.nft_family_and_chain(path, entry)
        rule = self.required_string(path, entry, "rule")
        folded = " ".join(rule.split()) if rule is not None else ""
        if rule is not None:
            problem = "is empty" if not folded else nft_rule_problem(rule)
            if problem:
                self.error(f"{path}.rule", problem)
        if len(self.errors) > errors_before or names is None or rule is None:
            return None
        return NftRule(names[0], names[1], folded)

    def nft_set(self, path: str, entry: dict[str, Any]) -> Item | None:
        """The set, and each of its elements as an item of its own (added here)."""
        errors_before = len(self.errors)
        family = self.nft_family(path, entry)
        name = self.required_string(path, entry, "name")
        set_type = self.required_string(path, entry, "type")
        if name is not None and not NFT_NAME_RE.fullmatch(name):
            self.error(f"{path}.name", f"{_show(name)} is not a set name ({NFT_NAME_TEXT})")
        if set_type is not None and set_type not in SET_TYPES:
            self.error(f"{path}.type", f"{_show(set_type)} is not one of {'|'.join(SET_TYPES)}")
        flags: set[str] = set()
        for key, flag in self.strings(f"{path}.flags", entry.get("flags", [])):
            if flag in REFUSED_FLAGS:
                self.error(key, f"{_show(flag)} is not supported: {REFUSED_FLAGS[flag]}")
            elif flag not in SET_FLAGS:
                self.error(key, f"{_show(flag)} is not one of {'|'.join(SET_FLAGS)}")
            flags.add(flag)
        if len(self.errors) > errors_before or family is None or name is None or set_type is None:
            return None
        interval = "interval" in flags
        nft_set = NftSet(family, name, set_type, tuple(sorted(flags)))
        # The last version's elements of this very set are canonical forms
        # checked then, and a canonical form is its own (`canonical_element`).
        checked = self.reuse.of_set((family, name)) if self.reuse.declared(nft_set) else {}
        elements: dict[str, str] = {}  # canonical element -> its key
        for key, text in self.strings(f"{path}.elements", entry.get("elements", [])):
            if text in checked:
                elements.setdefault(text, key)
                continue
            try:
                element = canonical_element(set_type, interval, text)
            except ValueError as exc:
                self.error(key, str(exc))
                continue
            elements.setdefault(element, key)
        if interval:
            for first, second in conflicts(set_type, elements):
                self.error(
                    elements[second], f"{second!r} overlaps {first!r} ({elements[first]}); nft refuses overlapping intervals"
                )
        if len(self.errors) > errors_before:
            return None
        reuse = self.reuse.of_set((family, name)).get
        for element, key in elements.items():
            self.add(reuse(element) or NftElement(family, name, element), key)
        return nft_set

    # -- firewalld ipsets ----------------------------------------------------------

    def ipset(self, name: str, body: dict[str, Any]) -> None:
        """The ipset, and each of its entries as an item of its own."""
        path = f"ipset.{name}"
        errors_before = len(self.errors)
        self.unknown_keys(path, body, IPSET_KEYS)
        if not IPSET_NAME_RE.fullmatch(name) or len(name) > IPSET_NAME_MAX:
            self.error(path, f"ipset name {name!r} may only hold {IPSET_NAME_TEXT}")
        ipset_type = self.required_string(path, body, "type")
        if ipset_type is not None and ipset_type not in IPSET_TYPES:
            self.error(f"{path}.type", f"{_show(ipset_type)} is not one of {'|'.join(IPSET_TYPES)}")
            ipset_type = None
        family = body.get("family", default_family(ipset_type or ""))
        if ipset_type == "hash:mac" and "family" in body:
            self.error(f"{path}.family", "a hash:mac ipset has no family")
        elif not isinstance(family, str) or (ipset_type != "hash:mac" and family not in IPSET_FAMILIES):
            self.error(f"{path}.family", f"{_show(family)} is not one of {'|'.join(IPSET_FAMILIES)}")
        options = self.ipset_options(f"{path}.options", self.table(f"{path}.options", body.get("options", {})))
        if len(self.errors) > errors_before or ipset_type is None or options is None:
            return
        entries: dict[str, str] = {}  # canonical entry -> its key
        for key, text in self.strings(f"{path}.entries", body.get("entries", [])):
            try:
                entries.setdefault(canonical_entry(ipset_type, family, text), key)
            except ValueError as exc:
                self.error(key, str(exc))
        maxelem = int(options.get("maxelem", IPSET_OPTIONS["maxelem"]))
        if len(entries) > maxelem:
            self.error(f"{path}.entries", f"{len(entries)} entries, more than maxelem {maxelem} (raise options.maxelem)")
        if len(self.errors) == errors_before:
            for other, entry in overlapping(ipset_type, entries):
                self.error(entries[entry], f"{entry!r} overlaps {other!r} ({entries[other]}); {OVERLAP_REFUSED}")
        if len(self.errors) > errors_before:
            return
        ipset = Ipset(name, ipset_type, family, canonical_options(options))
        self.add(ipset, path)
        reuse = self.reuse.of_set(("ipset", name)).get
        for entry, key in entries.items():
            self.add(reuse(entry) or IpsetEntry(name, entry), key)

    def ipset_options(self, path: str, table: dict[str, Any]) -> dict[str, str] | None:
        """The creation options as firewalld takes them (strings), or None after an error."""
        found: dict[str, str] = {}
        ok = True
        for key, value in table.items():
            if key in REFUSED_OPTIONS:
                self.error(f"{path}.{key}", f"not supported: {REFUSED_OPTIONS[key]}")
            elif key not in IPSET_OPTIONS:
                self.error(f"{path}.{key}", f"unknown option (expected one of: {', '.join(IPSET_OPTIONS)})")
            elif isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**32:
                self.error(f"{path}.{key}", f"expected a positive integer below 2^32, got {_show(value)}")
            else:
                found[key] = str(value)
                continue
            ok = False
        return found if ok else None

    def required_string(self, path: str, entry: dict[str, Any], key: str) -> str | None:
        if key not in entry:
            self.error(f"{path}.{key}", "missing")
            return None
        value = entry[key]
        if not isinstance(value, str):
            self.error(f"{path}.{key}", f"expected a string, got {_type_name(value)}")
            return None
        return value
