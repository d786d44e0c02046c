"""The nftables backend against the real kernel, inside scratch network namespaces.

Needs root, ``nft`` and ``ip`` (not firewalld: these hosts run without it).
Every test gets its own netns, so the machine's own ruleset is never touched;
traffic only flows between namespaces created here, in 198.18.0.0/15.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prereq import require_tools, skip_or_fail

from reconciler.backends.base import BackendEvent
from reconciler.backends.nft_text import IN_USE_CODE, rule_statement
from reconciler.backends.nftables import MONITOR_SETTLE, NftablesBackend
from reconciler.backends.process import search_path, which
from reconciler.errors import OperationFailed
from reconciler.model import NftChain, NftElement, NftRule, NftSet, Op, Outcome
from reconciler.transaction import Transaction, TransactionFailed

SBIN_PATH = search_path()
_names = itertools.count()


@pytest.fixture(autouse=True)
def _integration_prerequisites() -> None:
    """Overrides tests/conftest.py's: these tests need nft and ip, not firewalld."""
    require_tools("nftables integration tests", ("nft", "ip"))


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=SBIN_PATH)
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, input=input, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def new_netns() -> str:
    name = f"fwrn-{os.getpid()}-{next(_names)}"
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


@pytest.fixture
def netns() -> Iterator[str]:
    name = new_netns()
    try:
        yield name
    finally:
        sh("ip", "netns", "delete", name, check=False)


def nft(ns: str, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, "nft", *args, check=check, input=input)


def ruleset(ns: str) -> str:
    return nft(ns, "-a", "list", "ruleset").stdout


def run(coro):
    return asyncio.run(coro)


INPUT = NftChain("inet", "input", "filter", "input", 0, "accept")
MINE = NftChain("inet", "mine")
NAT = NftChain("ip", "pre", "nat", "prerouting", -100, "")  # policy left out, as a policy file may
SSH = NftRule("inet", "input", "tcp dport 22 accept")
SET_RULE = NftRule("inet", "mine", "ip saddr { 198.18.0.1, 198.18.0.5 } tcp dport { 80, 443 } counter accept")
JUMP = NftRule("inet", "input", "ip saddr 198.18.0.0/15 jump mine")
DNAT = NftRule("ip", "pre", "tcp dport 8080 dnat to 198.18.0.1:80")
ITEMS = [INPUT, MINE, NAT, SSH, SET_RULE, JUMP, DNAT]


def adds(*items):
    return [Op("add", item) for item in items]


def removes(*items):
    return [Op("remove", item) for item in items]


def ordered_removal(items):
    """Rules before chains, as the planner orders removals."""
    return removes(*sorted(items, key=lambda i: -i.layer))


# -- apply, observe, idempotence, removal -----------------------------------------------


def test_apply_then_observe_finds_exactly_the_items(netns):
    async def go():
        backend = NftablesBackend(netns)
        await backend.observe((), ITEMS)
        outcomes = await backend.apply(adds(*ITEMS))
        assert outcomes == [Outcome.APPLIED] * len(ITEMS)
        view = await backend.observe([("nft", "inet"), ("nft", "ip"), ("nft", "ip6")])
        for item in ITEMS:
            assert view.has(item), item
        assert {i for i in view.items() if isinstance(i, NftRule)} == {SSH, SET_RULE, JUMP, DNAT}
        assert backend.writes == 1  # one nft -f for all of it
        return backend

    run(go())
    text = ruleset(netns)
    assert rule_statement(SSH).split(" accept ")[1] in text  # comment "fwrecon:..."
    assert "type nat hook prerouting priority dstnat; policy accept;" in text


def test_a_fresh_backend_sees_rules_only_for_tags_it_was_told(netns):
    run(NftablesBackend(netns).apply(adds(*ITEMS)))

    async def go():
        backend = NftablesBackend(netns)
        blind = await backend.observe([("nft", "inet")])
        await backend.observe((), [SSH])
        told = await backend.observe([("nft", "inet")])
        return blind, told

    blind, told = run(go())
    assert not any(isinstance(i, NftRule) for i in blind.items()) and blind.has(INPUT)
    assert {i for i in told.items() if isinstance(i, NftRule)} == {SSH}


def test_second_identical_batch_changes_nothing(netns):
    backend = NftablesBackend(netns)
    run(backend.apply(adds(*ITEMS)))
    before = ruleset(netns)
    writes = backend.writes
    assert run(backend.apply(adds(*ITEMS))) == [Outcome.UNCHANGED] * len(ITEMS)
    assert backend.writes == writes  # no nft -f at all
    assert ruleset(netns) == before
    assert run(backend.apply([Op("add", SSH)]))[0] is Outcome.UNCHANGED


