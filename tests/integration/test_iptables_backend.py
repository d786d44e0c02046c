"""The iptables backend against real iptables/ip6tables/ebtables, in our own netns.

This backend is for hosts without firewalld, so these tests need no firewalld
sandbox: one network namespace per iptables variant (tables reset before each
test) and, for the traffic test, a second one joined by a veth pair.  Nothing
runs in the host's own namespace.  Without root or the tools they skip, except
with CI=true, where that is a failure.

Every test runs with both variants of iptables/ip6tables a host's alternatives
may pick, ``nft`` (nf_tables) and ``legacy`` (x_tables): links first on PATH
make the plain names the variant's.  ebtables stays as the system has it
(kernels built for nf_tables often lack the legacy ebtables tables), so the
``eb`` family runs with the nft variant only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from fwsandbox import CONNECT_SCRIPT, LISTENER_SCRIPT
from iptables_variants import VARIANTS, link_variant
from log_recorder import LogRecorder
from prereq import require_tools, skip_or_fail

from reconciler.backends.iptables import IptablesBackend
from reconciler.backends.process import which
from reconciler.errors import BackendUnavailable, OperationFailed
from reconciler.model import DirectChain, DirectRule, Op, Outcome
from reconciler.planner import plan_all

TOOLS = ("ip", *(f"{cmd}{suffix}" for cmd in ("iptables", "ip6tables", "ebtables") for suffix in ("", "-save", "-restore")))
SAVE = {"ipv4": "iptables-save", "ipv6": "ip6tables-save", "eb": "ebtables-save"}
CMD = {"ipv4": "iptables", "ipv6": "ip6tables", "eb": "ebtables"}
FAMILIES = ("ipv4", "ipv6", "eb")
VARIANT_NAMES = {"nft": "nf_tables", "legacy": "legacy"}  # as `iptables -V` prints them

# Per family: two ordinary rule args, one the tool refuses while parsing.
ARGS = {
    "ipv4": (("-p", "tcp", "--dport", "9000", "-j", "ACCEPT"), ("-s", "198.18.0.0/15", "-j", "DROP")),
    "ipv6": (("-p", "tcp", "--dport", "9000", "-j", "ACCEPT"), ("-s", "2001:db8::/32", "-j", "DROP")),
    "eb": (("-p", "IPv4", "--ip-proto", "tcp", "--ip-dport", "9000", "-j", "ACCEPT"), ("-p", "ARP", "-j", "DROP")),
}
BAD_ARGS = {
    "ipv4": ("-p", "tcp", "--dport", "99999", "-j", "ACCEPT"),
    "ipv6": ("-p", "tcp", "--dport", "99999", "-j", "ACCEPT"),
    "eb": ("-p", "NOPROTO", "-j", "ACCEPT"),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test once per variant (module scope: one netns each), or per variant
    marked ``variants(...)``; tests marked ``families(...)`` once per family
    too, ``eb`` with the nft variant only."""
    if "variant" not in metafunc.fixturenames:
        return
    only = metafunc.definition.get_closest_marker("variants")
    variants = [v for v in VARIANTS if only is None or v in only.args]
    marker = metafunc.definition.get_closest_marker("families")
    if marker is None:
        metafunc.parametrize("variant", variants, indirect=True, scope="module")
        return
    combos = [(variant, family) for variant in variants for family in marker.args if variant == "nft" or family != "eb"]
    metafunc.parametrize(("variant", "family"), combos, indirect=["variant"], scope="module")


