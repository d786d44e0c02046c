"""[ipset.NAME] against a real firewalld: created in the permanent
configuration and loaded with one reload, entries owned one by one and
diffed, foreign ipsets and entries untouched, used by a zone source."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from conftest import Daemon, Fwrecon, wait_until
from fwsandbox import PEER_ADDR, SANDBOX_ADDR, Sandbox
from test_backends import crash_after_writes

from reconciler.backends.base import BackendEvent
from reconciler.backends.firewalld import FirewalldBackend
from reconciler.engine import Reconciler
from reconciler.errors import OperationFailed
from reconciler.model import Ipset, IpsetEntry, Op, Outcome
from reconciler.policydir import load_policy_dir
from reconciler.state import StateStore
from reconciler.view import FirewallView

T = TypeVar("T")

BLOCKLIST = """
[ipset.blocklist]
type = "hash:net"
entries = [{entries}]

[zone.drop]
sources = ["ipset:blocklist"]
"""


def blocklist(*entries: str) -> str:
    return BLOCKLIST.format(entries=", ".join(json.dumps(e) for e in entries))


def networks(n: int) -> list[str]:
    """``n`` distinct /24 networks, none inside another."""
    return [f"10.{i // 256}.{i % 256}.0/24" for i in range(n)]


def runtime_entries(sb: Sandbox, name: str) -> set[str]:
    return set(sb.firewall_cmd(f"--ipset={name}", "--get-entries", check=True).stdout.split())


def permanent_entries(sb: Sandbox, name: str) -> set[str]:
    return set(sb.firewall_cmd("--permanent", f"--ipset={name}", "--get-entries", check=True).stdout.split())


def ipsets(sb: Sandbox, *, permanent: bool) -> set[str]:
    layer = ["--permanent"] if permanent else []
    return set(sb.firewall_cmd(*layer, "--get-ipsets", check=True).stdout.split())


def on_backend(sb: Sandbox, use: Callable[[FirewalldBackend], Awaitable[T]]) -> T:
    """``use`` on a connection to the sandbox's firewalld of its own."""

    async def run() -> T:
        backend = await FirewalldBackend.connect(sb.bus_address)
        try:
            return await use(backend)
        finally:
            await backend.close()

    return asyncio.run(run())


