"""Overlaps across policies, judged beside what is in force: what passes
applies (nft refuses no add), and a forged or stale state file neither
crashes the check nor hides a clash."""

from __future__ import annotations

import asyncio
import json
from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from overlap_backends import IntervalSets

from reconciler.backends.memory import MemoryBackend
from reconciler.engine import Reconciler, desired_state
from reconciler.errors import PolicyError
from reconciler.ipsets import canonical_entry, entries_that_may_overlap, overlapping
from reconciler.model import Ipset, IpsetEntry, NftChain, NftElement, NftRule, NftSet, Outcome
from reconciler.nftsets import canonical_element, conflicts, overlapping_elements
from reconciler.policy import LoadResult, Policy, conflicting_sets, parse_policy
from reconciler.state import State, StateStore
from reconciler.view import FirewallView

BLOCK = NftSet("inet", "blocklist", "ipv4_addr", ("interval",))


def element(text: str) -> NftElement:
    return NftElement("inet", "blocklist", text)


def policy(name: str, elements: list[str], extra: str = ""):
    body = (
        f'[[nft.set]]\nfamily = "inet"\nname = "blocklist"\ntype = "ipv4_addr"\nflags = ["interval"]\n'
        f"elements = {json.dumps(elements)}\n{extra}"
    )
    return parse_policy(f"{name}.toml", body.encode())


def overlaps_in(items_by_policy) -> list[tuple[str, str]]:
    """What nft would refuse: overlapping elements of blocklist across every policy's desired items."""
    wanted = {i.element for items in items_by_policy.values() for i in items if isinstance(i, NftElement)}
    return conflicts("ipv4_addr", wanted)


def test_a_policy_refused_by_the_check_is_held_at_elements_the_check_never_saw():
    # a has 10.5.0.0/16 in force, c has 10.1.0.0/16. a's edit drops its /16 for 10.1.0.0/17 (overlaps c): a is refused,
    # so it is held at its last good items, 10.5.0.0/16 among them. b's new 10.5.0.0/24 overlaps that, yet passes.
    owned = {
        BLOCK: frozenset({"a", "c"}),
        element("10.5.0.0/16"): frozenset({"a"}),
        element("10.1.0.0/16"): frozenset({"c"}),
    }
    loaded = LoadResult(
        policies={
            "a": policy("a", ["10.1.0.0/17"]),
            "b": policy("b", ["10.5.0.0/24"]),
            "c": policy("c", ["10.1.0.0/16"]),
        }
    )
    desired = desired_state(loaded, State(owned=owned), None)
    assert "a" in desired.invalid
    assert element("10.5.0.0/16") in desired.items["a"]  # held
    assert overlaps_in(desired.items) == [], (sorted(desired.invalid), desired.items)


def test_a_policy_held_later_by_validate_keeps_elements_another_policy_was_let_overlap(tmp_path):
    # a's edit swaps its /16 for a /17 and adds a rule using an undeclared set: validate holds a at its last good
    # items (after conflicting_sets judged a's new elements instead); b's 10.5.0.0/24 was let in beside them.
    backend, store = MemoryBackend(), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"a": policy("a", ["10.5.0.0/16"])}))).converged
    rule = '[[nft.chain]]\nfamily = "inet"\nchain = "input"\n[[nft.rule]]\nfamily = "inet"\nchain = "input"\nrule = "ip saddr @nosuch drop"\n'
    loaded = LoadResult(policies={"a": policy("a", ["10.9.0.0/16"], rule), "b": policy("b", ["10.5.0.0/24"])})
    _, desired = asyncio.run(reconciler.plan(loaded))
    assert "a" in desired.invalid
    assert overlaps_in(desired.items) == [], (sorted(desired.invalid), desired.items)


def test_a_refused_policys_new_elements_do_not_refuse_another_policy():
    # b has 10.1.0.0/16 in force; a's edit adds 10.0.0.0/8 (refused, rightly). c's new 10.2.0.0/16 overlaps only
    # a's refused /8, which will not be applied: c must not be refused, nor told about a's /8.
    owned = {BLOCK: frozenset({"b"}), element("10.1.0.0/16"): frozenset({"b"})}
    policies = {"a": policy("a", ["10.0.0.0/8"]), "b": policy("b", ["10.1.0.0/16"]), "c": policy("c", ["10.2.0.0/16"])}
    errors = {name: [str(e) for e in found] for name, found in conflicting_sets(policies, owned).items()}
    assert sorted(errors) == ["a"], errors


def test_an_odd_owned_element_of_a_held_policy_does_not_crash_the_reconcile():
    # A state file (hand-edited, or from another version) with an element text nft never prints; h's file is broken.
    owned = {BLOCK: frozenset({"h"}), element("not-an-address"): frozenset({"h"})}
    loaded = LoadResult(policies={"b": policy("b", ["10.1.0.0/16"])}, errors={"h": [PolicyError("h.toml", "", "bad TOML")]})
    desired_state(loaded, State(owned=owned), None)


