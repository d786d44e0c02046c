"""Whole reconciles against the recording backend: golden call sequences,
rollback isolation between policies, last-good retention, crash-safe state."""

import asyncio
import contextlib
import json

from reconciler.backends.memory import MemoryBackend
from reconciler.engine import Reconciler, RefusalMemo
from reconciler.errors import PolicyError
from reconciler.model import DirectChain, DirectRule, Item, Port, Scope, Service
from reconciler.policy import LoadResult, Policy
from reconciler.state import StateStore
from reconciler.view import FirewallView

Z = Scope("zone", "public")
HTTP, SSH, P8080 = Service(Z, "http"), Service(Z, "ssh"), Port(Z, "8080", "tcp")
CHAIN = DirectChain("ipv4", "filter", "FWRECON_IN")
RULE = DirectRule("ipv4", "filter", "FWRECON_IN", 0, ("-j", "ACCEPT"))


def policies(**items: set[Item]) -> LoadResult:
    return LoadResult(policies={n: Policy(n, f"{n}.toml", "", frozenset(i)) for n, i in items.items()})


def reconcile(backend, store, loaded, last_good=None):
    return asyncio.run(Reconciler(backend, store).reconcile(loaded, last_good))


def test_apply_then_noop(tmp_path):
    backend, store = MemoryBackend(), StateStore(tmp_path / "s.json")
    report = reconcile(backend, store, policies(web={HTTP, P8080, CHAIN, RULE}))
    # chains first, then zone items, then direct rules (see Item.sort_key)
    assert backend.calls == [
        "+ direct ipv4 filter chain FWRECON_IN",
        "+ zone public port 8080/tcp",
        "+ zone public service http",
        "+ direct ipv4 filter FWRECON_IN priority 0 rule -j ACCEPT",
    ]
    assert report.converged and report.write_ops == 4
    assert store.load().owned_by("web") == {HTTP, P8080, CHAIN, RULE}
    assert store.load().pending is None
    backend.calls.clear()
    report = reconcile(backend, store, policies(web={HTTP, P8080, CHAIN, RULE}))
    assert backend.calls == [] and report.write_ops == 0
    # one read per container, never one per item
    assert sorted(backend.reads[-4:]) == [  # (and their permanent layer: did someone copy our items there?)
        ("direct", "ipv4", "filter"),
        ("permanent", "direct", "ipv4", "filter"),
        ("permanent", "zone", "public"),
        ("zone", "public"),
    ]


def test_delete_policy_removes_only_what_it_added(tmp_path):
    backend, store = MemoryBackend(items=[SSH]), StateStore(tmp_path / "s.json")
    reconcile(backend, store, policies(web={HTTP, SSH, CHAIN, RULE}))
    backend.calls.clear()
    reconcile(backend, store, policies())
    assert backend.calls == [
        "- zone public service http",
        "- direct ipv4 filter FWRECON_IN priority 0 rule -j ACCEPT",
        "- direct ipv4 filter chain FWRECON_IN",
    ]
    assert backend.state.items() == {SSH}
    assert store.load().owned == {}


def test_failed_policy_is_rolled_back_and_others_apply(tmp_path):
    bad = Service(Z, "bad")
    backend, store = MemoryBackend(refuse=[bad]), StateStore(tmp_path / "s.json")
    report = reconcile(backend, store, policies(a={HTTP, bad, P8080}, b={SSH}))
    assert [(o.policy, o.status) for o in report.outcomes] == [("a", "failed"), ("b", "applied")]
    assert backend.calls == [
        "+ zone public port 8080/tcp",
        "+ zone public service bad",
        "- zone public port 8080/tcp",
        "+ zone public service ssh",
    ]
    assert backend.state.items() == {SSH}
    assert store.load().owned == {SSH: frozenset({"b"})}
    assert not report.converged


def test_failure_of_one_policy_replans_the_rest(tmp_path):
    # a and b both want http; a fails after adding it, so b must add it itself
    bad = Service(Z, "bad")
    backend, store = MemoryBackend(refuse=[bad]), StateStore(tmp_path / "s.json")
    reconcile(backend, store, policies(a={HTTP, bad}, b={HTTP}))
    assert backend.state.items() == {HTTP}
    assert store.load().owned == {HTTP: frozenset({"b"})}


