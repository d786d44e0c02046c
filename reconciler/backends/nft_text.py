"""The text side of nftables: pure functions, no processes.

Canonical forms, reading ``nft -j list table``, building the one ``nft -f``
script of a batch, and reading nft's errors and ``nft monitor`` lines.
`nftables.NftablesBackend` runs nft.

Identity and ownership
    A chain is identified by (family, name) and its spec (type, hook, priority,
    policy), compared in canonical form (`canonical_chain`: a base chain's
    missing policy is ``accept``; a regular chain has no type/priority/policy).
    A rule carries the comment ``fwrecon:<16 hex>`` (`Item.tag`).  A tag is a
    hash, so the backend learns tag → item from observe's ``known``; rules whose tag
    is unknown, and untagged (foreign) rules, are not reported and never
    touched.  Because the comment holds the tag, a rule text may not carry a
    comment of its own (nft allows one per rule): such a rule is refused with
    `OperationFailed` (code ``NFT_INVALID``) before anything runs, and by
    `check`; so are rule texts with an unquoted ``;`` or ``#`` or a newline
    (they would smuggle a second command into the script, or swallow the tag).

Batches
    The ops of one `apply` call (a transaction's run of nft ops) become one
    ``nft -f -`` script, which the kernel commits all or nothing.  It is built
    on the listing of each family involved that the plan was made on (the
    ``seen`` view's reads, dropped once the family was written), else on a
    fresh listing; a
    script nft refuses after being built on observe's listing is built again
    on a fresh one (the handles may have changed meanwhile) before the
    refusal counts.  Adding what is there and removing what is gone are
    `Outcome.UNCHANGED` and emit nothing, so no duplicates arise.  A chain is
    deleted only if no rule would remain in it (nft would silently delete
    foreign rules along with it); the exception is a chain being *redefined*
    in the same batch (removed and added again under the same name, which is
    how a changed hook or priority is planned): a policy-only change becomes
    an in-place ``add chain`` and a type/hook/priority change deletes and
    recreates the chain and re-adds fwrecon's own rules in it, in order
    (refused if foreign rules are in it).  A family's table is deleted in the same transaction
    when the batch leaves it with no chains and nothing else in it.  If nft
    refuses the script, its ``/dev/stdin:LINE:...: Error: ...`` is mapped back
    to the op that produced that line.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import BackendUnavailable, OperationFailed
from ..limits import NFT_FAMILIES, NFT_NAME_RE, NFT_NAME_TEXT, NFT_PRIORITY_RANGE, nft_rule_problem
from ..model import NFT_ITEMS, NFT_TABLE, TAG_PREFIX, TAG_RE, Item, NftChain, NftElement, NftRule, NftSet, Op, Outcome
from ..nftsets import SET_FLAGS, SET_TYPES, listed_element

FAMILIES = NFT_FAMILIES
ERROR_CODE = "NFT_ERROR"  # nft refused the script
INVALID_CODE = "NFT_INVALID"  # refused before running nft (bad name or rule text)
CONFLICT_CODE = "NFT_CHAIN_CONFLICT"  # a chain of that name exists with another hook/priority
IN_USE_CODE = "NFT_CHAIN_IN_USE"  # deleting the chain would delete rules that stay

WORD_RE = re.compile(r"[a-z]+")
# What an element's text may hold (addresses, networks, ranges, ports, MACs): nothing that ends a statement.
ELEMENT_RE = re.compile(r"[0-9A-Fa-f.:/-]{1,100}")
ELEMENTS_PER_LINE = 4096  # one "add element" statement per this many (nft takes any number; errors stay short)
ERROR_LINE_RE = re.compile(r"^(?P<file>\S+?):(?P<line>\d+):(?P<cols>\d+(?:-\d+)?): Error: (?P<text>.*)$")
GENERATION_RE = re.compile(r"^# new generation (?P<gen>\d+) by process (?P<pid>\d+)")

# Named chain priorities (nft(8), "CHAIN PRIORITIES"): family -> name -> value.
_STANDARD_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
NAMED_PRIORITIES: dict[str, dict[str, int]] = {
    "ip": _STANDARD_PRIORITIES,
    "ip6": _STANDARD_PRIORITIES,
    "inet": _STANDARD_PRIORITIES,
    "arp": {"filter": 0},
    "netdev": {"filter": 0},
    "bridge": {"dstnat": -300, "filter": -200, "out": 100, "srcnat": 300},
}
_PRIORITY_RE = re.compile(r"\s*(?P<name>[a-z]+)\s*(?:(?P<sign>[+-])\s*(?P<offset>\d+))?\s*")


# -- canonical forms ---------------------------------------------------------------


def parse_priority(family: str, value: int | str) -> int:
    """A chain priority as a number: ``-100``, ``"dstnat"``, ``"filter + 10"`` → int.

    Raises ValueError for a name the family does not know.
    """
    if isinstance(value, int):
        return value
    text = str(value).strip()
    with contextlib.suppress(ValueError):
        return int(text)
    match = _PRIORITY_RE.fullmatch(text)
    names = NAMED_PRIORITIES.get(family, {})
    if not match or match["name"] not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ValueError(f"unknown {family} chain priority {value!r} (named priorities: {known})")
    offset = int(match["offset"] or 0)
    return names[match["name"]] + (-offset if match["sign"] == "-" else offset)


def canonical_chain(chain: NftChain) -> NftChain:
    """The form the kernel reports: regular chains carry no spec; base chains a policy."""
    if not chain.hook:
        return NftChain(chain.family, chain.chain)
    return replace(chain, policy=chain.policy or "accept")


rule_problem = nft_rule_problem


@functools.lru_cache(maxsize=1 << 16)
def item_problem(item: Item) -> str | None:
    """Why ``item`` cannot go into an nft script as is (bad family, name, words, rule text)."""
    if not isinstance(item, NFT_ITEMS):
        return f"the nftables backend cannot hold {item.describe()}"
    if item.family not in FAMILIES:
        return f"unknown nftables family {item.family!r} (one of {', '.join(FAMILIES)})"
    if isinstance(item, (NftSet, NftElement)):
        name = item.name if isinstance(item, NftSet) else item.set
        if not NFT_NAME_RE.fullmatch(name):
            return f"invalid nft set name {name!r} ({NFT_NAME_TEXT})"
        if isinstance(item, NftElement):
            return None if ELEMENT_RE.fullmatch(item.element) else f"invalid set element {item.element!r}"
        if item.type not in SET_TYPES:
            return f"unsupported set type {item.type!r} (one of {', '.join(SET_TYPES)})"
        unknown = [flag for flag in item.flags if flag not in SET_FLAGS]
        return f"unsupported set flag {unknown[0]!r} (any of {', '.join(SET_FLAGS)})" if unknown else None
    if not NFT_NAME_RE.fullmatch(item.chain):
        return f"invalid nft chain name {item.chain!r} ({NFT_NAME_TEXT})"
    if isinstance(item, NftChain):
        if item.hook:
            if not NFT_PRIORITY_RANGE[0] <= item.priority <= NFT_PRIORITY_RANGE[1]:
                return f"chain priority {item.priority} is out of range (32 bits)"
            for what, word in (("type", item.type), ("hook", item.hook)):
                if not WORD_RE.fullmatch(word):
                    return f"invalid chain {what} {word!r}"
            if item.policy not in ("", "accept", "drop"):
                return f"invalid chain policy {item.policy!r} (accept or drop)"
        return None
    return rule_problem(item.rule)


# -- reading `nft -j list table` ----------------------------------------------------


@dataclass(frozen=True)
class RuleEntry:
    """One rule as listed: its chain, handle, comment (None if it has none) and
    its statements as ``nft -s -j`` lists them (``expr``: for proving ownership)."""

    chain: str
    handle: int
    comment: str | None
    expr: Any = field(default=None, compare=False, hash=False)

    @property
    def tag(self) -> str | None:
        return self.comment if self.comment is not None and TAG_RE.fullmatch(self.comment) else None


def trusted(listing: TableListing, proven: Callable[[RuleEntry], bool]) -> TableListing:
    """``listing`` with the tag taken off every rule whose tag is not ``proven``.

    A tag is a comment anyone can write: a rule counts as fwrecon's item only
    when its statements are exactly the item's.  The others are foreign like
    any untagged rule (never an item's presence, never deleted for it).
    """
    rules = [entry if entry.tag is None or proven(entry) else replace(entry, comment=None) for entry in listing.rules]
    return replace(listing, rules=rules)


@dataclass
class TableListing:
    """fwrecon's table in one family as ``nft -j list table`` shows it."""

    family: str
    exists: bool = False
    chains: dict[str, NftChain] = field(default_factory=dict)  # canonical, in listing order
    rules: list[RuleEntry] = field(default_factory=list)  # in listing (= chain) order
    others: list[str] = field(default_factory=list)  # maps, flowtables, ... ("map foo")
    sets: dict[str, NftSet] = field(default_factory=dict)  # by name
    elements: dict[str, list[str]] = field(default_factory=dict)  # set name -> its elements in canonical form
    odd_elements: dict[str, int] = field(default_factory=dict)  # set name -> elements of forms fwrecon never writes

    def handles(self, family: str, chain: str, tag: str) -> list[int]:
        return [r.handle for r in self.rules if r.chain == chain and r.tag == tag] if family == self.family else []


def parse_listing(family: str, text: str) -> TableListing:
    """Parse ``nft -j list table <family> fwrecon`` (empty text: no table)."""
    listing = TableListing(family)
    if not text.strip():
        return listing
    try:
        objects = json.loads(text)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendUnavailable(f"cannot parse nft -j output for {family} {NFT_TABLE}: {exc}") from exc
    try:
        for obj in objects:
            if not isinstance(obj, dict) or len(obj) != 1:
                continue
            ((kind, body),) = obj.items()
            if kind == "metainfo" or not isinstance(body, dict):
                continue
            if body.get("family", family) != family:
                continue
            if kind == "table":
                if body.get("name") == NFT_TABLE:
                    listing.exists = True
                continue
            if body.get("table") != NFT_TABLE:
                continue
            if kind == "chain":
                name = str(body["name"])
                if "hook" in body:
                    chain = NftChain(
                        family,
                        name,
                        str(body.get("type", "")),
                        str(body["hook"]),
                        parse_priority(family, body.get("prio", 0)),
                        str(body.get("policy", "")),
                    )
                else:
                    chain = NftChain(family, name)
                listing.chains[name] = canonical_chain(chain)
            elif kind == "rule":
                comment = body.get("comment")
                listing.rules.append(
                    RuleEntry(
                        str(body["chain"]), int(body["handle"]), None if comment is None else str(comment), body.get("expr")
                    )
                )
            elif kind == "set":
                _parse_set(listing, family, body)
            else:
                listing.others.append(f"{kind} {body.get('name', '?')}")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # JSON, but not nft's
        raise BackendUnavailable(
            f"nft -j list table {family} {NFT_TABLE} printed JSON that is not an nft listing: {exc!r}"
        ) from exc
    return listing


def _parse_set(listing: TableListing, family: str, body: dict[str, Any]) -> None:
    """One listed set: the set item, its elements in canonical form, and a
    count of those in forms fwrecon never writes (they are someone else's)."""
    name = str(body["name"])
    raw_type = body["type"]
    set_type = " . ".join(map(str, raw_type)) if isinstance(raw_type, list) else str(raw_type)
    raw_flags = body.get("flags", [])
    flags = tuple(sorted(map(str, [raw_flags] if isinstance(raw_flags, str) else raw_flags)))
    listing.sets[name] = NftSet(family, name, set_type, flags)
    elements = listing.elements.setdefault(name, [])
    raw_elements = body.get("elem", [])
    for value in raw_elements if isinstance(raw_elements, list) else [raw_elements]:
        element = listed_element(set_type, value)
        if element is None:
            listing.odd_elements[name] = listing.odd_elements.get(name, 0) + 1
        else:
            elements.append(element)


def _values(expr: Any) -> Iterator[Any]:
    """Every value in a listed rule's ``nft -j`` statements, nested ones too."""
    pending = [expr]
    while pending:
        value = pending.pop()
        yield value
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def writes_sets(expr: Any) -> bool:
    """Whether a listed rule's statements add to, update or delete from a set
    or map from the packet path (``update @s { ip saddr }``, a meter): its
    elements then change without a transaction, and nft lists no flag for it."""
    return any(
        isinstance(value, dict)
        and ("meter" in value or any(isinstance(value.get(key), dict) and "op" in value[key] for key in ("set", "map")))
        for value in _values(expr)
    )


def set_references(expr: Any) -> set[str]:
    """Named sets a listed rule's statements use (``"@name"`` anywhere in the ``nft -j`` form)."""
    return {value[1:] for value in _values(expr) if isinstance(value, str) and value.startswith("@")}


# -- building the script ------------------------------------------------------------


def chain_statement(chain: NftChain, table: str = NFT_TABLE) -> str:
    """``add chain`` for ``chain`` (with its spec when it is a base chain)."""
    chain = canonical_chain(chain)
    head = f"add chain {chain.family} {table} {chain.chain}"
    if not chain.hook:
        return head
    return f"{head} {{ type {chain.type} hook {chain.hook} priority {chain.priority}; policy {chain.policy}; }}"


def set_statement(nft_set: NftSet, table: str = NFT_TABLE) -> str:
    """``add set`` for ``nft_set`` (its elements are statements of their own)."""
    flags = f" flags {','.join(nft_set.flags)};" if nft_set.flags else ""
    return f"add set {nft_set.family} {table} {nft_set.name} {{ type {nft_set.type};{flags} }}"


def untagged(statement: str) -> str:
    """A script line as the policy wrote it: without the ownership tag fwrecon appends."""
    tag_at = statement.find(_TAG_SUFFIX_START)
    return statement[:tag_at] if tag_at >= 0 and statement.endswith('"') else statement


def rule_statement(rule: NftRule, table: str = NFT_TABLE) -> str:
    """``add rule`` for ``rule``, labelled with its ownership tag."""
    return f'add rule {rule.family} {table} {rule.chain} {rule.rule} comment "{rule.tag()}"'


@dataclass
class Script:
    """An nft script plus, per line, the op it came from (None: housekeeping),
    and for a line of many elements each element's op by its first column."""

    lines: list[str] = field(default_factory=list)
    ops: list[Op | None] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    columns: dict[int, list[tuple[int, Op]]] = field(default_factory=dict)  # 0-based line -> (1-based column, op)
    # Per family: the table as it is once the script ran, where that follows
    # from the listing alone (`_successor`), so the next batch of the same
    # reconcile needs no new listing.
    listings: dict[str, TableListing] = field(default_factory=dict)

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def append(self, line: str, op: Op | None) -> None:
        self.lines.append(line)
        self.ops.append(op)

    def op_at(self, line_number: int, column: int | None = None) -> Op | None:
        """The op behind 1-based ``line_number`` (and ``column``) of the script."""
        if not 1 <= line_number <= len(self.ops):
            return None
        parts = self.columns.get(line_number - 1)
        if parts and column is not None:
            return next((op for start, op in reversed(parts) if start <= column), parts[0][1])
        return self.ops[line_number - 1]

    def append_elements(self, run: _Elements) -> None:
        """One statement per `ELEMENTS_PER_LINE` elements, each element's column kept."""
        for start in range(0, len(run.members), ELEMENTS_PER_LINE):
            chunk = run.members[start : start + ELEMENTS_PER_LINE]
            line = f"{run.verb} element {run.family} {NFT_TABLE} {run.set} {{ "
            parts: list[tuple[int, Op]] = []
            for position, (element, op) in enumerate(chunk):
                if position:
                    line += ", "
                parts.append((len(line) + 1, op))
                line += element
            self.columns[len(self.lines)] = parts
            self.append(line + " }", chunk[0][1])


@dataclass
class _Elements:
    """Consecutive element ops of one set and verb: one statement in the script."""

    verb: str  # add | delete
    family: str
    set: str
    members: list[tuple[str, Op]] = field(default_factory=list)


@dataclass
class _FamilyState:
    """One family's table while a batch is being planned on top of its listing."""

    listing: TableListing
    chains: dict[str, NftChain]
    # Indexed by (chain, tag) so that a batch of N rules costs O(N), not O(N^2).
    live: dict[tuple[str, str | None], list[RuleEntry]]  # listed rules not yet deleted by the batch
    added: dict[tuple[str, str], None] = field(default_factory=dict)  # (chain, tag) added by the batch, in order
    statements: list[tuple[str, Op | None] | _Elements] = field(default_factory=list)
    readd: dict[str, list[NftRule]] = field(default_factory=dict)  # chain -> our rules to re-add
    sets: dict[str, NftSet] = field(default_factory=dict)  # as the batch leaves them
    elements: dict[str, set[str]] = field(default_factory=dict)  # set -> its elements as the batch leaves them


def _index(rules: Sequence[RuleEntry]) -> dict[tuple[str, str | None], list[RuleEntry]]:
    index: dict[tuple[str, str | None], list[RuleEntry]] = {}
    for rule in rules:
        index.setdefault((rule.chain, rule.tag), []).append(rule)
    return index


def validate(ops: Sequence[Op]) -> None:
    """Raise OperationFailed (code NFT_INVALID) for the first op nft must not see."""
    sets_seen: set[tuple[str, str]] = set()  # (family, set) of elements whose names were judged
    for op in ops:
        item = op.item
        if type(item) is NftElement and (item.family, item.set) in sets_seen:
            # (the common case of a long list: the element's own text is all there is to judge)
            problem = None if ELEMENT_RE.fullmatch(item.element) else f"invalid set element {item.element!r}"
        else:
            problem = item_problem(item)
            if type(item) is NftElement and problem is None:
                sets_seen.add((item.family, item.set))
        if problem:
            raise OperationFailed(f"nft: {op.item.describe()}: {problem}", INVALID_CODE, op)


def build_script(ops: Sequence[Op], listings: dict[str, TableListing], known: dict[str, NftRule] | None = None) -> Script:
    """The nft script applying ``ops`` on top of ``listings``; pure (no I/O).

    Raises OperationFailed (with the culprit op) for what must not run:
    invalid items, a chain that exists with another hook or priority, a chain
    that still holds rules.  ``known`` maps tags to rules (to re-add fwrecon's
    own rules when a chain is redefined).
    """
    known = known or {}
    validate(ops)
    states = {
        family: _FamilyState(
            listing,
            dict(listing.chains),
            _index(listing.rules),
            sets=dict(listing.sets),
            elements={name: set(elements) for name, elements in listing.elements.items()},
        )
        for family, listing in listings.items()
    }
    outcomes: list[Outcome] = []
    for index, op in enumerate(ops):
        item = op.item
        assert isinstance(item, NFT_ITEMS)  # validate() refused anything else
        state = states.get(item.family)
        if state is None:
            raise OperationFailed(f"nft: {item.family} {NFT_TABLE} was not listed", ERROR_CODE, op)
        if isinstance(item, NftChain):
            outcome = _plan_chain(op, item, state, ops[index + 1 :], known)
        elif isinstance(item, NftSet):
            outcome = _plan_set(op, item, state)
        elif isinstance(item, NftElement):
            outcome = _plan_element(op, item, state)
        else:
            outcome = _plan_rule(op, item, state)
        outcomes.append(outcome)
    script = Script(outcomes=outcomes)
    for family in sorted(states, key=FAMILIES.index):
        state = states[family]
        if not state.statements:
            script.listings[family] = state.listing
            continue
        if any(
            statement.verb == "add" if isinstance(statement, _Elements) else statement[0].startswith("add ")
            for statement in state.statements
        ):
            script.append(f"add table {family} {NFT_TABLE}", None)
        for statement in state.statements:
            if isinstance(statement, _Elements):
                script.append_elements(statement)
            else:
                script.append(*statement)
        gone = not (state.chains or state.sets or state.listing.others or state.live or state.added)
        if gone:
            script.append(f"delete table {family} {NFT_TABLE}", None)
        successor = TableListing(family) if gone else _successor(state)
        if successor is not None:
            script.listings[family] = successor
    return script


def _successor(state: _FamilyState) -> TableListing | None:
    """The listing of the table once the batch ran, or None when that needs
    nft's answer: a rule the batch adds gets a handle only nft knows."""
    if state.added or any(state.readd.values()):
        return None
    listing = state.listing
    alive = {id(entry) for entries in state.live.values() for entry in entries}
    return TableListing(
        listing.family,
        exists=True,
        chains=dict(state.chains),
        rules=[entry for entry in listing.rules if id(entry) in alive],
        others=list(listing.others),
        sets=dict(state.sets),
        elements={name: list(state.elements.get(name, ())) for name in state.sets},
        odd_elements={name: count for name, count in listing.odd_elements.items() if name in state.sets},
    )


def _plan_set(op: Op, nft_set: NftSet, state: _FamilyState) -> Outcome:
    current = state.sets.get(nft_set.name)
    if op.action == "add":
        if current == nft_set:
            return Outcome.UNCHANGED
        if current is not None:
            raise OperationFailed(
                f"nft: {nft_set.describe()}: a set {nft_set.name!r} exists as {current.describe()}; "
                "nftables cannot change a set's type or flags in place",
                CONFLICT_CODE,
                op,
            )
        state.statements.append((set_statement(nft_set), op))
        state.sets[nft_set.name] = nft_set
        state.elements[nft_set.name] = set()
        return Outcome.APPLIED
    if current != nft_set:
        return Outcome.UNCHANGED  # gone, or it is some other set now
    left = len(state.elements.get(nft_set.name, ())) + state.listing.odd_elements.get(nft_set.name, 0)
    users = [r for rules in state.live.values() for r in rules if nft_set.name in set_references(r.expr)]
    if left or users:
        what = f"still holds {left} element(s)" if left else f"is still used by {len(users)} rule(s)"
        raise OperationFailed(f"nft: {nft_set.describe()}: the set {what}; deleting it would take them along", IN_USE_CODE, op)
    # Deleting the set deletes its elements: the batch's own deletions of them are moot.
    state.statements = [
        s for s in state.statements if not (isinstance(s, _Elements) and s.verb == "delete" and s.set == nft_set.name)
    ]
    state.statements.append((f"delete set {nft_set.family} {NFT_TABLE} {nft_set.name}", op))
    del state.sets[nft_set.name]
    return Outcome.APPLIED


def _plan_element(op: Op, element: NftElement, state: _FamilyState) -> Outcome:
    present = state.elements.get(element.set)
    if element.set not in state.sets or present is None:
        if op.action == "remove":
            return Outcome.UNCHANGED
        raise OperationFailed(f"nft: {element.describe()}: the set {element.set!r} does not exist", ERROR_CODE, op)
    if (element.element in present) == (op.action == "add"):
        return Outcome.UNCHANGED
    if op.action == "add":
        present.add(element.element)
    else:
        present.discard(element.element)
    verb = "add" if op.action == "add" else "delete"
    last = state.statements[-1] if state.statements else None
    if not (isinstance(last, _Elements) and (last.verb, last.set) == (verb, element.set)):
        last = _Elements(verb, element.family, element.set)
        state.statements.append(last)
    last.members.append((element.element, op))
    return Outcome.APPLIED


def _plan_chain(op: Op, chain: NftChain, state: _FamilyState, later: Sequence[Op], known: dict[str, NftRule]) -> Outcome:
    canon = canonical_chain(chain)
    current = state.chains.get(chain.chain)
    if op.action == "add":
        if current == canon:
            return Outcome.UNCHANGED
        if current is not None and replace(current, policy=canon.policy) != canon:
            raise OperationFailed(
                f"nft: {chain.describe()}: a chain {chain.chain!r} exists as {current.describe()}; "
                "nftables cannot change a chain's type, hook or priority in place (remove it first)",
                CONFLICT_CODE,
                op,
            )
        state.statements.append((chain_statement(canon), op))  # creates it, or sets the policy in place
        state.chains[chain.chain] = canon
        for rule in state.readd.pop(chain.chain, []):
            state.statements.append((rule_statement(rule), op))
            state.added[(rule.chain, rule.tag())] = None
        return Outcome.APPLIED
    if current != canon:
        return Outcome.UNCHANGED  # gone, or it is some other chain now
    successor = next(
        (
            o.item
            for o in later
            if o.action == "add" and isinstance(o.item, NftChain) and (o.item.family, o.item.chain) == (chain.family, chain.chain)
        ),
        None,
    )
    if successor is not None and replace(current, policy=canonical_chain(successor).policy) == canonical_chain(successor):
        del state.chains[chain.chain]  # only the policy changes: the later add does it in place
        return Outcome.APPLIED
    left = [r for rules in state.live.values() for r in rules if r.chain == chain.chain]
    pending = [tag for c, tag in state.added if c == chain.chain]
    if pending or (left and successor is None):
        raise OperationFailed(
            f"nft: {chain.describe()}: the chain still holds {len(left) + len(pending)} rule(s); "
            "deleting it would delete them too",
            IN_USE_CODE,
            op,
        )
    if left:  # redefined: keep fwrecon's own rules, refuse to drop anyone else's
        ours = {
            r.tag: known[r.tag]
            for r in left
            if r.tag in known and (known[r.tag].family, known[r.tag].chain) == (chain.family, chain.chain)
        }
        foreign = [r for r in left if r.tag not in ours]
        if foreign:
            raise OperationFailed(
                f"nft: {chain.describe()}: cannot redefine the chain: it holds {len(foreign)} rule(s) "
                "fwrecon does not own, which deleting it would delete",
                IN_USE_CODE,
                op,
            )
        for entry in left:
            state.statements.append((f"delete rule {chain.family} {NFT_TABLE} {chain.chain} handle {entry.handle}", op))
        state.live = {key: rules for key, rules in state.live.items() if key[0] != chain.chain}
        state.readd[chain.chain] = list(dict.fromkeys(ours[tag] for r in left if (tag := r.tag) is not None))
    state.statements.append((f"delete chain {chain.family} {NFT_TABLE} {chain.chain}", op))
    del state.chains[chain.chain]
    return Outcome.APPLIED


def _plan_rule(op: Op, rule: NftRule, state: _FamilyState) -> Outcome:
    tag = rule.tag()
    readd = state.readd.get(rule.chain, [])
    if op.action == "add":
        if (rule.chain, tag) in state.added or (rule.chain, tag) in state.live:
            return Outcome.UNCHANGED
        if rule in readd:
            return Outcome.UNCHANGED  # its chain is being redefined and it goes back in with it
        state.statements.append((rule_statement(rule), op))
        state.added[(rule.chain, tag)] = None
        return Outcome.APPLIED
    if (rule.chain, tag) in state.added:  # added earlier in this very batch: drop that statement
        del state.added[(rule.chain, tag)]
        text = rule_statement(rule)
        position = max(i for i, statement in enumerate(state.statements) if isinstance(statement, tuple) and statement[0] == text)
        del state.statements[position]
        return Outcome.APPLIED
    if rule in readd:  # taken out with its redefined chain: just do not put it back
        readd.remove(rule)
        return Outcome.APPLIED
    handles = [r.handle for r in state.live.get((rule.chain, tag), [])]
    if not handles:
        return Outcome.UNCHANGED
    for handle in handles:  # a copied rule (same tag twice) goes too
        state.statements.append((f"delete rule {rule.family} {NFT_TABLE} {rule.chain} handle {handle}", op))
    del state.live[(rule.chain, tag)]
    return Outcome.APPLIED


def jump_targets(expr: Any) -> set[str]:
    """Chains a listed rule's statements jump or go to (``nft -j`` form)."""
    found: set[str] = set()
    for statement in expr if isinstance(expr, list) else ():
        for verb in ("jump", "goto"):
            target = statement.get(verb) if isinstance(statement, dict) else None
            if isinstance(target, dict) and isinstance(target.get("target"), str):
                found.add(target["target"])
    return found


def foreign_users(listing: TableListing) -> dict[str, list[str]]:
    """Per chain name: the foreign rules that sit in it or jump to it.

    nft deletes a chain's rules along with it (and refuses while a rule
    jumps to it), so a chain of ours that such a rule uses must stay.
    """
    users: dict[str, list[str]] = {}
    for entry in listing.rules:
        if entry.tag is not None:
            continue
        users.setdefault(entry.chain, []).append(f"foreign rule in {entry.chain} (handle {entry.handle})")
        for target in jump_targets(entry.expr):
            if target != entry.chain:
                users.setdefault(target, []).append(f"foreign rule in {entry.chain} (handle {entry.handle}) jumping to it")
    return users


PROBE_PREFIX = "fwrecon-probe-"


def probe_script(family: str, chain: str, rules: Sequence[NftRule]) -> str:
    """Adds ``rules`` (untagged) to the scratch chain ``chain`` of fwrecon's table,
    to learn how nft lists them.  A regular chain: never hooked, never live."""
    lines = [f"add chain {family} {NFT_TABLE} {chain}"]
    lines += [f"add rule {family} {NFT_TABLE} {chain} {rule.rule}" for rule in rules]
    return "".join(line + "\n" for line in lines)


def check_script(items: Sequence[Item], table: str) -> tuple[list[str], list[Item | None]]:
    """An ``nft -c`` script adding ``items`` into ``table``, and each line's item.

    Set elements are left out: `nftsets` already judged each against its set's
    type as nft would, and a list of 100,000 would cost nft seconds here."""
    lines: list[str] = []
    owners: list[Item | None] = []

    def add(line: str, owner: Item | None) -> None:
        lines.append(line)
        owners.append(owner)

    nft_items = [i for i in items if isinstance(i, NFT_ITEMS)]
    families = sorted({i.family for i in nft_items}, key=FAMILIES.index)
    declared = {(i.family, i.chain) for i in nft_items if isinstance(i, NftChain)}
    for family in families:
        mine = [i for i in nft_items if i.family == family]
        add(f"add table {family} {table}", None)
        for item in mine:
            if isinstance(item, NftSet):
                add(set_statement(item, table), item)
        for item in mine:
            if isinstance(item, NftChain):
                add(chain_statement(item, table), item)
        for chain in sorted({i.chain for i in mine if isinstance(i, NftRule) and (family, i.chain) not in declared}):
            add(f"add chain {family} {table} {chain}", None)
        for item in mine:
            if isinstance(item, NftRule):
                add(rule_statement(item, table), item)
    return lines, owners


# -- nft's error output ---------------------------------------------------------------


@dataclass(frozen=True)
class NftError:
    line: int | None  # 1-based line of the script, when nft said
    text: str  # "Could not process rule: No such file or directory"
    statement: str = ""  # the offending line, as nft echoed it
    column: int | None = None  # 1-based column where nft's complaint starts, when it said

    def explained(self) -> str:
        """The error in the policy's terms: nft's complaint about the ownership
        tag fwrecon appends means the rule text before it is incomplete."""
        tag_at = self.statement.find(_TAG_SUFFIX_START)
        if tag_at < 0 or self.column is None or self.column <= tag_at:
            return self.text
        if self.text.endswith(", unexpected comment"):
            return self.text.removesuffix(", unexpected comment") + ": the rule text is incomplete (nft wanted more at its end)"
        return f"{self.text} (at the end of the rule text)"


_TAG_SUFFIX_START = f' comment "{TAG_PREFIX}'


def parse_errors(stderr: str) -> list[NftError]:
    """The errors in nft's stderr: ``/dev/stdin:3:1-30: Error: ...`` + the echoed line."""
    lines = stderr.splitlines()
    errors: list[NftError] = []
    for index, line in enumerate(lines):
        match = ERROR_LINE_RE.match(line)
        if match:
            statement = lines[index + 1] if index + 1 < len(lines) else ""
            column = int(match["cols"].split("-")[0])
            errors.append(NftError(int(match["line"]), match["text"].strip(), statement, column))
        elif line.startswith("Error: ") or ": Error: " in line:
            text = line.split("Error: ", 1)[1].strip()
            statement = (
                lines[index + 1].strip() if index + 1 < len(lines) and not lines[index + 1].lstrip().startswith("^") else ""
            )
            errors.append(NftError(None, text, statement))
    return errors


def failure_for(script: Script, stderr: str, returncode: int) -> OperationFailed:
    """The OperationFailed for a refused script, naming the op of the first located error."""
    errors = parse_errors(stderr)
    if not errors:
        detail = stderr.strip() or f"exit status {returncode}"
        distinct = {id(op): op for op in script.ops if op is not None}
        culprit = next(iter(distinct.values())) if len(distinct) == 1 else None
        return OperationFailed(f"nft: {detail}", ERROR_CODE, culprit)
    located = [e for e in errors if e.line is not None and script.op_at(e.line) is not None]
    first = located[0] if located else errors[0]
    culprit = script.op_at(first.line, first.column) if first.line is not None else None
    if first.line is not None and first.line - 1 in script.columns and culprit is not None:
        statement = culprit.item.describe()  # one element, not a line of thousands
    elif first.line is not None and 1 <= first.line <= len(script.lines):
        statement = script.lines[first.line - 1]
    else:
        statement = first.statement
    message = f"nft: {first.explained()}"
    if statement:
        message += f" (in: {untagged(statement)})"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error(s))"
    return OperationFailed(message, ERROR_CODE, culprit)