def test_removal_takes_everything_and_then_is_unchanged(netns):
    backend = NftablesBackend(netns)
    run(backend.apply(adds(*ITEMS)))
    outcomes = run(backend.apply(ordered_removal(ITEMS)))
    assert outcomes == [Outcome.APPLIED] * len(ITEMS)
    assert "fwrecon" not in nft(netns, "list", "tables").stdout  # empty tables go too
    assert run(backend.apply(ordered_removal(ITEMS))) == [Outcome.UNCHANGED] * len(ITEMS)
    view = run(backend.observe([("nft", "inet"), ("nft", "ip")]))
    assert view.items() == frozenset()


def test_single_rule_removal_keeps_the_rest(netns):
    backend = NftablesBackend(netns)
    run(backend.apply(adds(*ITEMS)))
    assert run(backend.apply([Op("remove", SSH)]))[0] is Outcome.APPLIED
    view = run(backend.observe([("nft", "inet"), ("nft", "ip")]))
    assert not view.has(SSH)
    assert all(view.has(item) for item in ITEMS if item != SSH)


def test_batch_after_observe_is_one_nft_process(netns):
    backend = NftablesBackend(netns)
    run(backend.observe((), ITEMS))
    view = run(backend.observe([("nft", "inet"), ("nft", "ip")]))
    calls = backend.calls
    assert run(backend.apply(adds(*ITEMS), view)) == [Outcome.APPLIED] * len(ITEMS)
    assert backend.calls == calls + 1  # nft -f, on the view's listings
    view = run(backend.observe([("nft", "inet"), ("nft", "ip")]))
    # Two listings; each family's tagged rules, new to this process, are proven
    # once with a probe (add to a scratch chain, list it, drop it).
    assert backend.calls == calls + 1 + 2 + 2 * 3
    assert run(backend.apply([Op("remove", SSH)], view)) == [Outcome.APPLIED]
    assert run(backend.apply([Op("remove", JUMP)]))[0] is Outcome.APPLIED  # no view handed on: lists again
    assert backend.calls == calls + 1 + 2 + 2 * 3 + 1 + 2
    assert "tcp dport 22" not in ruleset(netns) and "jump mine" not in ruleset(netns)


def test_rule_deleted_by_hand_after_observe_is_judged_on_a_fresh_listing(netns):
    backend = NftablesBackend(netns)
    run(backend.apply(adds(*ITEMS)))
    view = run(backend.observe([("nft", "inet")]))
    handle = next(
        line.split("# handle ")[1]
        for line in nft(netns, "-a", "list", "chain", "inet", "fwrecon", "input").stdout.splitlines()
        if "dport 22" in line
    )
    nft(netns, "delete", "rule", "inet", "fwrecon", "input", "handle", handle)  # someone, after we looked
    calls = backend.calls
    assert run(backend.apply(removes(SSH, JUMP), view)) == [Outcome.UNCHANGED, Outcome.APPLIED]
    assert backend.calls == calls + 3  # refused nft -f (stale handle), fresh listing, nft -f
    assert "jump mine" not in ruleset(netns) and "tcp dport 22" not in ruleset(netns)


def test_policy_change_in_place_and_redefinition_keep_our_rules(netns):
    backend = NftablesBackend(netns)
    run(backend.apply(adds(INPUT, SSH)))
    drop = NftChain("inet", "input", "filter", "input", 0, "drop")
    assert run(backend.apply(removes(INPUT) + adds(drop))) == [Outcome.APPLIED] * 2
    assert "policy drop;" in ruleset(netns)
    later = NftChain("inet", "input", "filter", "input", 10, "drop")
    assert run(backend.apply(removes(drop) + adds(later))) == [Outcome.APPLIED] * 2
    view = run(backend.observe([("nft", "inet")]))
    assert view.has(later) and view.has(SSH) and not view.has(drop)
    assert ruleset(netns).count("fwrecon:") == 1


# -- never touching anyone else's -------------------------------------------------------


FOREIGN = """add table inet other
add chain inet other input { type filter hook input priority 10; policy accept; }
add rule inet other input tcp dport 22 accept
add rule inet other input tcp dport 22 accept comment "fwrecon:0000000000000000"
add table inet fwrecon
add chain inet fwrecon input { type filter hook input priority 0; policy accept; }
add chain inet fwrecon theirs
add rule inet fwrecon input udp dport 53 accept
add rule inet fwrecon theirs counter
"""