def test_invalid_policy_keeps_its_owned_items(tmp_path):
    backend, store = MemoryBackend(), StateStore(tmp_path / "s.json")
    reconcile(backend, store, policies(web={HTTP}))
    broken = LoadResult(errors={"web": [PolicyError("web.toml", "zone.public.ports[0]", "bad")]})
    backend.calls.clear()
    report = reconcile(backend, store, broken)
    assert backend.calls == []
    assert backend.state.items() == {HTTP}
    assert list(report.invalid) == ["web"]


def test_invalid_policy_uses_last_good_when_given(tmp_path):
    backend, store = MemoryBackend(), StateStore(tmp_path / "s.json")
    broken = LoadResult(errors={"web": [PolicyError("web.toml", "x", "bad")]})
    reconcile(backend, store, broken, last_good={"web": frozenset({HTTP})})
    assert backend.state.items() == {HTTP}


def test_intent_is_recorded_before_each_op(tmp_path):
    """At every write, the state file already owns what is being added."""
    store = StateStore(tmp_path / "s.json")
    seen = []

    class Spy(MemoryBackend):
        async def apply(self, ops, seen_view=None):
            state = store.load()
            seen.extend((op.item in state.owned, state.pending["policy"]) for op in ops)
            return await super().apply(ops, seen_view)

    reconcile(Spy(), store, policies(web={HTTP, P8080}))
    assert seen == [(True, "web"), (True, "web")]


def test_interrupted_transaction_that_landed_in_full_is_settled(tmp_path):
    """Killed after its last write, before the state write: the next run has
    nothing to do, keeps what the intent claimed, and drops the note for good."""
    backend, store = MemoryBackend(items=[HTTP, P8080]), StateStore(tmp_path / "s.json")
    crashed = store.load()
    crashed.owned = {HTTP: frozenset({"web"}), P8080: frozenset({"web"})}
    crashed.pending = {"policy": "web", "op_count": 2, "ops": ["+ zone public service http"], "started": 0.0}
    store.save(crashed)

    report = reconcile(backend, store, policies(web={HTTP, P8080}))
    assert backend.calls == [] and report.converged
    assert store.load().pending is None
    assert store.load().owned_by("web") == {HTTP, P8080}


def test_a_refusal_is_judged_again_when_the_host_changes(tmp_path):
    """The daemon keeps parsed policies, and with them the backend's refusals;
    installing the missing tool (a new refusal_key) must make the policy
    valid at the next reconcile, without touching its file."""

    class NeedsATool(MemoryBackend):
        installed = False

        async def refusals(self, items, *, ask_tools=False):
            reason = "needs iptables-save, which is not installed"
            return {} if self.installed else {item: reason for item in items if item.container()[0] == "direct"}

        def refusal_key(self):
            return self.installed

    backend, store = NeedsATool(), StateStore(tmp_path / "s.json")
    loaded = policies(web={HTTP}, fw={CHAIN, RULE})  # parsed once, as the daemon keeps them
    report = reconcile(backend, store, loaded)
    assert list(report.invalid) == ["fw"] and "iptables-save" in report.invalid["fw"][0].message
    assert backend.state.items() == {HTTP}
    backend.installed = True
    report = reconcile(backend, store, loaded)
    assert report.invalid == {} and backend.state.items() == {HTTP, CHAIN, RULE}


def test_intent_note_names_a_few_ops_and_counts_them_all(tmp_path):
    store = StateStore(tmp_path / "s.json")
    notes = []

    class Spy(MemoryBackend):
        async def apply(self, ops, seen=None):
            notes.extend(StateStore(store.path).load().pending for _ in ops)  # as written to disk
            return await super().apply(ops, seen)

    ports = {Port(Z, str(8000 + 2 * i), "tcp") for i in range(30)}  # 2 apart: firewalld merges neighbours
    reconcile(Spy(), store, policies(web=ports))
    note = notes[0]
    assert note["policy"] == "web" and note["op_count"] == 30
    assert note["ops"] == [f"+ zone public port {8000 + 2 * i}/tcp" for i in range(20)]


