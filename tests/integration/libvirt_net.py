"""A real libvirt NAT network on the sandboxed firewalld.

Debian 12 ships libvirt 9.0 with the monolithic libvirtd only (no modular
virtnetworkd), so this runs libvirtd with its network driver alone:
LIBVIRT_DRIVER_DIR names a directory holding just libvirt_driver_network.so.
libvirtd runs

* inside the sandbox's network namespace, so its bridge, addresses, dnsmasq
  and iptables rules exist only there;
* with the sandbox's bus as its system bus (DBUS_SYSTEM_BUS_ADDRESS), so its
  firewalld backend talks to the sandboxed firewalld: it binds the bridge to
  the `libvirt` zone (changeZoneOfInterface) and adds its iptables rules
  through firewalld's direct passthrough;
* in a private mount namespace where /run, /etc/libvirt, /var/lib/libvirt,
  /var/cache/libvirt and /var/log/libvirt are directories below BASE. libvirtd
  has no flags for them (they are compiled in), and the host's own are never
  touched. All of /run is replaced (not just /run/libvirt, which a host
  without libvirt running lacks as a mount point): libvirtd also writes
  /run/libvirtd.pid. The socket is BASE/run/libvirt/libvirt-sock.

`virsh -c network:///system?socket=...` reaches it. libvirtd's parent is
this file run with --inside: it makes the mounts and stays a child subreaper,
so dnsmasq (which daemonizes) stays below it and nothing is left for PID 1 to
reap. Everything libvirtd starts shares its mount namespace; `stop` kills
what is left there, so the namespace and its mounts go with the last process.

usage (internal): libvirt_net.py --inside BASE -- COMMAND [ARG ...]
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # run as a script (--inside), this file imports the standard library only
    from fwsandbox import Sandbox

INSIDE = "--inside"
LIBVIRTD = "/usr/sbin/libvirtd"
NETWORK_DRIVER = "/usr/lib/*/libvirt/connection-driver/libvirt_driver_network.so"  # multiarch dir
LIBVIRT_ZONE = "/usr/lib/firewalld/zones/libvirt.xml"  # from libvirt-daemon-system
# below BASE -> where libvirtd sees it
PRIVATE_DIRS = {
    "run": "/run",
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
LIBVIRTD_CONF = """\
# root only, over the socket in BASE/run/libvirt: no polkit (the sandbox bus has none)
unix_sock_group = "root"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:stderr"
"""
NETWORK_XML = """\
<network>
  <name>{name}</name>
  <forward mode='nat'/>
  <bridge name='{bridge}' stp='off' delay='0'/>
  <ip address='{prefix}.1' netmask='255.255.255.0'>
    <dhcp><range start='{prefix}.10' end='{prefix}.20'/></dhcp>
  </ip>
