"""The plan: a pure function from (desired, actual, owned) to operations.

Rules, in the order they are applied for each policy:

* remove what this policy owns and no longer wants, but only when no other
  policy still owns it (ownership is reference-counted by policy name) and only
  when firewalld lists exactly that item (a port swallowed into someone else's
  range is let go, not cut out of their range); rules go before their chains,
  and a chain that still holds rules fwrecon does not own stays;
* add what the policy wants and the firewall lacks (chains before rules);
* a wanted item that is already there is *claimed* only if another policy of
  ours added it; otherwise it is *held by others* (recorded, per policy that
  wants it) and never becomes ours: when a reload wipes it and fwrecon is the
  first to put it back, it is still theirs, and when no policy wants it any
  more it stays in place (only the record goes).  The one cost: an item whose
  other holder went away for good stays until removed by hand;
* ownership is decided once, when fwrecon adds an item nobody held; right
  after a reload or a firewalld restart (``defer_new``) nobody can tell, so
  adding items no record mentions waits until the other tools had their turn;
* items in a container no backend in charge can reach (a zone while firewalld
  is away) are neither added, removed nor let go: they wait for it.

Nothing here does I/O; an unchanged world yields no operations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .model import Item, Op, Ownership
from .view import FirewallView, is_holder


@dataclass(frozen=True)
class PolicyPlan:
    """What one policy's transaction does, plus ownership-only changes.

    ``held``/``unheld``: records of items held by others this policy starts or
    stops wanting; ``foreign_adds``: adds that put back someone else's item
    (no ownership follows); ``deferred``: adds that wait for a reload to settle.
    """

    policy: str
    ops: tuple[Op, ...]
    claims: frozenset[Item] = field(default_factory=frozenset)
    releases: frozenset[Item] = field(default_factory=frozenset)
    held: frozenset[Item] = field(default_factory=frozenset)
    unheld: frozenset[Item] = field(default_factory=frozenset)
    foreign_adds: frozenset[Item] = field(default_factory=frozenset)
    deferred: frozenset[Item] = field(default_factory=frozenset)

    @property
    def empty(self) -> bool:
        return not (self.ops or self.claims or self.releases or self.held or self.unheld)


def in_use(view: FirewallView, holder: Item) -> bool:
    """A chain that still holds rules, or a set elements, cannot be removed without taking them along."""
    return bool(view.users_of(holder))


def plan_all(
    desired: Mapping[str, frozenset[Item]],
    actual: FirewallView,
    owned: Mapping[Item, frozenset[str]],
    others: Mapping[Item, frozenset[str]] | None = None,
    *,
    defer_new: bool = False,
    keep_out: Mapping[str, frozenset[Item]] | None = None,
) -> list[PolicyPlan]:
    """Plan every policy, each seeing the effect of the ones before, in
    `_in_order`: those that let go before those that only add.

    ``desired`` maps each current policy to its items; policies that only
    appear in ``owned`` or ``others`` (their file is gone) want nothing.
    ``others`` records, per item held by someone else, the policies that want
    it.  Claims are settled first, so a shared item is never removed by one
    policy and re-added by another in the same run.  ``keep_out``, per
    policy: items it wants (and keeps owning) but must not add now, as the
    firewall would refuse them.  Inputs are not modified.
    """
    keep_out = keep_out or {}
    view = actual.copy()
    ownership: Ownership = dict(owned)
    held: Ownership = dict(others or {})
    claims: dict[str, frozenset[Item]] = {}
    for policy, items in desired.items():
        get = ownership.get  # (one lookup an item: 100,000 elements are mostly this policy's already)
        claims[policy] = frozenset(
            item for item in items if (owners := get(item)) is not None and policy not in owners and view.has(item)
        )
        for item in claims[policy]:
            ownership[item] = ownership[item] | {policy}
    plans = []
    mine = by_policy(ownership)  # (unchanged by the others' plans: they add owners, and remove only their own)
    names = _in_order(desired.keys() | mine.keys() | owners_of(held), desired, mine, held, actual)
    # Known to be someone else's, for the whole run: a record one policy drops
    # (it no longer wants the item) still tells the next policy whose it is.
    foreign = set(held)
    for policy in names:
        plan = _plan_policy(
            policy,
            desired.get(policy, frozenset()),
            view,
            ownership,
            mine.get(policy, {}),
            held,
            foreign,
            defer_new,
            keep_out.get(policy, frozenset()),
        )
        foreign |= plan.held
        plan = replace(plan, claims=claims.get(policy, frozenset()))
        ownership = settle_ownership(ownership, plan, plan.ops)  # the policies after it plan against its effect
        held = settle_others(held, plan)
        plans.append(plan)
    # A later policy's removal can undo an earlier one's judgement: a range it
    # removes covered a port an earlier policy wanted (so that one added
    # nothing), or the rule it removes was what kept an earlier policy's chain.
    # Those policies get a second transaction, after the others.
    removing = [index for index, plan in enumerate(plans) if any(op.action == "remove" for op in plan.ops)]
    mine = by_policy(ownership) if removing else {}
    for policy in names[: removing[-1]] if removing else ():  # only removals by a later policy can do that
        if _needs_second_look(desired.get(policy, frozenset()), view, mine.get(policy, {}), policy):
            out = keep_out.get(policy, frozenset())
            owns = mine.get(policy, {})
            plan = _plan_policy(policy, desired.get(policy, frozenset()), view, ownership, owns, held, foreign, defer_new, out)
            if plan.ops:
                ownership = settle_ownership(ownership, plan, plan.ops)
                held = settle_others(held, plan)
                plans.append(plan)
    return plans


def _in_order(
    policies: set[str],
    desired: Mapping[str, frozenset[Item]],
    mine: Mapping[str, Mapping[Item, frozenset[str]]],
    held: Mapping[Item, frozenset[str]],
    view: FirewallView,
) -> list[str]:
    """First the policies that only let go (`_only_lets_go`), then those that
    let go of something and add, then those that only add; each in name order.

    What a policy lets go makes room for what the others add: an interval set
    refuses an element overlapping one still there, firewalld an interface
    still bound to another zone.  A policy swapping its /16 for another
    network must remove before a policy widening over that /16 adds, whatever
    their names, or the widening fails once and lands only on the retry.
    """
    wanted = {policy: desired.get(policy, frozenset()) for policy in policies}
    first = {policy for policy in policies if _only_lets_go(wanted[policy], policy, mine.get(policy, {}), held, view)}
    dropping = {policy for policy in policies - first if mine.get(policy, {}).keys() - wanted[policy]}
    return sorted(policies, key=lambda policy: (policy not in first, policy not in dropping, policy))


def by_policy(owned: Mapping[Item, frozenset[str]]) -> dict[str, Mapping[Item, frozenset[str]]]:
    """What each policy owns, so that judging one policy walks its own items,
    not the 100,000 elements of another (100 policies beside one large set
    took 13 s a plan).  One owner: ``owned`` itself, without a copy."""
    owners = owners_of(owned)
    if len(owners) <= 1:
        return {policy: owned for policy in owners}
    index: dict[str, dict[Item, frozenset[str]]] = {policy: {} for policy in owners}
    for item, item_owners in owned.items():
        for policy in item_owners:
            index[policy][item] = item_owners
    return dict(index)


def _only_lets_go(
    wanted: frozenset[Item],
    policy: str,
    owned: Mapping[Item, frozenset[str]],
    held: Mapping[Item, frozenset[str]],
    view: FirewallView,
) -> bool:
    """Whether ``policy`` wants nothing it does not have already (its file is
    gone, or it dropped items).  (Set operations first, which reuse stored
    hashes: one new element among 100,000 owned ones says "no" at once.)"""
    if wanted.difference(owned).difference(held):
        return False  # an item nobody holds: an add
    listed = view.listed(wanted)
    if len(listed) != len(wanted) and not all(view.has(item) for item in wanted - listed):
        return False
    return all(policy in owned.get(item, ()) or policy in held.get(item, ()) for item in wanted)


def _needs_second_look(wanted: frozenset[Item], view: FirewallView, owned: Mapping[Item, frozenset[str]], policy: str) -> bool:
    """Whether, after every first plan, ``policy`` lacks a wanted item or keeps a chain it no longer wants."""
    reachable = not view.unreachable
    if any(not view.has(item) and (reachable or item.container() not in view.unreachable) for item in wanted):
        return True
    return any(is_holder(item) and policy in owners and item not in wanted for item, owners in owned.items())


def _plan_policy(
    policy: str,
    desired: frozenset[Item],
    view: FirewallView,
    owned: Mapping[Item, frozenset[str]],
    owns: Mapping[Item, frozenset[str]],
    others: Mapping[Item, frozenset[str]],
    foreign_items: set[Item],
    defer_new: bool,
    keep_out: frozenset[Item] = frozenset(),
) -> PolicyPlan:
    """Plan one policy against ``view``; ``view`` is updated with the planned ops.
    ``owns``: what `by_policy` says it owns (``owned``, every policy's, may hold more)."""
    ops: list[Op] = []
    releases: set[Item] = set()
    if view.unreachable:  # no backend in charge holds these: leave them, and their ownership, as they are
        desired = frozenset(item for item in desired if item.container() not in view.unreachable)
        owned = {item: owners for item, owners in owned.items() if item.container() not in view.unreachable}
        owns = {item: owners for item, owners in owns.items() if item.container() not in view.unreachable}
        others = {item: wanters for item, wanters in others.items() if item.container() not in view.unreachable}
    # (Set operations between sets and dicts reuse the hashes stored in them:
    # 100,000 elements cost no call of Item.__hash__, which is Python code.)
    mine = sorted(
        (item for item in set(owns) - desired if policy in owned.get(item, ())),
        key=lambda item: (-item.layer, item.sort_key()),
    )
    for item in mine:
        if owned[item] - {policy} or not view.has_exact(item):
            releases.add(item)
        elif is_holder(item) and in_use(view, item):
            continue  # keep owning it; it goes once its foreign rules are gone
        else:
            ops.append(Op("remove", item))
            view.remove(item)
    unheld = frozenset(item for item, wanters in others.items() if policy in wanters and item not in desired)
    held: set[Item] = set()
    foreign_adds: set[Item] = set()
    deferred: set[Item] = set()

    def judge_present(item: Item) -> None:
        if item not in owned and policy not in others.get(item, ()):
            held.add(item)  # there before we wanted it, and not ours: someone else's

    # Present items are judged unsorted (adds only ever make more present, so
    # their verdict cannot depend on the order): only the missing ones pay a
    # sort, which a set of 100,000 elements with one new element needs.
    listed = view.listed(desired)
    for item in listed.difference(owned):  # (the common case, ours, costs nothing here)
        judge_present(item)
    missing = []
    for item in desired - listed:  # ports inside a range, and what is missing
        if view.has(item):
            judge_present(item)
        else:
            missing.append(item)
    for item in sorted(missing, key=Item.sort_key):
        if view.has(item):  # covered by what an earlier add put there (a port range)
            judge_present(item)
        elif item in keep_out:
            continue  # wanted, and owned still, but the firewall would refuse it now
        elif item in foreign_items and item not in owned:
            ops.append(Op("add", item))  # put back what someone else holds; it stays theirs
            view.add(item)
            foreign_adds.add(item)
        elif defer_new and item not in owned:
            deferred.add(item)  # right after a reload nobody can tell whose it would be
        else:
            ops.append(Op("add", item))
            view.add(item)
    return PolicyPlan(
        policy,
        tuple(ops),
        frozenset(),
        frozenset(releases),
        frozenset(held),
        unheld,
        frozenset(foreign_adds),
        frozenset(deferred),
    )


def owners_of(owned: Mapping[Item, frozenset[str]]) -> set[str]:
    return {policy for owners in owned.values() for policy in owners}


def settle_ownership(
    owned: Mapping[Item, frozenset[str]],
    plan: PolicyPlan,
    applied: tuple[Op, ...] | list[Op],
    added_new: frozenset[Item] | None = None,
) -> Ownership:
    """Ownership after ``plan`` ran and ``applied`` of its ops took effect.

    ``added_new`` (default: every applied add) are the adds that really created
    the item; an add that found the item already there is not ours to own, nor
    is an add that put back an item held by others.
    """
    result: Ownership = dict(owned)
    policy = plan.policy
    only = frozenset({policy})  # (one set for every item only this policy owns: 100,000 new elements share it)

    def own(item: Item) -> None:
        owners = result.get(item)
        result[item] = only if owners is None else owners | only

    for item in plan.claims:
        own(item)
    for item in plan.releases:
        _drop_owner(result, item, policy)
    for op in applied:
        if op.via is not None:
            continue  # out of a backend no longer in charge: a move, not a release
        if op.action == "remove":
            result.pop(op.item, None)
        elif op.item in plan.foreign_adds:
            continue
        elif added_new is None or op.item in added_new or op.item in result:
            own(op.item)
    return result


def settle_others(others: Mapping[Item, frozenset[str]], plan: PolicyPlan) -> Ownership:
    """The record of items held by others after ``plan``: its new records in,
    the records of items it no longer wants out."""
    result: Ownership = dict(others)
    for item in plan.held | plan.foreign_adds:
        result[item] = result.get(item, frozenset()) | {plan.policy}
    for item in plan.unheld:
        _drop_owner(result, item, plan.policy)
    return result


def _drop_owner(owned: Ownership, item: Item, policy: str) -> None:
    owners = owned.get(item, frozenset()) - {policy}
    if owners:
        owned[item] = owners
    else:
        owned.pop(item, None)
