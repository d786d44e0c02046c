"""One reconcile: policies + observed firewall + ownership → transactions.

This is the level-triggered core shared by ``fwrecon apply`` and the daemon:
it always starts from what the files say and what the firewall holds now,
never from a log of past events.  Each policy is one transaction; a policy
that fails is rolled back and reported, and the policies after it are planned
again against a fresh read of the firewall, so one broken policy cannot block
or confuse the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import time
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial

import structlog

from .backends.base import NO_BACKEND, Backend, NameSource
from .errors import BackendUnavailable, OperationFailed, PolicyError, StateError
from .ipsets import canonical_entry, overlapping
from .model import (
    PERSISTABLE,
    DirectChain,
    Ipset,
    IpsetEntry,
    Item,
    KnownNames,
    NftChain,
    NftElement,
    NftRule,
    NftSet,
    Op,
    Outcome,
    Ownership,
    Permanent,
    container_kind,
    runtime_of,
    set_member,
)
from .nftsets import canonical_element, conflicts
from .planner import PolicyPlan, in_use, owners_of, plan_all, settle_others, settle_ownership
from .policy import (
    DECLARING,
    LoadResult,
    Policy,
    check_references,
    conflicting_sets,
    declarations,
    in_canonical_form,
    unresolved_references,
)
from .state import State, StateStore
from .transaction import QueryHook, Transaction, TransactionFailed
from .view import HOLDERS, FirewallView, is_holder

log = structlog.get_logger(__name__)

PENDING_OPS_SHOWN = 20
# --persist: where fwrecon keeps the firewalld items it owns.  runtime: only in
# firewalld's runtime (re-added after each reload); permanent: in its
# permanent configuration too, which a reload restores by itself.
PERSIST_MODES = ("runtime", "permanent")  # ops named in the state file's intent note (and the warning after a crash)


@dataclass
class PolicyOutcome:
    policy: str
    status: str  # "unchanged" | "applied" | "failed" | "invalid" (refused for a reason check finds too)
    ops: list[tuple[Op, Outcome]] = field(default_factory=list)
    error: str | None = None
    code: str | None = None
    failed_op: Op | None = None
    undone: list[Op] = field(default_factory=list)
    deferred: frozenset[Item] = frozenset()  # adds waiting for a reload to settle


@dataclass
class Said:
    """Notes logged once while they hold; the daemon keeps them across reconciles."""

    made_permanent: set[Item] = field(default_factory=set)  # (`Reconciler._note_made_permanent`)
    kept_in_use: set[Item] = field(default_factory=set)  # (`Reconciler._note_kept_in_use`)


@dataclass
class Desired:
    """What every policy wants, and which policies are held at their last good state."""

    items: dict[str, frozenset[Item]]
    invalid: dict[str, list[PolicyError]]
    notes: list[str] = field(default_factory=list)  # checks that could not be made here
    # Elements and entries someone else put in the sets (`foreign_members`):
    # in force before every policy when sets are judged.
    foreign: frozenset[Item] = frozenset()
    # The invalid policies when sets were last judged beside what those hold (`Reconciler._settle_holds`).
    sets_judged_beside: frozenset[str] = frozenset()
    # Per held policy, what it keeps owning but must not put back now (`unplaceable`).
    not_now: dict[str, frozenset[Item]] = field(default_factory=dict)


@dataclass
class ReconcileReport:
    outcomes: list[PolicyOutcome]
    invalid: dict[str, list[PolicyError]]
    owned_items: int
    duration: float
    write_ops: int = 0
    deferred: int = 0  # adds that wait for a reload to settle (the daemon comes back for them)
    set_elements: dict[tuple[str, str], int] = field(default_factory=dict)  # (family, set) -> elements fwrecon owns in it
    ipset_entries: dict[str, int] = field(default_factory=dict)  # ipset -> runtime entries fwrecon owns in it

    @property
    def failed(self) -> list[PolicyOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def converged(self) -> bool:
        return not self.failed


def section_key(item: Item) -> str:
    """The policy-file section an item comes from, for error messages."""
    container = runtime_of(item).container()
    return f"{container[0]}.{container[1]}" if container[0] in ("zone", "policy", "ipset") else container[0]


async def refusals(policy: Policy, backend: Backend) -> list[PolicyError]:
    """One error per section the backend in charge cannot express."""
    return refusal_errors(policy, await backend.refusals(policy.items), backend.name)


def refusal_errors(policy: Policy, reasons: Mapping[Item, str], backend_name: str) -> list[PolicyError]:
    """`refusals` of the items ``reasons`` names."""
    found: dict[str, str] = {}
    for item, reason in reasons.items():
        section = section_key(item)
        found[section] = min(found.get(section, reason), reason)  # deterministic whatever the set order
    return [
        PolicyError(policy.file, section, f"{found[section]} (backend in charge: {backend_name})") for section in sorted(found)
    ]


async def tool_verdicts(
    backend: Backend, wanted: Mapping[Item, Policy], context: Collection[Item] = ()
) -> dict[str, list[PolicyError]]:
    """What ``backend`` refuses of ``wanted`` (item -> its policy), asking the
    tools too (``nft -c``), as errors by policy name naming file and key.
    ``context``: what stays in force around them (`Reconciler.verdict_errors`):
    in the check, never judged."""
    found: dict[str, list[PolicyError]] = {}
    around = sorted((item for item in context if item not in wanted), key=Item.sort_key)
    # (What is in force first: nft blames the statement that closes a loop.)
    verdicts = await backend.refusals([*around, *sorted(wanted, key=Item.sort_key)], ask_tools=True)
    for item, message in sorted(verdicts.items(), key=lambda pair: pair[0].sort_key()):
        policy = wanted.get(item)
        if policy is None:
            continue  # (context)
        found.setdefault(policy.name, []).append(PolicyError(policy.file, policy.key_of(item), message))
    return found


@dataclass
class _Judged:
    """What a memo knows of one policy: by whom its items were judged, and the refused ones."""

    judged_by: Hashable
    items: frozenset[Item]
    reasons: dict[Item, str]
    errors: list[PolicyError]


class RefusalMemo:
    """`refusals` answers kept between reconciles, for a process that keeps
    parsed policies (the daemon's `PolicyCache`): judging 100,000 items costs
    ~0.1 s, yet the answer changes only with the items, the backend in charge
    or its `refusal_key` (a tool installed).  A backend judges each item on
    its own (`Backend.refusals`), so an edited policy has only the items it
    did not hold before judged.  Entries of policies no longer loaded are dropped.
    """

    def __init__(self) -> None:
        self._answers: dict[str, _Judged] = {}  # by policy name

    async def refusals(self, policy: Policy, backend: Backend, key: Hashable) -> list[PolicyError]:
        judged_by = (backend.name, key)
        seen = self._answers.get(policy.name)
        if seen is not None and seen.judged_by == judged_by and seen.items is policy.items:
            return list(seen.errors)
        if seen is not None and seen.judged_by == judged_by:
            reasons = {item: reason for item, reason in seen.reasons.items() if item in policy.items}
            reasons.update(await backend.refusals(policy.items - seen.items))
        else:
            reasons = await backend.refusals(policy.items)
        errors = refusal_errors(policy, reasons, backend.name)
        self._answers[policy.name] = _Judged(judged_by, policy.items, reasons, errors)
        return list(errors)

    def keep_only(self, policies: Iterable[Policy]) -> None:
        keep = {policy.name for policy in policies}
        for name in [name for name in self._answers if name not in keep]:
            del self._answers[name]


def desired_state(
    loaded: LoadResult,
    state: State,
    known: KnownNames | None,
    last_good: Mapping[str, frozenset[Item]] | None = None,
    refused: Mapping[str, list[PolicyError]] | None = None,
    foreign: frozenset[Item] = frozenset(),
    present: Callable[[Item], bool] | None = None,
) -> Desired:
    """Valid policies want their items; an invalid one keeps its last good items.

    The last good items are what the caller remembers (the daemon keeps them in
    memory) or, failing that, what the policy owns according to the state file.
    A policy with items the backend in charge cannot express (``refused``, by
    policy name), or with an nft set another policy declares otherwise (or
    whose elements overlap what is in force, ``foreign`` elements first;
    ``present``: what the firewall holds), is invalid too.
    """
    invalid: dict[str, list[PolicyError]] = {name: list(errs) for name, errs in loaded.errors.items()}
    for name, policy in loaded.policies.items():
        problems = check_references(policy, known) if known is not None else []
        problems += (refused or {}).get(name, [])
        if problems:
            invalid[name] = problems
    held_names = set(invalid)
    if loaded.unreadable:  # cannot tell deleted from unreadable: hold every policy we know
        held_names |= owners_of(state.owned) | owners_of(state.others) | set(last_good or {})
    judged = {name: policy for name, policy in loaded.policies.items() if name not in invalid}
    for name, errors in conflicting_sets(judged, in_force(state), held_names, foreign, present).items():
        invalid[name] = errors
        held_names.add(name)
    items = {name: policy.items for name, policy in judged.items() if name not in invalid}
    for name in held_names - items.keys():
        held = (last_good or {}).get(name)
        items[name] = held if held is not None else state.kept_by(name)
    return Desired(items, invalid, foreign=foreign, sets_judged_beside=frozenset(invalid))


def in_force(state: State) -> Mapping[Item, frozenset[str]]:
    """What the state file knows to be in force, by the policies that keep
    it: what fwrecon owns, and what others hold that policies want (an
    element an admin put in the set is refused an overlap like ours)."""
    return {**state.others, **state.owned} if state.others else state.owned


def foreign_members(view: FirewallView, owned: Mapping[Item, frozenset[str]], *, permanent: bool = False) -> frozenset[Item]:
    """The elements of interval sets and the ipset entries in the firewall
    that fwrecon does not own.  It never removes them, so a policy's element
    overlapping one is refused at every apply; the state file may not know
    them at all (an admin's, or one whose record went with the last policy
    that wanted it).  With ``permanent`` (``--persist permanent``, which
    writes firewalld's permanent ipsets too) also the entries only there."""
    intervals = {(s.family, s.name) for s in view.of_kinds({NftSet}) if isinstance(s, NftSet) and "interval" in s.flags}
    # (The elements of hash sets, 100,000 say, cannot overlap: without an interval set they are not walked.)
    found = set()
    for item in view.of_kinds({IpsetEntry, NftElement} if intervals else {IpsetEntry}):
        if item not in owned and (
            isinstance(item, IpsetEntry) or (isinstance(item, NftElement) and (item.family, item.set) in intervals)
        ):
            found.add(item)
    if permanent:
        found.update(
            copy.item
            for copy in view.of_kinds({Permanent})
            if isinstance(copy, Permanent) and isinstance(copy.item, IpsetEntry) and copy not in owned
        )
    return frozenset(found)


def unplaceable(items: frozenset[Item], view: FirewallView, foreign: frozenset[Item]) -> frozenset[Item]:
    """The elements and entries of ``items`` (and their permanent copies)
    the firewall lacks that overlap someone else's there (``foreign``): nft
    (firewalld) would refuse them, and with them the whole transaction of
    the held policy putting them back, at every run.  Judged under the type
    the firewall holds the set as, one sort per set; a text not of that type
    (a forged state, a set recreated otherwise, an entry fwrecon cannot
    read) is left out of the judgement, and to the write."""
    if not foreign:
        return frozenset()
    theirs: dict[object, list[str]] = {}
    for item in foreign:
        if (member := set_member(item)) is not None:
            theirs.setdefault(member[0], []).append(member[1])
    judges: dict[object, tuple[Callable[[str], str], Callable[[list[str]], list[tuple[str, str]]]]] = {}
    for holder in view.of_kinds({NftSet, Ipset}):
        if isinstance(holder, NftSet) and (holder.family, holder.name) in theirs:
            judges[(holder.family, holder.name)] = (
                partial(canonical_element, holder.type, True),
                partial(conflicts, holder.type),
            )
        elif isinstance(holder, Ipset) and ("ipset", holder.name) in theirs:
            judges[("ipset", holder.name)] = (
                partial(canonical_entry, holder.type, holder.family),
                partial(overlapping, holder.type),
            )
    missing: dict[object, list[tuple[str, Item]]] = {}
    for item in items:
        found_in = set_member(item.item if isinstance(item, Permanent) else item)  # (a permanent copy: the same judgement)
        if found_in is not None and found_in[0] in judges and not view.has(item):
            missing.setdefault(found_in[0], []).append((found_in[1], item))
    found: set[Item] = set()
    for where, wanted in missing.items():
        canonical, pairs_of = judges[where]
        others = {text for text in theirs[where] if in_canonical_form(canonical, text)}
        mine: dict[str, list[Item]] = {}
        for value, item in wanted:
            if in_canonical_form(canonical, value) and value not in others:
                mine.setdefault(value, []).append(item)
        try:
            pairs = pairs_of([*others, *mine])
        except ValueError:
            continue
        for one, other in pairs:
            for ours, theirs_too in ((one, other), (other, one)):
                if ours in mine and theirs_too in others:
                    found.update(mine[ours])
    return frozenset(found)


def held_by_others(plans: list[PolicyPlan], others: Mapping[Item, frozenset[str]]) -> list[tuple[str, Item]]:
    """(policy, item) for every wanted item someone else holds, after ``plans``
    (what ``fwrecon plan`` shows with ``=``: fwrecon keeps it, never removes it)."""
    found = []
    for plan in plans:
        recorded = {item for item, wanters in others.items() if plan.policy in wanters}
        for item in sorted((recorded | plan.held | plan.foreign_adds) - plan.unheld, key=Item.sort_key):
            found.append((plan.policy, item))
    return found


PolicyErrors = Mapping[str, list[PolicyError]]


def log_policy_errors(invalid: PolicyErrors, previously: PolicyErrors | None = None) -> dict[str, list[PolicyError]]:
    """Log each invalid policy's errors (``policy_invalid``) unless they are
    the ones logged for it last time, and ``policy_valid_again`` for a policy
    whose errors are gone; returns what to pass as ``previously`` next time.

    A daemon re-reads every file at every resync: an unchanged broken file
    must not repeat its errors every minute, while a new or changed error is
    always said.
    """
    previously = previously or {}
    for name in sorted(invalid):
        errors = invalid[name]
        if [str(e) for e in errors] != [str(e) for e in previously.get(name, [])]:
            for err in errors:
                log.error("policy_invalid", policy=name, file=err.file, key=err.key, error=err.message)
    for name in sorted(previously.keys() - invalid.keys()):
        log.info("policy_valid_again", policy=name)
    return {name: list(errors) for name, errors in invalid.items()}


def containers_for(desired: Mapping[str, frozenset[Item]], owned: Mapping[Item, frozenset[str]]) -> set[tuple[str, ...]]:
    """Only the zones, policies and tables that desired or owned state mention."""
    found = {item.container() for items in desired.values() for item in items}
    found.update(item.container() for item in owned)
    return found


def with_permanent_copies(items: frozenset[Item], backend: Backend) -> frozenset[Item]:
    """``items`` and, where a backend in charge keeps them (firewalld), the
    `Permanent` copy of each firewalld item; with firewalld away, none: the
    copies fwrecon owns wait in their unreachable containers, untouched."""
    copies = frozenset(Permanent(item) for item in items if isinstance(item, PERSISTABLE))
    if not copies or backend.name_for(next(iter(copies))) == NO_BACKEND:
        return items
    return items | copies


def build_transaction(plan: PolicyPlan) -> Transaction:
    """The plan's ops in order; a chain is removed only if still empty when its
    turn comes (out of a backend no longer in charge, the router sees to that)."""
    txn = Transaction(plan.policy)
    for op in plan.ops:
        if op.action == "remove" and isinstance(op.item, DirectChain) and op.via is None:
            txn.add_query(_remove_chain_if_empty(op.item))
        else:
            txn.add(op)
    return txn


def _remove_chain_if_empty(chain: DirectChain) -> QueryHook:
    async def hook(txn: Transaction, backend: Backend) -> None:
        view = await backend.observe({chain.container()})
        if in_use(view, chain):
            log.warning("chain_kept", chain=chain.describe(), reason="it holds rules fwrecon does not own")
        else:
            txn.add(Op("remove", chain))

    return hook


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one parse + reconcile.

    A large reconcile allocates tens of thousands of objects that stay alive
    (items, ops, ownership entries) and no cycles worth freeing early, yet the
    collector would walk them over and over: ~10% of a 10,000-rule apply.
    It resumes, and catches up, as soon as the reconcile ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def intent_of(before: Ownership, plan: PolicyPlan) -> Ownership:
    """Ownership to record before the transaction runs: ``before`` plus this
    policy on every item it claims or is about to add.

    Claiming before the item exists means a crash after the add can never
    leave an item nobody owns; nothing is let go until the outcome is known.
    """
    intent = dict(before)
    mine = frozenset({plan.policy})
    adds = (op.item for op in plan.ops if op.action == "add" and op.item not in plan.foreign_adds)
    for item in itertools.chain(plan.claims, adds):
        owners = intent.get(item)
        if owners is None or plan.policy not in owners:
            intent[item] = mine if owners is None else owners | mine
    return intent


# The types `is_holder` can be true of (one cheap test before it, on every owned item).
_HOLDER_TYPES = frozenset({*HOLDERS, Permanent})


def _removable(desired: Mapping[str, frozenset[Item]], state: State) -> frozenset[Item]:
    """The owned holders an owner of them no longer wants: only of these does a plan ask what uses them."""
    return frozenset(
        item
        for item, owners in state.owned.items()
        if type(item) in _HOLDER_TYPES and is_holder(item) and any(item not in desired.get(p, ()) for p in owners)
    )


def going_holders(desired: Mapping[str, frozenset[Item]], state: State, view: FirewallView) -> frozenset[Item]:
    """The owned chains, sets and ipsets the plans take out in this run
    (`_removable`, and the planner's rule for what is in use): no policy
    wants them, and nothing in them or using them stays: an element or rule
    of someone else's, or one a policy wants, keeps them."""

    def unwanted(item: Item) -> bool:
        return not any(item in items for items in desired.values())

    def goes(item: Item) -> bool:
        return item in state.owned and unwanted(item)

    return frozenset(
        holder
        for holder in _removable(desired, state)
        if unwanted(holder)
        and all(goes(member) for member in view.members_of(holder))
        and all(not isinstance(user, str) and (goes(user) or not view.has(user)) for user in view.users.get(holder, ()))
    )


def with_creations(outcomes: list[PolicyOutcome], created: Mapping[Ipset, PolicyOutcome]) -> list[PolicyOutcome]:
    """``outcomes`` with the ipset creations (`Reconciler._create_ipsets`)
    counted in the first outcome of their policy (one of its own if none).
    An ipset the reload did not bring into the runtime is planned again, and
    found made: that second, unchanged add is the same op, counted once."""
    result = list(outcomes)
    for early in {id(outcome): outcome for outcome in created.values()}.values():
        later = [outcome for outcome in result if outcome.policy == early.policy]
        if not later:
            result.append(early)
            continue
        made = {op for op, _ in early.ops}
        for outcome in later:
            outcome.ops[:] = [(op, o) for op, o in outcome.ops if not (op in made and o is Outcome.UNCHANGED)]
        later[0].ops[:0] = early.ops
        if later[0].status == "unchanged":
            later[0].status = "applied"
    return result


def made_room(failed: dict[str, PolicyOutcome], applied: PolicyOutcome) -> list[PolicyOutcome]:
    """The failed outcomes (taken out of ``failed``) whose failed add was
    where ``applied`` removed something: in the same nft set, ipset or zone."""
    emptied = {_where(op.item) for op, result in applied.ops if op.action == "remove" and result is Outcome.APPLIED}
    found = [o for o in failed.values() if o.failed_op is not None and _where(o.failed_op.item) in emptied]
    for outcome in found:
        del failed[outcome.policy]
    return found


def _where(item: Item) -> tuple[str, ...]:
    """An item's container, narrowed to its set for an nft element (the container is the table)."""
    return (*item.container(), item.set) if isinstance(item, NftElement) else item.container()


def with_moves(plan: PolicyPlan, moves: dict[str, list[Op]]) -> PolicyPlan:
    """``plan`` with the moves of its policy first (taken out of ``moves``: a
    policy planned again after another failed gets them only once)."""
    mine = moves.pop(plan.policy, [])
    return dataclasses.replace(plan, ops=(*mine, *plan.ops)) if mine else plan


class Reconciler:
    """Runs reconciles against one backend and one state file."""

    def __init__(
        self,
        backend: Backend,
        store: StateStore,
        *,
        names: NameSource | None = None,
        memo: RefusalMemo | None = None,
        persist: str = "runtime",
        said: Said | None = None,
    ) -> None:
        """``names``: what firewall names policies may use (the router's
        `known_names`), None to check none.  ``memo``: refusals judged by
        earlier reconciles of the same process (the daemon's).  ``persist``:
        one of `PERSIST_MODES`.  ``said``: notes already logged (the daemon
        keeps them across reconciles)."""
        if persist not in PERSIST_MODES:
            raise ValueError(f"persist must be one of {PERSIST_MODES}, not {persist!r}")
        self.backend = backend
        self.store = store
        self.names = names
        self.memo = memo
        self.persist = persist
        self.said = said if said is not None else Said()
        self._users_read: frozenset[Item] = frozenset()  # the holders whose users the last read asked for (`observe`)
        self._read_for: dict[str, frozenset[Item]] = {}  # the desired items the last read was for
        self._unsaved = False  # an outcome waits for the next save (`_run_plan`)

    def desired(
        self,
        loaded: LoadResult,
        state: State,
        judged: tuple[KnownNames | None, Mapping[str, list[PolicyError]]],
        last_good: Mapping[str, frozenset[Item]] | None = None,
        foreign: frozenset[Item] = frozenset(),
        present: Callable[[Item], bool] | None = None,
    ) -> Desired:
        """`desired_state` on ``judged`` (the names firewalld knows, what the
        backends refuse), with permanent copies."""
        desired = desired_state(loaded, state, judged[0], last_good, judged[1], foreign, present)
        desired.items = {name: self._with_copies(items) for name, items in desired.items.items()}
        return desired

    def foreign_in(self, view: FirewallView, state: State) -> frozenset[Item]:
        """`foreign_members` of ``view``, in this mode."""
        return foreign_members(view, state.owned, permanent=self.persist == "permanent")

    def holds(self, view: FirewallView) -> Callable[[Item], bool]:
        """Whether ``view`` holds an element or entry, in this mode: in
        permanent mode an entry in both layers (someone else's overlapping
        one may be in either)."""
        if self.persist != "permanent":
            return view.has
        return lambda item: view.has(item) and (not isinstance(item, IpsetEntry) or view.has(Permanent(item)))

    def _with_copies(self, items: frozenset[Item]) -> frozenset[Item]:
        """In permanent mode, a policy wants the permanent copies of its firewalld items too."""
        return with_permanent_copies(items, self.backend) if self.persist == "permanent" else items

    async def refused(self, loaded: LoadResult) -> dict[str, list[PolicyError]]:
        """What the backend in charge refuses of each policy, by policy name."""
        key = self.backend.refusal_key()
        found = {}
        for name, policy in loaded.policies.items():
            errors = await (
                self.memo.refusals(policy, self.backend, key) if self.memo is not None else refusals(policy, self.backend)
            )
            if errors:
                found[name] = errors
        if self.memo is not None and not loaded.unreadable:
            self.memo.keep_only(loaded.policies.values())
        return found

    async def observe(
        self, desired: Mapping[str, frozenset[Item]], state: State, also: Mapping[str, frozenset[Item]] | None = None
    ) -> FirewallView:
        """Read what desired or owned state mentions (and tell labelling
        backends those items), with the users of the owned holders a plan
        may remove; ``also`` the containers of these items.

        In runtime mode also the permanent layer of the owned firewalld items,
        to see when someone made them permanent (`_note_made_permanent`)."""
        containers = containers_for(desired, state.owned) | containers_for(also or {}, {})
        if self.persist == "runtime":
            copies = [Permanent(item) for item in state.owned if isinstance(item, PERSISTABLE)]
            if copies and self.backend.name_for(copies[0]) != NO_BACKEND:
                containers.update(copy.container() for copy in copies)
        removable = _removable(desired, state)
        self._users_read = removable
        self._read_for = dict(desired)
        known = set(state.owned).union(*desired.values())  # (each item once: most are both)
        view = await self.backend.observe(containers, known, removable=removable)
        if self.persist == "runtime":
            self._note_made_permanent(view, state)
        return view

    def _note_made_permanent(self, view: FirewallView, state: State) -> None:
        """Log once (``owned_items_made_permanent``) the owned runtime items
        that showed up in the permanent configuration without fwrecon writing
        them there (``firewall-cmd --runtime-to-permanent``): those copies are
        not fwrecon's, so they stay when fwrecon removes the runtime item, and
        a reload brings the item back."""
        found = frozenset(
            item
            for item in state.owned
            if isinstance(item, PERSISTABLE) and Permanent(item) not in state.owned and view.has_exact(Permanent(item))
        )
        new = found - self.said.made_permanent
        self.said.made_permanent.intersection_update(found)  # said again if it goes and comes back
        self.said.made_permanent.update(found)
        if new:
            log.warning(
                "owned_items_made_permanent",
                items=sorted(item.describe() for item in new)[:PENDING_OPS_SHOWN],
                count=len(new),
                detail="someone copied items fwrecon owns into firewalld's permanent configuration; those copies are "
                "not fwrecon's: removing a policy removes the runtime items only, and a reload brings them back",
            )

    async def validate(
        self,
        loaded: LoadResult,
        state: State,
        last_good: Mapping[str, frozenset[Item]] | None = None,
        *,
        thorough: bool = False,
        ownership_known: bool = True,
    ) -> tuple[Desired, FirewallView]:
        """Every check a policy must pass before it applies, and the view it was judged on.

        The same for ``check``, ``plan`` and ``apply``, so they cannot disagree:
        the policy's own validation, names firewalld must know, what the
        backend in charge cannot express, and chains a rule needs that no
        applying policy declares and the backend does not hold.
        ``thorough`` (``check`` and ``plan``) also asks the backends' own
        verdicts (``nft -c``); ``apply`` leaves that to the write itself,
        which is all or nothing.  A policy that fails is held at its last good
        items, like any invalid one.  Without ``ownership_known`` (``check``
        when the state file cannot be read) nothing in the sets is taken for
        someone else's.
        """
        judged = (await self.names() if self.names is not None else None, await self.refused(loaded))
        desired = self.desired(loaded, state, judged, last_good)
        # (The new versions of held policies too: judged again beside someone else's elements, one may
        # apply after all, and what someone else put in its sets must be seen first.)
        held = {name: p.items for name, p in loaded.policies.items() if name in desired.invalid}
        view = await self.observe(desired.items, state, also=held)
        foreign = self.foreign_in(view, state) if ownership_known else frozenset()
        if foreign:  # judged again from the start, someone else's elements first (the first pass could not see them)
            desired = self.desired(loaded, state, judged, last_good, foreign, self.holds(view))
        self._settle_holds(loaded, desired, view, state, last_good)
        if thorough:  # (after the checks above, whose errors say more than nft's "No such file or directory")
            try:
                verdicts = await self.verdict_errors(loaded, desired, view)
            except BackendUnavailable as exc:
                desired.notes.append(f"nft rules not checked by nft ({exc})")
                verdicts = {}
            for name, errors in verdicts.items():
                self._hold(desired, name, errors, state, last_good)
            if verdicts:
                self._settle_holds(loaded, desired, view, state, last_good)
        return desired, await self._read_enough(desired, view, state)

    def _settle_holds(
        self,
        loaded: LoadResult,
        desired: Desired,
        view: FirewallView,
        state: State,
        last_good: Mapping[str, frozenset[Item]] | None,
    ) -> None:
        """Hold, until no more are found, the policies that the policies held
        so far leave broken: a rule using a chain or set that only a held
        policy's new version declared, or an element overlapping one a held
        policy keeps in force (its edit dropped it, but the edit does not apply)
        or one someone else put there (``desired.foreign``)."""
        released: set[str] = set()  # let go of a hold once, never twice: so the loop ends
        while True:
            found = self._broken_references(loaded, desired, view, state)
            by_references = bool(found)
            if not found and desired.invalid.keys() != desired.sets_judged_beside:
                desired.sets_judged_beside = frozenset(desired.invalid)
                valid = {name: policy for name, policy in loaded.policies.items() if name not in desired.invalid}
                keeping = desired.items.keys() - valid.keys()
                found = conflicting_sets(valid, in_force(state), keeping, desired.foreign, self.holds(view))
            if not found:
                break
            for name, errors in found.items():
                self._hold(desired, name, errors, state, last_good)
            if by_references and len(found) > 1:
                # One held in this round may keep what another's rule was refused for (b's edit drops
                # the set c's rule uses, but b is held at a version declaring it): let go of those.
                for name in sorted(found.keys() - released):
                    released.add(name)
                    held = desired.items[name], desired.invalid.pop(name)
                    desired.items[name] = self._with_copies(loaded.policies[name].items)
                    if self._broken_references(loaded, desired, view, state, [name]):
                        desired.items[name], desired.invalid[name] = held
        holding = [name for name in desired.items if name in desired.invalid or name not in loaded.policies]  # (or unreadable)
        desired.not_now = {name: out for name in holding if (out := unplaceable(desired.items[name], view, desired.foreign))}

    def _broken_references(
        self, loaded: LoadResult, desired: Desired, view: FirewallView, state: State, names: Iterable[str] | None = None
    ) -> dict[str, list[PolicyError]]:
        """The errors, by valid policy (of ``names``, or all), of rules using a
        chain or set that nothing applying declares and nothing staying holds."""
        # (Only the kinds `declarations` looks at: not 100,000 set elements, twice.)
        declared = [item for items in desired.items.values() for item in items if type(item) in DECLARING]
        going = going_holders(desired.items, state, view)  # (a rule may not count on those)
        known = declarations(declared, [item for item in view.of_kinds(DECLARING) if item not in going])
        return {
            name: errors
            for name in (loaded.policies if names is None else names)
            if name not in desired.invalid and (errors := unresolved_references(loaded.policies[name], known))
        }

    async def _read_enough(self, desired: Desired, view: FirewallView, state: State) -> FirewallView:
        """``view``, or a new read when a held version needs containers not
        read yet, or drops a holder whose users the read did not ask for.
        (The read had what was owned: only the policies held since may need
        more, and 100,000 unchanged elements are not walked again.)"""
        changed = {name: items for name, items in desired.items.items() if self._read_for.get(name) is not items}
        if containers_for(changed, {}) - view.containers or not (_removable(desired.items, state) <= self._users_read):
            return await self.observe(desired.items, state)
        return view

    async def verdict_errors(
        self, loaded: LoadResult, desired: Desired, view: FirewallView | None = None
    ) -> dict[str, list[PolicyError]]:
        """The backends' own verdicts (``nft -c``) on the items of the policies
        of ``loaded`` still valid, beside what stays in force around them:
        the chains, rules and sets of the other policies in ``desired`` (those
        held at their last good version among them), and the sets ``view``
        holds that no judged policy declares (kept in use by a rule).  Held
        chains come with their rules, so a jump into one passes as it does at
        apply, and a jump loop through one is refused as apply refuses it."""
        judged = {name for name in loaded.policies if name not in desired.invalid}
        wanted = {item: loaded.policies[name] for name in judged for item in loaded.policies[name].items}
        around = {
            item
            for name, items in desired.items.items()
            if name not in judged
            for item in items
            if type(item) in (NftChain, NftRule, NftSet)  # (not their elements: a rule needs only the set)
        }
        declared = {(item.family, item.name) for item in (*wanted, *around) if isinstance(item, NftSet)}
        held = view.of_kinds({NftSet}) if view is not None else []
        around.update(i for i in held if isinstance(i, NftSet) and (i.family, i.name) not in declared)
        return await tool_verdicts(self.backend, wanted, around)

    async def _judge_failure(self, loaded: LoadResult, desired: Desired, outcome: PolicyOutcome, view: FirewallView) -> None:
        """A policy the firewall refused may be one `check` would have refused:
        then it is invalid (held at its last good version, not retried until
        its file changes), as `check` and `plan` say, rather than failed.
        The tools' verdicts (nft -c) are asked only now, when a write failed."""
        name = outcome.policy
        single = LoadResult(policies={name: loaded.policies[name]})
        try:
            errors = (await self.verdict_errors(single, Desired(desired.items, {}), view)).get(name)
        except BackendUnavailable:
            return
        if errors:
            desired.invalid[name] = errors
            outcome.status = "invalid"

    def _hold(
        self,
        desired: Desired,
        name: str,
        errors: list[PolicyError],
        state: State,
        last_good: Mapping[str, frozenset[Item]] | None,
    ) -> None:
        """Make ``name`` invalid: it keeps its last good items (or what it owns)."""
        desired.invalid[name] = desired.invalid.get(name, []) + errors
        held = (last_good or {}).get(name)
        desired.items[name] = self._with_copies(held if held is not None else state.kept_by(name))

    async def plan(
        self, loaded: LoadResult, last_good: Mapping[str, frozenset[Item]] | None = None
    ) -> tuple[list[PolicyPlan], Desired]:
        """Validate thoroughly, observe and plan without changing anything (``fwrecon plan``)."""
        state = self.store.load()
        desired, view = await self.validate(loaded, state, last_good, thorough=True)
        moves = self._moves(state)
        return [
            with_moves(plan, moves) for plan in plan_all(desired.items, view, state.owned, state.others, keep_out=desired.not_now)
        ], desired

    async def reconcile(
        self,
        loaded: LoadResult,
        last_good: Mapping[str, frozenset[Item]] | None = None,
        *,
        settling: bool = False,
    ) -> ReconcileReport:
        """One reconcile; ``settling``: firewalld reloaded or restarted moments
        ago, so items no record mentions are not added yet (see planner)."""
        started = time.monotonic()
        state = self.store.load()
        if state.pending:
            log.warning("interrupted_transaction_found", pending=state.pending)
        moves = self._moves(state)
        desired, view = await self.validate(loaded, state, last_good)
        self._hold_changed_ipsets(loaded, desired, view, state, last_good)
        view = await self._read_enough(desired, view, state)
        created = await self._create_ipsets(desired, view, state, settling)
        try:
            reloaded = await self.backend.activate()
        except OperationFailed as exc:  # (say, firewalld refuses someone's broken file): the rest still applies
            log.error("firewall_reload_failed", reason="to load new ipsets", error=str(exc), code=exc.code)
            reloaded = False
        if reloaded:
            log.info("firewall_reloaded", reason="to load new ipsets", ipsets=sorted(i.name for i in created))
            desired, view = await self.validate(loaded, state, last_good)  # the reload rebuilt the runtime
            self._hold_changed_ipsets(loaded, desired, view, state, last_good)
            view = await self._read_enough(desired, view, state)
        try:
            outcomes = await self._run_plans(loaded, desired, view, state, settling, moves)
        except BaseException:
            with contextlib.suppress(StateError):
                self._save(state)  # the outcomes of the transactions before (`_run_plan`, outcome_later)
            raise
        outcomes = with_creations(outcomes, created)
        # The last transaction's outcome (see `_run_plan`); and when the
        # interrupted transaction this run found had landed in full (nothing
        # was left to do for it), its intent is the truth now and the note
        # must go, or every later run would warn about it again.
        state.pending = None
        self._save(state)
        report = ReconcileReport(
            outcomes,
            desired.invalid,
            owned_items=len(state.owned),
            duration=time.monotonic() - started,
            write_ops=sum(len(o.ops) for o in outcomes),
            deferred=sum(len(o.deferred) for o in outcomes),
            set_elements=dict(Counter((i.family, i.set) for i in state.owned if isinstance(i, NftElement))),
            ipset_entries=dict(Counter(i.ipset for i in state.owned if isinstance(i, IpsetEntry))),
        )
        log.info(
            "reconcile_done",
            ops=report.write_ops,
            failed=[o.policy for o in report.failed],
            invalid=sorted(desired.invalid),
            owned_items=report.owned_items,
            duration_ms=round(report.duration * 1000, 2),
        )
        return report

    async def _run_plans(
        self,
        loaded: LoadResult,
        desired: Desired,
        view: FirewallView,
        state: State,
        settling: bool,
        moves: dict[str, list[Op]],
    ) -> list[PolicyOutcome]:
        """Plan every policy and run the plans, one transaction each; a policy
        that fails stays as it was and the rest are planned again without it."""
        outcomes: list[PolicyOutcome] = []
        plans = plan_all(desired.items, view, state.owned, state.others, defer_new=settling, keep_out=desired.not_now)
        self._note_kept_in_use(desired, view, state, plans)
        self._record_claims(plans, state)
        wanted = dict(desired.items)
        failed_before: dict[str, PolicyOutcome] = {}  # failed on an add, no policy after it has removed anything there yet
        room_made: list[PolicyOutcome] = []  # ... and one did since: worth one more try
        while plans:
            plan = with_moves(plans.pop(0), moves)
            outcome = await self._run_plan(plan, state, view, outcome_later=True)
            outcomes.append(outcome)
            # What this policy wrote was read before it: later writes there read again.
            view = view.without_reads({op.item.container() for op in plan.ops})
            if outcome.status == "applied":
                room_made += made_room(failed_before, outcome)
            if outcome.status == "failed" and plan.policy in loaded.policies:
                await self._judge_failure(loaded, desired, outcome, view)
                if outcome.status == "failed" and outcome.failed_op is not None and outcome.failed_op.action == "add":
                    failed_before[plan.policy] = outcome
            if outcome.status == "failed" and (undone_moves := [op for op in plan.ops if op.via is not None]):
                moves[plan.policy] = undone_moves  # rolled back with the rest: still to do
            if outcome.status in ("failed", "invalid") and plans:
                # The failed policy stays as it was; plan the rest without its adds.
                wanted[plan.policy] = state.kept_by(plan.policy)
                remaining = {p.policy for p in plans}
                view = await self.observe(wanted, state)
                replanned = plan_all(wanted, view, state.owned, state.others, defer_new=settling, keep_out=desired.not_now)
                plans = [p for p in replanned if p.policy in remaining]
                self._record_claims(plans, state)
        if room_made:
            outcomes = await self._try_again(room_made, outcomes, desired, wanted, state, settling, moves)
        return outcomes

    async def _try_again(
        self,
        failed: list[PolicyOutcome],
        outcomes: list[PolicyOutcome],
        desired: Desired,
        wanted: dict[str, frozenset[Item]],
        state: State,
        settling: bool,
        moves: dict[str, list[Op]],
    ) -> list[PolicyOutcome]:
        """One more transaction for each policy whose add failed where a
        policy after it then removed something: an interval set refuses an
        element overlapping one still there, so a's 10.0.0.0/8 fails while
        b, later by name, still holds 10.1.0.0/16 it is swapping for another
        (`plan_all` runs first only the policies that merely let go).  The
        new outcome replaces the failed one; a second failure stands."""
        names = {outcome.policy for outcome in failed}
        for name in names:
            wanted[name] = desired.items[name]
        view = await self.observe(wanted, state)
        again: dict[str, PolicyOutcome] = {}
        plans = [
            p
            for p in plan_all(wanted, view, state.owned, state.others, defer_new=settling, keep_out=desired.not_now)
            if p.policy in names
        ]
        self._record_claims(plans, state)
        for plan in plans:
            if plan.policy not in again:
                log.info("policy_retried", policy=plan.policy, reason="a policy after it removed items where its add failed")
                plan = with_moves(plan, moves)
                again[plan.policy] = await self._run_plan(plan, state, view)
                view = view.without_reads({op.item.container() for op in plan.ops})
        retried = {id(outcome) for outcome in failed}
        return [again.get(o.policy, o) if id(o) in retried else o for o in outcomes]

    def _record_claims(self, plans: list[PolicyPlan], state: State) -> None:
        """Write the plans' claims to the state file before any of them runs.
        A claim is ownership of an item already there (another policy of ours
        added it), so it needs no write: recorded first, it survives a policy
        that lets the item go before the claimer runs, and any failure after."""
        claimed = [(item, p.policy) for p in plans for item in p.claims if p.policy not in state.owned.get(item, ())]
        if claimed:
            for item, policy in claimed:
                state.owned[item] = state.owned.get(item, frozenset()) | {policy}
            self._save(state)

    def _note_kept_in_use(self, desired: Desired, view: FirewallView, state: State, plans: list[PolicyPlan]) -> None:
        """Log once (``owned_item_kept_in_use``) the owned chains, sets and
        ipsets no policy wants any more that the plans keep, because
        something fwrecon does not own still uses them: they go at the first
        reconcile after it stops (`planner`), and meanwhile the operator
        should know why."""
        removed = {op.item for plan in plans for op in plan.ops if op.action == "remove"}
        candidates = [
            item
            for item in state.owned
            if type(item) in _HOLDER_TYPES
            and is_holder(item)
            and item not in removed
            and view.has_exact(item)
            and not any(item in items for items in desired.items.values())
        ]
        kept: dict[Item, list[str]] = {}
        if candidates:
            after = view.copy()  # (what uses them once the plans ran: not what they remove)
            for op in (op for plan in plans for op in plan.ops):
                (after.add if op.action == "add" else after.remove)(op.item)
            kept = {item: users for item in candidates if (users := after.users_of(item))}
        new = kept.keys() - self.said.kept_in_use
        self.said.kept_in_use.intersection_update(kept)  # said again if it is kept again later
        self.said.kept_in_use.update(kept)
        for item in sorted(new, key=Item.sort_key):
            log.info(
                "owned_item_kept_in_use",
                item=item.describe(),
                used_by=kept[item][:PENDING_OPS_SHOWN],
                users=len(kept[item]),
                detail="no policy wants it any more; it goes once nothing else uses it",
            )

    def _hold_changed_ipsets(
        self,
        loaded: LoadResult,
        desired: Desired,
        view: FirewallView,
        state: State,
        last_good: Mapping[str, frozenset[Item]] | None,
    ) -> None:
        """A policy that declares an ipset firewalld holds under the same name
        with another type, family or options is held at its last good items:
        firewalld cannot change an ipset in place, and removing and adding it
        would need a reload in the middle of the policy's transaction.  What
        that leaves broken in the other policies is held too (`_settle_holds`)."""
        present = {item.name: item for item in view.items() if isinstance(item, Ipset)}
        held = False
        for name, items in list(desired.items.items()):
            if name not in loaded.policies or name in desired.invalid:
                continue  # (held at what it owns already)
            errors = [
                PolicyError(
                    loaded.policies[name].file,
                    f"ipset.{ipset.name}",
                    f"firewalld holds {present[ipset.name].describe()}: an ipset cannot change in place; "
                    "give it a new name, or drop it from every policy first",
                )
                for ipset in sorted((i for i in items if isinstance(i, Ipset)), key=Item.sort_key)
                if ipset.name in present and present[ipset.name] != ipset
            ]
            if errors:
                self._hold(desired, name, errors, state, last_good)
                held = True
        if held:
            self._settle_holds(loaded, desired, view, state, last_good)

    async def _create_ipsets(
        self, desired: Desired, view: FirewallView, state: State, settling: bool
    ) -> dict[Ipset, PolicyOutcome]:
        """Create the ipsets policies want before anything else: firewalld
        loads a new ipset only with a reload, which `Backend.activate` then
        makes once for all, and which would wipe whatever runtime item was
        added before it.  Each policy's creations are a transaction of their
        own, so the policy's own failure later does not undo them (the ipset
        stays its, and is there for the retry).  A creation firewalld refuses
        is left to the policy's transaction, which fails on it and says so.

        That reload also wipes the runtime items other tools hold until they
        put them back: which wanted items are someone else's is judged (and
        recorded as held) now, while they are still there, so the plan after
        the reload does not take one for new and own it."""
        created: dict[Ipset, PolicyOutcome] = {}
        if all(view.has(item) for items in desired.items.values() for item in items if type(item) is Ipset):
            return created  # (the common case; planning 100,000 set elements twice would double a reconcile)
        for plan in plan_all(desired.items, view, state.owned, state.others, defer_new=settling, keep_out=desired.not_now):
            ops = tuple(op for op in plan.ops if op.action == "add" and isinstance(op.item, Ipset))
            mine = {op.item for op in ops}  # (putting back someone else's ipset leaves it theirs)
            if ops or plan.held:
                creations = PolicyPlan(plan.policy, ops, held=plan.held, foreign_adds=plan.foreign_adds & mine)
                outcome = await self._run_plan(creations, state, view)
                if outcome.status == "applied":
                    created.update((op.item, outcome) for op, _ in outcome.ops if isinstance(op.item, Ipset))
        return created

    async def _run_plan(
        self, plan: PolicyPlan, state: State, seen: FirewallView | None = None, *, outcome_later: bool = False
    ) -> PolicyOutcome:
        """Apply one policy's plan as a transaction, keeping the state file truthful;
        ``seen``: the view it was planned on (batch backends may write on its reads).

        ``outcome_later`` (`_run_plans`): the outcome goes into the file with
        the next save, the next transaction's intent or the end of the
        reconcile.  A crash before that leaves this transaction's intent,
        which a crash during it would have left too: the next run converges
        from it.  At 100 policies beside 100,000 owned elements this halves
        the file's writes, each of which renders every element.  Not when the
        plan records items held by others: a reload may wipe those before
        the next save, and the record is all that says they are not ours.
        """
        if plan.empty:
            return PolicyOutcome(plan.policy, "unchanged", deferred=plan.deferred)
        later = outcome_later and not (plan.held or plan.foreign_adds or plan.unheld)
        before: Ownership = dict(state.owned)
        # Records of items held by others only ever say "not ours": safe to keep
        # before anything is written, and whatever the transaction's outcome.
        state.others = settle_others(state.others, plan)
        if not plan.ops:
            state.owned = settle_ownership(before, plan, [])
            self._save(state, later=later)
            return PolicyOutcome(plan.policy, "unchanged", deferred=plan.deferred)
        intent = intent_of(before, plan)
        if intent != before:  # something new to claim (putting back what we own needs no intent)
            state.owned = intent
            state.pending = {
                "policy": plan.policy,
                "op_count": len(plan.ops),
                "ops": [op.describe() for op in plan.ops[:PENDING_OPS_SHOWN]],  # enough to say what it was doing
                "started": time.time(),
            }
            self._save(state)
        elif self._unsaved:
            self._save(state)  # (or a crash now would leave the last one's note, as if it were this one)
        try:
            results = await build_transaction(plan).apply(self.backend, seen)
        except (asyncio.CancelledError, KeyboardInterrupt) as stop:
            # Shutdown mid-transaction: the transaction already rolled back.
            failure = stop.__cause__ if isinstance(stop.__cause__, TransactionFailed) else None
            self._restore_after_failure(state, before, plan, failure)
            raise
        except TransactionFailed as failure:
            if isinstance(failure.cause, BackendUnavailable):
                # We cannot know which ops landed: keep the intent (owning a
                # little too much is safe) and let the caller retry later.
                state.pending = None
                self._save(state)
                raise failure.cause  # noqa: B904 (the cause itself, keeping its own __cause__)
            self._restore_after_failure(state, before, plan, failure)
            log.error(
                "policy_failed",
                policy=plan.policy,
                op=failure.failed_op.describe() if failure.failed_op else None,
                error=str(failure.cause),
                code=getattr(failure.cause, "code", None),
                rolled_back=len(failure.undone),
            )
            return PolicyOutcome(
                plan.policy,
                "failed",
                error=str(failure),
                code=getattr(failure.cause, "code", None),
                failed_op=failure.failed_op,
                undone=failure.undone,
            )
        added_new = frozenset(r.op.item for r in results if r.op.action == "add" and r.outcome is Outcome.APPLIED)
        state.owned = settle_ownership(before, plan, [r.op for r in results], added_new)
        in_charge: dict[str, str] = {}  # the backend in charge depends only on the container kind
        moved = {r.op.item for r in results if r.op.via is not None}
        for item in (added_new | moved) & state.owned.keys():
            kind = container_kind(item)
            if kind not in in_charge:
                in_charge[kind] = self.backend.name_for(item)
            state.placed[item] = in_charge[kind]
        for item in moved:
            log.info("item_moved", item=item.describe(), target=state.placed.get(item), policy=plan.policy)
        for item in itertools.chain(plan.releases, (op.item for op in plan.ops if op.action == "remove" and op.via is None)):
            if item not in state.owned:
                state.placed.pop(item, None)
        state.pending = None
        self._save(state, later=later)
        return PolicyOutcome(plan.policy, "applied", [(r.op, r.outcome) for r in results], deferred=plan.deferred)

    def _moved(self, state: State) -> list[Item]:
        """Owned items held by a backend that is no longer in charge of them.

        Items no backend is in charge of now (zones while firewalld is away)
        have nowhere to go: they keep their place and wait.
        """
        in_charge: dict[str, str | None] = {}  # the backend in charge depends only on the container kind
        moved = []
        for item, name in state.placed.items():
            kind = container_kind(item)
            if kind not in in_charge:
                current = self.backend.name_for(item)
                in_charge[kind] = None if current == NO_BACKEND else current
            if in_charge[kind] is not None and name != in_charge[kind] and item in state.owned:
                moved.append(item)
        return moved

    def _moves(self, state: State) -> dict[str, list[Op]]:
        """Per policy, the ops that take its moved items out of the backend
        that held them before a switch: ``Op("remove", item, via=OLD)``.

        They run first in the transaction of the item's first owner, before
        the adds the planner makes on the backend now in charge (it sees the
        item missing there), so a failure rolls both back like any op, and
        the report, the metrics and the log show them.  If the old backend is
        gone (firewalld stopped) there is nothing to take out; if it left
        rules behind (firewalld killed), the new backend sees them as present
        and adopts them, so nothing is doubled either way.
        """
        moves: dict[str, list[Op]] = {}
        for item in sorted(self._moved(state), key=lambda item: (-item.layer, item.sort_key())):
            moves.setdefault(min(state.owned[item]), []).append(Op("remove", item, via=state.placed[item]))
        return moves

    def _save(self, state: State, *, later: bool = False) -> None:
        """Write ``state`` to the file, or (``later``) leave it for the next save."""
        if later:
            self._unsaved = True
        else:
            self.store.save(state)
            self._unsaved = False

    def _restore_after_failure(
        self, state: State, before: Ownership, plan: PolicyPlan, failure: TransactionFailed | None
    ) -> None:
        """Ownership as before the rolled-back transaction, plus adds we could not undo."""
        state.owned = dict(before)  # (claims included: `_record_claims` wrote them before)
        for undo, _ in failure.rollback_errors if failure else ():
            if undo.action == "remove":
                state.owned[undo.item] = before.get(undo.item, frozenset()) | {plan.policy}
        state.pending = None
        self._save(state)