</network>
"""
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
START_TIMEOUT = 20.0
ZONE_IFACE = "org.fedoraproject.FirewallD1.zone"
PR_SET_CHILD_SUBREAPER = 36


def missing_prerequisites() -> list[str]:
    """What this machine lacks for a libvirt network (empty: all there)."""
    missing = [
        f"{tool} ({package})"
        for tool, package in (
            ("virsh", "libvirt-clients"),
            ("dnsmasq", "dnsmasq-base"),
            ("dbus-monitor", "dbus"),
            ("unshare", "util-linux"),
            ("iptables-save", "iptables"),
        )
        if shutil.which(tool, path=SEARCH_PATH) is None
    ]
    missing += [
        f"{path} ({package})"
        for path, package in (
            (LIBVIRTD, "libvirt-daemon"),
            (NETWORK_DRIVER, "libvirt-daemon"),
            (LIBVIRT_ZONE, "libvirt-daemon-system"),
        )
        if not glob.glob(path)
    ]
    return missing


class LibvirtError(RuntimeError):
    pass


class LibvirtNetwork:
    """libvirtd (network driver only) and one NAT network in a sandbox's netns."""

    def __init__(
        self,
        sandbox: Sandbox,
        base: Path,
        log_path: Path,
        name: str = "fwrecon-lv",
        bridge: str = "virbr-lv",
        prefix: str = "198.18.100",
    ) -> None:
        # 198.18.0.0/15 (benchmarking), like the sandbox's veth: only ever inside our namespaces
        self.sandbox = sandbox
        self.base = base
        self.log_path = log_path
        self.name = name
        self.bridge = bridge
        self.prefix = prefix
        self.socket = base / "run" / "libvirt" / "libvirt-sock"
        self.uri = f"network:///system?socket={self.socket}"
        self._proc: subprocess.Popen[bytes] | None = None  # the --inside helper, parent of libvirtd
        self._monitor: subprocess.Popen[bytes] | None = None
        self._mount_ns: str | None = None

    # --- life cycle --------------------------------------------------------

    def start(self) -> None:
        """libvirtd, then the network; waits until libvirt bound the bridge to the libvirt zone."""
        if len(str(self.socket).encode()) > 100:
            raise LibvirtError(f"{self.socket}: too long for a unix socket path")
        self._ensure_libvirt_zone()
        for sub in (*PRIVATE_DIRS, "drivers"):
            (self.base / sub).mkdir(parents=True)
        (self.base / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        driver = sorted(glob.glob(NETWORK_DRIVER))[0]
        os.symlink(driver, self.base / "drivers" / os.path.basename(driver))
        self._start_monitor()
        env = {**self.sandbox.env, "LIBVIRT_DRIVER_DIR": str(self.base / "drivers")}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.sandbox.netns,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    sys.executable,
                    "-I",
                    __file__,
                    INSIDE,
                    str(self.base),
                    "--",
                    LIBVIRTD,
                    "--config",
                    "/etc/libvirt/libvirtd.conf",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd="/",
            )
        self._wait(lambda: self.virsh("net-list", check=False).returncode == 0, START_TIMEOUT, "libvirtd's socket")
        self._remember_mount_ns()
        xml = self.base / "network.xml"
        xml.write_text(NETWORK_XML.format(name=self.name, bridge=self.bridge, prefix=self.prefix))
        self.virsh("net-create", str(xml))
        # libvirt's firewalld backend (not its iptables one) binds the bridge to its zone
        self._wait(lambda: self.zone_of_bridge() == "libvirt", 10, f"{self.bridge} in zone libvirt")

    def stop(self) -> None:
        """Destroy the network, stop libvirtd, kill what is left in its mount namespace,
        remove a leftover bridge. Fine to call after a failed or partial start."""
        errors: list[str] = []
        self._remember_mount_ns()
        if self._proc is not None and self._proc.poll() is None:
            proc = self.virsh("net-destroy", self.name, check=False)
            if proc.returncode != 0 and "not found" not in proc.stderr:
                errors.append(f"net-destroy: {proc.stderr.strip()}")
            self._proc.send_signal(signal.SIGTERM)  # the helper passes it on to libvirtd
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                errors.append("libvirtd ignored SIGTERM for 15 s")
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for pid in self._pids_in_mount_ns():  # dnsmasq, if net-destroy did not get to it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._pids_in_mount_ns():
            time.sleep(0.2)
            if self._pids_in_mount_ns():
                errors.append(f"processes left in libvirtd's mount namespace: {self._pids_in_mount_ns()}")
        if self.sandbox.netns_exec(["ip", "link", "show", self.bridge]).returncode == 0:
            self.sandbox.netns_exec(["ip", "link", "del", self.bridge])
        if self._monitor is not None:
            self._monitor.terminate()
            self._monitor.wait(5)
            self._monitor = None
        self._proc = None
        shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            raise LibvirtError("; ".join(errors))

    def _ensure_libvirt_zone(self) -> None:
        """firewalld reads /usr/lib/firewalld at start and reload: a zone installed after
        the sandbox started is there after one reload."""
        if "libvirt" not in self.sandbox.firewall_cmd("--get-zones", check=True).stdout.split():
            self.sandbox.reload()
        if "libvirt" not in self.sandbox.firewall_cmd("--get-zones", check=True).stdout.split():
            raise LibvirtError(f"the sandboxed firewalld has no libvirt zone, though {LIBVIRT_ZONE} exists")

    def _start_monitor(self) -> None:
        """Record libvirt's changeZoneOfInterface calls (fwrecon binds with addInterface)."""
        path = self.base / "zone-calls.log"
        with open(path, "wb") as out:
            self._monitor = subprocess.Popen(
                [
                    "dbus-monitor",
                    "--address",
                    self.sandbox.bus_address,
                    f"type='method_call',interface='{ZONE_IFACE}',member='changeZoneOfInterface'",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        # dbus-monitor has become a monitor once the bus took its name away again
        self._wait(lambda: "NameLost" in path.read_text(errors="replace"), 10, "dbus-monitor")

    def _remember_mount_ns(self) -> None:
        """libvirtd's mount namespace: the helper's, once unshare made it."""
        if self._mount_ns is None and self._proc is not None and self._proc.poll() is None:
            try:
                ns = os.readlink(f"/proc/{self._proc.pid}/ns/mnt")
            except OSError:
                return
            if ns != os.readlink("/proc/self/ns/mnt"):
                self._mount_ns = ns

    def _pids_in_mount_ns(self) -> list[int]:
        if self._mount_ns is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "ns" / "mnt") == self._mount_ns and int(entry.name) != os.getpid():
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids

    def _wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self._proc is not None and self._proc.poll() is not None:
                raise LibvirtError(
                    f"libvirtd exited ({self._proc.returncode}) while waiting for {what}:\n"
                    f"{self.log_path.read_text(errors='replace')[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise LibvirtError(
                    f"timed out after {timeout} s waiting for {what}; libvirtd's log:\n"
                    f"{self.log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.05)

    # --- looking at it -----------------------------------------------------

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["virsh", "-q", "-c", self.uri, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        if check and proc.returncode != 0:
            raise LibvirtError(f"virsh {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def zone_of_bridge(self) -> str:
        return self.sandbox.firewall_cmd(f"--get-zone-of-interface={self.bridge}").stdout.strip()

    def zone_calls(self) -> int:
        """How many times libvirt has bound an interface to a zone so far."""
        return (self.base / "zone-calls.log").read_text(errors="replace").count("member=changeZoneOfInterface")

    def dnsmasq_pid(self) -> int | None:
        try:
            return int((self.base / "run" / "libvirt" / "network" / f"{self.name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def iptables_rules(self) -> list[str]:
        """libvirt's own rules: its LIBVIRT_* chains and the jumps to them (iptables-save
        in the sandbox netns, where firewalld's passthrough put them)."""
        out = self.sandbox.netns_exec(["iptables-save"], check=True).stdout
        table = ""
        rules = []
        for line in out.splitlines():
            if line.startswith("*"):
                table = line
            elif "LIBVIRT_" in line:
                rules.append(f"{table} {line.split(' [')[0]}")  # chain lines without counters
        return rules


def _inside(base: Path, command: list[str]) -> int:
    """In the new mount namespace: libvirt's directories below base, then run command.

    Stays its parent and a child subreaper, so dnsmasq (which daemonizes) is
    reparented here rather than to PID 1, and reaped: SIGTERM/SIGINT go on to
    command; once it exits, whatever is left is killed, and this exits with
    command's exit code.
    """
    for sub, target in PRIVATE_DIRS.items():
        subprocess.run(["mount", "--bind", str(base / sub), target], check=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    child = subprocess.Popen(command)

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = 1
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return rc
        if pid == child.pid:
            rc = os.waitstatus_to_exitcode(status)
            for orphan in _children(os.getpid()):
                os.kill(orphan, signal.SIGKILL)


def _children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass
    return pids


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] != [INSIDE] or "--" not in args:
        sys.exit(__doc__)
    sys.exit(_inside(Path(args[1]), args[args.index("--") + 1 :]))
