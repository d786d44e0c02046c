"""Golden operation sequences for the transaction engine (libvirt's cases).

Each case records the exact calls made on a recording backend: apply,
ignore-failure, no rollback needed, single and many rollbacks, rollback that
itself fails, and a query-driven transaction.
"""

import asyncio

import pytest

from reconciler.backends.memory import MemoryBackend
from reconciler.model import DirectChain, DirectRule, Op, Port, Scope, Service
from reconciler.transaction import Transaction, TransactionFailed

Z = Scope("zone", "public")
A, B, C = Service(Z, "a"), Service(Z, "b"), Service(Z, "c")


def run(coro):
    return asyncio.run(coro)


def txn_of(*ops, name="t"):
    txn = Transaction(name)
    for op in ops:
        txn.add(op)
    return txn


def test_single_group_applies_in_order():
    backend = MemoryBackend()
    results = run(txn_of(Op("add", A), Op("add", B), Op("remove", C)).apply(backend))
    assert backend.calls == ["+ zone public service a", "+ zone public service b", "- zone public service c"]
    assert [r.outcome.value for r in results] == ["applied", "applied", "unchanged"]


def test_failure_rolls_back_applied_ops_in_reverse():
    backend = MemoryBackend(refuse=[C])
    with pytest.raises(TransactionFailed) as info:
        run(txn_of(Op("add", A), Op("add", B), Op("add", C)).apply(backend))
    assert backend.calls == [
        "+ zone public service a",
        "+ zone public service b",
        "+ zone public service c",
        "- zone public service b",
        "- zone public service a",
    ]
    assert backend.state.items() == frozenset()
    assert info.value.failed_op == Op("add", C)
    assert info.value.cause.code == "INVALID_VALUE"
    assert info.value.undone == [Op("remove", B), Op("remove", A)]


def test_first_op_failing_needs_no_rollback():
    backend = MemoryBackend(refuse=[A])
    with pytest.raises(TransactionFailed) as info:
        run(txn_of(Op("add", A), Op("add", B)).apply(backend))
    assert backend.calls == ["+ zone public service a"]
    assert info.value.undone == []


def test_unchanged_ops_are_not_undone():
    backend = MemoryBackend(items=[A], refuse=[C])
    with pytest.raises(TransactionFailed):
        run(txn_of(Op("add", A), Op("add", B), Op("add", C)).apply(backend))
    # a was there before: rollback must not remove it
    assert backend.calls[-1] == "- zone public service b"
    assert backend.state.items() == {A}


def test_removals_are_restored_on_rollback():
    backend = MemoryBackend(items=[A, B], refuse=[C])
    with pytest.raises(TransactionFailed):
        run(txn_of(Op("remove", A), Op("remove", B), Op("add", C)).apply(backend))
    assert backend.calls[3:] == ["+ zone public service b", "+ zone public service a"]
    assert backend.state.items() == {A, B}


def test_failure_injected_on_nth_call():
    backend = MemoryBackend(fail_on_call=2)
    with pytest.raises(TransactionFailed):
        run(txn_of(Op("add", A), Op("add", B), Op("add", C)).apply(backend))
    assert backend.calls == ["+ zone public service a", "+ zone public service b", "- zone public service a"]


def test_rollback_failure_is_reported():
    # call 2 (add b) is refused; call 3 (the undo of add a) fails as well
    backend = MemoryBackend(refuse=[B], fail_on_call=3)
    with pytest.raises(TransactionFailed) as info:
        run(txn_of(Op("add", A), Op("add", B)).apply(backend))
    assert backend.calls == ["+ zone public service a", "+ zone public service b", "- zone public service a"]
    assert [op for op, _ in info.value.rollback_errors] == [Op("remove", A)]
    assert "rollback incomplete" in str(info.value)


def test_an_undo_refused_mid_rollback_does_not_stop_the_undos_after_it():
    D = Service(Z, "d")
    # calls: +a +b +c +d (refused), then -c, -b (call 6, refused), -a
    backend = MemoryBackend(refuse=[D], fail_on_call=6)
    with pytest.raises(TransactionFailed) as info:
        run(txn_of(Op("add", A), Op("add", B), Op("add", C), Op("add", D)).apply(backend))
    assert backend.calls[4:] == ["- zone public service c", "- zone public service b", "- zone public service a"]
    assert info.value.undone == [Op("remove", C), Op("remove", A)]
    assert [op for op, _ in info.value.rollback_errors] == [Op("remove", B)]
    assert backend.state.items() == {B}  # what could not be undone is all that is left