def test_owned_elements_that_overlap_each_other_do_not_hide_a_clash_name_order_finds():
    # An `owned` that is not what nft holds (a crash between the intent note and nft -f, a hand edit): a's /16 and
    # b's /17 both recorded. Name order tells b; the walk seeds both and tells nobody, and b's add fails at apply.
    owned = {BLOCK: frozenset({"a", "b"}), element("10.1.0.0/16"): frozenset({"a"}), element("10.1.0.0/17"): frozenset({"b"})}
    policies = {"a": policy("a", ["10.1.0.0/16"]), "b": policy("b", ["10.1.0.0/17"])}
    assert set(conflicting_sets(policies)) == {"b"}
    assert set(conflicting_sets(policies, owned)) == {"b"}


def test_an_odd_owned_entry_of_a_held_policy_does_not_crash_the_reconcile():
    from reconciler.model import IpsetEntry

    owned = {IpsetEntry("x", "garbage"): frozenset({"h"}), IpsetEntry("x", "10.0.0.0/8"): frozenset({"h"})}
    text = b'[ipset.x]\ntype = "hash:net"\nentries = ["10.1.0.0/16"]\n'
    loaded = LoadResult(policies={"b": parse_policy("b.toml", text)}, errors={"h": [PolicyError("h.toml", "", "bad TOML")]})
    desired = desired_state(loaded, State(owned=owned), None)
    assert "'10.1.0.0/16' overlaps '10.0.0.0/8' of policy 'h'" in str(desired.invalid["b"][0])


def test_a_policy_nft_refuses_in_plan_keeps_its_elements_and_plan_refuses_an_overlap_with_them(tmp_path):
    # b's edit drops its 10.1.0.0/16 and adds a rule nft -c refuses: plan holds b at what it owns, so c's new
    # 10.0.0.0/10 over that /16 would fail at apply; plan says so now.
    from reconciler.model import NftRule

    class Checking(MemoryBackend):
        async def refusals(self, items, *, ask_tools=False):  # type: ignore[no-untyped-def]
            return {i: "nft: syntax error" for i in items if ask_tools and isinstance(i, NftRule) and "frob" in i.rule}

    backend, store = Checking(), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"b": policy("b", ["10.1.0.0/16"])}))).converged
    rule = '[[nft.chain]]\nfamily = "inet"\nchain = "input"\n[[nft.rule]]\nfamily = "inet"\nchain = "input"\nrule = "frob"\n'
    loaded = LoadResult(policies={"b": policy("b", [], rule), "c": policy("c", ["10.0.0.0/10"])})
    _, desired = asyncio.run(reconciler.plan(loaded))
    assert sorted(desired.invalid) == ["b", "c"], desired.invalid
    assert "'10.0.0.0/10' overlaps '10.1.0.0/16' of policy 'b'" in str(desired.invalid["c"][0])
    assert overlaps_in(desired.items) == [], desired.items


_SPANS = st.tuples(st.integers(0, 60), st.integers(0, 8))


@given(st.lists(_SPANS, max_size=12), st.sampled_from(["inet_service", "ipv4_addr"]))
def test_the_elements_that_overlap_another_are_found_exactly(spans, set_type):
    def text(low: int, high: int) -> str:
        if set_type == "inet_service":
            return f"{low}-{high}" if high > low else str(low)
        return f"10.0.0.{low}-10.0.0.{high}" if high > low else f"10.0.0.{low}"

    bounds = {canonical_element(set_type, True, text(low, low + width)): (low, low + width) for low, width in spans}
    elements = set(bounds)
    meet = {e for e in elements for f in elements if e != f and bounds[e][0] <= bounds[f][-1] and bounds[f][0] <= bounds[e][-1]}
    assert overlapping_elements(set_type, elements) == meet


