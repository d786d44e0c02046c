"""Native nftables: fwrecon's own table ``fwrecon`` in each family, via ``nft``.

Only the table named `NFT_TABLE` is ever read or written (in the families
ip, ip6, inet, arp, bridge and netdev); tables of firewalld, docker or anyone
else are never touched.  Every command is an argv list run with
`asyncio.create_subprocess_exec` under a timeout, prefixed with
``ip netns exec NETNS`` when a network namespace is given (the tests do that).

The identity of chains and rules and the script of a batch: `nft_text`.

Events
    `subscribe` runs ``nft monitor`` (restarted with backoff if it dies).  Its
    output is grouped per transaction by the ``# new generation N by process
    PID`` line that ends each one; transactions of fwrecon's own ``nft -f``
    processes are ignored (no echo), and any deletion or flush in a
    ``fwrecon`` table, or a base chain (re)definition there (a policy change),
    by anyone else calls back `BackendEvent.CHANGED`.  So does a restart of the
    monitor, since events may have been missed while it was down.  The monitor
    never outlives fwrecon: it gets SIGKILL when fwrecon dies, however it dies
    (``PR_SET_PDEATHSIG``, see `process`).

Listings kept
    Listing a table of 100,000 set elements costs nft ~0.3-0.6 s, so observe
    takes the listing the last observe made, as fwrecon's own batches since
    left it (`LiveListing`), instead of listing again while nothing else can
    have changed the table: the monitor has watched since before that listing
    (settled), no transaction of anyone else's that it printed named a
    ``fwrecon`` table (or could have: a line it cannot place, a warning, a
    transaction of no lines count), no rule has become known whose tag that
    listing did not prove, and no set there changes on its own (``timeout``
    and ``dynamic`` sets, elements with timeouts, sets a rule there fills
    from the packet path).  nft's report of events lost (its socket
    overflowed) counts as someone else's change, and as drift.  Whatever
    breaks one of these makes the next observe list.  The daemon's periodic
    resync, a reload and a signal list afresh anyway (`read_afresh`): that
    repair of drift never rests on events.  What remains is the moment
    between another process's transaction and its monitor line: a reconcile
    then works on the table as it was a few milliseconds before, as one does
    on a listing taken just before that transaction.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shutil
import time
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import structlog

from ..errors import BackendUnavailable, OperationFailed
from ..model import NFT_ITEMS, NFT_TABLE, Item, NftChain, NftElement, NftRule, NftSet, Op, Outcome
from ..view import FirewallView, LiveRead
from .base import Backend, BackendEvent, EventCallback, kind_refused
from .nft_text import (
    FAMILIES,
    PROBE_PREFIX,
    RuleEntry,
    Script,
    TableListing,
    build_script,
    canonical_chain,
    check_script,
    failure_for,
    foreign_users,
    generation_pid,
    is_drift_line,
    is_lost_events_line,
    item_problem,
    may_touch_fwrecon,
    parse_errors,
    parse_listing,
    probe_script,
    set_references,
    trusted,
    validate,
    writes_sets,
)
from .process import ToolResult, ToolRunner, kill, process_gone

log = structlog.get_logger(__name__)

_MISSING_TABLE_MARK = "No such file or directory"  # nft list table: no such table
_NOT_PERMITTED = "Operation not permitted"  # nft without CAP_NET_ADMIN
_SELF_CHANGING = frozenset({"timeout", "dynamic"})  # set flags under which elements come and go without a transaction
_TOO_MANY_LINKS = "Too many links"  # EMLINK: the kernel's answer to a jump loop, or jumps nested too deep
_JUMP = re.compile(r"\b(jump|goto)\s+([^\s,;}]+)")  # a jump and its target chain (also inside a vmap)
LOOP_CHECK_RUNS = 20  # throwaway commits per check at most: each takes a rule out or stands one in
DEFAULT_TIMEOUT = 10.0
MONITOR_BACKOFF_INITIAL = 0.5
MONITOR_BACKOFF_MAX = 30.0
MONITOR_STABLE_AFTER = 10.0  # a monitor that ran this long resets the backoff
MONITOR_SETTLE = 1.0  # a monitor alive this long is taken to be working
MONITOR_GROUP_WAIT = 0.5  # wait this long for a generation line before judging lines alone
OWN_PID_GRACE = 60.0  # how long after our nft exits its generation lines are ignored


# -- the backend ------------------------------------------------------------------------


class LiveListing(LiveRead):
    """fwrecon's table in one family as the last listing and this backend's
    batches since left it; None once that is unknown (read it again).

    ``epoch``: the backend's count of what may have changed the table
    unseen (`NftablesBackend._epoch`) when the listing began; ``rules``: the
    rule tags known when its tags were proven.  Both say whether a later
    observe may take it instead of listing again (`NftablesBackend._kept`)."""

    __slots__ = ("epoch", "listing", "rules")

    def __init__(self, listing: TableListing | None, epoch: int = -1, rules: frozenset[str] = frozenset()) -> None:
        self.listing = listing
        self.epoch = epoch
        self.rules = rules


def _what(item: Item) -> str:
    """How a refusal names ``item``."""
    if isinstance(item, NftRule):
        return repr(item.rule)
    return "the set" if isinstance(item, (NftSet, NftElement)) else "the chain"


class NftablesBackend(Backend):
    """See module docstring."""

    name = "nftables"

    def __init__(
        self, netns: str | None = None, *, nft: str = "nft", timeout: float = DEFAULT_TIMEOUT, tools: ToolRunner | None = None
    ) -> None:
        """``tools``: how processes are run (a test passes one that answers from canned output)."""
        self.netns = netns
        self.nft = nft
        self.timeout = timeout
        self._tools = tools or ToolRunner(netns, timeout)
        self.calls = 0  # nft processes run (reads, writes and checks), for tests and metrics
        self.writes = 0  # `nft -f` runs that could change the ruleset
        self._rules: dict[str, NftRule] = {}  # tag -> rule
        self._chains: dict[tuple[str, str], set[NftChain]] = {}  # (family, name) -> remembered chains
        # (family, set) -> element -> the item observe was told of: a listed element
        # is that same object, whose hash and JSON text are computed already.
        self._elements: dict[tuple[str, str], dict[str, NftElement]] = {}
        # Per family: the table as of the last listing and the batches since
        # (handles of present rules); observe hands it out in its view's reads.
        self._live: dict[str, LiveListing] = {}
        # Bumped by whatever may change fwrecon's tables unseen: another's
        # transaction there, a monitor not (yet) watching, `read_afresh`.
        self._epoch = 0
        self._watching = False  # a settled `nft monitor` reads the kernel's events now
        self._exprs: dict[NftRule, Any] = {}  # rule -> its statements as nft lists them (learnt by a probe)
        self._expr_failed: dict[NftRule, frozenset[str]] = {}  # -> the table's chains when nft refused it
        self._lock = asyncio.Lock()
        self._callbacks: list[EventCallback] = []
        self._monitor_task: asyncio.Task[None] | None = None
        self._monitor_proc: asyncio.subprocess.Process | None = None
        self._own_pids: dict[int, float] = {}  # pid -> ignore its generations until (monotonic)
        self._monitor_tail: collections.deque[str] = collections.deque(maxlen=5)  # the monitor's last lines, for its exit
        self._closing = False
        self._missing: bool | None = None  # nft not installed (None: not looked up this reconcile)
        self._loop_check_said = False  # the warning that loops cannot be checked here, once per process

    # -- knowledge ------------------------------------------------------------------

    def _know(self, items: Iterable[Item], *, only: bool = False) -> None:
        """Tag → rule and the declared form of chains (see module docstring):
        ``only`` these (what observe is told, forgetting what was learnt of
        others), else added (a batch's own items)."""
        if only:
            self._rules, self._chains, self._elements = {}, {}, {}
        by_set: dict[str, NftElement] = {}
        family = name = None  # the set of the element before: 100,000 of one set come in a row
        for item in items:
            if type(item) is NftElement:
                if item.set != name or item.family != family:
                    family, name = item.family, item.set
                    by_set = self._elements.setdefault((family, name), {})
                by_set[item.element] = item
            elif isinstance(item, NftRule):
                self._rules[item.tag()] = item
            elif isinstance(item, NftChain):
                self._chains.setdefault((item.family, item.chain), set()).add(item)
        if only:
            rules = set(self._rules.values())
            self._exprs = {rule: expr for rule, expr in self._exprs.items() if rule in rules}
            self._expr_failed = {rule: chains for rule, chains in self._expr_failed.items() if rule in rules}

    def handles(self, rule: NftRule) -> list[int]:
        """Handles of ``rule`` as of the last observe or batch (empty if not present)."""
        live = self._live.get(rule.family)
        listing = live.listing if live else None
        return listing.handles(rule.family, rule.chain, rule.tag()) if listing else []

    async def refusals(self, items: Collection[Item], *, ask_tools: bool = False) -> dict[Item, str]:
        """Kinds it does not hold and nft not installed; with ``ask_tools``
        also nft's own verdict (``nft -c``, see `check`)."""
        if self._nft_missing():
            found = {item: reason for item in items if (reason := self._cannot_hold(item))}
        else:  # (one C test an item: 100,000 elements are judged whenever their file changes)
            found = {item: kind_refused(item) for item in items if not isinstance(item, NFT_ITEMS)}
        if ask_tools:
            rejected = await self.check(item for item in items if item not in found)
            for item, message in rejected.items():
                found[item] = f"nft rejects {_what(item)}: {message}"
        return found

    def _cannot_hold(self, item: Item) -> str | None:
        if isinstance(item, NFT_ITEMS):
            return f"needs {self.nft}, which is not installed (the nftables package)" if self._nft_missing() else None
        return kind_refused(item)

    async def activate(self) -> bool:
        """Nothing: every write is in force when it returns."""
        return False

    def refusal_key(self) -> Hashable:
        """Whether nft is missing, looked up afresh (installing it makes nft
        sections valid at the next reconcile)."""
        self._missing = None
        return self._nft_missing()

    def _nft_missing(self) -> bool:
        """nft is not installed (looked up once per reconcile)."""
        if self._missing is None:
            self._missing = self._nft_path() is None
        return self._missing

    # -- running nft --------------------------------------------------------------------

    def _argv(self, *args: str) -> list[str]:
        return self._tools.argv([self.nft, *args])

    def _nft_path(self) -> str | None:
        return self._tools.which(self.nft)

    async def _run(self, *args: str, input: str | None = None, own: bool = False, scratch: bool = False) -> ToolResult:
        """Run nft once (in the netns), with the timeout; ``own`` marks a write
        (``scratch``: one that only touches the probe's scratch chain)."""
        self.calls += 1
        if own and not scratch:
            self.writes += 1

        def started(pid: int) -> None:
            if own:
                self._own_pids[pid] = float("inf")

        def ended(pid: int) -> None:
            if own:
                self._own_pids[pid] = time.monotonic() + OWN_PID_GRACE

        result = await self._tools.run([self.nft, *args], input, on_start=started, on_exit=ended)
        return result

    async def _list(self, family: str) -> TableListing:
        """fwrecon's table in ``family``, tags kept only where proven (see `_prove`)."""
        result = await self._run("-s", "-j", "list", "table", family, NFT_TABLE)
        if result.returncode != 0:
            if _MISSING_TABLE_MARK in result.stderr:
                listing = TableListing(family)
            else:
                raise BackendUnavailable(f"nft list table {family} {NFT_TABLE} failed: {result.stderr.strip()}")
        else:
            listing = await self._prove(parse_listing(family, result.stdout))
        return listing

    def _now(self, family: str, listing: TableListing | None, epoch: int | None = None) -> None:
        """``listing`` is the table now (None: unknown); ``epoch``: it was just
        listed, from then (else it is what a batch made of the listing before)."""
        live = self._live.setdefault(family, LiveListing(None))
        live.listing = listing
        if epoch is not None:
            live.epoch, live.rules = epoch, frozenset(self._rules)

    def _kept(self, family: str) -> LiveListing | None:
        """The live listing of ``family`` if nothing can have changed the table
        since it was made (see module docstring, *Listings kept*)."""
        live = self._live.get(family)
        listing = live.listing if live is not None else None
        if listing is None or not self._watching or live is None or live.epoch != self._epoch:
            return None
        if not self._rules.keys() <= live.rules:  # a rule known since, whose tag the listing did not prove
            return None
        if (
            listing.odd_elements
            or any(_SELF_CHANGING & set(s.flags) for s in listing.sets.values())
            or any(writes_sets(entry.expr) for entry in listing.rules)
        ):
            return None  # elements that time out, or that the packet path adds, change without a transaction
        return live

    def read_afresh(self) -> None:
        """The next observe lists every table: no listing is kept past this."""
        self._epoch += 1

    # -- proving ownership ----------------------------------------------------------------

    def _claimed(self, family: str, entry: RuleEntry) -> NftRule | None:
        """The known rule whose tag ``entry`` carries, if it sits in that rule's chain."""
        rule = self._rules.get(entry.tag) if entry.tag else None
        return rule if rule is not None and (rule.family, rule.chain) == (family, entry.chain) else None

    async def _prove(self, listing: TableListing) -> TableListing:
        """Keep a rule's tag only when its statements are exactly its item's.

        Anyone can write ``comment "fwrecon:…"`` onto a rule; what nft lists
        for an item's rule text is learnt once per process with a probe
        (`_learn`) and compared with the listed rule.
        """
        family = listing.family
        chains = frozenset(listing.chains)
        unknown = {
            rule
            for entry in listing.rules
            if (rule := self._claimed(family, entry)) is not None
            and rule not in self._exprs
            and self._expr_failed.get(rule) != chains
        }
        cleaned = await self._learn(family, sorted(unknown, key=Item.sort_key), chains) if unknown else frozenset()
        if cleaned:  # (the listing would still hold them: later batches build on it)
            listing = replace(
                listing,
                chains={name: chain for name, chain in listing.chains.items() if name not in cleaned},
                rules=[entry for entry in listing.rules if entry.chain not in cleaned],
            )

        def proven(entry: RuleEntry) -> bool:
            rule = self._claimed(family, entry)
            return rule is not None and rule in self._exprs and self._exprs[rule] == entry.expr

        return trusted(listing, proven)

    async def _learn(self, family: str, rules: list[NftRule], chains: frozenset[str]) -> frozenset[str]:
        """Learn how nft lists ``rules``: add them, untagged, to a scratch chain of
        fwrecon's table (a regular chain: never hooked, so never live), list it,
        drop it.  Rules nft refuses stay unknown (tried again when the table's
        chains change), so a rule carrying their tag is not taken for them.
        Returns the listed ``chains`` its cleanup deleted (stale probe chains)."""
        probe = f"{PROBE_PREFIX}{os.getpid()}"
        pending = list(rules)
        try:
            while pending:
                result = await self._run("-f", "-", input=probe_script(family, probe, pending), own=True, scratch=True)
                if result.returncode == 0:
                    break
                lines = {error.line for error in parse_errors(result.stderr) if error.line is not None}
                bad = {pending[n - 2] for n in lines if 2 <= n < 2 + len(pending)} or set(pending)
                for rule in bad:
                    self._expr_failed[rule] = chains
                    log.info("nft_rule_form_unknown", rule=rule.describe(), error=result.stderr.strip()[:300])
                pending = [rule for rule in pending if rule not in bad]
            if pending:
                listed = await self._run("-s", "-j", "list", "chain", family, NFT_TABLE, probe)
                found = parse_listing(family, listed.stdout).rules if listed.returncode == 0 else []
                if len(found) == len(pending):
                    for rule, entry in zip(pending, found, strict=True):
                        self._exprs[rule] = entry.expr
                else:
                    log.warning("nft_probe_mismatch", family=family, expected=len(pending), found=len(found))
        finally:
            stale = [
                name
                for name in chains
                if name.startswith(PROBE_PREFIX)
                and name[len(PROBE_PREFIX) :].isdigit()
                and process_gone(int(name[len(PROBE_PREFIX) :]))
            ]
            cleanup = "".join(
                f"add chain {family} {NFT_TABLE} {name}\nflush chain {family} {NFT_TABLE} {name}\n"
                f"delete chain {family} {NFT_TABLE} {name}\n"
                for name in [probe, *stale]
            )
            done = await self._run("-f", "-", input=cleanup, own=True, scratch=True)
            if done.returncode != 0:
                log.warning("nft_probe_cleanup_failed", family=family, chain=probe, error=done.stderr.strip()[:300])
        return frozenset(name for name in (probe, *stale) if name in chains) if done.returncode == 0 else frozenset()

    # -- observe ------------------------------------------------------------------------

    async def observe(
        self,
        containers: Collection[tuple[str, ...]],
        known: Iterable[Item] | None = None,
        *,
        removable: Collection[Item] | None = None,
    ) -> FirewallView:
        """One ``nft -j list table <family> fwrecon`` per ("nft", family) container."""
        if known is not None:
            self._know(known, only=True)
        families = sorted({c[1] for c in containers if len(c) == 2 and c[0] == "nft" and c[1] in FAMILIES}, key=FAMILIES.index)
        if families and self._nft_missing():  # nothing to read or write: the items wait (see refusals)
            return FirewallView((), containers, unreachable=[("nft", family) for family in families])
        kept = {family: live for family in families if (live := self._kept(family)) is not None}
        epoch = self._epoch  # before listing: what happens meanwhile counts against the listings
        listed = await asyncio.gather(*(self._list(family) for family in families if family not in kept))
        for listing in listed:
            stale = self._live.get(listing.family)
            if stale is not None:
                stale.listing = None  # an older view's read: no longer kept true
            kept[listing.family] = LiveListing(listing, epoch, frozenset(self._rules))
        self._live.update(kept)
        items: list[Item] = []
        users: dict[Item, tuple[Item | str, ...]] = {}
        reads: dict[tuple[str, ...], object] = {}
        for family in families:
            reads[("nft", family)] = live = kept[family]
            assert live.listing is not None
            items.extend(self._items_of(live.listing, users))
        return FirewallView(items, containers, users=users, reads=reads)

    def _items_of(self, listing: TableListing, users: dict[Item, tuple[Item | str, ...]]) -> list[Item]:
        """The items ``listing`` holds; fills ``users`` with what keeps each chain in use."""
        items: list[Item] = []
        foreign = foreign_users(listing)
        for name, chain in listing.chains.items():
            # The declared form of the same chain (e.g. policy left out) is present too.
            forms = [chain, *(c for c in self._chains.get((listing.family, name), ()) if canonical_chain(c) == chain)]
            items.extend(forms)
            if name in foreign:
                users.update((form, tuple(foreign[name])) for form in forms)
        family = listing.family
        set_users: dict[str, list[Item | str]] = {}
        for entry in listing.rules:
            rule = self._rules.get(entry.tag) if entry.tag else None
            ours = rule is not None and rule.family == family and rule.chain == entry.chain
            if rule is not None and ours:
                items.append(rule)
            for name in set_references(entry.expr):
                user = rule if rule is not None and ours else f"foreign rule in {entry.chain} (handle {entry.handle}) using it"
                set_users.setdefault(name, []).append(user)
        for name, nft_set in listing.sets.items():
            items.append(nft_set)
            known = self._elements.get((family, name), {})
            items.extend(known.get(element) or NftElement(family, name, element) for element in listing.elements.get(name, ()))
            odd = listing.odd_elements.get(name, 0)
            found = [*set_users.get(name, ()), *([f"{odd} element(s) of a form fwrecon does not write"] if odd else [])]
            if found:
                users[nft_set] = tuple(found)
        return items

    # -- execute ------------------------------------------------------------------------

    async def apply(self, ops: Sequence[Op], seen: FirewallView | None = None) -> list[Outcome]:
        """List each family once, then one atomic ``nft -f -``; see module docstring."""
        if not ops:
            return []
        validate(ops)  # before listing anything
        self._know(op.item for op in ops)
        async with self._lock:
            families = sorted({op.item.family for op in ops if isinstance(op.item, NFT_ITEMS)}, key=FAMILIES.index)
            reads = seen.reads if seen is not None else {}
            # What observe listed, as the batches since left it (see `_write`).
            observed = {
                f: read.listing for f in families if isinstance(read := reads.get(("nft", f)), LiveListing) and read.listing
            }
            if len(observed) == len(families):
                try:
                    script = build_script(ops, observed, self._rules)
                except OperationFailed:
                    pass  # judged on listings that may be stale: judge again on fresh ones
                else:
                    if not script.lines or await self._write(script, families, retry=True):
                        return script.outcomes
            epoch = self._epoch
            listings = dict(zip(families, await asyncio.gather(*(self._list(f) for f in families)), strict=True))
            for family, listing in listings.items():
                self._now(family, listing, epoch)
            script = build_script(ops, listings, self._rules)
            if script.lines:
                await self._write(script, families, retry=False)
            return script.outcomes

    async def _write(self, script: Script, families: Sequence[str], *, retry: bool) -> bool:
        """Run ``script``; on refusal log and return False (``retry``) or raise the failure."""
        try:
            result = await self._run("-f", "-", input=script.text(), own=True)
        except BaseException:
            for family in families:
                self._now(family, None)  # it may have run, or not: the next batch lists again
            raise
        if result.returncode != 0:
            failure = failure_for(script, result.stderr, result.returncode)
            if retry:
                log.info("nft_batch_retried", error=str(failure))
                return False
            log.warning(
                "nft_batch_refused",
                error=str(failure),
                ops=len(script.outcomes),
                culprit=failure.op.describe() if isinstance(failure.op, Op) else None,
            )
            raise failure
        for family in families:
            # The table as the batch left it, when the listing tells (no rule
            # added: a new rule's handle is nft's to give); else read again.
            self._now(family, script.listings.get(family))
        log.debug("nft_batch_applied", ops=len(script.outcomes), lines=len(script.lines))
        return True

    # -- check ----------------------------------------------------------------------------

    async def check(self, items: Iterable[Item]) -> dict[Item, str]:
        """Validate chains and rules with ``nft -c`` (commits nothing): item → error.

        They go into a scratch table ``fwrecon_check_<pid>`` per family; a rule
        whose chain is not among ``items`` gets a plain placeholder chain.
        nft stops evaluating at some errors, so failing items are taken out
        and the rest checked again until nft accepts them.  Rules that jump
        are then judged for loops too (`_loops`).  Within a layer the given
        order is kept: nft blames the rule that closes a loop, so what is in
        force goes first (`tool_verdicts`).
        """
        items = sorted(dict.fromkeys(i for i in items if isinstance(i, NFT_ITEMS)), key=lambda i: i.layer)
        errors: dict[Item, str] = {}
        for item in items:
            problem = item_problem(item)
            if problem:
                errors[item] = problem
        table = f"{NFT_TABLE}_check_{os.getpid()}"
        remaining = [i for i in items if i not in errors]
        while remaining:
            lines, owners = check_script(remaining, table)
            result = await self._check_run("".join(line + "\n" for line in lines))
            if result.returncode == 0:
                break
            found: dict[Item, str] = {}
            parsed = parse_errors(result.stderr)
            for error in parsed:
                owner = owners[error.line - 1] if error.line is not None and 1 <= error.line <= len(owners) else None
                if owner is not None and owner not in found:
                    found[owner] = error.explained()
            if not found:  # nothing located: blame everything left, once
                text = parsed[0].explained() if parsed else (result.stderr.strip() or f"nft -c failed ({result.returncode})")
                found = {item: text for item in remaining}
            errors.update(found)
            remaining = [i for i in remaining if i not in found]
        if any(isinstance(i, NftRule) and _JUMP.search(i.rule) for i in remaining):
            try:
                errors.update(await self._loops(remaining, table))
            except BackendUnavailable as exc:  # (what nft -c said stands)
                log.warning("nft_loop_check_failed", error=str(exc))
        return errors

    async def _loops(self, items: list[Item], table: str) -> dict[Item, str]:
        """The rules of ``items`` that close a jump loop (or nest jumps deeper
        than the kernel allows), which nft -c passes: the kernel checks that
        at commit, and ``nft -c`` skips it for base chains new in the batch.

        So the script is committed in a throwaway network namespace
        (`_commit_run`).  After a loop the kernel answers "Too many links"
        for every later rule of the table: only the first error of a run is
        taken.  A rule failing there for a reason of that empty namespace (an
        interface it lacks) is stood in for by its bare jumps, so a loop
        entered through it is still seen.  At most `LOOP_CHECK_RUNS` runs.
        """
        script = list(items)
        origin: dict[Item, Item] = {}  # stand-in -> the rule it stands in for
        loops: dict[Item, str] = {}
        for _ in range(LOOP_CHECK_RUNS):
            lines, owners = check_script(script, table)
            result = await self._commit_run("".join(line + "\n" for line in lines))
            if result is None or result.returncode == 0:
                return loops
            blamed = [
                (owner, e)
                for e in parse_errors(result.stderr)
                if e.line is not None and 1 <= e.line <= len(owners) and (owner := owners[e.line - 1]) is not None
            ]
            if not blamed:
                return loops  # nothing to learn from (garbage, or the namespace itself failed)
            culprit, error = blamed[0]
            at = script.index(culprit)
            if _TOO_MANY_LINKS in error.text:
                loops[origin.get(culprit, culprit)] = error.explained()
                del script[at]
            elif isinstance(culprit, NftRule) and culprit not in origin:
                stand_ins = [
                    NftRule(culprit.family, culprit.chain, f"{verb} {target}") for verb, target in _JUMP.findall(culprit.rule)
                ]
                origin.update((stand_in, culprit) for stand_in in stand_ins if stand_in not in origin)
                script[at : at + 1] = [stand_in for stand_in in stand_ins if stand_in not in script]
            else:
                del script[at]
        log.warning("nft_loop_check_incomplete", runs=LOOP_CHECK_RUNS)
        return loops

    async def _commit_run(self, script: str) -> ToolResult | None:
        """``nft -f -`` committed in a fresh, empty network namespace that goes
        with the process, so the kernel checks what only a commit checks and
        the host's firewall never sees it: ``unshare --net``, else (not root,
        or root without CAP_SYS_ADMIN) in a user namespace of its own too.
        None, said once, where no namespace may be made (then loops are left
        to apply).  Bounded by the backend's timeout, as every nft run."""
        unshare = shutil.which("unshare")
        if unshare is None:
            self._no_loop_check("unshare is not installed (util-linux)")
            return None
        nft = self._nft_path() or self.nft
        ways = [[unshare, "--net"], [unshare, "--user", "--map-root-user", "--net"]][0 if os.geteuid() == 0 else 1 :]
        for way in ways:
            done = await ToolRunner(timeout=self.timeout).run([*way, nft, "-f", "-"], script)  # (a fresh netns: not self.netns)
            if not (done.returncode != 0 and done.stderr.startswith("unshare:")):
                return done
        self._no_loop_check(done.stderr.strip()[:200])
        return None

    def _no_loop_check(self, why: str) -> None:
        if not self._loop_check_said:
            self._loop_check_said = True
            log.warning("nft_loop_check_unavailable", reason=why, effect="jump loops are found by apply, not by check")

    async def _check_run(self, script: str) -> ToolResult:
        """``nft -c -f -``; where nft may not (not root, no CAP_NET_ADMIN: the
        usual case for `fwrecon check` in a CI job), in a throwaway user and
        network namespace, where it may. The check only needs a ruleset to
        add its scratch table to, and an empty one is as good as the host's."""
        result = await self._run("-c", "-f", "-", input=script)
        if _NOT_PERMITTED not in result.stderr:
            return result
        private = ["unshare", "--user", "--map-root-user", "--net", self._nft_path() or self.nft, "-c", "-f", "-"]
        try:
            done = await ToolRunner(timeout=self.timeout).run(private, script)  # (a fresh netns: not self.netns)
        except BackendUnavailable:
            done = None  # unshare is not installed
        if done is not None and _NOT_PERMITTED not in done.stderr and not done.stderr.startswith("unshare:"):
            return done
        raise BackendUnavailable("nft -c was not permitted: run it as root, or allow unprivileged user namespaces")

    # -- events ---------------------------------------------------------------------------

    async def subscribe(self, callback: EventCallback) -> None:
        """Start ``nft monitor`` (once) and deliver drift to ``callback``."""
        if all(callback is not known for known in self._callbacks):
            self._callbacks.append(callback)
        if self._monitor_task is None or self._monitor_task.done():
            self._closing = False
            self._monitor_task = asyncio.create_task(self._monitor_loop(), name="fwrecon-nft-monitor")

    def name_for(self, item: Item) -> str:
        return self.name

    async def close(self) -> None:
        """End the monitor: the process first, so its reader meets EOF and the
        loop ends on its own even if a cancel were lost on the way."""
        self._closing = True
        task, self._monitor_task = self._monitor_task, None
        if self._monitor_proc is not None:
            await kill(self._monitor_proc)
            self._monitor_proc = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _watch(self, on: bool) -> None:
        """The monitor starts or stops watching: no listing made before is kept."""
        self._epoch += 1
        self._watching = on

    def _notify(self, reason: str) -> None:
        log.info("nft_drift", reason=reason)
        for callback in list(self._callbacks):
            try:
                callback(BackendEvent.CHANGED)
            except Exception:
                log.exception("nft_event_callback_failed")

    async def _monitor_loop(self) -> None:
        delay = MONITOR_BACKOFF_INITIAL
        missed = False  # a working monitor died: events may have been lost since
        absent_reported = False  # "nft is not installed" was logged
        loop = asyncio.get_running_loop()
        while not self._closing:
            started = time.monotonic()
            try:
                proc = await self._tools.spawn(
                    [self.nft, "monitor"],
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    # One stream, in order: nft warns on stderr about events it cannot
                    # print ("W: Received event for an unknown set."), and a pipe
                    # nobody reads would fill up and stall the monitor.
                    stderr=asyncio.subprocess.STDOUT,
                    limit=1 << 20,
                    start_new_session=True,  # a Ctrl-C for the daemon is not one for the monitor
                    die_with_parent=True,  # ... but its death is, even by SIGKILL
                )
            except BackendUnavailable as exc:
                if self._nft_path() is not None:
                    log.warning("nft_monitor_cannot_start", error=str(exc), retry_in=delay)
                elif not absent_reported:  # nothing of ours to watch; said once, looked for again quietly
                    log.info("nft_monitor_waiting", reason=f"{self.nft} is not installed")
                    absent_reported = True
            else:
                self._monitor_proc = proc
                log.info("nft_monitor_started", pid=proc.pid, netns=self.netns)

                def caught_up(proc: asyncio.subprocess.Process = proc) -> None:
                    nonlocal missed
                    if proc.returncode is None:
                        self._watch(True)
                        if missed:
                            missed = False
                            self._notify("nft monitor restarted; events may have been missed")

                settled = loop.call_later(MONITOR_SETTLE, caught_up)
                try:
                    await self._read_monitor(proc)
                finally:
                    settled.cancel()
                    self._watch(False)
                    await kill(proc)
                    if self._monitor_proc is proc:
                        self._monitor_proc = None
                ran = time.monotonic() - started
                if ran >= MONITOR_SETTLE:
                    missed = True
                if self._closing:
                    break
                if ran >= MONITOR_STABLE_AFTER:
                    delay = MONITOR_BACKOFF_INITIAL
                log.warning(
                    "nft_monitor_exited",
                    returncode=proc.returncode,
                    last_output=" | ".join(self._monitor_tail)[:500],
                    ran_seconds=round(ran, 1),
                    retry_in=delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MONITOR_BACKOFF_MAX)

    async def _read_monitor(self, proc: asyncio.subprocess.Process) -> None:
        """Read event lines; judge each transaction when its generation line arrives."""
        assert proc.stdout is not None
        pending: list[str] = []
        while not self._closing:
            try:
                if pending:
                    async with asyncio.timeout(MONITOR_GROUP_WAIT):
                        raw = await proc.stdout.readline()
                else:
                    raw = await proc.stdout.readline()
            except TimeoutError:
                # No generation line (another nft version?): judge the lines alone.
                self._judge(pending, None)
                pending = []
                continue
            except ValueError:  # a line over the limit: unknown content, assume the worst
                pending.append("flush ruleset")  # unless its generation line says it was ours
                continue
            if not raw:
                if pending:
                    self._judge(pending, None)
                return  # EOF: the monitor ended
            line = raw.decode(errors="replace").rstrip("\n")
            self._monitor_tail.append(line)
            pid = generation_pid(line)
            if pid is not None:
                self._judge(pending, pid)
                pending = []
            elif is_lost_events_line(line):
                self._judge([*pending, line], None)  # whose these were cannot be told: not ours
                pending = []
            elif line.strip():
                pending.append(line)

    def _judge(self, lines: list[str], pid: int | None) -> None:
        now = time.monotonic()
        for stale in [p for p, until in self._own_pids.items() if until < now]:
            del self._own_pids[stale]
        if pid is not None and pid in self._own_pids:
            return  # our own batch
        if may_touch_fwrecon(lines):
            self._epoch += 1
        drift = next((line for line in lines if is_drift_line(line)), None)
        if drift is not None:
            self._notify(drift.strip())
