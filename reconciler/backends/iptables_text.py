"""The text side of iptables, ip6tables and ebtables: pure functions, no processes.

Parses ``*-save`` output, ties saved rules to items, builds ``*-restore --noflush``
scripts and reads the tools' error messages.  `iptables.IptablesBackend` runs
the tools.

Which rules are ours
--------------------
* ipv4/ipv6 rules fwrecon adds carry ``-m comment --comment fwrecon:<hash>``
  (`Item.tag`).  A hash cannot be inverted, so the engine tells the backend
  every item it may meet (observe's ``known``); a tag whose item is unknown is left
  alone as foreign.
* A rule without a tag whose text is exactly what ``-save`` prints for a known
  item is that item too (firewalld's direct interface adds rules without
  comments; the backend must adopt what firewalld left behind rather than
  double it).  ebtables has no comment match, so eb rules are only ever
  recognised this way.
* The printed ("canonical") text of an item is learnt, for all items of a
  table that need it at once, by appending them to a scratch chain
  (``FWRECON-PROBE-<pid>``) in one restore, reading that chain back with one
  save and dropping it with one more restore.  Learnt texts are cached for the
  life of the process; items the tool refuses stay unknown (retried when the
  table's chains change) and fail with the tool's message when applied.
* Everything else is foreign: it is never reported as an item, never removed,
  and keeps its place.  A chain that still holds (or is jumped to by) foreign
  rules is reported in use, so the planner keeps it (see `chain_users`).

Order
-----
Like firewalld's direct interface, fwrecon's rules in one chain are ordered by
ascending priority (equal priorities in the order they were added).  A new rule
goes just before the first rule of ours with a higher priority (``-I CHAIN N``,
counted on a simulated copy of the chain as the batch's ops accumulate), else
at the end.  Foreign rules are never moved.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from ..errors import BackendUnavailable, OperationFailed
from ..limits import DIRECT_BUILTIN_CHAINS, DIRECT_CHAIN_RE, LINE_BREAK_OR_NUL
from ..model import TAG_RE, DirectChain, DirectRule, Item, Op, Outcome

COMMANDS = {"ipv4": "iptables", "ipv6": "ip6tables", "eb": "ebtables"}
PACKAGES = {"ipv4": "iptables", "ipv6": "iptables", "eb": "ebtables"}  # Debian's and Fedora's names
PROBE_PREFIX = "FWRECON-PROBE-"
_PROBE_CHAIN = re.compile(re.escape(PROBE_PREFIX) + r"(\d+)")
# ebtables-save prints a policy for user chains too, so built-ins are known by name.
EB_BUILTIN_CHAINS = DIRECT_BUILTIN_CHAINS["eb"]

TABLE_NAME = re.compile(r"[a-z][a-z0-9_]*")
_NEEDS_QUOTES = re.compile(r"[\s\"'\\]")
_COMMENT = re.compile(r'--comment\s+("(?:[^"\\]|\\.)*"|\S+)')
_JUMPS = frozenset({"-j", "--jump", "-g", "--goto"})
_LINE_PATTERNS = (
    re.compile(r"Error occurred at line: (\d+)"),
    re.compile(r"\bline (\d+) failed\b"),
    re.compile(r"^line (\d+):", re.MULTILINE),
    re.compile(r"\bline (\d+)\b"),
)
MISSING_CHAIN = re.compile(r"Chain '([^']+)' does not exist")
# The kernel refused an nf_tables variant's whole transaction ("line 3: RULE_DELETE
# failed (No such file or directory)"): nothing of it was applied.  ebtables-nft
# (1.8.9) answers so when another nft commit lands while it runs, instead of
# reading the ruleset again as iptables-nft does; run again, it succeeds.
KERNEL_REFUSED_BATCH = re.compile(r"\b[A-Z]+_[A-Z]+ failed \(")


# -- the text of *-save --------------------------------------------------------


@dataclass
class TableSave:
    """One table as ``<cmd>-save`` printed it (counters and comments aside)."""

    table: str
    exists: bool = True
    chains: dict[str, str] = field(default_factory=dict)  # name -> policy ("-" for user chains)
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> the text after "-A CHAIN "
    incompatible: str | None = None  # iptables-nft: "table is incompatible, use 'nft' tool"

    def content(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Chains and rules, for comparing two reads (scratch chains left out)."""
        return tuple((name, tuple(self.rules.get(name, ()))) for name in sorted(self.chains) if not is_probe_chain(name))