@given(
    st.lists(
        st.tuples(st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16", "11.0.0.0/8"]), _SPANS),
        max_size=12,
    ),
    st.booleans(),
)
def test_every_entry_that_overlaps_another_is_a_suspect(spans, ports):
    ipset_type = "hash:net,port" if ports else "hash:net"
    entries = {
        canonical_entry(ipset_type, "inet", f"{net},tcp:{low + 1}-{low + 1 + width}" if ports else net)
        for net, (low, width) in spans
    }
    meeting = {b for a, b in combinations(sorted(entries), 2) if overlapping(ipset_type, [a, b])}
    meeting |= {a for a, b in combinations(sorted(entries), 2) if overlapping(ipset_type, [a, b])}
    suspects = entries_that_may_overlap(ipset_type, entries)
    assert meeting <= suspects <= entries
    if not ports:  # networks alone: exactly those nesting with another
        assert suspects == meeting


def test_many_policies_sharing_a_set_are_judged_in_one_sort_and_the_one_that_overlaps_is_told(monkeypatch):
    # 100 policies of 1,000 elements each took 17 s, each comparing the elements before it again: now the
    # elements are sorted once, and only the policy with an element that overlaps is compared on its own.
    import reconciler.policy

    policies = {f"p{n:03}": policy(f"p{n:03}", [f"10.{n}.{i // 64}.{i % 64 * 4}/30" for i in range(1000)]) for n in range(100)}
    policies["q"] = policy("q", ["10.7.3.0/24", "192.0.2.0/24"])
    compared = []
    monkeypatch.setattr(
        reconciler.policy, "conflicts", lambda set_type, elements: compared.append(len(elements)) or conflicts(set_type, elements)
    )
    errors = {name: [str(e) for e in found] for name, found in conflicting_sets(policies).items()}
    assert list(errors) == ["q"]
    assert len(errors["q"]) == 64  # (one for each /30 in the /24)
    assert errors["q"][0] == (
        "q.toml: nft.set[0].elements[0]: '10.7.3.0/24' overlaps '10.7.3.0/30' of policy 'p007'; nft refuses overlapping intervals"
    )
    assert compared == [7064, 100_001]  # (p007's 64 and q's one suspect, beside the elements before; 5,050,000 before)


def test_a_policy_that_swaps_an_element_goes_before_one_that_only_widens_over_it(tmp_path):
    backend, store = IntervalSets(batches=True), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"b": policy("b", ["10.1.0.0/16"])}))).converged
    backend.calls.clear()
    # b swaps its /16 for another network (it does not merely let go), as a, first by name, widens over it.
    edited = {"a": policy("a", ["10.0.0.0/8"]), "b": policy("b", ["192.0.2.0/24"])}
    report = asyncio.run(reconciler.reconcile(LoadResult(policies=edited)))
    assert [(o.policy, o.status) for o in report.outcomes] == [("b", "applied"), ("a", "applied")]
    assert backend.calls == [  # no refused try first
        "batch: - nft inet fwrecon set blocklist element 10.1.0.0/16; + nft inet fwrecon set blocklist element 192.0.2.0/24",
        "batch: + nft inet fwrecon set blocklist element 10.0.0.0/8",
    ]
    assert store.load().owned[element("10.0.0.0/8")] == {"a"}


def test_an_add_that_failed_on_what_a_later_policy_swaps_away_is_tried_again_in_the_same_run(tmp_path):
    backend, store = IntervalSets(batches=True), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    first = {"a": policy("a", ["172.16.0.0/12"]), "b": policy("b", ["10.1.0.0/16"])}
    assert asyncio.run(reconciler.reconcile(LoadResult(policies=first))).converged
    backend.calls.clear()
    # Both swap, so they go by name: a's widening over b's /16 comes before b lets the /16 go.
    edited = {"a": policy("a", ["10.0.0.0/8"]), "b": policy("b", ["192.0.2.0/24"])}
    report = asyncio.run(reconciler.reconcile(LoadResult(policies=edited)))
    assert report.converged, [o.error for o in report.failed]
    assert [(o.policy, o.status) for o in report.outcomes] == [("a", "applied"), ("b", "applied")]
    assert backend.calls == [
        # refused: b's /16 is still there (and rolled back: a's /12 goes back)
        "batch: - nft inet fwrecon set blocklist element 172.16.0.0/12; + nft inet fwrecon set blocklist element 10.0.0.0/8",
        "batch: - nft inet fwrecon set blocklist element 10.1.0.0/16; + nft inet fwrecon set blocklist element 192.0.2.0/24",
        "batch: - nft inet fwrecon set blocklist element 172.16.0.0/12; + nft inet fwrecon set blocklist element 10.0.0.0/8",
    ]
    assert {i.element for i in backend.state.items() if isinstance(i, NftElement)} == {"10.0.0.0/8", "192.0.2.0/24"}
    assert store.load().owned[element("10.0.0.0/8")] == {"a"}


def test_an_add_refused_for_its_own_sake_is_tried_once_more_at_most(tmp_path):
    backend, store = IntervalSets(batches=True, refuse=[element("10.9.0.0/16")]), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    first = {"a": policy("a", ["172.16.0.0/12"]), "b": policy("b", ["10.1.0.0/16"])}
    assert asyncio.run(reconciler.reconcile(LoadResult(policies=first))).converged
    backend.calls.clear()
    # Both swap (so a goes first, by name) and b's removal after a's failure earns a one more try.
    edited = {"a": policy("a", ["10.9.0.0/16"]), "b": policy("b", ["192.0.2.0/24"])}
    report = asyncio.run(reconciler.reconcile(LoadResult(policies=edited)))
    assert [(o.policy, o.status) for o in report.outcomes] == [("a", "failed"), ("b", "applied")]
    tries = "batch: - nft inet fwrecon set blocklist element 172.16.0.0/12; + nft inet fwrecon set blocklist element 10.9.0.0/16"
    assert [c for c in backend.calls if "10.9.0.0/16" in c] == [tries] * 2
    # Nothing removed in that set after it: no second try.
    backend.calls.clear()
    report = asyncio.run(reconciler.reconcile(LoadResult(policies=edited)))
    assert [c for c in backend.calls if "10.9.0.0/16" in c] == [tries]


