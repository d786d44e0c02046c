"""contrib/install on a host with systemd: install, service ready with a
shipped policy in force, upgrade over the running service without a gap in
its rules, uninstall (refused while it owns rules, with the way to release
them, which then works).

The host is a throwaway root tree (``contrib/install --root``) with a real
systemd manager (unit_manager.py) whose %E and %S are that tree's etc and
var/lib, talking to the sandboxed firewalld; the unit is the one install
wrote, with the test's drop-in only (network namespace, bus, log file).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from fwsandbox import Sandbox
from prereq import require_tools, skip_or_fail
from unit_manager import UnitManager, systemd_binary

ROOT = Path(__file__).resolve().parents[2]
UNIT = "fwrecon.service"
BASE_PREFIX = "fwrecon-install-"  # below /run: PrivateTmp= hides /tmp from the service, ProtectHome= /root


def systemd_version() -> int:
    first = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, check=True).stdout.split("\n", 1)[0]
    return int(re.search(r"systemd (\d+)", first)[1])  # type: ignore[index]


class Host:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.prefix = self.root / "opt" / "fwrecon"
        self.policy_dir = self.root / "etc" / "fwrecon" / "policies.d"
        self.state_file = self.root / "var" / "lib" / "fwrecon" / "state.json"
        self.log = base / "fwrecon.log"
        if systemd_version() < 254:  # %S is $XDG_CONFIG_HOME there: one directory for both
            (self.root / "var" / "lib").mkdir(parents=True)
            (self.root / "var" / "lib" / "fwrecon").symlink_to(self.root / "etc" / "fwrecon")
        self.manager = UnitManager(base, config_dir=self.root / "etc", state_dir=self.root / "var" / "lib")

    def install(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.manager.env, "SYSTEMCTL": "systemctl --user"}
        argv = [str(ROOT / "contrib" / "install"), "--root", str(self.root), "--unit-dir", str(self.manager.unit_dir), *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)

    def show(self, *properties: str) -> dict[str, str]:
        return self.manager.show(UNIT, *properties)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text().splitlines()[-15:]) if self.log.exists() else "(no log)"


@pytest.fixture
def host(fw: Sandbox) -> Iterator[Host]:
    require_tools("the install test", ("systemctl", "unshare", "mount", "ip"))
    if systemd_binary() is None:
        skip_or_fail("the install test needs systemd itself (/usr/lib/systemd/system)")
    for stale in Path("/run").glob(BASE_PREFIX + "*"):  # of sessions that died without cleanup
        if not Path(f"/proc/{stale.name.removeprefix(BASE_PREFIX)}").exists():
            UnitManager(stale, config_dir=stale / "root" / "etc").kill_leftovers()
            shutil.rmtree(stale, ignore_errors=True)
    base = Path("/run") / f"{BASE_PREFIX}{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    host = Host(base)
    try:
        host.manager.start()
        yield host
    finally:
        host.manager.systemctl("stop", UNIT, check=False)
        host.manager.stop()
        shutil.rmtree(base, ignore_errors=True)


def port_open(fw: Sandbox) -> bool:
    return fw.firewall_cmd("--zone=public", "--query-port=8080/tcp").stdout.strip() == "yes"


def test_install_upgrade_and_uninstall_under_systemd(host: Host, fw: Sandbox) -> None:
    installed = host.install()
    assert installed.returncode == 0, installed.stderr
    assert "start it with: systemctl enable --now fwrecon.service" in installed.stdout
    assert host.show("UnitFileState", "ActiveState") == {"UnitFileState": "disabled", "ActiveState": "inactive"}
    assert (host.prefix / "bin" / "fwrecon").exists() and host.policy_dir.is_dir()
    assert f"ExecStart={host.prefix}/bin/fwrecon run" in (host.manager.unit_dir / UNIT).read_text()

    drop_in = host.manager.unit_dir / f"{UNIT}.d"
    drop_in.mkdir()
    (drop_in / "test.conf").write_text(
        "\n".join(
            [
                "[Service]",
                f"NetworkNamespacePath=/run/netns/{fw.netns}",
                f"Environment=DBUS_SYSTEM_BUS_ADDRESS={fw.bus_address}",
                f"BindReadOnlyPaths={fw.dir}",  # the sandbox's bus socket, below /tmp (PrivateTmp=)
                f"StandardOutput=append:{host.log}",
                f"StandardError=append:{host.log}",
            ]
        )
        + "\n"
    )
    shutil.copy(ROOT / "policies" / "web.toml", host.policy_dir / "web.toml")
    (host.policy_dir / "web.toml").chmod(0o644)

    enabled = host.install("--enable")
    assert enabled.returncode == 0, enabled.stderr + host.log_tail()
    assert "enabled and started fwrecon.service" in enabled.stdout
    state = host.show("UnitFileState", "ActiveState", "StatusText", "MainPID")
    assert state["UnitFileState"] == "enabled" and state["ActiveState"] == "active", (state, host.log_tail())
    assert state["StatusText"].startswith("success:"), state  # READY=1 came after the first reconcile converged
    assert port_open(fw) and "FWRECON_IN" in fw.firewall_cmd("--direct", "--get-all-chains").stdout

    # upgrade: install again over the running service; the rule never leaves
    gaps: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if not port_open(fw):
                gaps.append("8080/tcp absent")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        upgraded = host.install()
    finally:
        done.set()
        watcher.join()
    assert upgraded.returncode == 0 and "restarted fwrecon.service" in upgraded.stdout, upgraded.stderr
    after = host.show("ActiveState", "MainPID", "StatusText")
    assert after["ActiveState"] == "active" and after["MainPID"] != state["MainPID"], after  # the new code runs
    assert gaps == [] and port_open(fw)
    status = subprocess.run(
        [
            str(host.prefix / "bin" / "fwrecon"),
            "status",
            "--policy-dir",
            str(host.policy_dir),
            "--state-file",
            str(host.state_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and status.stdout.endswith("converged\n"), status.stdout + status.stderr

    # uninstall while fwrecon owns rules: stopped, unit gone, the venv kept, and the way out said
    refused = host.install("--uninstall")
    assert refused.returncode == 1 and "still owns" in refused.stderr, refused
    assert host.show("ActiveState")["ActiveState"] == "inactive" and not (host.manager.unit_dir / UNIT).exists()
    assert port_open(fw)  # stopping never opens or closes a hole
    hint = next(line.strip() for line in refused.stderr.splitlines() if line.strip().startswith("rm "))
    assert hint == (
        f"rm {host.policy_dir}/*.toml && {host.prefix}/bin/fwrecon apply --policy-dir {host.policy_dir} "
        f"--state-file {host.state_file}"
    )

    # do as it says (in the sandbox's namespace, on its bus), then uninstall again
    for policy in host.policy_dir.glob("*.toml"):
        policy.unlink()
    released = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            fw.netns,
            str(host.prefix / "bin" / "fwrecon"),
            "apply",
            "--bus-address",
            fw.bus_address,
            "--policy-dir",
            str(host.policy_dir),
            "--state-file",
            str(host.state_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert released.returncode == 0, released.stdout + released.stderr
    wait_until(lambda: not port_open(fw), 5, "the released port to go")
    removed = host.install("--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not host.prefix.exists() and host.policy_dir.is_dir() and host.state_file.exists()  # policies and state stay
