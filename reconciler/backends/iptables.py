"""Direct chains and rules through iptables, ip6tables and ebtables (no firewalld).

Family ``ipv4`` goes to ``iptables``, ``ipv6`` to ``ip6tables``, ``eb`` to
``ebtables`` (the plain command names, so the system's alternatives pick the
nf_tables or legacy variant).  Commands are argv lists run with asyncio, never
through a shell, each with a timeout; with ``netns`` every command runs under
``ip netns exec NETNS``.

Reading: one ``<cmd>-save -t TABLE`` per table, never one process per rule.
Writing: one ``<cmd>-restore --noflush`` script for the whole batch, which the
tools commit per table all or nothing (checked after every failure, and undone
if a tool ever turns out not to be atomic).  The script is built on the read
the engine's observe made moments before (used once, for at most
`base.OBSERVED_MAX_AGE`); when there is none, when the script places rules by
position (``-I CHAIN N``), or when the tool refuses a script built on it, the
table is read again with ``-save`` and the script rebuilt, so a change made
by someone else in between costs a re-read, never a wrong write.  ebtables
always reads again first: only iptables-restore and ip6tables-restore are
atomic per table in both their legacy and nf_tables variants, and a refused
script must be known to have changed nothing before it is tried again.

Which rules are ours
--------------------
* ipv4/ipv6 rules fwrecon adds carry ``-m comment --comment fwrecon:<hash>``
  (`Item.tag`).  A hash cannot be inverted, so the engine tells the backend
  every item it may meet (`remember`); a tag whose item is unknown is left
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

import asyncio
import functools
import os
import re
import time
from collections import defaultdict
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog

from ..errors import BackendError, BackendUnavailable, OperationFailed
from ..model import DirectChain, DirectRule, Item, NftChain, NftRule
from ..planner import Op
from ..view import FirewallView
from . import base
from .base import BatchBackend, Outcome
from .process import ToolRunner, which

log = structlog.get_logger(__name__)

# What the nf_tables variant's *-save prints on stderr when the legacy variant has tables too.
LEGACY_TABLES_PRESENT = "-legacy tables present"

COMMANDS = {"ipv4": "iptables", "ipv6": "ip6tables", "eb": "ebtables"}
PROBE_PREFIX = "FWRECON-PROBE-"
_PROBE_CHAIN = re.compile(re.escape(PROBE_PREFIX) + r"(\d+)")
# ebtables-save prints a policy for user chains too, so built-ins are known by name.
EB_BUILTIN_CHAINS = {
    "filter": frozenset({"INPUT", "FORWARD", "OUTPUT"}),
    "nat": frozenset({"PREROUTING", "OUTPUT", "POSTROUTING"}),
    "broute": frozenset({"BROUTING"}),
}
DEFAULT_TIMEOUT = 30.0

_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]*")
# No whitespace, quotes, backslashes or control characters; not an option.
_CHAIN_NAME = re.compile(r"[^\s\"'\\!#\-\x00-\x1f\x7f][^\s\"'\\\x00-\x1f\x7f]*")
_LINE_BREAK_OR_NUL = re.compile(r"[\n\r\x00]")
_NEEDS_QUOTES = re.compile(r"[\s\"'\\]")
_TAG = re.compile(r"fwrecon:[0-9a-f]{16}")
_COMMENT = re.compile(r'--comment\s+("(?:[^"\\]|\\.)*"|\S+)')
_JUMPS = frozenset({"-j", "--jump", "-g", "--goto"})
_LINE_PATTERNS = (
    re.compile(r"Error occurred at line: (\d+)"),
    re.compile(r"\bline (\d+) failed\b"),
    re.compile(r"^line (\d+):", re.MULTILINE),
    re.compile(r"\bline (\d+)\b"),
)
_MISSING_CHAIN = re.compile(r"Chain '([^']+)' does not exist")


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
        return tuple(
            (name, tuple(self.rules.get(name, ())))
            for name in sorted(self.chains)
            if not is_probe_chain(name)
        )


def is_probe_chain(name: str) -> bool:
    return bool(_PROBE_CHAIN.fullmatch(name))


def parse_save(text: str, table: str) -> TableSave:
    """The section of ``table`` in ``-save`` output (legacy ebtables-save prints all tables)."""
    found = TableSave(table, exists=False)
    current: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line:
            continue
        if line.startswith("#"):
            if current == table and "incompatible" in line:
                found.incompatible = line.lstrip("# ")
            elif "Table `" in line and "incompatible" in line and f"`{table}'" in line:
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
        if _TAG.fullmatch(value):
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


def _line(*words: str) -> str:
    return " ".join(w for w in words if w)


def error_text(stderr: str) -> str:
    """The tool's complaint without the usage hint, on one line."""
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and not line.lstrip().startswith("Try `")
    ]
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
    missing = _MISSING_CHAIN.search(stderr)
    if missing:
        name = missing.group(1)
        for op in line_ops:
            if op is not None and isinstance(op.item, DirectRule) and op.action == "add":
                if name in jump_targets(op.item.args) or op.item.chain == name:
                    return op
    return None


