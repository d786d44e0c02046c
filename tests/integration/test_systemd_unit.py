"""The shipped systemd unit runs fwrecon with every backend, hardening included.

A hardening line can quietly take away what a backend needs (a capability, an
address family, a path) while `systemd-analyze verify` stays happy; only
running the unit shows it. So each test hands contrib/systemd/fwrecon.service
to a real systemd manager (see unit_manager.py), changed only where a test
must differ from a host:

* ExecStart names this checkout's fwrecon instead of /opt/fwrecon;
* a drop-in puts the service in a test network namespace, points it at the
  sandbox's bus (or at no bus), sends its output to a file (the manager has no
  journal) and makes this checkout and its Python visible where PrivateTmp= or
  ProtectHome= would hide them.

Then: started means converged (Type=notify), the rules are in the kernel,
nft monitor repairs a flush at once, `systemctl reload` re-applies at once,
`systemctl stop` exits cleanly and leaves the rules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from fwsandbox import Sandbox
from iptables_variants import VARIANTS, link_variant
from prereq import require_tools, skip_or_fail
from unit_manager import UnitManager, systemd_binary

ROOT = Path(__file__).resolve().parents[2]
UNIT = "fwrecon.service"
SHIPPED_UNIT = ROOT / "contrib" / "systemd" / UNIT
CAPABILITY_BITS = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}  # the ones the unit may keep
CHAIN = "FWRECON_UNIT"

DIRECT_AND_NFT_POLICY = f"""
    [[direct.chain]]
    family = "ipv4"
    table = "filter"
    chain = "{CHAIN}"

    [[direct.rule]]
    family = "ipv4"
    table = "filter"
    chain = "{CHAIN}"
    args = ["-p", "tcp", "--dport", "9641", "-j", "ACCEPT"]

    [[nft.chain]]
    family = "inet"
    chain = "unit"

    [[nft.rule]]
    family = "inet"
    chain = "unit"
    rule = "tcp dport 9642 accept"
"""


def require_unit_prerequisites() -> None:
    require_tools("the systemd unit tests", ("systemctl", "unshare", "mount", "ip", "nft", "iptables"))
    if systemd_binary() is None:
        skip_or_fail("the systemd unit tests need systemd itself (/usr/lib/systemd/systemd)")


@pytest.fixture(autouse=True)
def _integration_prerequisites() -> None:
    """Replaces tests/conftest.py's firewalld check: only the firewalld test needs it (via `fw`)."""
    require_unit_prerequisites()


BASE_PREFIX = "/run/fwrecon-unit-"  # below /run: PrivateTmp= hides /tmp from the service, ProtectHome= /root