def is_probe_chain(name: str) -> bool:
    return bool(_PROBE_CHAIN.fullmatch(name))


def probe_pid(name: str) -> int | None:
    """The pid in a scratch chain's name (``FWRECON-PROBE-<pid>``), else None."""
    match = _PROBE_CHAIN.fullmatch(name)
    return int(match.group(1)) if match else None


_SAVE_LINE_STARTS = ("#", "*", ":", "-A ", "COMMIT")


def parse_save(text: str, table: str, tool: str = "*-save") -> TableSave:
    """The section of ``table`` in ``-save`` output (legacy ebtables-save prints all tables).

    Output that is not ``-save`` output (a broken or foreign tool printing
    garbage) is `BackendUnavailable` naming ``tool``: read as an empty table,
    it would have us add again what is there.
    """
    found = TableSave(table, exists=False)
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line:
            continue
        if not line.startswith(_SAVE_LINE_STARTS):
            raise BackendUnavailable(
                f"{tool} -t {table} printed something that is not -save output (line {number}: {line[:60]!r})"
            )
        if line.startswith("#"):
            if (current == table and "incompatible" in line) or (
                "Table `" in line and "incompatible" in line and f"`{table}'" in line
            ):
                found.incompatible = line.lstrip("# ")
            continue
        if line.startswith("*"):
            current = line[1:].strip()
            if current == table:
                found.exists = True
            continue
        if current != table:
            continue
        if line.startswith(":"):
            parts = line[1:].split()
            if parts:
                found.chains[parts[0]] = parts[1] if len(parts) > 1 else "-"
                found.rules.setdefault(parts[0], [])
        elif line.startswith("-A "):
            parts = line.split(" ", 2)
            if len(parts) < 2:
                continue
            chain = parts[1]
            found.rules.setdefault(chain, []).append(parts[2].strip() if len(parts) > 2 else "")
            found.chains.setdefault(chain, "-")
        elif line == "COMMIT":
            current = None
    return found


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] == '"':
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def rule_tags(rest: str) -> list[str]:
    """The fwrecon tags among a saved rule's comments (quoted or not)."""
    tags = []
    for match in _COMMENT.finditer(rest):
        value = _unquote(match.group(1))
        if TAG_RE.fullmatch(value):
            tags.append(value)
    return tags


def jump_targets(tokens: Sequence[str]) -> set[str]:
    """Names after -j/-g: chains (or target extensions such as LOG)."""
    return {tokens[i + 1] for i, token in enumerate(tokens[:-1]) if token in _JUMPS}