def test_a_claim_stands_when_the_transaction_of_the_policy_that_claims_fails(tmp_path):
    # z's file is gone and b takes over z's element (a claim) but adds one the firewall refuses: z, first since it only
    # lets go, gave the element up to b; b's rollback must not lose the claim, or nobody would own the element.
    handed, bad = element("192.0.2.0/24"), element("198.51.100.0/24")
    backend, store = MemoryBackend(refuse=[bad]), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"z": policy("z", ["192.0.2.0/24"])}))).converged
    b = LoadResult(policies={"b": policy("b", ["192.0.2.0/24", "198.51.100.0/24"])})
    report = asyncio.run(reconciler.reconcile(b))
    assert [(o.policy, o.status) for o in report.failed] == [("b", "failed")]
    assert store.load().owned[handed] == {"b"} and store.load().owned[BLOCK] == {"b"}
    asyncio.run(reconciler.reconcile(LoadResult(policies={})))  # b goes: what fwrecon added goes with it
    assert not list(backend.state.items())


class TwoPlaces(MemoryBackend):
    """``new`` is in charge (observed); ``old`` held the items before a backend switch (reached with via="old")."""

    name = "new"

    def __init__(self, items, old):  # type: ignore[no-untyped-def]
        super().__init__(items)
        self.old = FirewallView(old)

    def _apply(self, op):  # type: ignore[no-untyped-def]
        from reconciler.errors import OperationFailed

        self.calls.append(op.describe() + (f" via {op.via}" if op.via else ""))
        if op.via == "old":
            if op.action == "add" and not self.old.has(op.item):
                self.old.add(op.item)
            elif op.action == "remove" and self.old.has(op.item):
                self.old.remove(op.item)
            return Outcome.APPLIED
        if op.action == "add" and isinstance(op.item, NftElement) and not self.state.has(op.item):
            there = [i.element for i in self.state.items() if isinstance(i, NftElement) and i.set == op.item.set]
            if conflicts("ipv4_addr", [*there, op.item.element]):
                raise OperationFailed("interval overlaps with an existing one", "NFT_ERROR", op)
        return super()._apply(op)

    async def _execute(self, op):  # type: ignore[no-untyped-def]
        return self._apply(op)


def test_a_policy_tried_again_still_moves_its_items_out_of_the_backend_that_held_them(tmp_path):
    moved = element("192.168.0.0/16")
    backend, store = TwoPlaces([BLOCK, element("10.1.0.0/16")], [moved]), StateStore(tmp_path / "s.json")
    owned = {BLOCK: frozenset({"a", "b"}), moved: frozenset({"a"}), element("10.1.0.0/16"): frozenset({"b"})}
    store.save(State(owned=owned, placed={BLOCK: "new", moved: "old", element("10.1.0.0/16"): "new"}))
    loaded = LoadResult(policies={"a": policy("a", ["192.168.0.0/16", "10.0.0.0/8"]), "b": policy("b", ["172.16.0.0/16"])})
    report = asyncio.run(Reconciler(backend, store).reconcile(loaded))
    assert report.converged, [o.error for o in report.failed]
    assert not backend.old.has(moved), backend.calls  # (the first, failed try's move was rolled back with it)
    assert backend.state.has(moved) and store.load().placed[moved] == "new"


class Strict(MemoryBackend):
    """Like nft: a rule needs its chain and the set it uses, an element its set."""

    def _apply(self, op):  # type: ignore[no-untyped-def]
        from reconciler.errors import OperationFailed

        item, there = op.item, list(self.state.items())
        if op.action == "add" and isinstance(item, NftRule):
            if not any(isinstance(c, NftChain) and (c.family, c.chain) == (item.family, item.chain) for c in there):
                raise OperationFailed("No such file or directory (chain)", "NFT_ERROR", op)
            if "@blocklist" in item.rule and not any(isinstance(s, NftSet) and s.name == "blocklist" for s in there):
                raise OperationFailed("No such file or directory (set)", "NFT_ERROR", op)
        sets = {(s.family, s.name) for s in there if isinstance(s, NftSet)}
        if op.action == "add" and isinstance(item, NftElement) and (item.family, item.set) not in sets:
            raise OperationFailed("No such file or directory (set)", "NFT_ERROR", op)
        return super()._apply(op)


