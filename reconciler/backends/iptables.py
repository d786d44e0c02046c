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
the plan was made on (the ``seen`` view's `FirewallView.reads`, which the
transaction drops for a table once it wrote there); when there is none, when the script places rules by
position (``-I CHAIN N``), or when the tool refuses a script built on it, the
table is read again with ``-save`` and the script rebuilt, so a change made
by someone else in between costs a re-read, never a wrong write.  ebtables
always reads again first: only iptables-restore and ip6tables-restore are
atomic per table in both their legacy and nf_tables variants, and a refused
script must be known to have changed nothing before it is tried again.
Our ``-restore`` runs in one namespace go one at a time, and an
ebtables-restore the kernel refused whole is run again (`_restore`).

Which rules are ours, in what order, and the scripts: `iptables_text`.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import structlog

from ..errors import BackendError, BackendUnavailable, OperationFailed
from ..model import DirectChain, DirectRule, Item, Op, Outcome
from ..view import FirewallView
from .base import Backend, EventCallback, by_container, in_runs, kind_refused
from .iptables_text import (
    COMMANDS,
    KERNEL_REFUSED_BATCH,
    MISSING_CHAIN,
    PACKAGES,
    PROBE_PREFIX,
    TABLE_NAME,
    BatchScript,
    TableModel,
    TableSave,
    build_model,
    build_script,
    chain_users,
    check_names,
    compensation_script,
    culprit_op,
    error_text,
    failed_line,
    is_probe_chain,
    join_words,
    jump_targets,
    parse_save,
    probe_pid,
    refusal,
    rule_tags,
    rule_text,
)
from .process import ToolRunner, process_gone

log = structlog.get_logger(__name__)

# What the nf_tables variant's *-save prints on stderr when the legacy variant has tables too.
LEGACY_TABLES_PRESENT = "-legacy tables present"
DEFAULT_TIMEOUT = 30.0
# Waits before running a kernel-refused ebtables-restore again (see `_restore`).
EB_RETRY_DELAYS = (0.05, 0.2)


# -- the backend -----------------------------------------------------------------


@dataclass(frozen=True)
class TableRead:
    """One read of a table: the save as printed and the rules tied to items."""

    save: TableSave
    model: TableModel
    knowledge: int  # IptablesBackend.knowledge when it was tied


