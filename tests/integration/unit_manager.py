"""A real systemd service manager for running the shipped unit in tests.

CI machines and containers do not boot systemd, so there is no system manager
to hand a unit to. A *user* manager (``systemd --user``) started as root does
the same work where it matters here: it applies every sandboxing line of a
unit (capabilities, seccomp filters, read-only and inaccessible paths, private
/tmp, network namespace), speaks the notify protocol and runs ExecStart as a
system manager would. Only ``%E``/``%S`` and their ``$CONFIGURATION_DIRECTORY``
/ ``$STATE_DIRECTORY`` point below this manager's directory instead of /etc and
/var/lib.

It runs in a mount namespace of its own, set up as on a host booted with
systemd (the host's mounts are not changed):

* /run is a mount point (on such hosts a tmpfs). systemd treats it as an API
  file system and leaves it writable under ProtectSystem=strict, as the
  legacy iptables tools need for /run/xtables.lock;
* /run/systemd/system exists (``systemd --user`` refuses to start without it);
* /run/systemd/inaccessible/ holds the nodes a system manager creates at boot
  and binds over every path that ProtectHome= and InaccessiblePaths= hide.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

SYSTEMD_CANDIDATES = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")
RUN_SYSTEMD = Path("/run/systemd")
INACCESSIBLE = RUN_SYSTEMD / "inaccessible"


def systemd_binary() -> str | None:
    return next((path for path in SYSTEMD_CANDIDATES if os.access(path, os.X_OK)), None)


def make_netns_mount_point() -> None:
    """Make /run/netns the shared mount point `ip netns add` makes on its first use.

    The manager's mount namespace is a slave of the host's: a network namespace
    added later reaches it only below a mount point that already propagates. On
    a fresh machine, where none was ever added, the first one would stay
    invisible to the manager and every start fail with 225/NETWORK.
    """
    name = f"fwrecon-mnt{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True)


class UnitManager:
    """``systemd --user`` as root, with its runtime and config directories below ``base``."""

    def __init__(self, base: Path, config_dir: Path | None = None, state_dir: Path | None = None) -> None:
        """``config_dir``, ``state_dir``: what %E and %S name (default below ``base``; a test
        installing into a root tree passes ROOT/etc and ROOT/var/lib)."""
        self.base = base
        self.runtime_dir = base / "runtime"  # XDG_RUNTIME_DIR: the manager's sockets
        self.config_dir = config_dir or base / "config"  # XDG_CONFIG_HOME: unit files; %E and (systemd < 254) %S
        self.unit_dir = self.config_dir / "systemd" / "user"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "XDG_CONFIG_HOME": str(self.config_dir),
        }
        if state_dir is not None:
            self.env["XDG_STATE_HOME"] = str(state_dir)  # %S from systemd 254 on
        self._proc: subprocess.Popen[bytes] | None = None
        self._made_run_systemd = False

    def start(self) -> None:
        self.runtime_dir.mkdir(mode=0o700, parents=True)
        if not RUN_SYSTEMD.exists():  # the mount point for the manager's own /run/systemd
            RUN_SYSTEMD.mkdir()
            self._made_run_systemd = True
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        make_netns_mount_point()
        # slave: network namespaces the tests add later (mounts below /run/netns) reach the manager
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "slave",
            sys.executable,
            __file__,
            "--exec-manager",
            systemd_binary() or "systemd",
        ]
        with open(self.base / "manager.log", "wb") as log:  # the manager keeps its own copy
            self._proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        # (not is-system-running: outside the namespace, systemctl itself would answer "offline")
        while self.systemctl("show", "--property=SystemState", check=False).stdout.strip() not in (
            "SystemState=running",
            "SystemState=degraded",
        ):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"systemd --user did not start: {(self.base / 'manager.log').read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is None:
            return
        self.systemctl("exit", check=False)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        if self._made_run_systemd:
            RUN_SYSTEMD.rmdir()
            self._made_run_systemd = False

    def kill_leftovers(self) -> None:
        """Kill what the manager of a session that died left running: it and its
        services (the session bus, fwrecon) all carry its XDG_RUNTIME_DIR."""
        marker = f"XDG_RUNTIME_DIR={self.runtime_dir}".encode()
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass  # gone meanwhile

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["systemctl", "--user", "--no-pager", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"systemctl --user {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def install(self, name: str, unit_text: str, drop_in: str = "") -> None:
        """Write ``name`` (and a drop-in with test-only settings) and reload."""
        (self.unit_dir / name).write_text(unit_text)
        drop_dir = self.unit_dir / f"{name}.d"
        shutil.rmtree(drop_dir, ignore_errors=True)
        if drop_in:
            drop_dir.mkdir()
            (drop_dir / "test.conf").write_text(drop_in)
        self.systemctl("daemon-reload")

    def show(self, name: str, *properties: str) -> dict[str, str]:
        out = self.systemctl("show", name, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _exec_manager(systemd: str) -> None:
    """Inside the new mount namespace: prepare /run as a booted host has it, then become systemd."""

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True)

    mount("--rbind", "/run", "/run")
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(RUN_SYSTEMD))
    (RUN_SYSTEMD / "system").mkdir()
    INACCESSIBLE.mkdir()
    (INACCESSIBLE / "dir").mkdir(mode=0)
    (INACCESSIBLE / "reg").touch(mode=0)
    os.mkfifo(INACCESSIBLE / "fifo", 0)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(INACCESSIBLE / "sock"))
    os.mknod(INACCESSIBLE / "chr", stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(INACCESSIBLE / "blk", stat.S_IFBLK, os.makedev(0, 0))
    for node in INACCESSIBLE.iterdir():
        os.chmod(node, 0)
    os.execv(systemd, [systemd, "--user"])


if __name__ == "__main__" and sys.argv[1:2] == ["--exec-manager"]:
    _exec_manager(sys.argv[2])