def test_putting_back_what_we_own_writes_no_state(tmp_path):
    """After a flush or reload our rules are gone but the file still claims
    them: re-adding them needs no intent, and the file stays as it was."""
    backend, store = MemoryBackend(), StateStore(tmp_path / "s.json")
    reconcile(backend, store, policies(web={HTTP, P8080, CHAIN, RULE}))
    written = store.path.stat()
    backend.state = type(backend.state)()  # everything flushed
    backend.calls.clear()
    report = reconcile(backend, store, policies(web={HTTP, P8080, CHAIN, RULE}))
    assert report.write_ops == 4 and len(backend.calls) == 4
    assert backend.state.items() == {HTTP, P8080, CHAIN, RULE}
    after = store.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert StateStore(store.path).load().owned_by("web") == {HTTP, P8080, CHAIN, RULE}


def test_interrupted_transaction_converges(tmp_path):
    """State as left by a kill between two adds: the next run finishes the job
    and a later deletion removes everything, orphaning nothing."""
    store = StateStore(tmp_path / "s.json")
    backend = MemoryBackend()

    class Killed(BaseException):
        pass

    class DiesOnSecondWrite(MemoryBackend):
        async def apply(self, ops, seen=None):
            done = []
            for op in ops:  # one write per op, as firewalld's
                if self.calls:
                    raise Killed
                done += await super().apply([op], seen)
            return done

    crashing = DiesOnSecondWrite()
    with contextlib.suppress(Killed):
        reconcile(crashing, store, policies(web={HTTP, P8080}))
    # a real kill -9 does not roll back: keep what the crashing run left
    backend.state = crashing.state
    state = store.load()
    assert state.owned_by("web") == {HTTP, P8080}
    reconcile(backend, store, policies(web={HTTP, P8080}))
    assert backend.state.items() == {HTTP, P8080}
    reconcile(backend, store, policies())
    assert backend.state.items() == frozenset()
    assert store.load().owned == {}


def test_unreadable_policy_directory_removes_nothing(tmp_path):
    backend, store = MemoryBackend(), StateStore(tmp_path / "s.json")
    reconcile(backend, store, policies(web={HTTP}, api={P8080}))
    unreadable = LoadResult(errors={"/etc/p": [PolicyError("/etc/p", "", "does not exist")]}, unreadable=True)
    backend.calls.clear()
    report = reconcile(backend, store, unreadable)
    assert backend.calls == []
    assert backend.state.items() == {HTTP, P8080}
    assert list(report.invalid) == ["/etc/p"]


def named(name, **kwargs):
    backend = MemoryBackend(**kwargs)
    backend.name = name
    return backend


def test_zone_items_on_a_backend_without_zones_make_the_policy_invalid(tmp_path):
    from reconciler.backends.router import routes_for

    ipt = named("iptables")
    store = StateStore(tmp_path / "s.json")
    report = reconcile(routes_for(None, ipt, None), store, policies(web={HTTP, RULE}, rules={CHAIN, RULE}))
    assert [str(e) for e in report.invalid["web"]] == ["web.toml: zone.public: needs firewalld (backend in charge: iptables)"]
    assert ipt.state.items() == {CHAIN, RULE}  # the other policy applied
    assert store.load().placed == {CHAIN: "iptables", RULE: "iptables"}


def test_refusals_are_judged_once_per_policy_and_backend_in_charge(tmp_path):
    from reconciler.backends.router import routes_for

    asked = []

    class Counting(MemoryBackend):
        async def refusals(self, items, *, ask_tools=False):
            asked.extend(items)
            return {}

    fw, ipt = Counting(), named("iptables")
    store = StateStore(tmp_path / "s.json")
    loaded = policies(web={HTTP, RULE})
    memo = RefusalMemo()

    def again(backend):
        return asyncio.run(Reconciler(backend, store, memo=memo).reconcile(loaded))

    with_firewalld = routes_for(fw, ipt, None)
    again(with_firewalld)
    again(routes_for(fw, ipt, None))  # same parsed policy, same backends in charge: not asked again
    assert sorted(asked, key=repr) == sorted([HTTP, RULE], key=repr)
    report = again(routes_for(None, ipt, None))  # firewalld went away
    assert [str(e) for e in report.invalid["web"]] == ["web.toml: zone.public: needs firewalld (backend in charge: iptables)"]