def applied(fwrecon: Fwrecon, *extra: str) -> str:
    result = fwrecon.run("apply", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stderr


def test_create_grow_shrink_delete(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("block", blocklist("192.0.2.0/24", "198.51.100.7"))
    log = applied(fwrecon)
    assert "firewall_reloaded" in log
    assert ipsets(sb, permanent=True) == {"blocklist"} and ipsets(sb, permanent=False) == {"blocklist"}
    assert runtime_entries(sb, "blocklist") == {"192.0.2.0/24", "198.51.100.7/32"}
    assert permanent_entries(sb, "blocklist") == set()  # (runtime mode)
    assert "ipset:blocklist" in sb.firewall_cmd("--zone=drop", "--list-sources").stdout
    assert fwrecon.run("plan").returncode == 0

    fwrecon.write_policy("block", blocklist("192.0.2.0/24", "203.0.113.0/25"))
    log = applied(fwrecon)
    assert "firewall_reloaded" not in log
    assert runtime_entries(sb, "blocklist") == {"192.0.2.0/24", "203.0.113.0/25"}

    fwrecon.remove_policy("block")
    applied(fwrecon)
    assert ipsets(sb, permanent=True) == set()
    assert "ipset:blocklist" not in sb.firewall_cmd("--zone=drop", "--list-sources").stdout
    assert fwrecon.owned() == []


def test_two_policies_share_an_ipset_and_foreign_ipsets_and_entries_stay(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    sb.firewall_cmd("--permanent", "--new-ipset=theirs", "--type=hash:ip", check=True)
    sb.firewall_cmd("--permanent", "--ipset=theirs", "--add-entry=192.0.2.9", check=True)
    sb.firewall_cmd("--reload", check=True)
    fwrecon.write_policy("a", blocklist("192.0.2.0/24", "198.51.100.0/24"))
    fwrecon.write_policy("b", blocklist("192.0.2.0/24", "203.0.113.0/24"))
    applied(fwrecon)
    assert runtime_entries(sb, "blocklist") == {"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"}
    sb.firewall_cmd("--ipset=blocklist", "--add-entry=10.9.0.0/16", check=True)  # someone else's entry

    fwrecon.remove_policy("a")
    applied(fwrecon)
    assert runtime_entries(sb, "blocklist") == {"192.0.2.0/24", "203.0.113.0/24", "10.9.0.0/16"}  # the shared one stays
    fwrecon.remove_policy("b")
    applied(fwrecon)
    assert runtime_entries(sb, "blocklist") == {"10.9.0.0/16"}  # only theirs
    assert "blocklist" in ipsets(sb, permanent=True)  # kept: it holds an entry fwrecon does not own
    assert runtime_entries(sb, "theirs") == {"192.0.2.9"} and ipsets(sb, permanent=True) >= {"theirs"}
    assert all(entry["item"]["kind"] != "ipset_entry" for entry in fwrecon.owned())


def test_an_existing_ipset_is_used_but_never_owned(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    sb.firewall_cmd("--permanent", "--new-ipset=blocklist", "--type=hash:net", check=True)
    sb.firewall_cmd("--reload", check=True)
    fwrecon.write_policy("block", blocklist("192.0.2.0/24"))
    assert "firewall_reloaded" not in applied(fwrecon)  # there already: no reload
    assert runtime_entries(sb, "blocklist") == {"192.0.2.0/24"}
    fwrecon.remove_policy("block")
    applied(fwrecon)
    assert "blocklist" in ipsets(sb, permanent=True) and runtime_entries(sb, "blocklist") == set()


def test_an_ipset_of_another_type_is_a_clear_failure_that_changes_nothing(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    sb.firewall_cmd("--permanent", "--new-ipset=blocklist", "--type=hash:ip", check=True)  # not loaded yet
    fwrecon.write_policy("block", blocklist("192.0.2.0/24"))
    result = fwrecon.run("apply")
    assert result.returncode != 0
    assert "NAME_CONFLICT" in result.stderr and "hash:ip" in result.stderr, result.stderr
    assert "ipset:blocklist" not in sb.firewall_cmd("--permanent", "--zone=drop", "--list-sources").stdout
    assert fwrecon.owned() == []


def test_a_bad_entry_names_file_key_and_index_and_applies_nothing(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("block", blocklist("192.0.2.0/24", "2001:db8::/32", "198.51.100.0/24"))
    result = fwrecon.run("apply")
    assert result.returncode != 0
    assert "block.toml" in result.stderr and "ipset.blocklist.entries[1]" in result.stderr, result.stderr
    assert "IPv6 network in a family inet ipset" in result.stderr
    assert ipsets(sb, permanent=True) == set()


def test_hand_removal_and_a_reload_are_repaired_with_one_bulk_write(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    entries = networks(500)
    fwrecon.write_policy("block", blocklist(*entries))
    applied(fwrecon)
    sb.firewall_cmd("--ipset=blocklist", "--remove-entry=10.0.7.0/24", check=True)
    plan = fwrecon.run("plan")
    assert "+ ipset blocklist entry 10.0.7.0/24  [block]" in plan.stdout, plan.stdout
    applied(fwrecon)
    assert runtime_entries(sb, "blocklist") == set(entries)

    sb.firewall_cmd("--reload", check=True)  # the ipset comes back empty (runtime mode)
    assert runtime_entries(sb, "blocklist") == set()
    assert "+ ipset blocklist: 500 entries added  [block]" in fwrecon.run("plan").stdout.splitlines()
    log = applied(fwrecon)
    assert runtime_entries(sb, "blocklist") == set(entries)
    done = [json.loads(line) for line in log.splitlines() if '"reconcile_done"' in line][-1]
    assert done["ops"] == 500 + 1  # the entries (in one setEntries call) and the zone source


def test_permanent_mode_keeps_entries_across_a_reload(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("block", blocklist("192.0.2.0/24", "198.51.100.7"))
    applied(fwrecon, "--persist", "permanent")
    assert permanent_entries(sb, "blocklist") == {"192.0.2.0/24", "198.51.100.7/32"}
    sb.firewall_cmd("--reload", check=True)
    assert runtime_entries(sb, "blocklist") == {"192.0.2.0/24", "198.51.100.7/32"}
    assert fwrecon.run("plan", "--persist", "permanent").returncode == 0  # nothing to re-add
    fwrecon.remove_policy("block")
    applied(fwrecon, "--persist", "permanent")
    assert ipsets(sb, permanent=True) == set()


def test_a_zone_source_ipset_filters_traffic(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    open_port = '\n[zone.public]\nports = ["8080/tcp"]\n'
    fwrecon.write_policy("block", blocklist("192.0.2.0/24") + open_port)
    applied(fwrecon)
    assert sb.tcp_probe(8080) == "accepted"
    fwrecon.write_policy("block", blocklist("192.0.2.0/24", f"{PEER_ADDR}/32") + open_port)
    applied(fwrecon)
    assert sb.tcp_probe(8080) == "timeout"  # the peer's address is in the blocklist: zone drop


def test_kill_9_after_the_ipset_is_made_and_before_the_reload_converges(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("block", blocklist("192.0.2.0/24"))
    crash_after_writes(fwrecon, 1, policy="block")  # addIPSet landed; no reload, no state write after it
    assert ipsets(sb, permanent=True) == {"blocklist"} and ipsets(sb, permanent=False) == set()
    applied(fwrecon)
    assert runtime_entries(sb, "blocklist") == {"192.0.2.0/24"}
    assert any(entry["item"]["kind"] == "ipset" for entry in fwrecon.owned())  # the intent made it ours
    fwrecon.remove_policy("block")
    applied(fwrecon)
    assert ipsets(sb, permanent=True) == set()


def test_kill_9_after_the_ipset_was_emptied_and_before_it_went_converges(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("block", blocklist("192.0.2.0/24"))
    applied(fwrecon)
    fwrecon.remove_policy("block")
    crash_after_writes(fwrecon, 2, policy=None)  # its entry (one setEntries with none) and zone source went
    assert runtime_entries(sb, "blocklist") == set() and "blocklist" in ipsets(sb, permanent=True)
    assert "ipset:blocklist" not in sb.firewall_cmd("--zone=drop", "--list-sources").stdout
    applied(fwrecon)
    assert "blocklist" not in ipsets(sb, permanent=True) and fwrecon.owned() == []


def test_the_daemon_repairs_an_entry_removed_by_hand(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    sb = fwrecon.sandbox
    fwrecon.backend = "firewalld"
    fwrecon.write_policy("block", blocklist("192.0.2.0/24", "198.51.100.0/24"))
    daemon = daemon_factory()
    wait_until(lambda: runtime_entries(sb, "blocklist") == {"192.0.2.0/24", "198.51.100.0/24"}, 10, "the entries")
    daemon.settled()
    sb.firewall_cmd("--ipset=blocklist", "--remove-entry=198.51.100.0/24", check=True)
    wait_until(lambda: "198.51.100.0/24" in runtime_entries(sb, "blocklist"), 5, "the entry back (EntryRemoved)")
    assert daemon.value("fwrecon_ipset_entries", ipset="blocklist") == 2
    # Its own reload to load the new ipset is not counted as somebody else's.
    assert daemon.value("fwrecon_own_reloads") == 1 and daemon.value("fwrecon_firewalld_reloads") == 0
    sb.firewall_cmd("--reload", check=True)
    wait_until(lambda: daemon.value("fwrecon_firewalld_reloads") == 1, 5, "the reload counted")
    wait_until(lambda: runtime_entries(sb, "blocklist") == {"192.0.2.0/24", "198.51.100.0/24"}, 10, "the entries back")
    assert daemon.value("fwrecon_own_reloads") == 1


def test_changing_an_ipsets_type_is_refused_and_the_last_good_version_stays(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("block", blocklist("192.0.2.0/24"))
    applied(fwrecon)
    fwrecon.write_policy("block", blocklist("192.0.2.1").replace("hash:net", "hash:ip"))
    result = fwrecon.run("apply")
    assert result.returncode != 0
    assert "ipset.blocklist" in result.stderr and "cannot change in place" in result.stderr, result.stderr
    assert runtime_entries(sb, "blocklist") == {"192.0.2.0/24"}
    assert "--type=hash:net" in sb.firewall_cmd("--permanent", "--info-ipset=blocklist").stdout.replace("type: ", "--type=")


def test_an_owned_ipset_someone_else_uses_stays_until_they_stop(fwrecon: Fwrecon) -> None:
    # firewalld removes an ipset whatever uses it, and then fails to load
    # those zones at its next reload: fwrecon keeps it (and owns it) meanwhile.
    sb = fwrecon.sandbox
    fwrecon.write_policy("block", blocklist("192.0.2.0/24"))
    applied(fwrecon)
    rule = 'rule family="ipv4" source ipset="blocklist" drop'
    sb.firewall_cmd("--zone=public", f"--add-rich-rule={rule}", check=True)  # runtime, someone else's
    sb.firewall_cmd("--permanent", "--zone=work", "--add-source=ipset:blocklist", check=True)  # (runtime: drop's)

    fwrecon.remove_policy("block")
    applied(fwrecon)
    assert "blocklist" in ipsets(sb, permanent=True) and "blocklist" in ipsets(sb, permanent=False)
    assert runtime_entries(sb, "blocklist") == set()  # its entries and its zone source went: they were ours
    assert "ipset:blocklist" not in sb.firewall_cmd("--zone=drop", "--list-sources").stdout
    assert [entry["item"]["kind"] for entry in fwrecon.owned()] == ["ipset"]

    sb.firewall_cmd("--zone=public", f"--remove-rich-rule={rule}", check=True)
    applied(fwrecon)
    assert "blocklist" in ipsets(sb, permanent=True)  # the permanent zone source still uses it
    sb.firewall_cmd("--permanent", "--zone=work", "--remove-source=ipset:blocklist", check=True)
    applied(fwrecon)
    assert "blocklist" not in ipsets(sb, permanent=True)
    assert fwrecon.owned() == []
    sb.firewall_cmd("--reload", check=True)  # every zone still loads


def test_removing_an_ipset_a_zone_uses_since_the_plan_is_refused(fwrecon: Fwrecon) -> None:
    # The backend looks again right before the removal: a user that came after the plan's read.
    sb = fwrecon.sandbox
    fwrecon.write_policy("block", blocklist())
    applied(fwrecon)
    sb.firewall_cmd("--permanent", "--zone=work", "--add-source=ipset:blocklist", check=True)

    async def remove(backend: FirewalldBackend) -> OperationFailed:
        with pytest.raises(OperationFailed) as failure:
            await backend.apply([Op("remove", Ipset("blocklist", "hash:net", "inet"))])
        return failure.value

    failure = on_backend(sb, remove)
    assert failure.code == "IN_USE" and "zone work source ipset:blocklist" in str(failure), failure
    assert "blocklist" in ipsets(sb, permanent=True)


def test_the_reload_for_a_new_ipset_does_not_make_someone_elses_runtime_item_ours(fwrecon: Fwrecon) -> None:
    # Another tool's runtime-only item (libvirt's, say) that a policy also
    # wants is gone for a moment after the reload a new ipset needs: fwrecon
    # puts it back, but it stays theirs, so removing the policy leaves it.
    sb = fwrecon.sandbox
    sb.firewall_cmd("--zone=public", "--add-service=http", check=True)  # runtime only, someone else's
    fwrecon.write_policy("block", blocklist("192.0.2.0/24") + '\n[zone.public]\nservices = ["http"]\n')
    assert "firewall_reloaded" in applied(fwrecon)
    assert "http" in sb.firewall_cmd("--zone=public", "--list-services").stdout.split()
    assert all(entry["item"]["kind"] != "service" for entry in fwrecon.owned())

    fwrecon.remove_policy("block")
    applied(fwrecon)
    assert "http" in sb.firewall_cmd("--zone=public", "--list-services").stdout.split()
    assert "blocklist" not in ipsets(sb, permanent=True)


def composite(port: int) -> str:
    return (
        '[ipset.pp]\ntype = "hash:ip,port"\n'
        f'entries = ["{SANDBOX_ADDR},{port}", "192.0.2.1,UDP:53", "198.51.100.7,sctp:9"]\n'
        '\n[ipset.nets]\ntype = "hash:net,iface"\nentries = ["192.0.2.77/24,virbr0"]\n'
        '\n[ipset.marks]\ntype = "hash:ip,mark"\nentries = ["192.0.2.1,16"]\n'
        '\n[zone.public]\nports = ["8080/tcp", "8081/tcp"]\n'
        'rich_rules = [\'rule family="ipv4" destination ipset="pp" drop\']\n'
    )


def test_composite_ipsets_read_back_as_written_and_filter_traffic(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("c", composite(8081))
    applied(fwrecon)
    assert runtime_entries(sb, "pp") == {f"{SANDBOX_ADDR},tcp:8081", "192.0.2.1,udp:53", "198.51.100.7,sctp:9"}
    assert runtime_entries(sb, "nets") == {"192.0.2.0/24,virbr0"} and runtime_entries(sb, "marks") == {"192.0.2.1,0x10"}
    assert fwrecon.run("plan").returncode == 0  # nothing to do: read back as written
    assert (sb.tcp_probe(8080), sb.tcp_probe(8081)) == ("accepted", "timeout")  # address and port: dropped
    fwrecon.write_policy("c", composite(8080))
    applied(fwrecon)
    assert (sb.tcp_probe(8080), sb.tcp_probe(8081)) == ("timeout", "accepted")
    fwrecon.remove_policy("c")
    applied(fwrecon)
    assert ipsets(sb, permanent=True) == set()


def port_range(*entries: str) -> str:
    return (
        f'[ipset.pp]\ntype = "hash:ip,port"\nentries = {json.dumps(list(entries))}\n'
        '\n[zone.public]\nports = ["8080-8082/tcp"]\n'
        'rich_rules = [\'rule family="ipv4" destination ipset="pp" drop\']\n'
    )


def test_a_port_range_entry_filters_every_port_in_it_and_an_overlap_is_refused(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("r", port_range(f"{SANDBOX_ADDR},tcp:8081-8082"))
    applied(fwrecon)
    assert runtime_entries(sb, "pp") == {f"{SANDBOX_ADDR},tcp:8081-8082"}
    assert fwrecon.run("plan").returncode == 0  # read back as written
    assert [sb.tcp_probe(port) for port in (8080, 8081, 8082)] == ["accepted", "timeout", "timeout"]

    # nft would refuse the second entry ("File exists"): the file is refused, and what it had stays.
    fwrecon.write_policy("r", port_range(f"{SANDBOX_ADDR},tcp:8081-8082", f"{SANDBOX_ADDR},8080-8081"))
    result = fwrecon.run("apply")
    assert result.returncode != 0
    [invalid] = [e for e in map(json.loads, result.stderr.splitlines()) if e["event"] == "policy_invalid"]
    assert (invalid["file"], invalid["key"]) == ("r.toml", "ipset.pp.entries[0]"), invalid  # the later-starting range
    assert invalid["error"].startswith(f"'{SANDBOX_ADDR},tcp:8081-8082' overlaps '{SANDBOX_ADDR},tcp:8080-8081'"), invalid
    assert runtime_entries(sb, "pp") == {f"{SANDBOX_ADDR},tcp:8081-8082"}

    fwrecon.write_policy("r", port_range(f"{SANDBOX_ADDR},tcp:8082-8082"))  # a one-port range is the port
    applied(fwrecon)
    assert runtime_entries(sb, "pp") == {f"{SANDBOX_ADDR},tcp:8082"}
    assert [sb.tcp_probe(port) for port in (8081, 8082)] == ["accepted", "timeout"]
    fwrecon.remove_policy("r")
    applied(fwrecon)
    assert ipsets(sb, permanent=True) == set()


def test_an_ipset_no_plan_may_remove_costs_no_read_of_its_users(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("block", blocklist("192.0.2.0/24"))
    applied(fwrecon)
    block, containers = Ipset("blocklist", "hash:net", "inet"), {("ipset", "blocklist")}

    async def scenario(backend: FirewalldBackend) -> None:
        listings = 0
        referrers = backend.ipsets._referrers

        async def counted():  # type: ignore[no-untyped-def]
            nonlocal listings
            listings += 1
            return await referrers()

        backend.ipsets._referrers = counted  # type: ignore[method-assign]
        assert (await backend.observe(containers, removable=[])).users == {} and listings == 0
        view = await backend.observe(containers, removable=[block])
        assert listings == 1 and "zone drop source ipset:blocklist" in view.users_of(block), view.users
        assert (await backend.observe(containers)).users_of(block) and listings == 2  # (None: every ipset met)

    on_backend(sb, scenario)


def test_removing_every_entry_empties_the_ipset_in_one_call(fwrecon: Fwrecon) -> None:
    # firewalld 1.3.3 takes seconds per removeEntry from a large ipset: one setEntries with none instead.
    sb = fwrecon.sandbox
    entries = networks(300)
    fwrecon.write_policy("block", blocklist(*entries))
    applied(fwrecon)
    fwrecon.remove_policy("block")

    async def remove(backend: FirewalldBackend) -> int:
        reconciler = Reconciler(backend, StateStore(fwrecon.state_file), names=backend.known_names)
        assert (await reconciler.reconcile(load_policy_dir(fwrecon.policy_dir))).converged
        return backend.writes

    assert on_backend(sb, remove) == 3  # the zone source, one setEntries, the ipset
    assert runtime_entries(sb, "blocklist") == set() and "blocklist" not in ipsets(sb, permanent=True)
    assert fwrecon.owned() == []


def test_an_entry_that_came_since_the_plan_stays_when_the_rest_go(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("block", blocklist("192.0.2.0/24", "198.51.100.0/24"))
    applied(fwrecon)
    sb.firewall_cmd("--ipset=blocklist", "--add-entry=203.0.113.0/24", check=True)  # after the plan's read of 2
    ops = [Op("remove", IpsetEntry("blocklist", e)) for e in ("192.0.2.0/24", "198.51.100.0/24")]
    seen = FirewallView(reads={("ipset", "blocklist"): 2})

    assert on_backend(sb, lambda backend: backend.apply(ops, seen)) == [Outcome.APPLIED, Outcome.APPLIED]
    assert runtime_entries(sb, "blocklist") == {"203.0.113.0/24"}


def test_its_own_reload_is_told_apart_from_anyone_elses(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    events: list[BackendEvent] = []

    async def scenario(backend: FirewalldBackend) -> None:
        await backend.subscribe(events.append)
        sb.firewall_cmd("--permanent", "--new-ipset=fresh", "--type=hash:ip", check=True)
        backend.ipsets.to_load.add("fresh")
        assert await backend.activate() is True
        await asyncio.sleep(0.3)
        assert BackendEvent.OWN_RELOAD in events and BackendEvent.RELOADED not in events, events
        backend.ipsets.to_load.add("fresh")
        assert await backend.activate() is False  # loaded already: no second reload
        sb.firewall_cmd("--permanent", "--new-ipset=fresh2", "--type=hash:ip", check=True)
        backend.ipsets.to_load.add("fresh2")
        sb.reload()  # someone else's reload loads it
        for _ in range(50):
            if BackendEvent.RELOADED in events:
                break
            await asyncio.sleep(0.1)
        assert events.count(BackendEvent.RELOADED) == 1 and events.count(BackendEvent.OWN_RELOAD) == 1, events
        assert not backend.ipsets.to_load
        assert await backend.activate() is False

    on_backend(sb, scenario)


def test_another_tools_spelling_of_a_wanted_entry_stays_theirs(fwrecon: Fwrecon) -> None:
    sb = fwrecon.sandbox
    ports = '[ipset.pp]\ntype = "hash:ip,port"\nentries = [{entries}]\n'
    fwrecon.write_policy("p", ports.format(entries='"192.0.2.9,tcp:22"'))
    applied(fwrecon)
    sb.firewall_cmd("--ipset=pp", "--add-entry=192.0.2.1,443", check=True)  # someone else's, tcp by default
    fwrecon.write_policy("p", ports.format(entries='"192.0.2.9,tcp:22", "192.0.2.1,tcp:443"'))
    applied(fwrecon)
    assert runtime_entries(sb, "pp") == {"192.0.2.9,tcp:22", "192.0.2.1,443"}  # the same element: not added again
    assert {e["item"].get("entry") for e in fwrecon.owned() if e["item"]["kind"] == "ipset_entry"} == {"192.0.2.9,tcp:22"}
    fwrecon.remove_policy("p")
    applied(fwrecon)
    assert runtime_entries(sb, "pp") == {"192.0.2.1,443"}  # theirs stays, and with it the ipset