def reap_stale_managers() -> None:
    """Stop the managers of earlier sessions that died without cleanup (e.g. SIGKILL)."""
    for base in Path(BASE_PREFIX).parent.glob(Path(BASE_PREFIX).name + "*"):
        pid = base.name.removeprefix(Path(BASE_PREFIX).name)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            UnitManager(base).kill_leftovers()
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def manager() -> Iterator[UnitManager]:
    require_unit_prerequisites()  # (module fixtures come before the autouse check)
    reap_stale_managers()
    base = Path(f"{BASE_PREFIX}{os.getpid()}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    manager = UnitManager(base)
    try:
        manager.start()
        yield manager
    finally:
        manager.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"fwrecon-unit{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def service(manager: UnitManager) -> Iterator[Service]:
    service = Service(manager)
    try:
        yield service
    finally:
        manager.systemctl("stop", UNIT, check=False)
        manager.systemctl("reset-failed", UNIT, check=False)
        shutil.rmtree(service.config_dir, ignore_errors=True)


class Service:
    """The shipped unit in the test manager, with a drop-in of test-only settings."""

    def __init__(self, manager: UnitManager) -> None:
        self.manager = manager
        self.config_dir = manager.config_dir / "fwrecon"  # ConfigurationDirectory=fwrecon
        self.policy_dir = self.config_dir / "policies.d"
        self.log = manager.base / "fwrecon.log"

    def write_policy(self, name: str, text: str) -> None:
        self.policy_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        path = self.policy_dir / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        path.chmod(0o644)

    def install(self, netns: str, *, bus_address: str, path: str | None = None, visible: tuple[Path, ...] = ()) -> None:
        fwrecon = Path(sys.executable).with_name("fwrecon")
        assert fwrecon.exists(), "install the project (pip install -e .) first"
        unit = SHIPPED_UNIT.read_text()
        assert "/opt/fwrecon/bin/fwrecon" in unit
        lines = [
            "[Service]",
            f"NetworkNamespacePath=/run/netns/{netns}",
            f"Environment=DBUS_SYSTEM_BUS_ADDRESS={bus_address}",
            f"StandardOutput=append:{self.log}",
            f"StandardError=append:{self.log}",
            *code_visibility(),
            *(f"BindReadOnlyPaths={p}" for p in visible),
        ]
        if path:
            lines.append(f"Environment=PATH={path}")
        self.log.write_text("")
        self.manager.install(UNIT, unit.replace("/opt/fwrecon/bin/fwrecon", str(fwrecon)), "\n".join(lines) + "\n")

    def start(self) -> None:
        """Start and wait for READY=1, which fwrecon sends once its first reconcile ran to its end."""
        try:
            started = self.manager.systemctl("start", UNIT, check=False, timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{UNIT} sent no READY=1 within 45 s\n{self.log_tail()}")
        assert started.returncode == 0 and self.state() == "active", (
            f"{UNIT}: {self.manager.show(UNIT, 'Result', 'ExecMainStatus')}\n{self.log_tail()}"
        )

    def state(self) -> str:
        return self.manager.show(UNIT, "ActiveState")["ActiveState"]

    def main_pid(self) -> int:
        return int(self.manager.show(UNIT, "MainPID")["MainPID"])

    def stop(self) -> dict[str, str]:
        self.manager.systemctl("stop", UNIT)
        return self.manager.show(UNIT, "Result", "ExecMainStatus", "ActiveState")

    def wait_until(self, check: Callable[[], object], what: str) -> None:
        """conftest's wait_until, with fwrecon's last log lines when it times out."""
        try:
            wait_until(check, 10, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text().splitlines()[-15:])


def code_visibility() -> list[str]:
    """Drop-in lines that let the service see this checkout and its Python.

    An install in /opt needs none; a checkout or an interpreter below /tmp
    (PrivateTmp=) or a home directory (ProtectHome=) must be bound in. Below a
    home directory, ProtectHome=tmpfs: with "yes" the directory above is a
    mode-000 node that the service, holding no CAP_DAC_OVERRIDE, cannot pass.
    """
    hidden_below = ("/tmp", "/var/tmp", "/root", "/home", "/run/user")
    paths = {ROOT, Path(sys.base_prefix).resolve()}
    hidden = sorted(str(p) for p in paths if any(p == Path(h) or Path(h) in p.parents for h in hidden_below))
    lines = [f"BindReadOnlyPaths={p}" for p in hidden]
    if any(p.startswith(("/root", "/home")) for p in hidden):
        lines.append("ProtectHome=tmpfs")
    return lines


def unit_capabilities() -> int:
    """The capability mask CapabilityBoundingSet= in the shipped unit allows."""
    line = next(line for line in SHIPPED_UNIT.read_text().splitlines() if line.startswith("CapabilityBoundingSet="))
    mask = 0
    for name in line.split("=", 1)[1].split():
        assert name in CAPABILITY_BITS, f"add {name} to CAPABILITY_BITS"
        mask |= 1 << CAPABILITY_BITS[name]
    return mask


def assert_sandboxed(pid: int) -> None:
    """The manager applied the unit's sandbox to fwrecon itself, not just started it."""
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    assert int(status["CapBnd"], 16) == unit_capabilities(), status["CapBnd"]
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # SystemCallFilter= / RestrictAddressFamilies= in force
    root_mount = next(line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if line.split()[4] == "/")
    assert "ro" in root_mount[5].split(","), root_mount  # ProtectSystem=strict


def in_netns(netns: str, *argv: str, path: str | None = None) -> str:
    env = dict(os.environ, PATH=path) if path else None
    return subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True, text=True, env=env).stdout


def variant_path(variant: str, links: Path) -> str:
    path = link_variant(links, variant)
    if path is None:
        skip_or_fail(f"the systemd unit test with the {variant} iptables tools needs xtables-{variant}-multi")
    return path  # type: ignore[return-value]


@pytest.mark.parametrize("variant", VARIANTS)
def test_unit_runs_the_iptables_and_nftables_backends(service: Service, netns: str, variant: str) -> None:
    """No firewalld on the bus: auto picks iptables (this variant) for direct rules, nft sections go to nft."""
    path = variant_path(variant, service.manager.base / f"iptables-{variant}")
    service.write_policy("web", DIRECT_AND_NFT_POLICY)
    service.install(netns, bus_address=f"unix:path={service.manager.base}/no-bus", path=path)
    service.start()
    assert_sandboxed(service.main_pid())

    rules = in_netns(netns, "iptables", "-S", CHAIN, path=path)
    assert "--dport 9641" in rules and "fwrecon:" in rules, rules
    assert "tcp dport 9642 accept" in in_netns(netns, "nft", "list", "table", "inet", "fwrecon")

    # nft monitor runs inside the sandbox too: a flush by hand is repaired at once.
    in_netns(netns, "nft", "flush", "table", "inet", "fwrecon")
    service.wait_until(
        lambda: "tcp dport 9642 accept" in in_netns(netns, "nft", "list", "table", "inet", "fwrecon"),
        "the nft rule restored after a flush",
    )

    # ExecReload (SIGHUP) re-applies at once: iptables has no change events, and the resync is a minute away.
    in_netns(netns, "iptables", "-F", CHAIN, path=path)
    service.manager.systemctl("reload", UNIT)
    service.wait_until(
        lambda: "--dport 9641" in in_netns(netns, "iptables", "-S", CHAIN, path=path), "the rule restored after reload"
    )

    stopped = service.stop()
    assert stopped == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}, (stopped, service.log_tail())
    assert "--dport 9641" in in_netns(netns, "iptables", "-S", CHAIN, path=path)  # stopping leaves the rules in force