@pytest.fixture(scope="module")
def variant(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The plain iptables/ip6tables names on PATH point at this variant's tools."""
    name: str = request.param
    links = tmp_path_factory.mktemp(f"iptables-{name}")
    path = link_variant(links, name)
    if path is None:
        skip_or_fail(f"iptables backend tests ({name} variant) need xtables-{name}-multi")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", path)
        assert which("iptables-restore") == str(links / "iptables-restore")  # as the backend resolves it
        yield name


@pytest.fixture(autouse=True)
def _integration_prerequisites() -> None:
    """Replaces tests/conftest.py's firewalld check: this backend needs no firewalld."""
    require_tools("iptables backend tests", TOOLS)


def sh(ns: str, *argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def _delete_netns(name: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _create_netns(name: str) -> None:
    if os.path.exists(f"/run/netns/{name}"):
        _delete_netns(name)  # left over by an earlier run of ours (same pid-based name)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def netns(variant: str) -> Iterator[str]:
    require_tools("iptables backend tests", TOOLS)
    name = f"fwrecon-ipt{variant[0]}{os.getpid()}"
    _create_netns(name)
    try:
        probe = sh(name, "iptables", "-t", "filter", "-S", check=False)
        if probe.returncode != 0:
            skip_or_fail(f"iptables backend tests ({variant} variant): this kernel has no such tables: {probe.stderr.strip()}")
        assert f"({VARIANT_NAMES[variant]})" in sh(name, "iptables", "-V").stdout
        yield name
    finally:
        _delete_netns(name)


@pytest.fixture
def ns(netns: str) -> str:
    """The module's netns with empty filter tables."""
    for family in ("ipv4", "ipv6"):
        sh(netns, CMD[family], "-t", "filter", "-F")
        sh(netns, CMD[family], "-t", "filter", "-X")
    sh(netns, "ebtables", "-t", "filter", "-F")
    sh(netns, "ebtables", "-t", "filter", "-X")
    return netns


@pytest.fixture
def backend(ns: str) -> IptablesBackend:
    return IptablesBackend(ns)


def run(coro):
    return asyncio.run(coro)


def table_lines(ns: str, family: str) -> list[str]:
    """Chains and rules of the filter table as -save prints them (no header comments)."""
    out = sh(ns, SAVE[family], "-t", "filter").stdout
    return [line for line in out.splitlines() if line.startswith((":", "-A"))]


def chain_rules(ns: str, family: str, chain: str) -> list[str]:
    prefix = f"-A {chain} "
    return [line[len(prefix) :] for line in table_lines(ns, family) if line.startswith(prefix) or line == f"-A {chain}"]


def items_for(family: str) -> tuple[DirectChain, DirectRule, DirectRule, DirectRule]:
    chain = DirectChain(family, "filter", "FWR_IN")
    first, second = ARGS[family]
    return (
        chain,
        DirectRule(family, "filter", "FWR_IN", 0, first),
        DirectRule(family, "filter", "FWR_IN", 1, second),
        DirectRule(family, "filter", "INPUT", 0, ("-j", "FWR_IN")),
    )


# -- apply, observe, idempotence, removal ---------------------------------------------


@pytest.mark.families(*FAMILIES)
def test_apply_observe_and_apply_again_changes_nothing(backend: IptablesBackend, ns: str, family: str):
    items = items_for(family)
    run(backend.observe((), items))
    assert run(backend.apply([Op("add", i) for i in items])) == [Outcome.APPLIED] * 4
    lines = table_lines(ns, family)
    assert any(line.startswith("-A INPUT ") and line.endswith(" -j FWR_IN") for line in lines)
    assert len(chain_rules(ns, family, "FWR_IN")) == 2

    view = run(backend.observe({("direct", family, "filter")}))
    assert set(items) <= view.items()

    fresh = IptablesBackend(ns)  # a restarted daemon: only what the engine tells it
    run(fresh.observe((), items))
    assert set(items) <= run(fresh.observe({("direct", family, "filter")})).items()
    assert run(fresh.apply([Op("add", i) for i in items])) == [Outcome.UNCHANGED] * 4
    assert table_lines(ns, family) == lines
    assert not any("FWRECON-PROBE" in line for line in table_lines(ns, family))


@pytest.mark.families(*FAMILIES)
def test_remove_takes_out_exactly_what_was_added(backend: IptablesBackend, ns: str, family: str):
    baseline = table_lines(ns, family)
    chain, rule_a, rule_b, jump = items = items_for(family)
    run(backend.apply([Op("add", i) for i in items]))
    removals = [Op("remove", jump), Op("remove", rule_b), Op("remove", rule_a), Op("remove", chain)]
    assert run(backend.apply(removals)) == [Outcome.APPLIED] * 4
    assert table_lines(ns, family) == baseline
    assert run(backend.apply(removals)) == [Outcome.UNCHANGED] * 4
    assert run(backend.observe({("direct", family, "filter")})).items() == frozenset()


def test_observe_is_one_save_per_table(backend: IptablesBackend, ns: str):
    for family in FAMILIES:
        run(backend.apply([Op("add", i) for i in items_for(family)]))
    tables = {("direct", f, "filter") for f in FAMILIES}
    backend.runs = 0
    run(backend.observe(tables))
    # Per table one save; the first time rules are seen, one probe (restore,
    # save, cleanup) learns their printed text: eb rules are known by text
    # alone, and a tag proves a rule is the item's only with that text.
    assert backend.runs == 3 + 3 * 3
    backend.runs = 0
    view = run(backend.observe(tables))
    assert backend.runs == 3  # one save per table, nothing left to learn
    assert all(set(items_for(f)) <= view.items() for f in FAMILIES)
    backend.runs = 0
    run(backend.apply([Op("add", i) for i in items_for("ipv4")], view))
    assert backend.runs == 0  # everything there, as the plan's view read: no process at all
    run(backend.apply([Op("add", i) for i in items_for("ipv4")]))
    assert backend.runs == 1  # no view to build on: one save, no restore


# -- order ------------------------------------------------------------------------------


@pytest.mark.families("ipv4", "eb")
def test_priorities_order_our_rules_and_foreign_rules_keep_their_place(backend: IptablesBackend, ns: str, family: str):
    def rule(priority: int, n: int) -> DirectRule:
        if family == "eb":
            args = ("-p", "IPv4", "--ip-proto", "udp", "--ip-dport", str(n), "-j", "ACCEPT")
        else:
            args = ("-p", "udp", "--dport", str(n), "-j", "ACCEPT")
        return DirectRule(family, "filter", "FWR_IN", priority, args)

    chain = DirectChain(family, "filter", "FWR_IN")
    run(backend.apply([Op("add", chain), Op("add", rule(10, 10)), Op("add", rule(0, 1))]))
    # someone else's rule lands at the end, after our priority-10 rule
    foreign = ["-p", "IPv4", "-j", "DROP"] if family == "eb" else ["-p", "icmp", "-j", "DROP"]
    sh(ns, CMD[family], "-A", "FWR_IN", *foreign)
    run(backend.apply([Op("add", rule(5, 5)), Op("add", rule(5, 6)), Op("add", rule(-1, 0)), Op("add", rule(20, 20))]))
    ports = []
    for text in chain_rules(ns, family, "FWR_IN"):
        words = text.split()
        port = next((words[i + 1] for i, w in enumerate(words) if w in ("--dport", "--ip-dport")), "foreign")
        ports.append(port)
    assert ports == ["0", "1", "5", "6", "10", "foreign", "20"]


# -- foreign rules ------------------------------------------------------------------------


@pytest.mark.families("ipv4", "eb")
def test_foreign_rules_are_never_ours_and_survive_removals(backend: IptablesBackend, ns: str, family: str):
    chain, rule_a, rule_b, _ = items_for(family)
    run(backend.observe((), [chain, rule_a, rule_b]))
    run(backend.apply([Op("add", chain), Op("add", rule_a)]))
    if family == "eb":
        foreign = [["-p", "IPv6", "-j", "DROP"], ["-p", "IPv4", "--ip-src", "198.18.0.9", "-j", "DROP"]]
    else:
        foreign = [
            ["-p", "icmp", "-j", "ACCEPT"],
            ["-s", "198.18.0.9", "-m", "comment", "--comment", "fwrecon:00000000deadbeef", "-j", "DROP"],
        ]
    sh(ns, CMD[family], "-I", "FWR_IN", "1", *foreign[0])
    sh(ns, CMD[family], "-A", "FWR_IN", *foreign[1])
    run(backend.apply([Op("add", rule_b)]))
    before = chain_rules(ns, family, "FWR_IN")
    assert len(before) == 4

    view = run(backend.observe({("direct", family, "filter")}))
    assert {i for i in view.items() if isinstance(i, DirectRule)} == {rule_a, rule_b}

    outcomes = run(backend.apply([Op("remove", rule_b), Op("remove", rule_a)]))
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]
    after = chain_rules(ns, family, "FWR_IN")
    assert after == [before[0], before[2]]  # exactly the two foreign rules, in their order

    # The chain still holds foreign rules: the planner keeps it, and a forced removal is refused.
    view = run(backend.observe({("direct", family, "filter")}))
    assert view.users_of(chain)
    plans = plan_all({"p": frozenset()}, view, {chain: frozenset({"p"})})
    assert plans[0].ops == ()
    with pytest.raises(OperationFailed) as info:
        run(backend.apply([Op("remove", chain)]))[0]
    assert info.value.code == "CHAIN_IN_USE"
    assert chain_rules(ns, family, "FWR_IN") == after


def test_chain_jumped_to_by_a_foreign_rule_is_not_removed(backend: IptablesBackend, ns: str):
    chain = DirectChain("ipv4", "filter", "FWR_IN")
    run(backend.apply([Op("add", chain)]))[0]
    sh(ns, "iptables", "-A", "INPUT", "-j", "FWR_IN")
    with pytest.raises(OperationFailed) as info:
        run(backend.apply([Op("remove", chain)]))[0]
    assert info.value.code == "CHAIN_IN_USE" and "-A INPUT -j FWR_IN" in str(info.value)
    assert ":FWR_IN - [0:0]" in table_lines(ns, "ipv4")


# -- atomicity ---------------------------------------------------------------------------------


@pytest.mark.families(*FAMILIES)
def test_batch_with_one_bad_rule_changes_nothing(backend: IptablesBackend, ns: str, family: str):
    chain, rule_a, rule_b, jump = items_for(family)
    run(backend.apply([Op("add", DirectChain(family, "filter", "KEEP"))]))[0]
    baseline = table_lines(ns, family)
    bad = DirectRule(family, "filter", "FWR_IN", 5, BAD_ARGS[family])
    # script lines: *filter, -N FWR_IN, -A bad (line 3), -I rule_a, -I rule_b, -A INPUT jump, COMMIT
    ops = [Op("add", chain), Op("add", bad), Op("add", rule_a), Op("add", rule_b), Op("add", jump)]
    with pytest.raises(OperationFailed) as info:
        run(backend.apply(ops))
    assert info.value.code == "RESTORE_FAILED"
    assert info.value.op == Op("add", bad)
    assert CMD[family] + "-restore" in str(info.value)
    assert table_lines(ns, family) == baseline
    assert not any("FWRECON-PROBE" in line for line in table_lines(ns, family))


@pytest.mark.families(*FAMILIES)
def test_jump_to_missing_chain_fails_at_commit_and_names_the_rule(backend: IptablesBackend, ns: str, family: str):
    chain, rule_a, _, _ = items_for(family)
    baseline = table_lines(ns, family)
    dangling = DirectRule(family, "filter", "FWR_IN", 2, ("-j", "NO_SUCH_CHAIN"))
    with pytest.raises(OperationFailed) as info:
        run(backend.apply([Op("add", chain), Op("add", dangling), Op("add", rule_a)]))
    assert info.value.op == Op("add", dangling)
    assert table_lines(ns, family) == baseline


def test_removing_a_rule_someone_deleted_meanwhile_is_unchanged(backend: IptablesBackend, ns: str):
    chain, rule_a, rule_b, _ = items_for("ipv4")
    run(backend.apply([Op("add", chain), Op("add", rule_a), Op("add", rule_b)]))
    sh(ns, "iptables", "-D", "FWR_IN", "1")
    assert run(backend.apply([Op("remove", rule_a), Op("remove", rule_b)])) == [Outcome.UNCHANGED, Outcome.APPLIED]
    assert chain_rules(ns, "ipv4", "FWR_IN") == []


# -- the batch right after observe writes on observe's read ------------------------------------


def test_batch_after_observe_is_one_process(backend: IptablesBackend, ns: str):
    chain, rule_a, rule_b, _ = items_for("ipv4")
    run(backend.observe((), [chain, rule_a, rule_b]))
    view = run(backend.observe({("direct", "ipv4", "filter")}))
    before = backend.runs
    assert run(backend.apply([Op("add", chain), Op("add", rule_a), Op("add", rule_b)], view)) == [Outcome.APPLIED] * 3
    assert backend.runs == before + 1  # the restore; no second save
    assert [r.split(" -m comment")[0] for r in chain_rules(ns, "ipv4", "FWR_IN")] == [
        "-p tcp -m tcp --dport 9000",
        "-s 198.18.0.0/15",
    ]
    view = run(backend.observe({("direct", "ipv4", "filter")}))
    before = backend.runs
    assert run(backend.apply([Op("remove", rule_a)], view)) == [Outcome.APPLIED]  # on the view's read
    stale = view.without_reads({("direct", "ipv4", "filter")})  # what a transaction hands on after that write
    assert run(backend.apply([Op("remove", rule_b)], stale)) == [Outcome.APPLIED]  # reads again
    assert backend.runs == before + 3
    assert chain_rules(ns, "ipv4", "FWR_IN") == []


def test_change_between_observe_and_batch_is_judged_on_a_fresh_read(backend: IptablesBackend, ns: str):
    chain, rule_a, rule_b, _ = items_for("ipv4")
    run(backend.apply([Op("add", chain), Op("add", rule_a), Op("add", rule_b)]))
    view = run(backend.observe({("direct", "ipv4", "filter")}))
    sh(ns, "iptables", "-D", "FWR_IN", "1")  # someone deletes rule_a after we looked
    before = backend.runs
    assert run(backend.apply([Op("remove", rule_a), Op("remove", rule_b)], view)) == [Outcome.UNCHANGED, Outcome.APPLIED]
    assert backend.runs == before + 3  # refused restore, save, restore
    assert chain_rules(ns, "ipv4", "FWR_IN") == []

    view = run(backend.observe({("direct", "ipv4", "filter")}))
    sh(ns, "iptables", "-X", "FWR_IN")  # and the chain, which we saw
    sh(ns, "iptables", "-N", "FWR_IN")  # ... then someone creates it again
    assert run(backend.apply([Op("remove", chain), Op("add", chain)], view)) == [Outcome.APPLIED, Outcome.APPLIED]


def test_rule_placed_by_position_reads_the_table_first(backend: IptablesBackend, ns: str):
    chain, rule_a, rule_b, _ = items_for("ipv4")
    run(backend.apply([Op("add", chain), Op("add", rule_b)]))
    run(backend.observe({("direct", "ipv4", "filter")}))
    sh(ns, "iptables", "-I", "FWR_IN", "1", "-s", "192.0.2.1/32", "-j", "RETURN")  # foreign, after we looked
    assert run(backend.apply([Op("add", rule_a)]))[0] is Outcome.APPLIED  # priority 0: before rule_b
    rules = chain_rules(ns, "ipv4", "FWR_IN")
    assert rules[0] == "-s 192.0.2.1/32 -j RETURN"  # the foreign rule keeps its place
    assert rule_a.tag() in rules[1] and rule_b.tag() in rules[2]


def test_a_read_made_before_learning_an_item_is_not_trusted(backend: IptablesBackend, ns: str):
    chain, rule_a, _, _ = items_for("ipv4")
    view = run(backend.observe({("direct", "ipv4", "filter")}))
    run(backend.observe((), [chain, rule_a]))  # the read could not tell rule_a's copies apart from foreign rules
    before = backend.runs
    run(backend.apply([Op("add", chain), Op("add", rule_a)], view))
    assert backend.runs == before + 2  # save, restore


# -- migration: untagged copies (firewalld's direct interface adds no comments) -----------------


@pytest.mark.families(*FAMILIES)
def test_untagged_copy_is_recognised_and_removed(backend: IptablesBackend, ns: str, family: str):
    chain, rule_a, rule_b, _ = items_for(family)
    sh(ns, CMD[family], "-N", "FWR_IN")
    sh(ns, CMD[family], "-A", "FWR_IN", *rule_a.args)  # as firewalld would have added it
    sh(ns, CMD[family], "-A", "FWR_IN", *rule_b.args)  # foreign: nobody told the backend about it
    if family != "eb":  # and a tagged copy of the same item
        sh(ns, CMD[family], "-A", "FWR_IN", *rule_a.args, "-m", "comment", "--comment", rule_a.tag())
    run(backend.observe((), [chain, rule_a]))
    view = run(backend.observe({("direct", family, "filter")}))
    assert {i for i in view.items() if isinstance(i, DirectRule)} == {rule_a}
    before = table_lines(ns, family)
    assert run(backend.apply([Op("add", rule_a)]))[0] is Outcome.UNCHANGED  # never a duplicate
    assert table_lines(ns, family) == before

    assert run(backend.apply([Op("remove", rule_a)]))[0] is Outcome.APPLIED
    remaining = chain_rules(ns, family, "FWR_IN")
    assert len(remaining) == 1 and rule_a.tag() not in remaining[0]  # only rule_b, foreign, is left
    assert run(backend.observe({("direct", family, "filter")})).items() == {chain}
    assert not any("FWRECON-PROBE" in line for line in table_lines(ns, family))


@pytest.mark.variants("nft")
def test_legacy_tables_beside_ours_are_reported_once_per_family(variant: str, netns: str, monkeypatch):
    """The nf_tables tools see only their own tables; legacy rules (a Docker on
    iptables-legacy, say) still filter every packet, so the operator is told."""
    from reconciler.backends import iptables as module

    recorder = LogRecorder()
    monkeypatch.setattr(module, "log", recorder)
    mixed = f"{netns}-m"
    _create_netns(mixed)
    try:
        backend = IptablesBackend(mixed)
        run(backend.observe({("direct", "ipv4", "filter")}))
        assert [e for _, e, _ in recorder.events if e == "iptables_legacy_tables_present"] == []
        sh(mixed, "iptables-legacy", "-A", "INPUT", "-s", "192.0.2.1", "-j", "DROP")
        sh(mixed, "ip6tables-legacy", "-A", "INPUT", "-s", "2001:db8::1", "-j", "DROP")
        for _ in range(2):
            run(backend.observe({("direct", "ipv4", "filter"), ("direct", "ipv6", "filter")}))
        reported = sorted(
            (fields["family"], level, fields["detail"].rsplit(" ", 1)[-1])
            for level, e, fields in recorder.events
            if e == "iptables_legacy_tables_present"
        )
        assert reported == [("ipv4", "warning", "iptables-legacy-save"), ("ipv6", "warning", "ip6tables-legacy-save")]
    finally:
        _delete_netns(mixed)


def test_unknown_netns_is_unavailable():
    backend = IptablesBackend(f"fwrecon-nonexistent-{os.getpid()}")
    with pytest.raises(BackendUnavailable):
        run(backend.observe({("direct", "ipv4", "filter")}))


# -- traffic --------------------------------------------------------------------------------------

SERVER_ADDR, CLIENT_ADDR = "198.18.0.1", "198.18.0.2"
PORT = 9400


@pytest.fixture
def client(ns: str) -> Iterator[str]:
    """A second netns joined to ``ns`` by a veth pair, and a listener on PORT in ``ns``."""
    name = f"{ns}-c"
    _create_netns(name)
    listener = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "del", "fwrt-s"], capture_output=True)
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "fwrt-s", "type", "veth", "peer", "name", "fwrt-c", "netns", name],
            check=True,
            capture_output=True,
        )
        for where, iface, addr in ((ns, "fwrt-s", SERVER_ADDR), (name, "fwrt-c", CLIENT_ADDR)):
            subprocess.run(["ip", "-n", where, "addr", "add", f"{addr}/30", "dev", iface], check=True, capture_output=True)
            subprocess.run(["ip", "-n", where, "link", "set", iface, "up"], check=True, capture_output=True)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER_SCRIPT, str(PORT), "60"], stdout=subprocess.PIPE, text=True
        )
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        yield name
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        _delete_netns(name)  # takes the veth pair with it