def test_foreign_tables_and_untagged_rules_are_never_touched(netns):
    nft(netns, "-f", "-", input=FOREIGN)
    other_before = nft(netns, "list", "table", "inet", "other").stdout
    backend = NftablesBackend(netns)
    run(backend.observe((), ITEMS))
    assert run(backend.apply(adds(*ITEMS)))[0] is Outcome.UNCHANGED  # INPUT was there
    view = run(backend.observe([("nft", "inet")]))
    assert {i for i in view.items() if isinstance(i, NftRule)} == {SSH, SET_RULE, JUMP}
    assert NftChain("inet", "theirs") in view.items()
    rules = [r for r in ITEMS if isinstance(r, NftRule)]
    run(backend.apply(removes(*rules) + removes(MINE, NAT)))
    with pytest.raises(OperationFailed) as info:  # their udp rule is in our input chain
        run(backend.apply(removes(INPUT)))
    assert info.value.code == IN_USE_CODE and info.value.op == Op("remove", INPUT)
    assert nft(netns, "list", "table", "inet", "other").stdout == other_before
    mine = nft(netns, "list", "table", "inet", "fwrecon").stdout
    assert "udp dport 53 accept" in mine and "chain theirs" in mine and "fwrecon:" not in mine


# -- atomicity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (NftRule("inet", "input", "tcp dport 22 jump nowhere"), "No such file or directory"),  # the kernel refuses
        (NftRule("inet", "input", "tcp dport 99999 accept"), "Service out of range"),  # nft refuses
        (NftRule("inet", "nochain", "accept"), "No such file or directory"),
    ],
)
def test_one_bad_rule_leaves_nothing(netns, bad, error):
    backend = NftablesBackend(netns)
    run(backend.apply(adds(INPUT, SSH)))
    before = ruleset(netns)
    batch = adds(MINE, NAT, SET_RULE, bad, DNAT) + removes(SSH)
    with pytest.raises(OperationFailed) as info:
        run(backend.apply(batch))
    assert info.value.op == Op("add", bad)
    assert error in str(info.value) and info.value.code == "NFT_ERROR"
    assert ruleset(netns) == before


def test_transaction_reports_the_culprit(netns):
    backend = NftablesBackend(netns)
    bad = NftRule("inet", "input", "tcp dport 99999 accept")
    txn = Transaction("web")
    for op in adds(INPUT, SSH, bad):
        txn.add(op)
    with pytest.raises(TransactionFailed) as info:
        run(txn.apply(backend))
    assert info.value.failed_op == Op("add", bad) and info.value.undone == []
    assert "fwrecon" not in nft(netns, "list", "tables").stdout


def test_check_validates_without_committing(netns):
    backend = NftablesBackend(netns)
    run(backend.apply(adds(INPUT)))
    before = ruleset(netns)
    bad_port = NftRule("inet", "input", "tcp dport 99999 accept")
    nowhere = NftRule("inet", "input", "jump nowhere")
    garbage = NftRule("inet", "elsewhere", "foo bar")
    commented = NftRule("inet", "input", 'accept comment "x"')
    incomplete = NftRule("inet", "input", "tcp dport 22 acept")  # nft then trips over fwrecon's tag
    errors = run(backend.check([*ITEMS, bad_port, nowhere, garbage, commented, incomplete]))
    assert set(errors) == {bad_port, nowhere, garbage, commented, incomplete}
    assert errors[incomplete] == "syntax error: the rule text is incomplete (nft wanted more at its end)"
    assert errors[bad_port] == "Service out of range"
    assert "No such file or directory" in errors[nowhere]
    assert "own comment" in errors[commented]
    assert run(backend.check(ITEMS)) == {}
    assert ruleset(netns) == before