def slow_tools(links: Path, marks: Path, delay: float) -> None:
    """Make the iptables tools in ``links`` wait ``delay`` s before they run,
    writing a line to ``marks`` as each starts: a reconcile long enough to be
    caught in flight."""
    for link in list(links.iterdir()):
        target, name = link.resolve(), link.name
        link.unlink()
        link.write_text(f'#!/bin/sh\necho {name} >> {marks}\nsleep {delay}\nexec {target} {name} "$@"\n')
        link.chmod(0o755)


def test_unit_stop_lets_the_reconcile_in_flight_finish(service: Service, netns: str) -> None:
    """systemctl stop mid-reconcile: SIGTERM reaches fwrecon alone (KillMode=mixed),
    so that reconcile's tools are not killed mid-batch; it finishes within the
    grace period, and fwrecon ends nft monitor itself and exits 0 well before
    TimeoutStopSec=. (With the whole cgroup signalled the tools died, and
    nft monitor died and was restarted while the daemon stopped.)"""
    links = service.manager.base / "iptables-nft"
    path = variant_path("nft", links)
    marks = service.manager.base / "tool-runs"
    slow_tools(links, marks, 0.4)
    service.write_policy("web", DIRECT_AND_NFT_POLICY)
    service.install(netns, bus_address=f"unix:path={service.manager.base}/no-bus", path=path)
    service.start()

    in_netns(netns, "iptables", "-F", CHAIN, path=path)
    marks.write_text("")
    service.manager.systemctl("reload", UNIT)
    service.wait_until(lambda: marks.read_text(), "a tool run of the reconcile after SIGHUP")
    started = time.monotonic()
    stopped = service.stop()
    took = time.monotonic() - started

    assert stopped == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}, (stopped, service.log_tail())
    assert took < 5, (took, service.log_tail())
    events = [json.loads(line) for line in service.log.read_text().splitlines()]
    names = [event["event"] for event in events]
    after_stop = events[names.index("shutdown_requested") :]
    finished = [e for e in after_stop if e["event"] == "reconcile"]
    assert [(e["trigger"], e["result"]) for e in finished] == [("signal", "success")], service.log_tail()
    assert not {"nft_monitor_exited", "nft_monitor_started", "transaction_rolled_back"} & {e["event"] for e in after_stop}
    assert names[-1] == "fwrecon_stopped"
    assert "--dport 9641" in in_netns(netns, "iptables", "-S", CHAIN, path=path)