def test_ignore_failure_continues():
    backend = MemoryBackend(refuse=[B])
    txn = Transaction("t")
    txn.add(Op("add", A))
    txn.add(Op("add", B), ignore_failure=True)
    txn.add(Op("add", C))
    run(txn.apply(backend))
    assert backend.state.items() == {A, C}


def test_query_hook_adds_ops_that_run_next():
    chain = DirectChain("ipv4", "filter", "X")
    rule = DirectRule("ipv4", "filter", "X", 0, ("-j", "ACCEPT"))
    backend = MemoryBackend(items=[chain, rule, Port(Z, "80", "tcp")])

    async def flush_chain(txn, backend):
        view = await backend.observe({chain.container()})
        for found in sorted(view.members_of(chain), key=lambda r: r.priority):
            txn.add(Op("remove", found))
        txn.add(Op("remove", chain))

    txn = Transaction("t")
    txn.add(Op("add", A))
    txn.add_query(flush_chain)
    txn.add(Op("add", B))
    run(txn.apply(backend))
    assert backend.calls == [
        "+ zone public service a",
        "- direct ipv4 filter X priority 0 rule -j ACCEPT",
        "- direct ipv4 filter chain X",
        "+ zone public service b",
    ]
    assert backend.reads == [("direct", "ipv4", "filter")]


def test_query_added_ops_are_rolled_back_too():
    backend = MemoryBackend(refuse=[C])

    async def hook(txn, backend):
        txn.add(Op("add", B))

    txn = Transaction("t")
    txn.add(Op("add", A))
    txn.add_query(hook)
    txn.add(Op("add", C))
    with pytest.raises(TransactionFailed):
        run(txn.apply(backend))
    assert backend.calls[-2:] == ["- zone public service b", "- zone public service a"]
    assert backend.state.items() == frozenset()


def test_batching_backend_gets_one_call_per_container_run():
    rule = DirectRule("ipv4", "filter", "X", 0, ("-j", "ACCEPT"))
    chain = DirectChain("ipv4", "filter", "X")
    backend = MemoryBackend(batches=True)
    run(txn_of(Op("add", chain), Op("add", rule), Op("add", A), Op("add", B)).apply(backend))
    assert backend.calls == [
        "batch: + direct ipv4 filter chain X; + direct ipv4 filter X priority 0 rule -j ACCEPT",
        "batch: + zone public service a; + zone public service b",
    ]


def test_failed_batch_changes_nothing_and_earlier_batches_are_undone_as_a_batch():
    rule = DirectRule("ipv4", "filter", "X", 0, ("-j", "ACCEPT"))
    chain = DirectChain("ipv4", "filter", "X")
    backend = MemoryBackend(batches=True, refuse=[B])
    with pytest.raises(TransactionFailed) as info:
        run(txn_of(Op("add", chain), Op("add", rule), Op("add", A), Op("add", B)).apply(backend))
    assert backend.calls == [
        "batch: + direct ipv4 filter chain X; + direct ipv4 filter X priority 0 rule -j ACCEPT",
        "batch: + zone public service a; + zone public service b",
        "batch: - direct ipv4 filter X priority 0 rule -j ACCEPT; - direct ipv4 filter chain X",
    ]
    assert info.value.failed_op == Op("add", B)  # the batch named its culprit
    assert backend.state.items() == frozenset()


def test_a_batch_is_handed_the_plans_reads_until_its_container_was_written():
    """Batch backends may build a write on the read the plan was made on, but
    only until something was written to that container: then it is stale."""
    from reconciler.view import FirewallView

    rule = DirectRule("ipv4", "filter", "X", 0, ("-j", "ACCEPT"))
    chain = DirectChain("ipv4", "filter", "X")
    table, zone = rule.container(), A.container()
    handed: list[set[tuple[str, ...]]] = []

    class Recording(MemoryBackend):
        async def _batch(self, ops, seen):  # type: ignore[no-untyped-def]
            handed.append(set(seen.reads) if seen is not None else set())
            return await super()._batch(ops, seen)

    async def nothing(txn: Transaction, backend: object) -> None:
        return None

    seen = FirewallView(reads={table: "read of ipv4 filter", zone: "read of public"})
    txn = txn_of(Op("add", chain), Op("add", A))
    txn.add_query(nothing)
    txn.add(Op("add", rule))
    backend = Recording(batches=True)
    run(txn.apply(backend, seen))
    # each batch is handed the reads of containers not written yet: the chain's
    # batch both, the zone's the zone's, the rule's (its table written) none
    assert handed == [{table, zone}, {zone}, set()]
    assert backend.calls[-1] == "batch: + direct ipv4 filter X priority 0 rule -j ACCEPT"
    assert seen.reads.keys() == {table, zone}  # the caller's view is left as it was
