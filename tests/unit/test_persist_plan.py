"""--persist permanent against the recording backend: the permanent copies are
items of their own, planned, owned, rolled back and switched per layer."""

import asyncio

from structlog.testing import capture_logs

from reconciler.backends.memory import MemoryBackend
from reconciler.backends.router import Router
from reconciler.cli import change_lines
from reconciler.engine import Reconciler, Said
from reconciler.model import DirectChain, DirectRule, Item, Op, Permanent, Port, Scope, Service
from reconciler.policy import LoadResult, Policy
from reconciler.state import StateStore

Z = Scope("zone", "public")
HTTP, P8080 = Service(Z, "http"), Port(Z, "8080", "tcp")
CHAIN = DirectChain("ipv4", "filter", "FWRECON_IN")
RULE = DirectRule("ipv4", "filter", "FWRECON_IN", 0, ("-j", "ACCEPT"))
WEB = {HTTP, P8080, CHAIN, RULE}


def policies(**items: set[Item]) -> LoadResult:
    return LoadResult(policies={n: Policy(n, f"{n}.toml", "", frozenset(i)) for n, i in items.items()})


def reconcile(backend, store, loaded, persist="permanent", said=None):
    return asyncio.run(Reconciler(backend, store, persist=persist, said=said).reconcile(loaded))


def copies(items):
    return {Permanent(item) for item in items}


def test_permanent_mode_writes_each_layer_once_and_then_nothing(tmp_path):
    backend, store = MemoryBackend(batches=True), StateStore(tmp_path / "s.json")
    report = reconcile(backend, store, policies(web=WEB))
    # Runtime first (firewalld names a bad item there, one call each), then one batch per permanent container.
    assert backend.calls == [
        "batch: + direct ipv4 filter chain FWRECON_IN",
        "batch: + direct ipv4 filter chain FWRECON_IN (permanent)",
        "batch: + zone public port 8080/tcp; + zone public service http",
        "batch: + direct ipv4 filter FWRECON_IN priority 0 rule -j ACCEPT",
        "batch: + zone public port 8080/tcp (permanent); + zone public service http (permanent)",
        "batch: + direct ipv4 filter FWRECON_IN priority 0 rule -j ACCEPT (permanent)",
    ]
    assert report.converged and store.load().owned_by("web") == WEB | copies(WEB)
    backend.calls.clear()
    assert reconcile(backend, store, policies(web=WEB)).write_ops == 0 and backend.calls == []
    reconcile(backend, store, policies())
    assert backend.state.items() == frozenset() and store.load().owned == {}


def test_a_permanent_item_fwrecon_did_not_add_is_not_owned_there(tmp_path):
    admins = Permanent(HTTP)
    backend, store = MemoryBackend([admins, Permanent(Service(Z, "ssh"))]), StateStore(tmp_path / "s.json")
    reconcile(backend, store, policies(web={HTTP}))
    state = store.load()
    assert state.owned_by("web") == {HTTP} and state.others == {admins: frozenset({"web"})}
    reconcile(backend, store, policies())
    assert backend.state.items() == {admins, Permanent(Service(Z, "ssh"))}  # the runtime copy went, theirs stayed


def test_switching_modes_adds_and_removes_only_the_copies_fwrecon_owns(tmp_path):
    foreign = Permanent(P8080)
    backend, store = MemoryBackend([foreign]), StateStore(tmp_path / "s.json")
    reconcile(backend, store, policies(web=WEB), persist="runtime")
    assert backend.state.items() == WEB | {foreign}
    backend.calls.clear()
    reconcile(backend, store, policies(web=WEB), persist="permanent")
    assert sorted(backend.calls) == sorted(f"+ {c.describe()}" for c in copies(WEB) - {foreign})
    backend.calls.clear()
    reconcile(backend, store, policies(web=WEB), persist="runtime")
    assert sorted(backend.calls) == sorted(f"- {c.describe()}" for c in copies(WEB) - {foreign})
    assert backend.state.items() == WEB | {foreign} and store.load().owned_by("web") == WEB


def test_a_refused_permanent_write_rolls_back_both_layers(tmp_path):
    backend = MemoryBackend(refuse=[Permanent(RULE)])
    store = StateStore(tmp_path / "s.json")
    report = reconcile(backend, store, policies(web=WEB))
    assert [o.status for o in report.outcomes] == ["failed"]
    assert backend.state.items() == frozenset() and store.load().owned == {}


def test_without_a_backend_for_the_permanent_layer_copies_are_neither_added_nor_touched(tmp_path):
    """iptables in charge of direct rules (firewalld gone): nothing to persist
    in, and copies owned from before wait in their unreachable containers."""
    store = StateStore(tmp_path / "s.json")
    reconcile(MemoryBackend(), store, policies(web={CHAIN, RULE}))
    iptables = MemoryBackend([CHAIN, RULE])
    router = Router({"direct": iptables})
    report = asyncio.run(Reconciler(router, store, persist="permanent").reconcile(policies(web={CHAIN, RULE})))
    assert report.converged and report.write_ops == 0 and iptables.state.items() == {CHAIN, RULE}
    assert store.load().owned_by("web") == {CHAIN, RULE} | copies({CHAIN, RULE})


def test_owned_items_made_permanent_by_someone_else_are_said_once(tmp_path):
    backend, store = MemoryBackend(), StateStore(tmp_path / "s.json")
    said = Said()
    reconcile(backend, store, policies(web={HTTP, P8080}), persist="runtime", said=said)
    backend.state.add(Permanent(HTTP))  # firewall-cmd --runtime-to-permanent
    with capture_logs() as logs:
        reconcile(backend, store, policies(web={HTTP, P8080}), persist="runtime", said=said)
        reconcile(backend, store, policies(web={HTTP, P8080}), persist="runtime", said=said)
    found = [entry for entry in logs if entry["event"] == "owned_items_made_permanent"]
    assert len(found) == 1 and found[0]["items"] == [HTTP.describe()]
    reconcile(backend, store, policies(), persist="runtime", said=said)
    assert backend.state.items() == {Permanent(HTTP)}  # not fwrecon's copy: it stays


def test_plan_shows_an_item_and_its_copy_as_one_line_with_both_layers():
    ops = [(Op("add", HTTP), ""), (Op("add", P8080), ""), (Op("add", Permanent(HTTP)), ""), (Op("remove", Permanent(RULE)), "")]
    assert change_lines("web", ops) == [
        "+ zone public service http  [web]  runtime+permanent",
        "+ zone public port 8080/tcp  [web]",
        "- direct ipv4 filter FWRECON_IN priority 0 rule -j ACCEPT (permanent)  [web]",
    ]