@functools.lru_cache(maxsize=1 << 16)
def check_names(item: DirectChain | DirectRule) -> str | None:
    """Why ``item`` cannot be written into a *-restore script safely, or None."""
    if item.family not in COMMANDS:
        return f"unknown direct family {item.family!r} (ipv4, ipv6 or eb)"
    if not _TABLE_NAME.fullmatch(item.table):
        return f"invalid table name {item.table!r}"
    if not _CHAIN_NAME.fullmatch(item.chain):
        return f"invalid chain name {item.chain!r}"
    if isinstance(item, DirectRule):
        for arg in item.args:
            if _LINE_BREAK_OR_NUL.search(arg):
                return f"rule argument {arg!r} contains a line break or NUL"
    return None


# -- identity: which saved rules are which items -------------------------------


class Entry:
    """One rule in a simulated chain; ``owners`` empty means foreign.

    Compared by identity: two identical foreign rules are still two rules.
    """

    __slots__ = ("rest", "owners", "priority")

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
        found: set[Item] = {
            DirectChain(self.family, self.table, name) for name in self.chains if name not in self.builtin
        }
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


def build_model(
    save: TableSave,
    family: str,
    by_tag: dict[str, DirectRule],
    by_text: dict[tuple[str, str], list[DirectRule]],
) -> TableModel:
    """Tie each saved rule to its items: by tag (ip/ip6), else by exact text."""
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
                    if item is not None and (item.family, item.table, item.chain) == (family, save.table, name)
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
                users[chain].append("foreign rule: " + _line("-A", where, entry.rest))
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