RULE = '[[nft.rule]]\nfamily = "inet"\nchain = "input"\nrule = "ip saddr @blocklist drop"\n'
CHAIN = '[[nft.chain]]\nfamily = "inet"\nchain = "input"\nhook = "input"\n'


def test_a_policy_that_puts_back_what_it_owns_waits_for_the_one_declaring_its_chain(tmp_path):
    # fwrecon's table is gone (a reboot) and a-base, which declares the chain and set z's rule needs, was edited:
    # z wants back only what it owns, yet it adds, so it keeps its place after a-base.
    backend, store = Strict(), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    z = parse_policy("z.toml", RULE.encode())
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"a": policy("a", ["192.0.2.0/24"], CHAIN), "z": z}))).converged
    backend.state = FirewallView()
    edited = LoadResult(policies={"a": policy("a", ["192.0.2.0/24", "198.51.100.0/24"], CHAIN), "z": z})
    report = asyncio.run(reconciler.reconcile(edited))
    assert report.converged, [o.error for o in report.failed]


def test_a_rule_may_not_count_on_a_set_that_goes_in_the_same_run(tmp_path):
    # z's file is gone with the set; a's new rule uses it, declared by no policy: refused, not failed at apply.
    backend, store = Strict(), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"z": policy("z", ["192.0.2.0/24"])}))).converged
    a = parse_policy("a.toml", ('[[nft.chain]]\nfamily = "inet"\nchain = "input"\n' + RULE).encode())
    report = asyncio.run(reconciler.reconcile(LoadResult(policies={"a": a})))
    assert report.converged, [o.error for o in report.failed]
    assert "the set @blocklist (inet) is declared by no [[nft.set]]" in str(report.invalid["a"][0]), report.invalid
    assert not [i for i in backend.state.items() if isinstance(i, (NftSet, NftElement))]


@pytest.mark.parametrize(
    ("kept", "declared_first", "first_element", "kept_element"),
    [
        (NftSet("inet", "x", "ipv4_addr", ("interval",)), NftSet("inet", "x", "inet_service", ("interval",)), "80", "10.0.0.0/8"),
        (Ipset("x", "hash:net", "inet"), Ipset("x", "hash:ip,port", "inet"), "10.0.0.1,tcp:80", "10.0.0.0/8"),
    ],
)
def test_elements_in_force_under_another_declaration_are_told_not_a_crash(kept, declared_first, first_element, kept_element):
    # b keeps 10.0.0.0/8 in a set or ipset fwrecon did not create; a, first by name, declares it otherwise.
    def item(declaration, text):  # type: ignore[no-untyped-def]
        if isinstance(declaration, Ipset):
            return IpsetEntry(declaration.name, text)
        return NftElement(declaration.family, declaration.name, text)

    a = Policy("a", "a.toml", "", frozenset({declared_first, item(declared_first, first_element)}))
    b = Policy("b", "b.toml", "", frozenset({kept, item(kept, kept_element)}))
    for policies in ({"a": a, "b": b}, {"b": b, "a": a}):
        errors = conflicting_sets(policies, {item(kept, kept_element): frozenset({"b"})}, ())
        assert list(errors) == ["b"], errors
        assert "policy 'a' declares" in str(errors["b"][0])


def test_a_claim_stands_when_another_policy_fails_between_the_one_letting_go_and_the_claimer(tmp_path):
    # z (file gone, first) lets its element go to b's claim; a, between them by name, fails on a port: b is planned
    # again, and must still find the element ours, not someone else's (nothing would ever remove it then).
    from reconciler.model import Port, Scope

    backend, store = MemoryBackend(refuse=[Port(Scope("zone", "public"), "9999", "tcp")]), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"z": policy("z", ["192.0.2.0/24"])}))).converged
    a = parse_policy("a.toml", b'[zone.public]\nports = ["9999/tcp"]\n')
    report = asyncio.run(reconciler.reconcile(LoadResult(policies={"a": a, "b": policy("b", ["192.0.2.0/24"])})))
    assert [o.policy for o in report.failed] == ["a"]
    assert store.load().owned[element("192.0.2.0/24")] == {"b"} and not store.load().others
    asyncio.run(reconciler.reconcile(LoadResult(policies={})))
    assert not list(backend.state.items())


class RedeclaringStrict(Strict):
    """Strict, and a set cannot be added again with another type."""

    def _apply(self, op):  # type: ignore[no-untyped-def]
        from reconciler.errors import OperationFailed

        there = [s for s in self.state.items() if isinstance(s, NftSet) and s.name == getattr(op.item, "name", None)]
        if op.action == "add" and isinstance(op.item, NftSet) and any(s != op.item for s in there):
            raise OperationFailed("File exists (set with another type)", "NFT_ERROR", op)
        return super()._apply(op)


