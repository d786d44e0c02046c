"""firewalld answering garbage, or not at all: a clear error line, never a traceback.

A fake firewalld (fake_firewalld.py) owns org.fedoraproject.FirewallD1 on a
private dbus-daemon of this test's own and answers with replies of the wrong
shape; ``fwrecon apply`` must exit 1 with one ``error:`` line saying what was
wrong, and a firewalld that never answers costs about one ``--timeout``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import fwsandbox
import pytest
from conftest import ROOT, Fwrecon

FAKE = Path(__file__).with_name("fake_firewalld.py")
TIMEOUT = 2.0

ZONE_POLICY = '[zone.public]\nports = ["7000/tcp"]\n'
DIRECT_POLICY = """
[[direct.rule]]
family = "ipv4"
table = "filter"
chain = "INPUT"
args = ["-p", "tcp", "--dport", "9000", "-j", "ACCEPT"]
"""
POLICY_POLICY = """
[policy.allow-host-ipv6]
rich_rules = ['rule family="ipv6" source address="2001:db8::/32" port port="9100" protocol="tcp" accept']
"""


@pytest.fixture
def fake_firewalld(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start a private bus and a fake firewalld on it in MODE; returns its bus address."""
    conf = tmp_path / "bus.conf"
    socket_path = tmp_path / "bus"
    conf.write_text(fwsandbox.BUS_CONF.format(bus=socket_path))
    started = subprocess.run(
        ["dbus-daemon", f"--config-file={conf}", "--fork", "--print-pid"], capture_output=True, text=True, timeout=10, check=True
    )
    dbus_pid = int(started.stdout.split()[0])
    address = f"unix:path={socket_path}"
    fakes: list[subprocess.Popen[str]] = []

    def start(mode: str) -> str:
        fake = subprocess.Popen([sys.executable, str(FAKE), address, mode], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        fakes.append(fake)
        assert fake.stdout is not None and fake.stdout.readline().strip() == "ready"
        return address

    try:
        yield start
    finally:
        for fake in fakes:
            fake.kill()
            fake.wait()
            if fake.stdout is not None:
                fake.stdout.close()
        os.kill(dbus_pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{dbus_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def apply(fwrecon: Fwrecon, address: str) -> subprocess.CompletedProcess[str]:
    # Inside the sandbox netns, like every fwrecon that could reach nft or iptables.
    argv = [
        "ip",
        "netns",
        "exec",
        fwrecon.sandbox.netns,
        sys.executable,
        "-m",
        "reconciler",
        "apply",
        "--backend",
        "firewalld",
        "--bus-address",
        address,
        "--timeout",
        str(TIMEOUT),
        "--policy-dir",
        str(fwrecon.policy_dir),
        "--state-file",
        str(fwrecon.state_file),
        "--log-format",
        "json",
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert '"reconcile_crashed"' not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize(
    "mode, policy, says",
    [
        ("zones-string", ZONE_POLICY, "answered getZones with signature 's' instead of 'as'"),
        ("settings-not-dict", ZONE_POLICY, "answered getZoneSettings2 with signature 's' instead of 'a{sv}'"),
        ("settings-wrong-type", ZONE_POLICY, "getZoneSettings2 reply for zone public: 'ports' is s, not a(ss)"),
        ("bad-port", ZONE_POLICY, "getZoneSettings2 reply for zone public: ports entry"),
        ("rules-malformed", DIRECT_POLICY, "answered getAllRules with signature 'a(sss)' instead of 'a(sssias)'"),
        ("policy-rmw", POLICY_POLICY, "getPolicySettings reply for policy allow-host-ipv6: 'rich_rules' is i, not as"),
    ],
)
def test_garbage_reply_is_one_clear_error(
    fwrecon: Fwrecon, fake_firewalld: Callable[[str], str], mode: str, policy: str, says: str
) -> None:
    fwrecon.write_policy("p", policy)
    line = error_line(apply(fwrecon, fake_firewalld(mode)))
    assert says in line, line


def test_firewalld_that_never_answers_costs_one_timeout(fwrecon: Fwrecon, fake_firewalld: Callable[[str], str]) -> None:
    fwrecon.write_policy("p", ZONE_POLICY)
    address = fake_firewalld("silent")
    started = time.monotonic()
    result = apply(fwrecon, address)
    elapsed = time.monotonic() - started
    line = error_line(result)
    assert "firewalld did not answer" in line and f"within {TIMEOUT:g}s" in line, line
    assert elapsed < TIMEOUT + 5, f"apply took {elapsed:.1f}s against a silent firewalld"