def _refuse(op: Op, code: str, message: str) -> OperationFailed:
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
    for entries in sim.chains.values():
        for entry in entries:
            for owner in entry.owners:
                copies_of[owner].append(entry)
    top: dict[str, int | None] = {}  # chain -> highest priority of ours (absent: recount)
    lines: list[str] = [f"*{model.table}"]
    line_ops: list[Op | None] = [None]
    outcomes: list[Outcome] = []

    def emit(op: Op, *words: str) -> None:
        lines.append(_line(*words))
        line_ops.append(op)

    for op in ops:
        item = op.item
        if not isinstance(item, (DirectChain, DirectRule)):
            raise _refuse(op, "UNSUPPORTED", "the iptables backend holds direct chains and rules only")
        if (item.family, item.table) != (model.family, model.table):
            raise _refuse(op, "INVALID_ARGUMENT", f"not in table {model.family} {model.table}")
        problem = check_names(item)
        if problem:
            raise _refuse(op, "INVALID_ARGUMENT", problem)
        outcome = Outcome.APPLIED
        if isinstance(item, DirectChain):
            if item.chain in sim.builtin:
                raise _refuse(op, "BUILTIN_CHAIN", f"{item.chain} is a built-in chain")
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
                    shown = "; ".join(_line("-A", where, e.rest) for where, e in users[:3])
                    more = f" (+{len(users) - 3} more)" if len(users) > 3 else ""
                    raise _refuse(op, "CHAIN_IN_USE", f"chain still holds or is jumped to by {len(users)} rule(s): {shown}{more}")
                emit(op, "-X", item.chain)
                del sim.chains[item.chain]
                top.pop(item.chain, None)
        else:
            entries = sim.chains.get(item.chain)
            if op.action == "add":
                if entries is None:
                    raise _refuse(op, "NO_SUCH_CHAIN", f"chain {item.chain} does not exist in {item.family} {item.table}")
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
                    entries.remove(entry)  # type: ignore[union-attr]
                    for other in entry.owners:  # an untagged copy may stand for several items
                        if other != item and entry in copies_of.get(other, ()):
                            copies_of[other].remove(entry)
                if copies:
                    top.pop(item.chain, None)
        outcomes.append(outcome)
    lines.append("COMMIT")
    line_ops.append(None)
    return BatchScript(lines, line_ops, outcomes)


def compensation_script(
    table: str, before: TableSave, after: TableSave, chains: Collection[str] | None = None
) -> list[str]:
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
        lines += [_line("-A", chain, rest) for rest in old[chain]]
    lines += [f"-X {c}" for c in created]
    lines.append("COMMIT")
    return lines if len(lines) > 2 else []


# -- the backend -----------------------------------------------------------------


@dataclass(frozen=True)
class TableRead:
    """One read of a table: the save as printed and the rules tied to items."""

    save: TableSave
    model: TableModel
    at: float  # time.monotonic() of the read
    knowledge: int  # IptablesBackend.knowledge when it was tied