def test_an_edited_policy_has_only_the_items_it_did_not_hold_judged(tmp_path):
    """100,000 set elements are not judged again for a one-element edit; a
    refusal found before stays as long as its item does."""
    asked: list[Item] = []

    class Picky(MemoryBackend):
        async def refusals(self, items, *, ask_tools=False):
            asked.extend(items)
            return {item: "not here" for item in items if item == P8080}

    backend, store, memo = Picky(), StateStore(tmp_path / "s.json"), RefusalMemo()

    def judged(*items: Item) -> list[str]:
        report = asyncio.run(Reconciler(backend, store, memo=memo).reconcile(policies(web=set(items))))
        return [str(e) for e in report.invalid.get("web", [])]

    refused = ["web.toml: zone.public: not here (backend in charge: memory)"]
    assert judged(HTTP, P8080) == refused
    asked.clear()
    assert judged(HTTP, P8080, SSH) == refused and asked == [SSH]
    asked.clear()
    assert judged(HTTP, SSH) == [] and asked == []
    assert judged(HTTP, SSH, P8080) == refused and asked == [P8080]


def test_switching_backends_moves_owned_items_without_duplicates(tmp_path):
    from reconciler.backends.router import routes_for

    fw, ipt = named("firewalld"), named("iptables")
    store = StateStore(tmp_path / "s.json")
    wanted = policies(d={CHAIN, RULE})
    reconcile(routes_for(fw, ipt, None), store, wanted)
    assert fw.state.items() == {CHAIN, RULE} and ipt.state.items() == frozenset()
    assert set(store.load().placed.values()) == {"firewalld"}

    # firewalld went away (its rules with it): iptables takes over
    fw.state = type(fw.state)()
    reconcile(routes_for(None, ipt, None), store, wanted)
    assert ipt.state.items() == {CHAIN, RULE}
    assert set(store.load().placed.values()) == {"iptables"}

    # firewalld is back: the rules leave iptables and go to firewalld
    ipt.calls.clear()
    reconcile(routes_for(fw, ipt, None), store, wanted)
    assert ipt.calls == [
        "- direct ipv4 filter FWRECON_IN priority 0 rule -j ACCEPT",
        "- direct ipv4 filter chain FWRECON_IN",
    ]
    assert ipt.state.items() == frozenset() and fw.state.items() == {CHAIN, RULE}
    assert set(store.load().placed.values()) == {"firewalld"}
    assert store.load().owned_by("d") == {CHAIN, RULE}


def test_a_move_is_part_of_its_policys_transaction_and_rolls_back_with_it(tmp_path):
    """Taking items out of the old backend and adding them to the new one is
    one transaction: shown by plan, reported as ops, undone together."""
    from reconciler.backends.router import routes_for

    fw, ipt = named("firewalld"), named("iptables")
    store = StateStore(tmp_path / "s.json")
    wanted = policies(d={CHAIN, RULE})
    reconcile(routes_for(None, ipt, None), store, wanted)  # iptables first
    assert ipt.state.items() == {CHAIN, RULE}

    fw.refuse = {RULE}  # firewalld appears, but refuses the rule
    plans, _ = asyncio.run(Reconciler(routes_for(fw, ipt, None), store).plan(wanted))
    assert [op.describe() for op in plans[0].ops] == [
        "- direct ipv4 filter FWRECON_IN priority 0 rule -j ACCEPT (on iptables)",
        "- direct ipv4 filter chain FWRECON_IN (on iptables)",
        "+ direct ipv4 filter chain FWRECON_IN",
        "+ direct ipv4 filter FWRECON_IN priority 0 rule -j ACCEPT",
    ]
    report = reconcile(routes_for(fw, ipt, None), store, wanted)
    assert [o.status for o in report.outcomes] == ["failed"]
    assert ipt.state.items() == {CHAIN, RULE} and fw.state.items() == frozenset()  # both sides undone
    assert set(store.load().placed.values()) == {"iptables"}  # still there, so moved again next time

    fw.refuse = set()
    report = reconcile(routes_for(fw, ipt, None), store, wanted)
    assert report.write_ops == 4 and report.converged
    assert ipt.state.items() == frozenset() and fw.state.items() == {CHAIN, RULE}
    assert set(store.load().placed.values()) == {"firewalld"}