@pytest.mark.parametrize("redeclared", [False, True])
def test_a_set_kept_because_someone_elses_element_is_in_it_still_counts_as_held(tmp_path, redeclared):
    # z's file is gone, but an admin's element keeps its set in place: a rule may use it, and a policy declaring
    # it otherwise is told that it exists (not let fail at apply).
    backend, store = RedeclaringStrict(), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"z": policy("z", ["192.0.2.0/24"])}))).converged
    backend.state.add(element("203.0.113.0/24"))
    if redeclared:
        body = (
            '[[nft.set]]\nfamily = "inet"\nname = "blocklist"\ntype = "inet_service"\nflags = ["interval"]\nelements = ["80"]\n'
        )
    else:
        body = '[[nft.chain]]\nfamily = "inet"\nchain = "input"\n' + RULE
    report = asyncio.run(reconciler.reconcile(LoadResult(policies={"a": parse_policy("a.toml", body.encode())})))
    assert report.converged, [o.error for o in report.failed]
    if redeclared:
        assert "the set exists as" in str(report.invalid["a"][0]), report.invalid
    else:
        assert not report.invalid, report.invalid
    assert any(isinstance(i, NftSet) for i in backend.state.items())


def test_a_set_kept_by_a_rule_of_ours_that_stays_still_counts_as_held(tmp_path):
    # b declared the set c's rule uses; b's file is deleted: the set stays in use by c's rule, and c, unchanged,
    # is not refused.
    class WithUsers(Strict):
        async def observe(self, containers, known=None, *, removable=None):  # type: ignore[no-untyped-def]
            view = await super().observe(containers, known, removable=removable)
            rules = [i for i in view.items() if isinstance(i, NftRule)]
            users = {s: [r for r in rules if f"@{s.name}" in r.rule] for s in view.items() if isinstance(s, NftSet)}
            return FirewallView(view.items(), view.containers, users={s: u for s, u in users.items() if u})

    backend, store = WithUsers(), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    c = parse_policy("c.toml", ('[[nft.chain]]\nfamily = "inet"\nchain = "input"\n' + RULE).encode())
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"b": policy("b", ["192.0.2.0/24"]), "c": c}))).converged
    report = asyncio.run(reconciler.reconcile(LoadResult(policies={"c": c})))
    assert report.converged and not report.invalid, (report.invalid, [o.error for o in report.failed])
    assert any(isinstance(i, NftSet) for i in backend.state.items())


def test_an_element_someone_else_put_in_our_set_refuses_an_overlap_before_apply(tmp_path):
    # An admin adds 10.1.0.0/16 to fwrecon's interval set; no policy wants it, so no record of it exists.
    # a's edit widening to 10.0.0.0/8 is held (its /24 stays), told why, instead of failing at every apply.
    backend, store = IntervalSets(batches=True), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"a": policy("a", ["192.0.2.0/24"])}))).converged
    backend.state.add(element("10.1.0.0/16"))
    for _ in range(2):
        backend.calls.clear()
        report = asyncio.run(reconciler.reconcile(LoadResult(policies={"a": policy("a", ["192.0.2.0/24", "10.0.0.0/8"])})))
        assert report.converged, [o.error for o in report.failed]
        assert sorted(report.invalid) == ["a"], report.invalid
        assert "'10.0.0.0/8' overlaps '10.1.0.0/16', which someone else put there" in str(report.invalid["a"][0])
        assert report.invalid["a"][0].key == "nft.set[0].elements[1]"
        assert not [c for c in backend.calls if "element" in c], backend.calls  # nothing tried, nothing removed
    assert {element("192.0.2.0/24"), element("10.1.0.0/16")} <= backend.state.items()


def test_a_policy_whose_edit_swaps_someone_elses_element_for_an_overlap_is_told_at_every_run(tmp_path):
    # b wanted the admin's 10.1.0.0/16 (a record of it held by others); b's edit swaps it for 10.0.0.0/8.
    # The record goes with b's wanting it, but the element stays, so b is held at every run, not let fail.
    backend, store = IntervalSets(batches=True), StateStore(tmp_path / "s.json")
    backend.state.add(BLOCK)
    backend.state.add(element("10.1.0.0/16"))
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"b": policy("b", ["10.1.0.0/16"])}))).converged
    assert element("10.1.0.0/16") in store.load().others
    for _ in range(2):
        report = asyncio.run(reconciler.reconcile(LoadResult(policies={"b": policy("b", ["10.0.0.0/8"])})))
        assert report.converged, [o.error for o in report.failed]
        assert "overlaps '10.1.0.0/16', which someone else put there" in str(report.invalid.get("b")), report.invalid
    assert element("10.1.0.0/16") in backend.state.items() and element("10.0.0.0/8") not in backend.state.items()