class IptablesBackend(BatchBackend):
    """See module docstring.  ``netns``: run every command inside that namespace."""

    name = "iptables"

    def __init__(self, netns: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.netns = netns
        self.timeout = timeout
        self._tools = ToolRunner(netns, timeout)
        self.runs = 0  # processes started, for tests and metrics
        self.writes = 0  # *-restore runs that applied a batch
        self._by_tag: dict[str, DirectRule] = {}
        self._rules: dict[tuple[str, str], set[DirectRule]] = defaultdict(set)
        self._chains: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._canon: dict[DirectRule, str] = {}  # item -> its rule text as -save prints it
        self._canon_failed: dict[DirectRule, frozenset[str]] = {}  # -> the chains when it failed
        self.knowledge = 0  # grows when `remember` learns a new item (older reads may miss it)
        self._observed: dict[tuple[str, str], TableRead] = {}  # observe's last read, for the next batch
        self._legacy_reported: set[str] = set()  # families whose legacy tables were reported

    # -- what the engine tells us --------------------------------------------------

    def remember(self, items: Iterable[Item]) -> None:
        """Learn items we may meet in the firewall (every desired and owned item).

        Needed to map a rule's ``fwrecon:<hash>`` comment back to its item and
        to recognise untagged copies; call it before `observe`.  Items of other
        kinds are ignored.
        """
        for item in items:
            if isinstance(item, DirectRule):
                known = self._rules[(item.family, item.table)]
                if item not in known:
                    known.add(item)
                    self._by_tag[item.tag()] = item
                    self.knowledge += 1
            elif isinstance(item, DirectChain):
                self._chains[(item.family, item.table)].add(item.chain)

    def cannot_hold(self, item: Item) -> str | None:
        if isinstance(item, (DirectChain, DirectRule)):
            return check_names(item)
        if isinstance(item, (NftChain, NftRule)):
            return "needs the nftables backend"
        return "needs firewalld"

    def batch_key(self, op: Op) -> Hashable | None:
        return op.item.container()

    async def is_up(self) -> bool:
        needed = ["iptables", "iptables-save", "iptables-restore"] + (["ip"] if self.netns else [])
        return all(self._which(name) for name in needed)

    # -- processes -----------------------------------------------------------------

    def _which(self, name: str) -> str | None:
        return which(name)

    def _tool(self, family: str, suffix: str) -> str:
        name = COMMANDS[family] + suffix
        path = self._which(name)
        if path is None:
            package = "ebtables" if family == "eb" else "iptables"
            raise BackendUnavailable(f"{name} not found (is the {package} package installed?)")
        return path

    async def _run(self, argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
        """Run one command (in the namespace, if any); (returncode, stdout, stderr)."""
        self.runs += 1
        result = await self._tools.run(argv, stdin)
        if "xtables lock" in result.stderr:
            raise BackendUnavailable(f"{os.path.basename(argv[0])}: {error_text(result.stderr)}")
        return result.returncode, result.stdout, result.stderr

    async def _save(self, family: str, table: str) -> TableSave:
        rc, out, err = await self._run([self._tool(family, "-save"), "-t", table])
        if LEGACY_TABLES_PRESENT in err:
            self._report_legacy_tables(family)
        if rc != 0:
            if "does not exist" in err:
                return TableSave(table, exists=False)
            raise BackendUnavailable(f"{COMMANDS[family]}-save -t {table} failed ({rc}): {error_text(err)}")
        save = parse_save(out, table)
        if save.incompatible:
            raise OperationFailed(
                f"{family} table {table} holds rules {COMMANDS[family]} cannot show ({save.incompatible})",
                "INCOMPATIBLE_TABLE",
            )
        return save

    def _report_legacy_tables(self, family: str) -> None:
        """Once per family: the host also has legacy (x_tables) rules, which fwrecon
        neither sees nor manages, yet every packet passes them too (a Docker
        installed with iptables-legacy, say): the usual cause of "my ACCEPT does
        nothing"."""
        if family in self._legacy_reported:
            return
        self._legacy_reported.add(family)
        tool = f"{COMMANDS[family]}-legacy-save"
        log.warning("iptables_legacy_tables_present", family=family,
                    detail=f"this host also has legacy tables; packets pass them as well as fwrecon's rules; see {tool}")

    async def _restore(self, family: str, script: str) -> tuple[int, str]:
        argv = [self._tool(family, "-restore")]
        if family != "eb":
            argv += ["-w", str(max(1, int(self.timeout / 3)))]  # legacy: wait for the xtables lock
        argv.append("--noflush")
        rc, _, err = await self._run(argv, script)
        return rc, err

    # One lock per (netns, table) for the whole process, so a probe or batch
    # never interleaves with another of ours (even of another instance).
    _locks: dict[tuple[str | None, str, str], asyncio.Lock] = {}
    _locks_loop: asyncio.AbstractEventLoop | None = None

    def _lock(self, family: str, table: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        cls = type(self)
        if loop is not cls._locks_loop:  # a lock belongs to one loop (tests run several)
            cls._locks, cls._locks_loop = {}, loop
        return cls._locks.setdefault((self.netns, family, table), asyncio.Lock())

    # -- canonical texts -------------------------------------------------------------

    def _to_learn(self, family: str, table: str, save: TableSave) -> list[DirectRule]:
        """Known items whose printed text may be needed to recognise a rule now.

        Only chains holding rules without our tag can hold untagged copies;
        a rule jumping to a chain of ours that does not exist yet cannot be
        in the table (and would make the probe fail).
        """
        candidates = {
            chain
            for chain, rules in save.rules.items()
            if not is_probe_chain(chain) and any(family == "eb" or not rule_tags(r) for r in rules)
        }
        if not candidates:
            return []
        chains = frozenset(save.chains)
        absent = self._chains[(family, table)] - chains
        return sorted(
            (
                item
                for item in self._rules[(family, table)]
                if item not in self._canon
                and item.chain in candidates
                and self._canon_failed.get(item) != chains
                and check_names(item) is None
                and not (jump_targets(item.args) & absent)
            ),
            key=Item.sort_key,
        )

    async def _learn(self, family: str, table: str, save: TableSave) -> TableSave:
        """Learn the printed text of the items that need it; returns the newest read."""
        pending = self._to_learn(family, table, save)
        if not pending:
            return save
        probe = f"{PROBE_PREFIX}{os.getpid()}"
        declare = f":{probe} ACCEPT" if family == "eb" else f":{probe} - [0:0]"  # creates or flushes
        chains = frozenset(save.chains)
        while pending:
            lines = [f"*{table}", declare, *(_line("-A", probe, rule_text(family, i.args, None)) for i in pending), "COMMIT"]
            rc, err = await self._restore(family, "\n".join(lines) + "\n")
            if rc == 0:
                break
            number = failed_line(err)
            bad = [pending[number - 3]] if number is not None and 3 <= number < 3 + len(pending) else []
            if not bad:
                missing = _MISSING_CHAIN.search(err)
                bad = [i for i in pending if missing and missing.group(1) in jump_targets(i.args)] or list(pending)
            for item in bad:
                self._canon_failed[item] = chains
                log.info("rule_text_unknown", item=item.describe(), error=error_text(err))
            pending = [i for i in pending if i not in bad]
        if not pending:
            return save
        try:
            after = await self._save(family, table)
        finally:
            stale = sorted({probe} | {c for c in save.chains if _probe_of_dead_process(c)})
            cleanup = [f"*{table}", *(f"-F {c}" for c in stale), *(f"-X {c}" for c in stale), "COMMIT"]
            rc, err = await self._restore(family, "\n".join(cleanup) + "\n")
            if rc != 0:
                log.warning("probe_cleanup_failed", family=family, table=table, chain=probe, error=error_text(err))
        texts = after.rules.get(probe, [])
        if len(texts) == len(pending):
            for item, text in zip(pending, texts):
                self._canon[item] = text
        else:
            log.warning("probe_mismatch", family=family, table=table, expected=len(pending), found=len(texts))
            for item in pending:
                self._canon_failed[item] = chains
        return after

    def _model(self, family: str, table: str, save: TableSave) -> TableModel:
        by_text: dict[tuple[str, str], list[DirectRule]] = defaultdict(list)
        learnt = (item for item in self._rules[(family, table)] if item in self._canon)
        for item in sorted(learnt, key=Item.sort_key):
            by_text[(item.chain, self._canon[item])].append(item)
        return build_model(save, family, self._by_tag, by_text)

    async def _read(self, family: str, table: str) -> TableRead:
        save = await self._save(family, table)
        save = await self._learn(family, table, save)
        return TableRead(save, self._model(family, table, save), time.monotonic(), self.knowledge)

    def _take_observed(self, family: str, table: str) -> TableRead | None:
        """Observe's read of the table if recent and made knowing every item; used once."""
        read = self._observed.pop((family, table), None)
        if read is None or family == "eb" or read.knowledge != self.knowledge:
            return None
        return read if time.monotonic() - read.at <= base.OBSERVED_MAX_AGE else None

    # -- observe -----------------------------------------------------------------------

    async def observe(self, containers: Collection[tuple[str, ...]]) -> FirewallView:
        """One ``-save -t TABLE`` per direct table (plus a probe when texts must be learnt)."""
        tables = sorted(
            {(c[1], c[2]) for c in containers if len(c) == 3 and c[0] == "direct"}
        )
        valid = [(f, t) for f, t in tables if f in COMMANDS and _TABLE_NAME.fullmatch(t)]
        missing = [("direct", f, t) for f, t in tables if (f, t) not in valid]

        async def read(family: str, table: str) -> TableModel:
            async with self._lock(family, table):
                self._observed[(family, table)] = found = await self._read(family, table)
                return found.model

        models = await asyncio.gather(*(read(f, t) for f, t in valid))
        items: list[Item] = []
        users: dict[Item, tuple[Item | str, ...]] = {}
        for model in models:
            items.extend(model.items())
            users.update(chain_users(model))
        return FirewallView(items, containers, missing, users)

    # -- execute -------------------------------------------------------------------------

    async def execute_batch(self, ops: Sequence[Op]) -> list[Outcome]:
        """All ops of one table in one ``-restore --noflush``: all or nothing."""
        if not ops:
            return []
        first = ops[0]
        if not isinstance(first.item, (DirectChain, DirectRule)):
            raise _refuse(first, "UNSUPPORTED", self.cannot_hold(first.item) or "not a direct item")
        family, table = first.item.family, first.item.table
        for op in ops:
            problem = self.cannot_hold(op.item)
            if problem:
                raise _refuse(op, "INVALID_ARGUMENT", problem)
            if (op.item.family, op.item.table) != (family, table):  # type: ignore[attr-defined]
                raise ValueError("execute_batch takes the ops of one table only (see batch_key)")
        self.remember(op.item for op in ops)
        async with self._lock(family, table):
            observed = self._take_observed(family, table)
            if observed is not None:
                try:
                    script = build_script(observed.model, ops)
                except OperationFailed:
                    pass  # judged on a read that may be stale: judge again on a fresh one
                else:
                    if not script.positional:
                        rc, err = await self._write(family, script)
                        if rc == 0:
                            return script.outcomes
                        log.info("restore_retried", family=family, table=table, error=error_text(err))
            # No usable read from observe, or the tool refused a script built on
            # it (the table may have changed since): read now and build again.
            read = await self._read(family, table)
            script = build_script(read.model, ops)
            rc, err = await self._write(family, script)
            if rc != 0:
                await self._fail(family, table, read.save, script, err)
            return script.outcomes

    async def _write(self, family: str, script: BatchScript) -> tuple[int, str]:
        """Run ``script`` if it changes anything: (returncode, stderr)."""
        if not script.changes:
            return 0, ""
        rc, err = await self._restore(family, script.text())
        if rc == 0:
            self.writes += 1
        return rc, err

    async def _fail(self, family: str, table: str, before: TableSave, script: BatchScript, err: str) -> None:
        """Raise the failure; first make sure the failed restore left the table as it was."""
        tool = f"{COMMANDS[family]}-restore"
        op = culprit_op(err, script.line_ops)
        unknown = "" if op else " (the failing line could not be told)"
        message = f"{tool} refused the batch{unknown}: {error_text(err)}"
        try:
            after = await self._save(family, table)
        except BackendError as exc:
            log.warning("restore_check_failed", family=family, table=table, error=str(exc))
            raise OperationFailed(message, "RESTORE_FAILED", op) from exc
        touched = {line_op.item.chain for line_op in script.line_ops if line_op is not None}  # type: ignore[union-attr]
        if _only(after, touched) != _only(before, touched):
            # Not atomic after all: put the chains we touched back as they were.
            undo = compensation_script(table, before, after, touched)
            rc, undo_err = await self._restore(family, "\n".join(undo) + "\n") if undo else (0, "")
            check = await self._save(family, table)
            log.error("restore_not_atomic", family=family, table=table, undone=rc == 0, error=error_text(err))
            if rc != 0 or _only(check, touched) != _only(before, touched):
                raise OperationFailed(
                    f"{message} (and it left the table partly changed; undo failed: {error_text(undo_err)})",
                    "RESTORE_PARTIAL",
                    op,
                )
        raise OperationFailed(message, "RESTORE_FAILED", op)


def _probe_of_dead_process(chain: str) -> bool:
    """A scratch chain left behind by an fwrecon process that is gone."""
    match = _PROBE_CHAIN.fullmatch(chain)
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def _only(save: TableSave, chains: Collection[str]) -> list[tuple[str, tuple[str, ...]]]:
    return [entry for entry in save.content() if entry[0] in chains]