@pytest.fixture
def unprivileged_policies() -> Iterator[Path]:
    """A policy directory an unprivileged user can read (not below pytest's 0700 tmp)."""
    require_tools("fwrecon check as an unprivileged user", ("setpriv", "unshare"))
    as_nobody = [*AS_NOBODY, sys.executable, "-c", "pass"]
    if subprocess.run(as_nobody, capture_output=True).returncode != 0:
        skip_or_fail(f"fwrecon check as an unprivileged user: nobody cannot run {sys.executable}")
    directory = Path(tempfile.mkdtemp(prefix="fwrecon-check-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


AS_NOBODY = (which("setpriv") or "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
NFT_SECTIONS = """
[[nft.chain]]
family = "inet"
chain = "input"
hook = "input"
priority = 0
policy = "accept"

[[nft.rule]]
family = "inet"
chain = "input"
rule = "tcp dport 22 ct state new limit rate over 10/minute drop"
"""


def check_as_nobody(policies: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=path) if path else None
    argv = [
        *AS_NOBODY,
        sys.executable,
        "-m",
        "reconciler",
        "check",
        "--backend",
        "nftables",
        "--policy-dir",
        str(policies),
        "--state-file",
        str(policies / "state.json"),
        "--log-format",
        "json",
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def test_check_as_an_unprivileged_user_asks_nft_in_a_namespace_of_its_own(unprivileged_policies: Path) -> None:
    """`fwrecon check` in a CI job runs as a plain user: nft -c then needs a
    user and network namespace of its own, and a valid rule must not be
    reported as rejected for want of CAP_NET_ADMIN."""
    good = unprivileged_policies / "good.toml"
    good.write_text(NFT_SECTIONS)
    good.chmod(0o644)
    result = check_as_nobody(unprivileged_policies)
    assert result.returncode == 0 and "1 policies valid" in result.stdout, result.stdout + result.stderr

    (unprivileged_policies / "bad.toml").write_text(NFT_SECTIONS.replace("minute drop", "minute drp"))
    (unprivileged_policies / "bad.toml").chmod(0o644)
    result = check_as_nobody(unprivileged_policies)
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert line.startswith("bad.toml: nft.rule[0]: nft rejects 'tcp dport 22 ct state new limit rate over 10/minute drp': "), line
    assert "not permitted" not in line

    # Without a way into a namespace (no unshare on the search path) it says so, and blames no rule.
    result = check_as_nobody(unprivileged_policies, path="/nonexistent")
    assert "note: nft rules not checked by nft (nft -c was not permitted" in result.stderr, result.stderr
    assert result.returncode == 0 and "2 policies valid" in result.stdout, result.stdout


# -- monitor ----------------------------------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[float, BackendEvent]] = []
        self.event = asyncio.Event()

    def __call__(self, event: BackendEvent) -> None:
        self.seen.append((time.monotonic(), event))
        self.event.set()

    def clear(self) -> None:
        """Forget events so far; call right before the action under test."""
        self.event.clear()
        self.start = time.monotonic()

    async def wait(self, timeout: float) -> float | None:
        """Seconds from `clear` to the first event after it, or None if none came."""
        start = getattr(self, "start", time.monotonic())
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return None
        return self.seen[-1][0] - start


async def by_hand(ns: str, *args: str) -> None:
    await asyncio.to_thread(nft, ns, *args)


async def subscribed(backend: NftablesBackend, events: Events) -> None:
    await backend.subscribe(events)
    for _ in range(100):  # until nft monitor is up
        if backend._monitor_proc is not None:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)


def test_monitor_reports_deletions_by_hand_but_not_our_own(netns):
    async def go():
        backend = NftablesBackend(netns)
        events = Events()
        await subscribed(backend, events)
        try:
            events.clear()
            await backend.apply(adds(*ITEMS))
            await backend.apply(removes(SSH))
            assert await events.wait(1.5) is None, "our own batches must not echo"

            handle = next(line for line in ruleset(netns).splitlines() if "jump mine" in line).split("# handle ")[1]
            events.clear()
            await by_hand(netns, "delete", "rule", "inet", "fwrecon", "input", "handle", handle.strip())
            assert (await events.wait(2)) is not None and events.seen[-1][1] is BackendEvent.CHANGED

            events.clear()
            await by_hand(netns, "flush", "table", "inet", "fwrecon")
            latency = await events.wait(2)
            assert latency is not None and latency < 1.0

            events.clear()
            await by_hand(netns, "flush", "ruleset")
            assert (await events.wait(2)) is not None

            events.clear()
            await by_hand(netns, "add", "table", "inet", "other")  # not ours: no event
            await by_hand(netns, "delete", "table", "inet", "other")
            assert await events.wait(1.0) is None
        finally:
            await backend.close()
        assert backend._monitor_proc is None

    run(go())


def test_monitor_reports_a_policy_changed_by_hand(netns):
    async def go():
        backend = NftablesBackend(netns)
        events = Events()
        await subscribed(backend, events)
        try:
            await backend.apply(adds(INPUT))
            events.clear()
            await by_hand(netns, "add", "chain", "inet", "fwrecon", "input", "{ policy drop; }")
            assert await events.wait(2) is not None
        finally:
            await backend.close()

    run(go())


def test_monitor_is_restarted_when_it_dies(netns):
    async def go():
        backend = NftablesBackend(netns)
        events = Events()
        await subscribed(backend, events)
        try:
            await backend.apply(adds(INPUT, SSH))
            first = backend._monitor_proc
            assert first is not None
            await asyncio.sleep(1.2)  # a monitor that worked for a while (not one that fails at once)
            events.clear()
            first.kill()  # the monitor this backend started
            assert await events.wait(5) is not None  # restarted: events may have been missed
            assert backend._monitor_proc is not None and backend._monitor_proc is not first
            assert first.returncode is not None  # reaped
            await asyncio.sleep(0.3)
            events.clear()
            await by_hand(netns, "delete", "table", "inet", "fwrecon")
            assert await events.wait(2) is not None
        finally:
            await backend.close()

    run(go())


async def epoch_moves(backend: NftablesBackend, before: int, within: float) -> bool:
    """Whether the monitor makes the backend distrust its listings within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if backend._epoch != before:
            return True
        await asyncio.sleep(0.05)
    return False


def test_a_watched_table_is_listed_again_only_when_someone_else_touches_it(netns):
    """With the monitor watching, observe builds on the last listing and the
    batches since; another process's change to fwrecon's table, and only that
    (or `read_afresh`), makes it list again, and it then sees that change."""
    watched = NftSet("inet", "watched", "ipv4_addr")
    ours, theirs = NftElement("inet", "watched", "192.0.2.1"), NftElement("inet", "watched", "192.0.2.9")
    containers = [("nft", "inet")]

    async def go():
        backend = NftablesBackend(netns)
        await subscribed(backend, Events())
        await asyncio.sleep(MONITOR_SETTLE)
        try:
            view = await backend.observe(containers, [watched, ours])
            await backend.apply(adds(watched, ours), view)
            calls = backend.calls
            assert (await backend.observe(containers)).has(ours)
            epoch = backend._epoch
            await by_hand(netns, "add", "table", "inet", "other")  # another table: the listing stays true
            assert not await epoch_moves(backend, epoch, 1.0)
            assert (await backend.observe(containers)).has(ours) and backend.calls == calls

            await by_hand(netns, "add", "element", "inet", "fwrecon", "watched", "{ 192.0.2.9 }")
            assert await epoch_moves(backend, epoch, 2.0)
            view = await backend.observe(containers)
            assert view.has(theirs) and view.has(ours) and backend.calls == calls + 1

            backend.read_afresh()
            await backend.observe(containers)
            assert backend.calls == calls + 2
        finally:
            await backend.close()

    run(go())


# -- traffic ----------------------------------------------------------------------------

LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.0.1", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"ok")
    c.close()
"""
CLIENT = """
import socket, sys
try:
    c = socket.create_connection(("198.18.0.1", int(sys.argv[1])), timeout=float(sys.argv[2]))
    sys.exit(0 if c.recv(2) == b"ok" else 2)
except OSError as exc:
    print(exc)
    sys.exit(1)
"""
PORT = 8443


@pytest.fixture
def link() -> Iterator[tuple[str, str]]:
    """A server and a client netns joined by a veth pair (198.18.0.1/30 and .2/30)."""
    server, client = new_netns(), new_netns()
    try:
        sh("ip", "-n", server, "link", "add", "fw0", "type", "veth", "peer", "name", "fw1", "netns", client)
        sh("ip", "-n", server, "addr", "add", "198.18.0.1/30", "dev", "fw0")
        sh("ip", "-n", client, "addr", "add", "198.18.0.2/30", "dev", "fw1")
        sh("ip", "-n", server, "link", "set", "fw0", "up")
        sh("ip", "-n", client, "link", "set", "fw1", "up")
        yield server, client
    finally:
        sh("ip", "netns", "delete", server, check=False)
        sh("ip", "netns", "delete", client, check=False)


def connects(client: str, timeout: float = 1.5) -> bool:
    proc = sh("ip", "netns", "exec", client, sys.executable, "-c", CLIENT, str(PORT), str(timeout), check=False)
    return proc.returncode == 0


def test_traffic_follows_the_rules(link):
    server, client = link
    listener = subprocess.Popen(
        ["ip", "netns", "exec", server, sys.executable, "-c", LISTENER, str(PORT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PATH=SBIN_PATH),
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        assert connects(client), "no firewall yet: the connection must work"
        backend = NftablesBackend(server)
        closed = NftChain("inet", "input", "filter", "input", 0, "drop")
        established = NftRule("inet", "input", "ct state established,related accept")
        run(backend.apply(adds(closed, established)))
        assert not connects(client), "policy drop: the connection must time out"
        allow = NftRule("inet", "input", f"tcp dport {PORT} accept")
        assert run(backend.apply([Op("add", allow)]))[0] is Outcome.APPLIED
        assert connects(client)
        run(backend.apply([Op("remove", allow)]))[0]
        assert not connects(client)
    finally:
        listener.terminate()
        listener.wait(timeout=10)