def connect(client: str) -> str:
    return sh(client, sys.executable, "-c", CONNECT_SCRIPT, SERVER_ADDR, str(PORT), "1.0").stdout.strip()


def test_traffic_follows_the_rules_and_their_priorities(backend: IptablesBackend, ns: str, client: str):
    """A foreign REJECT for the port sits in INPUT after a jump to the (foreign) chain GATE.

    fwrecon's rules go into GATE, so they are evaluated before the REJECT
    (a rule appended to INPUT itself would land after it and never match):
    ACCEPT at priority 10 opens the port; a DROP at priority 0, added later,
    is inserted above the ACCEPT and closes it again (timeout, not reject);
    taking the rules out restores the foreign REJECT's verdict.
    """
    sh(ns, "iptables", "-N", "GATE")
    sh(ns, "iptables", "-A", "INPUT", "-j", "GATE")
    sh(ns, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j", "REJECT", "--reject-with", "tcp-reset")
    assert connect(client) == "refused"

    accept = DirectRule("ipv4", "filter", "GATE", 10, ("-p", "tcp", "--dport", str(PORT), "-j", "ACCEPT"))
    drop = DirectRule("ipv4", "filter", "GATE", 0, ("-p", "tcp", "--dport", str(PORT), "-j", "DROP"))
    assert DirectChain("ipv4", "filter", "GATE") in run(backend.observe({("direct", "ipv4", "filter")})).items()
    run(backend.apply([Op("add", accept)]))[0]
    assert connect(client) == "accepted"

    run(backend.apply([Op("add", drop)]))[0]
    assert chain_rules(ns, "ipv4", "GATE")[0].startswith("-p tcp -m tcp --dport 9400 -m comment")
    assert " -j DROP" in chain_rules(ns, "ipv4", "GATE")[0]
    started = time.monotonic()
    assert connect(client) == "timeout"
    assert time.monotonic() - started >= 0.9

    run(backend.apply([Op("remove", drop)]))[0]
    assert connect(client) == "accepted"
    run(backend.apply([Op("remove", accept)]))[0]
    assert connect(client) == "refused"
    assert chain_rules(ns, "ipv4", "INPUT") == ["-j GATE", f"-p tcp -m tcp --dport {PORT} -j REJECT --reject-with tcp-reset"]


# -- the whole engine on this backend --------------------------------------------------------------


def test_reconciler_applies_keeps_a_chain_with_foreign_rules_and_removes_the_rest(backend: IptablesBackend, ns: str, tmp_path):
    """Policy in, policy out, through the real engine (no Router in between)."""
    from reconciler.engine import Reconciler
    from reconciler.policy import LoadResult, Policy
    from reconciler.state import StateStore

    chain, _rule_a, _rule_b, _jump = items = items_for("ipv4")
    store = StateStore(tmp_path / "state.json")

    def reconcile(**wanted: frozenset):
        loaded = LoadResult(policies={n: Policy(n, f"{n}.toml", "", frozenset(i)) for n, i in wanted.items()})
        return run(Reconciler(backend, store).reconcile(loaded))

    report = reconcile(web=frozenset(items))
    assert report.converged and report.write_ops == 4
    assert len(chain_rules(ns, "ipv4", "FWR_IN")) == 2
    backend.runs = 0
    report = reconcile(web=frozenset(items))
    assert report.write_ops == 0 and backend.runs == 1 + 3  # one save; the new rules' text proven once (probe)
    backend.runs = 0
    report = reconcile(web=frozenset(items))
    assert report.write_ops == 0 and backend.runs == 1  # one save of ipv4 filter, nothing else

    sh(ns, "iptables", "-A", "FWR_IN", "-p", "icmp", "-j", "ACCEPT")  # someone else's rule in our chain
    report = reconcile()
    assert report.converged
    assert chain_rules(ns, "ipv4", "FWR_IN") == ["-p icmp -j ACCEPT"]
    assert chain_rules(ns, "ipv4", "INPUT") == []
    assert store.load().owned == {chain: frozenset({"web"})}  # kept, and still ours to remove later

    sh(ns, "iptables", "-F", "FWR_IN")
    report = reconcile()
    assert report.converged and ":FWR_IN - [0:0]" not in table_lines(ns, "ipv4")
    assert store.load().owned == {}