class IptablesBackend(Backend):
    """See module docstring.  ``netns``: run every command inside that namespace."""

    name = "iptables"

    def __init__(self, netns: str | None = None, *, timeout: float = DEFAULT_TIMEOUT, tools: ToolRunner | None = None) -> None:
        """``tools``: how processes are run (a test passes one that answers from canned output)."""
        self.netns = netns
        self.timeout = timeout
        self._tools = tools or ToolRunner(netns, timeout)
        self.runs = 0  # processes started, for tests and metrics
        self.writes = 0  # *-restore runs that applied a batch
        self._by_tag: dict[str, DirectRule] = {}
        self._rules: dict[tuple[str, str], set[DirectRule]] = defaultdict(set)
        self._chains: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._canon: dict[DirectRule, str] = {}  # item -> its rule text as -save prints it
        self._canon_failed: dict[DirectRule, frozenset[str]] = {}  # -> the chains when it failed
        self.knowledge = 0  # changes whenever the known items do (a read made before may miss them)
        self._legacy_reported: set[str] = set()  # families whose legacy tables were reported
        self._tools_missing: dict[str, str | None] = {}  # family -> its first tool not installed

    # -- what the engine tells us --------------------------------------------------

    def _know(self, items: Iterable[Item], *, only: bool = False) -> None:
        """Items we may meet in the firewall: needed to map a rule's
        ``fwrecon:<hash>`` comment back to its item and to recognise untagged
        copies.  ``only``: these and no others (what observe is told); else
        added (a batch's own items).  Texts learnt for items no longer known
        are forgotten.  Items of other kinds are ignored.
        """
        if only:
            wanted = {item for item in items if isinstance(item, (DirectRule, DirectChain))}
            rules = {item for item in wanted if isinstance(item, DirectRule)}
            if rules != {rule for known in self._rules.values() for rule in known}:
                self.knowledge += 1
            self._by_tag, self._rules, self._chains = {}, defaultdict(set), defaultdict(set)
            self._canon = {rule: text for rule, text in self._canon.items() if rule in rules}
            self._canon_failed = {rule: chains for rule, chains in self._canon_failed.items() if rule in rules}
            items = wanted
        for item in items:
            if isinstance(item, DirectRule):
                known = self._rules[(item.family, item.table)]
                if item not in known:
                    known.add(item)
                    self._by_tag[item.tag()] = item
                    if not only:
                        self.knowledge += 1
            elif isinstance(item, DirectChain):
                self._chains[(item.family, item.table)].add(item.chain)

    async def refusals(self, items: Collection[Item], *, ask_tools: bool = False) -> dict[Item, str]:
        """Names the tools reject, families whose tools are missing, kinds
        it does not hold (the tools have no dry run: ``ask_tools`` adds nothing)."""
        return {item: reason for item in items if (reason := self._cannot_hold(item))}

    def _cannot_hold(self, item: Item) -> str | None:
        if isinstance(item, (DirectChain, DirectRule)):
            problem = check_names(item)
            tool = None if problem else self._missing_tool(item.family)
            return f"needs {tool}, which is not installed (the {PACKAGES[item.family]} package)" if tool else problem
        return kind_refused(item)

    def read_afresh(self) -> None:
        """Nothing: every observe runs ``*-save``."""

    async def activate(self) -> bool:
        """Nothing: every write is in force when it returns."""
        return False

    def refusal_key(self) -> Hashable:
        """Which families' tools are missing, looked up afresh (installing
        iptables or ebtables makes their policies valid at the next reconcile)."""
        self._tools_missing.clear()
        return tuple(self._missing_tool(family) for family in sorted(COMMANDS))

    def _missing_tool(self, family: str) -> str | None:
        """The first of ``family``'s tools that is not installed, or None (looked up once per reconcile)."""
        if family not in self._tools_missing:
            names = (COMMANDS[family] + suffix for suffix in ("-save", "-restore"))
            self._tools_missing[family] = next((name for name in names if self._tools.which(name) is None), None)
        return self._tools_missing[family]

    def name_for(self, item: Item) -> str:
        return self.name

    async def subscribe(self, callback: EventCallback) -> None:
        """The tools have no change events: drift is found by the periodic resync."""

    async def close(self) -> None:
        """Nothing stays open: every tool run ends with its batch."""

    # -- processes -----------------------------------------------------------------

    def _tool(self, family: str, suffix: str) -> str:
        name = COMMANDS[family] + suffix
        path = self._tools.which(name)
        if path is None:
            raise BackendUnavailable(f"{name} not found (is the {PACKAGES[family]} package installed?)")
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
        save = parse_save(out, table, f"{COMMANDS[family]}-save")
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
        log.warning(
            "iptables_legacy_tables_present",
            family=family,
            detail=f"this host also has legacy tables; packets pass them as well as fwrecon's rules; see {tool}",
        )

    async def _restore(self, family: str, script: str) -> tuple[int, str]:
        """Run one ``-restore --noflush`` script: (returncode, stderr).

        Our restores in one namespace run one at a time, whatever their family:
        ebtables-restore (nf_tables variant) fails when another nft commit lands
        while it runs (`KERNEL_REFUSED_BATCH`), and ours would otherwise race
        each other whenever observe reads the families side by side.  Someone
        else's commit can still land in between: a script the kernel refused
        whole is run again, at most ``len(EB_RETRY_DELAYS)`` times.
        """
        argv = [self._tool(family, "-restore")]
        if family != "eb":
            argv += ["-w", str(max(1, int(self.timeout / 3)))]  # legacy: wait for the xtables lock
        argv.append("--noflush")
        delays = iter(EB_RETRY_DELAYS if family == "eb" else ())
        while True:
            async with self._lock("restore"):
                rc, _, err = await self._run(argv, script)
            delay = next(delays, None) if rc != 0 and KERNEL_REFUSED_BATCH.search(err) else None
            if delay is None:
                return rc, err
            log.info("ebtables_restore_retried", error=error_text(err), retry_in=delay)
            await asyncio.sleep(delay)

    # One lock per (netns, key) for the whole process, so a probe or batch never
    # interleaves with another of ours (even of another instance): keys are
    # (family, table) for a table's read-and-write, "restore" for any -restore run.
    _locks: ClassVar[dict[tuple[str | None, ...], asyncio.Lock]] = {}
    _locks_loop: ClassVar[asyncio.AbstractEventLoop | None] = None

    def _lock(self, *key: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        cls = type(self)
        if loop is not cls._locks_loop:  # a lock belongs to one loop (tests run several)
            cls._locks, cls._locks_loop = {}, loop
        return cls._locks.setdefault((self.netns, *key), asyncio.Lock())

    # -- canonical texts -------------------------------------------------------------

    def _to_learn(self, family: str, table: str, save: TableSave) -> list[DirectRule]:
        """Known items whose printed text may be needed to recognise a rule now.

        Untagged copies can only be in chains holding rules without our tag;
        a tagged rule is an item only if its text matches the item's (a tag
        can be copied onto any rule), so items whose tags appear need their
        text too.  A rule jumping to a chain of ours that does not exist yet
        cannot be in the table (and would make the probe fail).
        """
        candidates: set[str] = set()
        tagged: set[tuple[str, str]] = set()  # (chain, tag) seen in the table
        for chain, rules in save.rules.items():
            if is_probe_chain(chain):
                continue
            for rest in rules:
                tags = [] if family == "eb" else rule_tags(rest)
                if tags:
                    tagged.update((chain, tag) for tag in tags)
                else:
                    candidates.add(chain)
        if not candidates and not tagged:
            return []
        chains = frozenset(save.chains)
        absent = self._chains[(family, table)] - chains
        return sorted(
            (
                item
                for item in self._rules[(family, table)]
                if item not in self._canon
                and (item.chain in candidates or (item.chain, item.tag()) in tagged)
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
            lines = [f"*{table}", declare, *(join_words("-A", probe, rule_text(family, i.args, None)) for i in pending), "COMMIT"]
            rc, err = await self._restore(family, "\n".join(lines) + "\n")
            if rc == 0:
                break
            number = failed_line(err)
            bad = [pending[number - 3]] if number is not None and 3 <= number < 3 + len(pending) else []
            if not bad:
                missing = MISSING_CHAIN.search(err)
                bad = [i for i in pending if missing and missing.group(1) in jump_targets(i.args)] or list(pending)
            for item in bad:
                self._canon_failed[item] = chains
                log.info("rule_text_unknown", item=item.describe(), error=error_text(err))
            pending = [i for i in pending if i not in bad]
        if not pending:
            return save
        hung = False
        try:
            after = await self._save(family, table)
        except BackendUnavailable:
            hung = True  # the tools do not answer: no cleanup run to wait out too (the next probe flushes it)
            raise
        finally:
            if not hung:
                await self._clean_probes(family, table, save, probe)
        texts = after.rules.get(probe, [])
        if len(texts) == len(pending):
            for item, text in zip(pending, texts, strict=True):
                self._canon[item] = text
        else:
            log.warning("probe_mismatch", family=family, table=table, expected=len(pending), found=len(texts))
            for item in pending:
                self._canon_failed[item] = chains
        return after

    async def _clean_probes(self, family: str, table: str, save: TableSave, probe: str) -> None:
        stale = sorted({probe} | {c for c in save.chains if _probe_of_dead_process(c)})
        cleanup = [f"*{table}", *(f"-F {c}" for c in stale), *(f"-X {c}" for c in stale), "COMMIT"]
        rc, err = await self._restore(family, "\n".join(cleanup) + "\n")
        if rc != 0:
            log.warning("probe_cleanup_failed", family=family, table=table, chain=probe, error=error_text(err))

    def _model(self, family: str, table: str, save: TableSave) -> TableModel:
        by_text: dict[tuple[str, str], list[DirectRule]] = defaultdict(list)
        learnt = (item for item in self._rules[(family, table)] if item in self._canon)
        for item in sorted(learnt, key=Item.sort_key):
            by_text[(item.chain, self._canon[item])].append(item)
        return build_model(save, family, self._by_tag, by_text, self._canon)

    async def _read(self, family: str, table: str) -> TableRead:
        save = await self._save(family, table)
        save = await self._learn(family, table, save)
        return TableRead(save, self._model(family, table, save), self.knowledge)

    def _usable_read(self, seen: FirewallView | None, family: str, table: str) -> TableRead | None:
        """The read ``seen`` holds of the table, if one may stand in for a fresh
        one: made knowing every item, and not of ebtables (see module docstring)."""
        read = seen.reads.get(("direct", family, table)) if seen is not None else None
        if not isinstance(read, TableRead) or family == "eb" or read.knowledge != self.knowledge:
            return None
        return read

    # -- observe -----------------------------------------------------------------------

    async def observe(
        self,
        containers: Collection[tuple[str, ...]],
        known: Iterable[Item] | None = None,
        *,
        removable: Collection[Item] | None = None,
    ) -> FirewallView:
        """One ``-save -t TABLE`` per direct table (plus a probe when texts must be learnt)."""
        if known is not None:
            self._know(known, only=True)
        tables = sorted({(c[1], c[2]) for c in containers if len(c) == 3 and c[0] == "direct"})
        valid = [(f, t) for f, t in tables if f in COMMANDS and TABLE_NAME.fullmatch(t)]
        missing = [("direct", f, t) for f, t in tables if (f, t) not in valid]
        # Without its tools a family can be neither read nor written: its items
        # wait, owned as they are (their policies are told why, see cannot_hold).
        unreachable = [("direct", f, t) for f, t in valid if self._missing_tool(f)]
        valid = [(f, t) for f, t in valid if not self._missing_tool(f)]

        async def read(family: str, table: str) -> TableRead:
            async with self._lock(family, table):
                return await self._read(family, table)

        found = await asyncio.gather(*(read(f, t) for f, t in valid))
        items: list[Item] = []
        users: dict[Item, tuple[Item | str, ...]] = {}
        for table_read in found:
            items.extend(table_read.model.items())
            users.update(chain_users(table_read.model))
        reads: dict[tuple[str, ...], object] = {("direct", f, t): done for (f, t), done in zip(valid, found, strict=True)}
        return FirewallView(items, containers, missing, users, unreachable=unreachable, reads=reads)

    # -- execute -------------------------------------------------------------------------

    async def apply(self, ops: Sequence[Op], seen: FirewallView | None = None) -> list[Outcome]:
        """Each run of consecutive ops of one table in one ``-restore --noflush``."""
        return await in_runs(ops, by_container, self._apply_table, seen)

    async def _apply_table(self, ops: Sequence[Op], seen: FirewallView | None) -> list[Outcome]:
        """All ops of one table in one ``-restore --noflush``: all or nothing."""
        if not ops:
            return []
        first = ops[0]
        if not isinstance(first.item, (DirectChain, DirectRule)):
            raise refusal(first, "UNSUPPORTED", self._cannot_hold(first.item) or "not a direct item")
        family, table = first.item.family, first.item.table
        for op in ops:
            problem = self._cannot_hold(op.item)
            if problem:
                raise refusal(op, "INVALID_ARGUMENT", problem)
            if op.item.container() != first.item.container():
                raise ValueError("_apply_table takes the ops of one table only")
        self._know(op.item for op in ops)
        async with self._lock(family, table):
            observed = self._usable_read(seen, family, table)
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
        except BackendUnavailable:
            raise  # the tools stopped answering: no further run, no rollback (see transaction)
        except BackendError as exc:
            log.warning("restore_check_failed", family=family, table=table, error=str(exc))
            raise OperationFailed(message, "RESTORE_FAILED", op) from exc
        touched = {
            line_op.item.chain
            for line_op in script.line_ops
            if line_op is not None and isinstance(line_op.item, (DirectChain, DirectRule))
        }
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
    pid = probe_pid(chain)
    return pid is not None and process_gone(pid)


def _only(save: TableSave, chains: Collection[str]) -> list[tuple[str, tuple[str, ...]]]:
    return [entry for entry in save.content() if entry[0] in chains]