def test_a_chain_with_foreign_rules_stays_in_the_old_backend(tmp_path):
    from reconciler.backends.router import routes_for

    foreign = DirectRule("ipv4", "filter", "FWRECON_IN", 5, ("-s", "192.0.2.1", "-j", "DROP"))
    fw, ipt = named("firewalld"), named("iptables")
    store = StateStore(tmp_path / "s.json")
    reconcile(routes_for(None, ipt, None), store, policies(d={CHAIN, RULE}))
    ipt.state.add(foreign)  # someone else's rule in our chain

    report = reconcile(routes_for(fw, ipt, None), store, policies(d={CHAIN, RULE}))
    assert report.converged
    assert ipt.state.items() == {CHAIN, foreign}  # our rule left; the chain stays for the foreign one
    assert fw.state.items() == {CHAIN, RULE}
    assert set(store.load().placed.values()) == {"firewalld"}


def test_zone_items_wait_while_firewalld_is_away(tmp_path):
    """A policy with zones and direct rules: when firewalld goes away its
    direct rules move to iptables; its zone items can go nowhere, so they are
    neither added nor removed nor forgotten, and are back once firewalld is."""
    from reconciler.backends.router import routes_for

    fw, ipt = named("firewalld"), named("iptables")
    store = StateStore(tmp_path / "s.json")
    wanted = policies(web={HTTP, CHAIN, RULE})
    reconcile(routes_for(fw, ipt, None), store, wanted)

    fw.state = type(fw.state)()  # firewalld stopped, its runtime rules gone
    report = reconcile(routes_for(None, ipt, None), store, wanted)
    assert report.converged and list(report.invalid) == ["web"]  # "needs firewalld", held at its last good state
    assert ipt.state.items() == {CHAIN, RULE}
    assert store.load().owned_by("web") == {HTTP, CHAIN, RULE}
    assert store.load().placed[HTTP] == "firewalld"  # not moved: there is nowhere to move it to
    assert reconcile(routes_for(None, ipt, None), store, policies()).converged  # even its file deleted: HTTP waits
    assert store.load().owned_by("web") == {HTTP}

    reconcile(routes_for(fw, ipt, None), store, wanted)  # firewalld is back, the file too
    assert fw.state.items() == {HTTP, CHAIN, RULE} and ipt.state.items() == frozenset()
    assert store.load().owned_by("web") == {HTTP, CHAIN, RULE}


def test_a_rule_in_a_chain_nobody_declares_is_invalid_and_the_rest_applies(tmp_path):
    """`check`, `plan` and `apply` judge it alike: the rule would fail at apply."""
    backend, store = MemoryBackend(), StateStore(tmp_path / "s.json")
    stray = DirectRule("ipv4", "filter", "NOWHERE", 0, ("-j", "ACCEPT"))
    builtin = DirectRule("ipv4", "filter", "INPUT", 0, ("-j", "ACCEPT"))
    report = reconcile(backend, store, policies(a={stray}, b={builtin, HTTP}, c={RULE}, d={CHAIN}))
    assert [str(e) for e in report.invalid["a"]] == [
        "a.toml: chain 'NOWHERE' (ipv4 filter) is not built in and declared by no [[direct.chain]] "
        "and the backend in charge does not hold it"
    ]
    assert set(report.invalid) == {"a"}  # c's rule is in d's chain: fine
    assert backend.state.items() == {builtin, HTTP, CHAIN, RULE}
    backend.calls.clear()
    plans, desired = asyncio.run(Reconciler(backend, store).plan(policies(a={stray})))
    assert set(desired.invalid) == {"a"} and not any(p.ops and p.policy == "a" for p in plans)


def test_an_item_held_by_others_stays_theirs_across_reloads(tmp_path):
    """libvirt's bridge binding, wanted "for completeness": a reload wipes it,
    fwrecon puts it back first, and dropping the line still leaves it alone."""
    from reconciler.model import Interface

    bridge = Interface(Scope("zone", "libvirt"), "virbr-lv")
    backend, store = MemoryBackend(items=[bridge]), StateStore(tmp_path / "s.json")
    report = reconcile(backend, store, policies(lab={bridge, HTTP}))
    assert report.write_ops == 1 and store.load().owned == {HTTP: frozenset({"lab"})}
    assert store.load().others == {bridge: frozenset({"lab"})}
    for _ in range(3):
        backend.state = FirewallView()  # firewall-cmd --reload
        report = reconcile(backend, store, policies(lab={bridge, HTTP}))
        assert report.write_ops == 2 and backend.state.has(bridge)
        assert bridge not in StateStore(store.path).load().owned
    backend.calls.clear()
    reconcile(backend, store, policies(lab={HTTP}))
    assert backend.calls == [] and backend.state.has(bridge)
    assert store.load().others == {}


