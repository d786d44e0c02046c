"""`fwrecon run` as a subprocess against a real firewalld in a network namespace."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import ROOT, Daemon, Fwrecon, wait_until

EXPECTED_METRICS = {
    "fwrecon_reconcile_duration_seconds": "histogram",
    "fwrecon_reconciles": "counter",
    "fwrecon_operations": "counter",
    "fwrecon_rollbacks": "counter",
    "fwrecon_reapply_after_reload_seconds": "histogram",
    "fwrecon_writes_after_reload": "histogram",
    "fwrecon_event_to_converged_seconds": "histogram",
    "fwrecon_drift_repairs": "counter",
    "fwrecon_firewalld_reloads": "counter",
    "fwrecon_own_reloads": "counter",
    "fwrecon_firewalld_up": "gauge",
    "fwrecon_policies": "gauge",
    "fwrecon_owned_items": "gauge",
    "fwrecon_last_success_timestamp_seconds": "gauge",
    "fwrecon_build_info": "gauge",
    "fwrecon_backend": "gauge",
}


def ports(fwrecon: Fwrecon, zone: str = "public") -> set[str]:
    return set(fwrecon.sandbox.firewall_cmd(f"--zone={zone}", "--list-ports").stdout.split())


def test_policy_file_lifecycle(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    sb = fwrecon.sandbox
    sb.firewall_cmd("--zone=public", "--add-port=7000/tcp", check=True)  # foreign
    daemon = daemon_factory()
    fwrecon.write_policy("web", '[zone.public]\nports = ["7000/tcp", "7001/tcp", "7002/tcp"]\n')
    started = time.monotonic()
    wait_until(lambda: ports(fwrecon) == {"7000/tcp", "7001/tcp", "7002/tcp"}, 1.0, "the new policy within a second")
    assert time.monotonic() - started < 1.0
    daemon.settled()

    count = len(daemon.reconciles())
    fwrecon.write_policy("web", '[zone.public]\nports = ["7000/tcp", "7001/tcp", "7003/tcp"]\n')
    wait_until(lambda: ports(fwrecon) == {"7000/tcp", "7001/tcp", "7003/tcp"}, 2, "the edit")
    daemon.settled()
    edit = [r for r in daemon.reconciles()[count:] if r["trigger"] == "policy"]
    assert [r["ops"] for r in edit] == [2]  # only the difference: -7002 +7003

    fwrecon.remove_policy("web")
    wait_until(lambda: ports(fwrecon) == {"7000/tcp"}, 2, "the deletion")
    assert daemon.value("fwrecon_event_to_converged_seconds") >= 3
    assert daemon.stop() == 0


def test_editor_style_rename_and_piecewise_copy_converge(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    tmp = fwrecon.policy_dir / ".web.toml.swp"
    tmp.write_text('[zone.public]\nports = ["7100/tcp"]\n')
    tmp.chmod(0o644)
    os.rename(tmp, fwrecon.policy_dir / "web.toml")
    wait_until(lambda: ports(fwrecon) == {"7100/tcp"}, 2, "the renamed-in file")
    # cp writing in pieces: first half a file, then the rest
    path = fwrecon.policy_dir / "more.toml"
    with open(path, "w") as handle:
        os.chmod(path, 0o644)
        handle.write('[zone.public]\nports = ["71')
        handle.flush()
        time.sleep(0.03)
        handle.write('01/tcp"]\n')
    wait_until(lambda: ports(fwrecon) == {"7100/tcp", "7101/tcp"}, 2, "the piecewise copy")
    # moved out of the directory: its items go
    os.rename(path, fwrecon.policy_dir.parent / "more.toml")
    wait_until(lambda: ports(fwrecon) == {"7100/tcp"}, 2, "the moved-out file")
    daemon.settled()
    assert daemon.proc.poll() is None


def test_reload_reapplies_everything(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    fwrecon.write_policy("web", (ROOT / "policies" / "web.toml").read_text())
    daemon = daemon_factory()
    wait_until(lambda: "8080/tcp" in ports(fwrecon), 3, "the policy")
    daemon.settled()
    fwrecon.sandbox.firewall_cmd("--reload", check=True)
    wait_until(
        lambda: (
            "8080/tcp" in ports(fwrecon) and "FWRECON_IN" in fwrecon.sandbox.firewall_cmd("--direct", "--get-all-chains").stdout
        ),
        3,
        "re-apply after reload",
    )
    daemon.settled()
    assert fwrecon.run("plan").returncode == 0  # fully converged, not just one port
    assert daemon.value("fwrecon_firewalld_reloads") == 1
    assert daemon.value("fwrecon_reapply_after_reload_seconds") >= 1
    assert daemon.histogram_sum("fwrecon_writes_after_reload") >= 2  # the port and the chain, re-added


def test_firewalld_restart_reapplies_and_daemon_survives(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    sb = fwrecon.sandbox
    fwrecon.write_policy("web", '[zone.public]\nports = ["7200/tcp"]\n')
    daemon = daemon_factory()
    wait_until(lambda: ports(fwrecon) == {"7200/tcp"}, 3, "the policy")
    assert daemon.value("fwrecon_firewalld_up") == 1
    sb.kill_firewalld()
    wait_until(lambda: daemon.value("fwrecon_firewalld_up") == 0, 5, "firewalld_up to drop to 0")
    time.sleep(1)
    assert daemon.proc.poll() is None
    sb.start_firewalld()
    wait_until(lambda: ports(fwrecon) == {"7200/tcp"}, 5, "re-apply after restart")
    assert daemon.value("fwrecon_firewalld_up") == 1
    assert daemon.proc.poll() is None
    assert daemon.value("fwrecon_reapply_after_reload_seconds") >= 1


def test_backend_metric_shows_none_in_charge_while_firewalld_mode_waits(
    fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]
) -> None:
    """What the FwreconFirewalldDown alert keys on: with --backend firewalld and
    firewalld away, no backend is in charge (all 0, exported from the start),
    unlike auto, which falls back to iptables."""
    sb = fwrecon.sandbox
    fwrecon.backend = "firewalld"
    fwrecon.write_policy("web", '[zone.public]\nports = ["7210/tcp"]\n')
    sb.kill_firewalld()
    daemon = daemon_factory(started_when="metrics_listening")  # no reconcile can run yet

    def in_charge() -> dict[str, float]:
        return {b: daemon.value("fwrecon_backend", backend=b) for b in ("firewalld", "iptables", "nftables")}

    nobody = {"firewalld": 0, "iptables": 0, "nftables": 0}
    wait_until(lambda: daemon.value("fwrecon_firewalld_up") == 0 and in_charge() == nobody, 5, "the metrics")
    sb.start_firewalld()
    wait_until(lambda: ports(fwrecon) == {"7210/tcp"}, 5, "the policy once firewalld is there")
    assert in_charge() == {"firewalld": 1, "iptables": 0, "nftables": 0}
    sb.kill_firewalld()
    wait_until(lambda: daemon.value("fwrecon_firewalld_up") == 0, 5, "firewalld_up to drop to 0")
    assert in_charge() == nobody
    assert daemon.stop() == 0


def test_port_removed_by_hand_comes_back_without_resync(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    fwrecon.write_policy("web", '[zone.public]\nports = ["7300/tcp"]\n')
    daemon = daemon_factory(resync=3600)
    wait_until(lambda: ports(fwrecon) == {"7300/tcp"}, 3, "the policy")
    daemon.settled()
    fwrecon.sandbox.firewall_cmd("--zone=public", "--remove-port=7300/tcp", check=True)
    wait_until(lambda: ports(fwrecon) == {"7300/tcp"}, 2, "the drift repair")
    wait_until(lambda: daemon.value("fwrecon_drift_repairs") >= 1, 2, "the drift metric")
    direct = ["ipv4", "filter", "INPUT", "0", "-p", "tcp", "--dport", "7301", "-j", "ACCEPT"]
    fwrecon.write_policy(
        "direct",
        """
        [[direct.rule]]
        family = "ipv4"
        table = "filter"
        chain = "INPUT"
        args = ["-p", "tcp", "--dport", "7301", "-j", "ACCEPT"]
    """,
    )
    wait_until(lambda: "7301" in fwrecon.sandbox.firewall_cmd("--direct", "--get-all-rules").stdout, 2, "the direct rule")
    daemon.settled()
    fwrecon.sandbox.firewall_cmd("--direct", "--remove-rule", *direct, check=True)
    wait_until(lambda: "7301" in fwrecon.sandbox.firewall_cmd("--direct", "--get-all-rules").stdout, 2, "direct drift repair")


def test_invalid_file_keeps_previous_version_until_fixed(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    fwrecon.write_policy("web", '[zone.public]\nports = ["7400/tcp"]\n')
    fwrecon.write_policy("other", '[zone.public]\nports = ["7401/tcp"]\n')
    daemon = daemon_factory()
    wait_until(lambda: ports(fwrecon) == {"7400/tcp", "7401/tcp"}, 3, "both policies")
    fwrecon.write_policy("web", '[zone.public]\nports = ["7400/tcp", "7402/tcpx"]\n')
    errors = wait_until(lambda: daemon.events("policy_invalid"), 3, "the error log")
    assert errors[0]["file"] == "web.toml" and errors[0]["key"] == "zone.public.ports[1]"
    assert "7402/tcpx" in errors[0]["error"]
    wait_until(lambda: daemon.value("fwrecon_policies", state="invalid") == 1, 2, "the invalid metric")
    assert daemon.value("fwrecon_policies", state="valid") == 1
    assert ports(fwrecon) == {"7400/tcp", "7401/tcp"}  # previous version still in force
    # another policy still applies meanwhile
    fwrecon.write_policy("other", '[zone.public]\nports = ["7401/tcp", "7403/tcp"]\n')
    wait_until(lambda: ports(fwrecon) == {"7400/tcp", "7401/tcp", "7403/tcp"}, 2, "the other policy")
    fwrecon.write_policy("web", '[zone.public]\nports = ["7400/tcp", "7402/tcp"]\n')
    wait_until(lambda: ports(fwrecon) == {"7400/tcp", "7401/tcp", "7402/tcp", "7403/tcp"}, 2, "the fixed policy")
    wait_until(lambda: daemon.value("fwrecon_policies", state="invalid") == 0, 2, "the metric to clear")


def test_reload_storm_ends_converged(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    fwrecon.write_policy("web", (ROOT / "policies" / "web.toml").read_text())
    daemon = daemon_factory()
    wait_until(lambda: "8080/tcp" in ports(fwrecon), 3, "the policy")
    daemon.settled()
    before = len(daemon.reconciles())
    for _ in range(10):  # back to back over D-Bus: ~2 s (firewall-cmd would take twice as long)
        fwrecon.sandbox.reload()
    daemon.settled(quiet=1.0)
    assert fwrecon.run("plan").returncode == 0
    assert daemon.value("fwrecon_firewalld_reloads") == 10
    # coalesced, never amplified: at most one reconcile per reload
    assert len([r for r in daemon.reconciles()[before:] if r["trigger"] == "reload"]) <= 10


def test_metrics_endpoint_has_every_metric_with_its_type(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    families = daemon.metrics()
    for name, kind in EXPECTED_METRICS.items():
        assert name in families, name
        assert families[name].type == kind, name  # type: ignore[attr-defined]
    build = [s for s in families["fwrecon_build_info"].samples]  # type: ignore[attr-defined]
    assert build[0].labels["version"] and build[0].value == 1
    assert daemon.value("fwrecon_last_success_timestamp_seconds") > time.time() - 60
    # loopback only by default
    result = subprocess.run([sys.executable, "-m", "reconciler", "run", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert "127.0.0.1:9847" in result.stdout


def test_sigterm_exits_quickly_leaving_rules_then_restart_needs_nothing(
    fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]
) -> None:
    fwrecon.write_policy("web", (ROOT / "policies" / "web.toml").read_text())
    daemon = daemon_factory()
    wait_until(lambda: "8080/tcp" in ports(fwrecon), 3, "the policy")
    daemon.settled()
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 3
    assert "8080/tcp" in ports(fwrecon)
    assert fwrecon.run("plan").returncode == 0

    again = daemon_factory()
    startup = [r for r in again.reconciles() if r["trigger"] == "startup"]
    assert startup and startup[0]["ops"] == 0
    assert again.stop(signal.SIGINT) == 0


def test_systemd_notify_ready_and_watchdog(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(sock_path))
    receiver.settimeout(5)
    try:
        daemon = daemon_factory(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
        messages = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not ({"READY=1", "WATCHDOG=1"} <= set(messages)):
            messages.extend(receiver.recv(4096).decode().splitlines())
        assert "READY=1" in messages and "WATCHDOG=1" in messages
        assert daemon.stop() == 0
        rest = []
        receiver.settimeout(0.5)
        try:
            while True:
                rest.extend(receiver.recv(4096).decode().splitlines())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest
    finally:
        receiver.close()


def test_sighup_rereads_policies(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: [r for r in daemon.reconciles() if r["trigger"] == "signal"], 3, "a signal-triggered reconcile")
    assert daemon.proc.poll() is None