def test_foreign_elements_are_in_force_before_every_policy():
    a, b = policy("a", ["10.0.0.0/8"]), policy("b", ["192.0.2.0/24"])
    foreign = [element("10.1.0.0/16"), element("198.51.100.0/24")]
    found = conflicting_sets({"a": a, "b": b}, {}, (), foreign)
    assert sorted(found) == ["a"] and "which someone else put there" in str(found["a"][0]), found
    # Not of a set declared with the interval flag, or of another set: they cannot clash.
    assert conflicting_sets({"a": a}, {}, (), [NftElement("inet", "other", "10.1.0.0/16")]) == {}
    # A foreign element a policy also wants is no overlap of its own.
    assert conflicting_sets({"c": policy("c", ["10.1.0.0/16"])}, {}, (), foreign) == {}


def test_a_policy_held_without_memory_keeps_wanting_what_someone_else_holds(tmp_path):
    # b wants the admin's 10.1.0.0/16 and owns 192.0.2.0/24; its file breaks (a CLI run: no last good version).
    # Held at what it has in force, it still wants the admin's element: the record stays, `plan` says "=".
    backend, store = IntervalSets(batches=True), StateStore(tmp_path / "s.json")
    backend.state.add(BLOCK)
    backend.state.add(element("10.1.0.0/16"))
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"b": policy("b", ["10.1.0.0/16", "192.0.2.0/24"])}))).converged
    broken = LoadResult(errors={"b": [PolicyError("b.toml", "", "broken")]})
    report = asyncio.run(reconciler.reconcile(broken))
    assert report.converged and sorted(report.invalid) == ["b"], report.invalid
    state = store.load()
    assert state.others == {BLOCK: frozenset({"b"}), element("10.1.0.0/16"): frozenset({"b"})}, state.others
    assert state.owned_by("b") == {element("192.0.2.0/24")}


def test_a_rule_is_not_refused_for_a_set_that_a_policy_held_in_the_same_round_keeps(tmp_path):
    # b's edit drops the set c's rule uses, and adds a rule in a chain nobody declares: b is held at its last
    # good version, which keeps the set; so c's rule still has it, and c (unchanged) is not held with b.
    backend, store = Strict(), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    c = parse_policy("c.toml", (CHAIN + RULE).encode())
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"b": policy("b", ["192.0.2.0/24"]), "c": c}))).converged
    stray = '[[nft.rule]]\nfamily = "inet"\nchain = "nowhere"\nrule = "counter"\n'
    b = parse_policy("b.toml", stray.encode())
    last_good = {"b": policy("b", ["192.0.2.0/24"]).items}
    for memory in (last_good, None):  # the daemon's last good version, or (a CLI run) what b has in force
        report = asyncio.run(reconciler.reconcile(LoadResult(policies={"b": b, "c": c}), last_good=memory))
        assert report.converged, [o.error for o in report.failed]
        assert sorted(report.invalid) == ["b"], report.invalid
        assert "nowhere" in str(report.invalid["b"][0])
        assert BLOCK in backend.state.items() and element("192.0.2.0/24") in backend.state.items()


def test_two_edits_that_each_drop_the_set_the_others_rule_uses_hold_one_not_both(tmp_path):
    # b's edit uses @s2 and drops s1; c's edit uses @s1 and drops s2.  Together they break; either alone
    # is fine beside the other held.  The first by name applies, the other is held and keeps its set.
    def declares(name: str, uses: str | None = None) -> str:
        body = f'[[nft.set]]\nfamily = "inet"\nname = "{name}"\ntype = "ipv4_addr"\nelements = ["192.0.2.1"]\n' if name else ""
        if uses:
            body += f'[[nft.chain]]\nfamily = "inet"\nchain = "in_{uses}"\n'
            body += f'[[nft.rule]]\nfamily = "inet"\nchain = "in_{uses}"\nrule = "ip saddr @{uses} drop"\n'
        return body

    backend, store = MemoryBackend(), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    first = {n: parse_policy(f"{n}.toml", declares(s).encode()) for n, s in (("b", "s1"), ("c", "s2"))}
    assert asyncio.run(reconciler.reconcile(LoadResult(policies=first))).converged
    edited = {"b": parse_policy("b.toml", declares("", "s2").encode()), "c": parse_policy("c.toml", declares("", "s1").encode())}
    report = asyncio.run(reconciler.reconcile(LoadResult(policies=edited)))
    assert report.converged, [o.error for o in report.failed]
    assert sorted(report.invalid) == ["c"], report.invalid
    sets = {i.name for i in backend.state.items() if isinstance(i, NftSet)}
    rules = {i.rule for i in backend.state.items() if isinstance(i, NftRule)}
    assert sets == {"s2"} and rules == {"ip saddr @s2 drop"}, (sets, rules)