# -- monitor lines ----------------------------------------------------------------------


_DRIFT_VERBS = frozenset({"delete", "destroy", "flush", "replace"})
# nft monitor (1.0.6) drops a set from its cache when a rule using it is deleted,
# then warns for each of its element events instead of printing them.
_MONITOR_WARNING = "W: "
# ... and when its socket overflowed (ENOBUFS): the events lost may be anyone's,
# generation lines among them, so the lines around it cannot be attributed.
_LOST_EVENTS = "# ERROR: We lost some netlink events"


def is_lost_events_line(line: str) -> bool:
    return line.startswith(_LOST_EVENTS)


def monitor_line_table(line: str) -> tuple[str, str, str, str] | None:
    """(verb, object, family, table) of a ``nft monitor`` event line, or None."""
    tokens = line.split()
    if len(tokens) < 2 or tokens[0].startswith("#"):
        return None
    verb = tokens[0]
    if verb == "flush" and tokens[1] == "ruleset":
        return (verb, "ruleset", "", "")
    for position in range(1, min(len(tokens), 4)):
        if tokens[position] in FAMILIES and position + 1 < len(tokens):
            return (verb, " ".join(tokens[1:position]), tokens[position], tokens[position + 1])
    return None


def is_drift_line(line: str) -> bool:
    """Whether a monitor event line may mean something of fwrecon's is gone or changed.

    Deletions and flushes in a ``fwrecon`` table count (``nft flush ruleset``
    shows up as one deletion per object), and so does an ``add chain`` with a
    spec there: that is how a base chain's policy is changed in place.  So
    does nft's warning about an event it could not print, and its report of
    events lost.
    """
    if line.startswith(_MONITOR_WARNING) or is_lost_events_line(line):
        return True  # an event nft could not print (a set it lost track of), or lost: assume the worst
    parsed = monitor_line_table(line)
    if parsed is None:
        return False
    verb, obj, _family, table = parsed
    if obj == "ruleset":
        return True
    if table != NFT_TABLE:
        return False
    if verb in _DRIFT_VERBS:
        return True
    return verb == "add" and obj == "chain" and "{" in line


def may_touch_fwrecon(lines: Sequence[str]) -> bool:
    """Whether a transaction's monitor lines may have changed a ``fwrecon``
    table: yes unless each names another table (a transaction that printed
    nothing, a warning and a line of unknown form count as yes)."""
    for line in lines:
        parsed = monitor_line_table(line)
        if parsed is None or parsed[1] == "ruleset" or parsed[3] == NFT_TABLE:
            return True
    return not lines


def generation_pid(line: str) -> int | None:
    """The PID in ``# new generation 13 by process 8980 (nft)``, else None."""
    match = GENERATION_RE.match(line.strip())
    return int(match["pid"]) if match else None