def test_unit_starts_on_a_fresh_install_with_no_policy_directory(service: Service, netns: str) -> None:
    """systemctl enable --now before any policy exists: the unit creates the
    directory and fwrecon starts with nothing to do."""
    assert not service.policy_dir.exists()
    service.install(netns, bus_address=f"unix:path={service.manager.base}/no-bus")
    service.start()
    assert service.policy_dir.is_dir() and service.policy_dir.stat().st_mode & 0o777 == 0o755
    assert "0 owned" in service.manager.show(UNIT, "StatusText")["StatusText"]

    # No system bus is normal on a minimal host: said once, not at every retry (0.5 s, 1 s, 2 s, ...).
    time.sleep(2)
    said = [json.loads(line) for line in service.log.read_text().splitlines() if '"bus_unavailable"' in line]
    assert [event["level"] for event in said] == ["info"], said


def test_unit_starts_while_a_policy_the_firewall_refuses_is_reported(service: Service, netns: str) -> None:
    """A refused policy is rolled back, reported and retried; it must not keep the
    service from becoming ready (systemd would kill it after TimeoutStartSec=, and
    the network, ordered after it, would wait that long at every boot)."""
    service.write_policy("web", DIRECT_AND_NFT_POLICY)
    service.write_policy(
        "broken",
        """
        [[direct.rule]]
        family = "ipv4"
        table = "filter"
        chain = "INPUT"
        args = ["-p", "tcp", "--dport", "99999", "-j", "ACCEPT"]
    """,
    )
    service.install(netns, bus_address=f"unix:path={service.manager.base}/no-bus")
    service.start()
    assert "--dport 9641" in in_netns(netns, "iptables", "-S", CHAIN)
    assert "99999" not in in_netns(netns, "iptables", "-S", "INPUT")
    assert "1 failed" in service.manager.show(UNIT, "StatusText")["StatusText"]
    assert '"policy_failed"' in service.log.read_text()


def test_unit_runs_against_firewalld(service: Service, fw: Sandbox) -> None:
    """firewalld on the bus: auto picks it; the bus socket is reached through the sandbox."""
    service.write_policy(
        "web",
        """
        [zone.public]
        ports = ["9643/tcp"]
    """,
    )
    service.install(fw.netns, bus_address=fw.bus_address, visible=(Path(fw.dir),))
    service.start()
    assert_sandboxed(service.main_pid())
    assert fw.firewall_cmd("--zone=public", "--query-port=9643/tcp").stdout.strip() == "yes"

    fw.firewall_cmd("--reload", check=True)  # the Reloaded signal re-applies what the reload dropped
    service.wait_until(
        lambda: fw.firewall_cmd("--zone=public", "--query-port=9643/tcp").stdout.strip() == "yes",
        "the port re-applied after a firewalld reload",
    )

    stopped = service.stop()
    assert stopped == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}, (stopped, service.log_tail())
