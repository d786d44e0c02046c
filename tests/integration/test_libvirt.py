"""fwrecon beside a real libvirt NAT network, on the sandboxed firewalld.

libvirt binds its bridge to the `libvirt` zone and puts the binding back
after every firewalld reload. A policy that names the same binding shares it:
fwrecon must never claim it (ownership is decided once, when fwrecon adds an
item nobody held), not even when a reload wipes it and fwrecon re-adds it
before libvirt does; so dropping it from the policy leaves libvirt's binding
alone. See tests/integration/libvirt_net.py for how libvirt runs here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, Fwrecon, wait_until
from fwsandbox import Sandbox
from libvirt_net import LibvirtNetwork, missing_prerequisites
from prereq import skip_or_fail

BRIDGE = "virbr-lv"
BINDING = {"kind": "interface", "scope": ["zone", "libvirt"], "name": BRIDGE}


@pytest.fixture
def libvirt_net(fw: Sandbox, tmp_path: Path) -> Iterator[LibvirtNetwork]:
    """libvirtd (network driver only) running network fwrecon-lv on bridge virbr-lv in
    the freshly reset sandbox; all of it gone afterwards, even when the test failed."""
    missing = missing_prerequisites()
    if missing:
        skip_or_fail(f"the libvirt test needs (contrib/setup installs them): {', '.join(missing)}")
    net = LibvirtNetwork(fw, fw.dir / "libvirt", tmp_path / "libvirtd.log", bridge=BRIDGE)
    try:
        net.start()
        yield net
    finally:
        net.stop()


def owned_binding(fwrecon: Fwrecon) -> list[dict]:
    return [entry for entry in fwrecon.owned() if entry["item"] == BINDING]


def without_interfaces(listing: str) -> str:
    """`--list-all` of a zone less what depends on its interfaces: the "(active)" mark
    on the first line and the interfaces line."""
    lines = listing.splitlines()
    return "\n".join(
        [lines[0].replace(" (active)", ""), *(line for line in lines[1:] if not line.strip().startswith("interfaces:"))]
    )


def test_libvirt_binding_survives_reloads_and_policy_edit(
    libvirt_net: LibvirtNetwork, fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]
) -> None:
    sb = fwrecon.sandbox
    libvirt_rules = libvirt_net.iptables_rules()
    assert any("-j MASQUERADE" in rule for rule in libvirt_rules), libvirt_rules  # NAT, via passthrough
    assert libvirt_net.dnsmasq_pid() is not None
    libvirt_zone = without_interfaces(sb.firewall_cmd("--zone=libvirt", "--list-all", check=True).stdout)

    fwrecon.in_netns = True
    fwrecon.write_policy(
        "libvirt",
        f"""
        description = "the libvirt bridge, which libvirt binds itself"
        [zone.libvirt]
        interfaces = ["{BRIDGE}"]
        """,
    )
    daemon = daemon_factory()
    daemon.settled()
    assert owned_binding(fwrecon) == [], "libvirt bound it before fwrecon started: not fwrecon's"

    for _ in range(3):
        calls = libvirt_net.zone_calls()
        sb.firewall_cmd("--reload", check=True)
        wait_until(
            lambda calls=calls: libvirt_net.zone_calls() > calls and libvirt_net.zone_of_bridge() == "libvirt",
            10,
            "libvirt to bind its bridge again after the reload",
        )
        daemon.settled()

    claimed = json.dumps(owned_binding(fwrecon))
    edits = len([r for r in daemon.reconciles() if r["trigger"] == "policy"])
    fwrecon.write_policy(
        "libvirt",
        """
        description = "the libvirt bridge, which libvirt binds itself"
        [zone.libvirt]
        """,
    )
    wait_until(
        lambda: len([r for r in daemon.reconciles() if r["trigger"] == "policy"]) > edits,
        5,
        "the reconcile after the policy edit",
    )
    daemon.settled()

    # libvirt's own rules (its iptables chains, added through firewalld's passthrough)
    # and its zone came through all of that
    assert libvirt_net.iptables_rules() == libvirt_rules
    assert without_interfaces(sb.firewall_cmd("--zone=libvirt", "--list-all", check=True).stdout) == libvirt_zone
    assert libvirt_net.dnsmasq_pid() is not None
    # EXPECTED TO FAIL on fwrecon before the fix for "Shared items across reloads": after a
    # reload fwrecon re-adds the binding before libvirt does and claims it, so dropping it
    # from the policy removes libvirt's binding
    assert libvirt_net.zone_of_bridge() == "libvirt", (
        f"dropping {BRIDGE} from the policy took libvirt's binding away; after the reloads fwrecon's state claimed it: {claimed}"
    )
    assert daemon.stop() == 0