def test_new_items_wait_while_a_reload_settles(tmp_path):
    backend, store = MemoryBackend(), StateStore(tmp_path / "s.json")
    report = asyncio.run(Reconciler(backend, store).reconcile(policies(web={HTTP}), settling=True))
    assert report.write_ops == 0 and report.deferred == 1 and not backend.state.has(HTTP)
    report = reconcile(backend, store, policies(web={HTTP}))
    assert report.write_ops == 1 and store.load().owned == {HTTP: frozenset({"web"})}


def test_a_failed_write_is_judged_by_nft_beside_the_other_policies_chains(tmp_path):
    # d's rule jumps to e's chain; d's write fails for a passing reason. Judged alone, nft -c would say
    # "No such file or directory" for the jump, and d would be held as invalid until its file changed.
    from reconciler.model import NftChain, NftRule

    e_chain, d_chain = NftChain("inet", "E"), NftChain("inet", "D")
    jump = NftRule("inet", "D", "jump E")

    class NftLike(MemoryBackend):
        async def refusals(self, items, *, ask_tools=False):
            chains = {i.chain for i in items if isinstance(i, NftChain)}
            return {i: "No such file or directory" for i in items if ask_tools and i == jump and "E" not in chains}

    backend = NftLike(refuse=[jump])
    report = reconcile(backend, StateStore(tmp_path / "s.json"), policies(d={d_chain, jump}, e={e_chain}))
    assert [(o.policy, o.status) for o in report.outcomes if o.policy == "d"] == [("d", "failed")]
    assert "d" not in report.invalid
    assert e_chain in backend.state.items()


def test_a_transactions_outcome_is_written_with_the_next_ones_intent(tmp_path):
    """Three policies, three transactions: the state file is written four
    times (each intent, then the last outcome), not six, and what it says
    while the second runs (what a kill -9 then leaves) converges."""
    path = tmp_path / "s.json"
    seen: list[dict] = []

    class Watching(MemoryBackend):
        async def apply(self, ops, seen_view=None):
            seen.append(json.loads(path.read_text()))
            return await super().apply(ops, seen_view)

    class Counting(StateStore):
        writes = 0

        def save(self, state):
            before = path.stat().st_ino if path.exists() else None
            super().save(state)
            if path.stat().st_ino != before:  # (each write replaces the file)
                Counting.writes += 1

    backend, store = Watching(), Counting(path)
    wanted = policies(a={HTTP}, b={SSH}, c={P8080})
    assert reconcile(backend, store, wanted).converged
    assert Counting.writes == 4
    during_b = seen[1]
    assert during_b["pending"]["policy"] == "b"
    assert {(e["item"]["name"], tuple(e["policies"])) for e in during_b["owned"]} == {("http", ("a",)), ("ssh", ("b",))}
    final = store.load()
    assert final.pending is None and final.owned_by("c") == {P8080}

    # A kill -9 after a's transaction and before b's intent (the moment the
    # outcome waits) leaves a's intent, as one during a's transaction does.
    assert seen[0]["pending"]["policy"] == "a"
    for left, present in ((seen[0], [HTTP]), (during_b, [HTTP])):
        killed = tmp_path / "killed.json"
        killed.write_text(json.dumps(left))
        killed.chmod(0o600)
        after = MemoryBackend(items=present)  # a's item landed; b's had not yet
        report = reconcile(after, StateStore(killed), wanted)
        assert report.converged and after.calls == ["+ zone public service ssh", "+ zone public port 8080/tcp"]
        assert StateStore(killed).load().pending is None
        assert StateStore(killed).load().owned_by("a") == {HTTP} and StateStore(killed).load().owned_by("b") == {SSH}