def test_a_policy_overlapping_only_an_element_held_for_someone_elses_is_not_held(tmp_path):
    # An admin's 10.200.0.0/16 is in the set: a's new 10.0.0.0/8 overlaps it and is held; b's new 10.1.0.0/16
    # overlaps only a's /8, which never goes in, so b applies (judged once, someone else's elements first).
    backend, store = IntervalSets(batches=True), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"z": policy("z", ["192.0.2.0/24"])}))).converged
    backend.state.add(element("10.200.0.0/16"))
    policies = {"a": policy("a", ["10.0.0.0/8"]), "b": policy("b", ["10.1.0.0/16"]), "z": policy("z", ["192.0.2.0/24"])}
    for _ in range(2):
        report = asyncio.run(reconciler.reconcile(LoadResult(policies=policies)))
        assert report.converged and sorted(report.invalid) == ["a"], report.invalid
        assert any("'10.200.0.0/16', which someone else put there" in str(e) for e in report.invalid["a"]), report.invalid
    assert element("10.1.0.0/16") in backend.state.items() and element("10.0.0.0/8") not in backend.state.items()


def test_an_element_of_ours_someone_replaced_with_an_overlapping_one_is_told_and_comes_back(tmp_path):
    # a owns 10.1.0.0/16; by hand someone deletes it and adds 10.0.0.0/8. nft cannot hold both: check, plan
    # and apply tell a; fwrecon keeps owning the /16, does not try it meanwhile, and puts it back once the /8 goes.
    backend, store = IntervalSets(batches=True), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    policies = LoadResult(policies={"a": policy("a", ["10.1.0.0/16"])})
    assert asyncio.run(reconciler.reconcile(policies)).converged
    backend.state.remove(element("10.1.0.0/16"))
    backend.state.add(element("10.0.0.0/8"))
    told = "'10.1.0.0/16' overlaps '10.0.0.0/8', which someone else put there"
    _, judged = asyncio.run(reconciler.plan(policies))
    assert told in str(judged.invalid.get("a")), judged.invalid
    for _ in range(2):  # held, told, and not put back (which nft would refuse, failing a's transaction)
        report = asyncio.run(reconciler.reconcile(policies))
        assert report.converged and told in str(report.invalid.get("a")), ([o.error for o in report.failed], report.invalid)
    assert element("10.0.0.0/8") in backend.state.items() and "a" in owners_of_element(store, "10.1.0.0/16")
    backend.state.remove(element("10.0.0.0/8"))
    report = asyncio.run(reconciler.reconcile(policies))
    assert report.converged and not report.invalid, report.invalid
    assert element("10.1.0.0/16") in backend.state.items()


def owners_of_element(store: StateStore, text: str) -> frozenset[str]:
    return store.load().owned.get(element(text), frozenset())


@pytest.mark.parametrize(
    ("there", "owned"),
    [
        ([BLOCK, element("10.0.0.0/8")], [BLOCK, element("not-an-address")]),  # a forged state
        ([NftSet("inet", "blocklist", "ipv6_addr", ("interval",)), element("2001:db8::/32")], [BLOCK, element("10.1.0.0/16")]),
        (
            [Ipset("x", "hash:net,port", "inet"), IpsetEntry("x", "10.0.0.0/8,tcp:80")],
            [Ipset("x", "hash:net", "inet"), IpsetEntry("x", "10.1.0.0/16")],
        ),
    ],
    ids=["forged-element", "set-retyped", "ipset-retyped"],
)
def test_a_held_policy_beside_someone_elses_element_of_another_form_is_no_crash(tmp_path, there, owned):
    # What a held policy may not put back is judged under the type the firewall holds the set as: a text
    # not of that type is left to the write, never a crash of every reconcile.
    store = StateStore(tmp_path / "s.json")
    store.save(State(owned={item: frozenset({"a"}) for item in owned}))
    reconciler = Reconciler(MemoryBackend(there), store)
    report = asyncio.run(reconciler.reconcile(LoadResult(errors={"a": [PolicyError("a.toml", "", "bad TOML")]})))
    assert sorted(report.invalid) == ["a"], report.invalid


def test_policies_held_because_the_directory_is_unreadable_do_not_try_what_nft_would_refuse(tmp_path):
    # As for a broken file: the element someone else's overlapping one replaced is kept owned, not tried.
    backend, store = IntervalSets(batches=True), StateStore(tmp_path / "s.json")
    reconciler = Reconciler(backend, store)
    assert asyncio.run(reconciler.reconcile(LoadResult(policies={"a": policy("a", ["10.1.0.0/16"])}))).converged
    backend.state.remove(element("10.1.0.0/16"))
    backend.state.add(element("10.0.0.0/8"))
    for _ in range(2):
        report = asyncio.run(reconciler.reconcile(LoadResult(unreadable=True)))
        assert report.converged, [o.error for o in report.failed]
    assert element("10.1.0.0/16") in store.load().owned