@functools.lru_cache(maxsize=1 << 16)
def quote_arg(arg: str) -> str:
    """One argument as the *-restore line parser reads it back."""
    if arg and not _NEEDS_QUOTES.search(arg) and not arg.startswith("#"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rule_text(family: str, args: Sequence[str], tag: str | None) -> str:
    """The rest of an ``-A CHAIN ...`` line for ``args`` (with our comment on ip/ip6)."""
    words = [quote_arg(a) for a in args]
    if tag is not None and family != "eb":
        words += ["-m", "comment", "--comment", tag]
    return " ".join(words)


@functools.lru_cache(maxsize=1 << 16)
def tagged_rule_text(item: DirectRule) -> str:
    """`rule_text` of one of our rules, tag included: built once per item."""
    return rule_text(item.family, item.args, item.tag())


def join_words(*words: str) -> str:
    return " ".join(w for w in words if w)


def error_text(stderr: str) -> str:
    """The tool's complaint without the usage hint, on one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.lstrip().startswith("Try `")]
    return "; ".join(lines) or "no error text"


def failed_line(stderr: str) -> int | None:
    """The script line *-restore blamed (1-based), if it said."""
    for pattern in _LINE_PATTERNS:
        match = pattern.search(stderr)
        if match:
            return int(match.group(1))
    return None


def culprit_op(stderr: str, line_ops: Sequence[Op | None]) -> Op | None:
    """The op whose script line failed.

    Errors found at commit time (iptables-nft resolves jumps then) name the
    COMMIT line; the missing chain in the message then points at the rule.
    """
    number = failed_line(stderr)
    if number is not None and 1 <= number <= len(line_ops) and line_ops[number - 1] is not None:
        return line_ops[number - 1]
    missing = MISSING_CHAIN.search(stderr)
    if missing:
        name = missing.group(1)
        for op in line_ops:
            if (
                op is not None
                and isinstance(op.item, DirectRule)
                and op.action == "add"
                and (name in jump_targets(op.item.args) or op.item.chain == name)
            ):
                return op
    return None


@functools.lru_cache(maxsize=1 << 16)
def check_names(item: DirectChain | DirectRule) -> str | None:
    """Why ``item`` cannot be written into a *-restore script safely, or None."""
    if item.family not in COMMANDS:
        return f"unknown direct family {item.family!r} (ipv4, ipv6 or eb)"
    if not TABLE_NAME.fullmatch(item.table):
        return f"invalid table name {item.table!r}"
    if not DIRECT_CHAIN_RE.fullmatch(item.chain):
        return f"invalid chain name {item.chain!r}"
    if isinstance(item, DirectRule):
        for arg in item.args:
            if LINE_BREAK_OR_NUL.search(arg):
                return f"rule argument {arg!r} contains a line break or NUL"
    return None


# -- identity: which saved rules are which items -------------------------------


class Entry:
    """One rule in a simulated chain; ``owners`` empty means foreign.

    Compared by identity: two identical foreign rules are still two rules.
    """

    __slots__ = ("owners", "priority", "rest")

    def __init__(self, rest: str, owners: tuple[DirectRule, ...] = ()) -> None:
        self.rest = rest
        self.owners = owners
        self.priority: int | None = (
            owners[0].priority if len(owners) == 1 else min(o.priority for o in owners) if owners else None
        )

    def __repr__(self) -> str:
        return f"Entry({self.rest!r}, {self.owners!r})"

    def targets(self) -> set[str]:
        return jump_targets(self.rest.split())


@dataclass
class TableModel:
    """A table's chains and rules, each rule tied to the items it is."""

    family: str
    table: str
    chains: dict[str, list[Entry]]
    builtin: frozenset[str]

    def items(self) -> set[Item]:
        found: set[Item] = {DirectChain(self.family, self.table, name) for name in self.chains if name not in self.builtin}
        for entries in self.chains.values():
            for entry in entries:
                found.update(entry.owners)
        return found

    def users(self, chain: str) -> list[tuple[str, Entry]]:
        """Rules in ``chain`` and rules elsewhere that jump to it: (their chain, entry)."""
        found = [(chain, e) for e in self.chains.get(chain, ())]
        for name, entries in self.chains.items():
            if name != chain:
                found.extend((name, e) for e in entries if chain in e.targets())
        return found


@functools.lru_cache(maxsize=1 << 17)  # observes meet the same rules again and again
def strip_tag(rest: str, tag: str) -> str:
    """A saved rule's text without fwrecon's comment ``tag`` (as -save prints it)."""
    return " ".join(_tag_match(tag).sub(" ", f" {rest} ").split())


@functools.lru_cache(maxsize=1 << 16)
def _tag_match(tag: str) -> re.Pattern[str]:
    return re.compile(rf'\s-m comment --comment ("?){re.escape(tag)}\1(?=\s)')


def build_model(
    save: TableSave,
    family: str,
    by_tag: dict[str, DirectRule],
    by_text: dict[tuple[str, str], list[DirectRule]],
    canon: dict[DirectRule, str],
) -> TableModel:
    """Tie each saved rule to its items: by tag (ip/ip6), else by exact text.

    A tag alone proves nothing (anyone can write ``--comment fwrecon:…``): a
    tagged rule is an item only when its text, that tag aside, is exactly
    what -save prints for the item (``canon``, learnt by the probe).  A rule
    with a known tag and any other text is foreign, like any other.
    """
    if family == "eb":
        builtin = EB_BUILTIN_CHAINS.get(save.table, frozenset())
    else:
        builtin = frozenset(name for name, policy in save.chains.items() if policy != "-")
    chains: dict[str, list[Entry]] = {}
    for name in save.chains:
        if is_probe_chain(name):
            continue
        entries = []
        for rest in save.rules.get(name, ()):
            tags = rule_tags(rest) if family != "eb" else []
            if tags:
                owners = tuple(
                    item
                    for item in (by_tag.get(tag) for tag in tags)
                    if item is not None
                    and (item.family, item.table, item.chain) == (family, save.table, name)
                    and canon.get(item) == strip_tag(rest, item.tag())
                )
            else:
                owners = tuple(by_text.get((name, rest), ()))
            entries.append(Entry(rest, owners))
        chains[name] = entries
    return TableModel(family, save.table, chains, builtin)


# -- the view ------------------------------------------------------------------


def chain_users(model: TableModel) -> dict[Item, tuple[Item | str, ...]]:
    """For `FirewallView.users`: per user chain, the foreign rules that hold or
    jump to it (as text) and our rules elsewhere that jump to it (as items).
    The planner keeps a chain while anything uses it."""
    users: dict[Item, list[Item | str]] = defaultdict(list)
    for name in model.chains:
        if name in model.builtin:
            continue
        chain = DirectChain(model.family, model.table, name)
        for where, entry in model.users(name):
            if not entry.owners:
                users[chain].append("foreign rule: " + join_words("-A", where, entry.rest))
            elif where != name:
                users[chain].extend(entry.owners)
    return {chain: tuple(found) for chain, found in users.items()}


# -- the script of one batch -----------------------------------------------------


@dataclass
class BatchScript:
    lines: list[str]  # the *-restore input, "*table" ... "COMMIT"
    line_ops: list[Op | None]  # the op each line belongs to
    outcomes: list[Outcome]

    @property
    def changes(self) -> bool:
        return any(op is not None for op in self.line_ops)

    @property
    def positional(self) -> bool:
        """Places a rule by index (``-I CHAIN N``): right only on an exact read."""
        return any(line.startswith("-I ") for line in self.lines)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def refusal(op: Op, code: str, message: str) -> OperationFailed:
    """A refusal of ``op`` (the transaction names the op; the message says why)."""
    return OperationFailed(message, code, op)


def build_script(model: TableModel, ops: Sequence[Op]) -> BatchScript:
    """The restore script for ``ops`` against ``model`` (which is not modified).

    Adding what is there and removing what is gone are UNCHANGED and write
    nothing; refusals that need no tool (a missing chain, a chain in use)
    raise OperationFailed naming the op before anything runs.
    """
    sim = TableModel(model.family, model.table, {name: list(e) for name, e in model.chains.items()}, model.builtin)
    copies_of: dict[DirectRule, list[Entry]] = defaultdict(list)  # item -> its entries in sim
    for chain_entries in sim.chains.values():
        for entry in chain_entries:
            for owner in entry.owners:
                copies_of[owner].append(entry)
    top: dict[str, int | None] = {}  # chain -> highest priority of ours (absent: recount)
    lines: list[str] = [f"*{model.table}"]
    line_ops: list[Op | None] = [None]
    outcomes: list[Outcome] = []

    def emit(op: Op, *words: str) -> None:
        lines.append(join_words(*words))
        line_ops.append(op)

    for op in ops:
        item = op.item
        if not isinstance(item, (DirectChain, DirectRule)):
            raise refusal(op, "UNSUPPORTED", "the iptables backend holds direct chains and rules only")
        if (item.family, item.table) != (model.family, model.table):
            raise refusal(op, "INVALID_ARGUMENT", f"not in table {model.family} {model.table}")
        problem = check_names(item)
        if problem:
            raise refusal(op, "INVALID_ARGUMENT", problem)
        outcome = Outcome.APPLIED
        if isinstance(item, DirectChain):
            if item.chain in sim.builtin:
                raise refusal(op, "BUILTIN_CHAIN", f"{item.chain} is a built-in chain")
            if op.action == "add":
                if item.chain in sim.chains:
                    outcome = Outcome.UNCHANGED
                else:
                    emit(op, "-N", item.chain)
                    sim.chains[item.chain] = []
            elif item.chain not in sim.chains:
                outcome = Outcome.UNCHANGED
            else:
                users = sim.users(item.chain)
                if users:
                    shown = "; ".join(join_words("-A", where, e.rest) for where, e in users[:3])
                    more = f" (+{len(users) - 3} more)" if len(users) > 3 else ""
                    raise refusal(op, "CHAIN_IN_USE", f"chain still holds or is jumped to by {len(users)} rule(s): {shown}{more}")
                emit(op, "-X", item.chain)
                del sim.chains[item.chain]
                top.pop(item.chain, None)
        else:
            entries = sim.chains.get(item.chain)
            if op.action == "add":
                if entries is None:
                    raise refusal(op, "NO_SUCH_CHAIN", f"chain {item.chain} does not exist in {item.family} {item.table}")
                if copies_of.get(item):
                    outcome = Outcome.UNCHANGED
                else:
                    entry = Entry(tagged_rule_text(item), (item,))
                    if item.chain not in top:
                        top[item.chain] = max((e.priority for e in entries if e.priority is not None), default=None)
                    highest = top[item.chain]
                    position = None
                    if highest is not None and highest > item.priority:
                        position = next(i for i, e in enumerate(entries) if e.priority is not None and e.priority > item.priority)
                    if position is None:
                        lines.append(f"-A {item.chain} {entry.rest}")  # emit(), inlined: once per rule
                        line_ops.append(op)
                        entries.append(entry)
                    else:
                        emit(op, "-I", item.chain, str(position + 1), entry.rest)
                        entries.insert(position, entry)
                    top[item.chain] = item.priority if highest is None else max(highest, item.priority)
                    copies_of[item].append(entry)
            else:
                copies = copies_of.pop(item, [])
                if not copies:
                    outcome = Outcome.UNCHANGED
                for entry in copies:
                    emit(op, "-D", item.chain, entry.rest)
                    assert entries is not None  # a copy was found in this chain
                    entries.remove(entry)
                    for other in entry.owners:  # an untagged copy may stand for several items
                        if other != item and entry in copies_of.get(other, ()):
                            copies_of[other].remove(entry)
                if copies:
                    top.pop(item.chain, None)
        outcomes.append(outcome)
    lines.append("COMMIT")
    line_ops.append(None)
    return BatchScript(lines, line_ops, outcomes)


def compensation_script(table: str, before: TableSave, after: TableSave, chains: Collection[str] | None = None) -> list[str]:
    """Lines that put back every chain (of ``chains``) ``after`` has differently from ``before``.

    Only used if a restore failed yet changed the table (a tool that is not
    atomic); never needed with the nf_tables variants.  Limited to the chains
    the failed script touched, so a foreign change elsewhere is left alone.
    """
    old = dict(before.content())
    new = dict(after.content())
    wanted = set(old) | set(new) if chains is None else set(chains)
    created = [c for c in new if c not in old and c in wanted]
    dropped = [c for c in old if c not in new and c in wanted]
    changed = [c for c in old if c in new and old[c] != new[c] and c in wanted]
    lines = [f"*{table}"]
    lines += [f"-N {c}" for c in dropped]
    for chain in [*changed, *created]:
        lines.append(f"-F {chain}")
    for chain in [*dropped, *changed]:
        lines += [join_words("-A", chain, rest) for rest in old[chain]]
    lines += [f"-X {c}" for c in created]
    lines.append("COMMIT")
    return lines if len(lines) > 2 else []
