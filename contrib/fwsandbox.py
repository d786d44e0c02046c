"""A throwaway firewalld for tests and local runs: private bus, own netns, own config.

Why: fwrecon talks to firewalld over D-Bus, and only a real firewalld shows what
it really does. This module runs one that can never reach the host's firewall
(it lives in its own network namespace) nor /etc/firewalld (it reads a private
copy via --system-config), reachable on a private dbus-daemon.

Standard library only, so `contrib/sandbox` runs with any python3 and the
tests can import it (tests/conftest.py adds contrib/ to sys.path).

Layout of a sandbox directory DIR:
    bus.conf, bus          private dbus-daemon config and socket
    dbus.pid, firewalld.pid
    netns, peer-netns      names of the namespaces this sandbox created (ownership)
    etc/, etc.pristine/    firewalld's config, and the copy taken at start (for reset)
    baseline.nft           `nft list ruleset` right after the first start (for reset)
    firewalld.log          firewalld's log (--log-file); firewalld.out its stdout/stderr
`stop` removes everything but the two logs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_DIR = Path("/run/fwrecon-sandbox")
DEFAULT_NETNS = "fwrecon-sb"

# Traffic helpers: a veth pair between the sandbox netns and NETNS-peer.
# 198.18.0.0/15 (benchmarking range) only ever exists inside our own namespaces.
SANDBOX_IFACE = "fwsb0"  # sandbox side; put this into a zone to test zone rules
PEER_IFACE = "fwsb1"  # peer side
SANDBOX_ADDR = "198.18.0.1"
PEER_ADDR = "198.18.0.2"
PREFIX_LEN = 30

FIREWALLD = "/usr/sbin/firewalld"
HOST_CONFIG = Path("/etc/firewalld")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
REQUIRED_TOOLS = ("ip", "dbus-daemon", "dbus-send", "firewall-cmd", "nft")

FW_NAME = "org.fedoraproject.FirewallD1"
FW_PATH = "/org/fedoraproject/FirewallD1"
FW_POLICIES = FW_NAME + ".policies"

_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={bus}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""

# Runs in the sandbox netns: accept (and drop) connections until killed or idle.
LISTENER_SCRIPT = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    while True:
        s.accept()[0].close()
except OSError:
    pass
"""

# Runs in the peer netns: one connect, the outcome on stdout.
CONNECT_SCRIPT = r"""
import errno, socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("accepted")
except socket.timeout:
    print("timeout")
except OSError as e:
    rejected = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES)
    print("refused" if e.errno in rejected else "error %s %s" % (e.errno, e.strerror))
"""


class SandboxError(RuntimeError):
    """The sandbox could not be brought into the requested state."""


def which(tool: str) -> str | None:
    """Like shutil.which, but also looks in the sbin dirs a non-login root PATH may lack."""
    return shutil.which(tool, path=_SEARCH_PATH)


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run a sandbox (empty list: all there)."""
    missing = [] if os.geteuid() == 0 else ["root privileges"]
    missing += [tool for tool in REQUIRED_TOOLS if which(tool) is None]
    if not os.access(FIREWALLD, os.X_OK):
        missing.append(FIREWALLD)
    return missing


def _run(
    argv: Sequence[str],
    *,
    check: bool = False,
    timeout: float | None = 60,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with captured text output; argv lists only, never a shell."""
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise SandboxError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no file)"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    """True while pid runs; reaps it if it is our child, treats zombies as dead."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _terminate(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL if pid is still there after timeout."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _wait_dead(pid, wait):
            return
    raise SandboxError(f"pid {pid} survived SIGKILL")


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """relative path -> content (None for directories), to compare config trees."""
    snap: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            snap[os.path.join(rel, d)] = None
        for f in filenames:
            snap[os.path.join(rel, f)] = Path(dirpath, f).read_bytes()
    return snap


def _sync_tree(src: Path, dst: Path) -> bool:
    """Make dst's content equal to src's in place (firewalld watches dst's dirs).

    Returns whether anything changed.
    """
    want, have = _snapshot(src), _snapshot(dst)
    if want == have:
        return False
    for rel in sorted(set(have) - set(want), reverse=True):  # children before parents
        path = dst / rel
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for rel in sorted(want):  # parents before children
        if want[rel] is None:
            (dst / rel).mkdir(exist_ok=True)
        elif have.get(rel) != want[rel]:
            shutil.copy2(src / rel, dst / rel)
    return True


class Sandbox:
    """One firewalld on a private bus inside its own network namespace."""

    def __init__(self, dir: str | os.PathLike[str] = DEFAULT_DIR, netns: str = DEFAULT_NETNS) -> None:
        self.dir = Path(dir).absolute()
        self.netns = self._recorded("netns") or netns
        self._fw_proc: subprocess.Popen[bytes] | None = None

    # --- paths and names -------------------------------------------------

    @property
    def bus_path(self) -> Path:
        return self.dir / "bus"

    @property
    def bus_address(self) -> str:
        """The D-Bus address clients use (DBUS_SYSTEM_BUS_ADDRESS, MessageBus(bus_address=...))."""
        return f"unix:path={self.bus_path}"

    @property
    def peer_netns(self) -> str:
        return f"{self.netns}-peer"

    @property
    def etc_dir(self) -> Path:
        return self.dir / "etc"

    @property
    def log_path(self) -> Path:
        return self.dir / "firewalld.log"

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients: ours with the sandbox as system bus, minus venv leaks."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus_address
        return env

    def _file(self, name: str) -> Path:
        return self.dir / name

    def _recorded(self, name: str) -> str | None:
        try:
            return self._file(name).read_text().strip() or None
        except OSError:
            return None

    # --- whole sandbox ---------------------------------------------------

    def start(self) -> str:
        """Start bus, netns and firewalld; returns the bus address. No-op if running."""
        if self.is_running():
            return self.bus_address
        self.stop()  # leftovers of a crashed run of this dir
        if _netns_exists(self.netns):
            raise SandboxError(f"netns {self.netns} exists but was not created by {self.dir}; pick another name or remove it")
        if len(str(self.bus_path).encode()) > 100:
            raise SandboxError(f"{self.bus_path}: too long for a unix socket path")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._start_dbus()
        self._create_netns(self.netns, "netns")
        self._copy_config()
        self.start_firewalld()
        self._file("baseline.nft").write_text(self.ruleset())
        return self.bus_address

    def stop(self) -> None:
        """Tear everything down by recorded PID and name; fine if already stopped."""
        self.stop_firewalld()
        for record in ("peer-netns", "netns"):
            self._delete_netns(record)
        pid = _read_pid(self._file("dbus.pid"))
        if pid and str(self._file("bus.conf")) in _cmdline(pid):
            _terminate(pid)
        for name in ("bus", "bus.conf", "dbus.pid", "firewalld.pid", "baseline.nft"):
            self._file(name).unlink(missing_ok=True)
        for name in ("etc", "etc.pristine"):
            shutil.rmtree(self._file(name), ignore_errors=True)

    def is_running(self) -> bool:
        """Bus, netns and a RUNNING firewalld all present."""
        return self._owns_netns("netns") and self.firewalld_running()

    def _owns_netns(self, record: str) -> bool:
        name = self._recorded(record)
        return name is not None and _netns_exists(name)

    def status(self) -> dict[str, object]:
        return {
            "dir": str(self.dir),
            "bus": self.bus_address if self.bus_path.exists() else None,
            "dbus_pid": self._live_pid("dbus.pid", str(self._file("bus.conf"))),
            "netns": self.netns if self._owns_netns("netns") else None,
            "peer_netns": self.peer_netns if self._owns_netns("peer-netns") else None,
            "firewalld_pid": self._live_pid("firewalld.pid", str(self.etc_dir)),
            "firewalld_state": self.state(),
        }

    def _live_pid(self, record: str, marker: str) -> int | None:
        pid = _read_pid(self._file(record))
        return pid if pid and _pid_alive(pid) and marker in _cmdline(pid) else None

    def _start_dbus(self) -> None:
        conf = self._file("bus.conf")
        conf.write_text(BUS_CONF.format(bus=self.bus_path))
        self.bus_path.unlink(missing_ok=True)
        out = _run(["dbus-daemon", f"--config-file={conf}", "--fork", "--print-pid"], check=True, timeout=15).stdout
        self._file("dbus.pid").write_text(out.split()[0] + "\n")

    def _create_netns(self, name: str, record: str) -> None:
        _run(["ip", "netns", "add", name], check=True)
        self._file(record).write_text(name + "\n")
        _run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)

    def _delete_netns(self, record: str) -> None:
        """Delete a namespace we created, after killing whatever still runs in it."""
        name = self._recorded(record)
        if name and _netns_exists(name):
            for pid in _run(["ip", "netns", "pids", name]).stdout.split():
                if int(pid) != os.getpid():
                    _terminate(int(pid), timeout=2.0)
            _run(["ip", "netns", "del", name], check=True)
        self._file(record).unlink(missing_ok=True)

    def _copy_config(self) -> None:
        for name in ("etc", "etc.pristine"):
            shutil.rmtree(self._file(name), ignore_errors=True)
            shutil.copytree(HOST_CONFIG, self._file(name), symlinks=True)

    # --- firewalld alone (simulate restarts and crashes) ---------------------

    def start_firewalld(self, timeout: float = START_TIMEOUT) -> None:
        """Start firewalld in the netns and wait until it reports RUNNING on the bus."""
        if self.firewalld_running():
            return
        if not _netns_exists(self.netns) or not self.bus_path.exists():
            raise SandboxError(f"sandbox {self.dir} is not started (no netns or bus)")
        self.stop_firewalld()
        self.log_path.write_text("")
        with open(self._file("firewalld.out"), "wb") as out:
            self._fw_proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    FIREWALLD,
                    "--nofork",
                    "--nopid",
                    "--system-config",
                    str(self.etc_dir),
                    "--log-target",
                    "file",
                    "--log-file",
                    str(self.log_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                cwd="/",
            )
        self._file("firewalld.pid").write_text(f"{self._fw_proc.pid}\n")
        self._wait_running(timeout)

    def _wait_running(self, timeout: float) -> None:
        assert self._fw_proc is not None
        deadline = time.monotonic() + timeout
        while self.state() != "RUNNING":
            if self._fw_proc.poll() is not None or time.monotonic() > deadline:
                why = (
                    f"exited with {self._fw_proc.returncode}"
                    if self._fw_proc.returncode is not None
                    else f"not RUNNING after {timeout:.0f} s"
                )
                self.stop_firewalld()
                raise SandboxError(
                    f"firewalld {why}.\n--- {self.log_path} ---\n{_tail(self.log_path)}"
                    f"\n--- {self._file('firewalld.out')} ---\n{_tail(self._file('firewalld.out'))}"
                )
            time.sleep(0.05)

    def stop_firewalld(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (firewalld cleans its rules up), SIGKILL after timeout."""
        self._signal_firewalld(timeout)

    def kill_firewalld(self) -> None:
        """SIGKILL: a crash, leaving firewalld's rules in the netns."""
        self._signal_firewalld(None)

    def _signal_firewalld(self, timeout: float | None) -> None:
        pid = _read_pid(self._file("firewalld.pid"))
        if pid and _pid_alive(pid) and str(self.etc_dir) in _cmdline(pid):
            if timeout is None:
                os.kill(pid, signal.SIGKILL)
                _wait_dead(pid, 5.0)
            else:
                _terminate(pid, timeout)
        if self._fw_proc is not None:
            self._fw_proc.poll()  # keep Popen's bookkeeping quiet
            self._fw_proc = None
        self._file("firewalld.pid").unlink(missing_ok=True)
        self._wait_name_released()

    def _wait_name_released(self, timeout: float = 5.0) -> None:
        """dbus-daemon notices a dead owner asynchronously; wait so callers see a clean
        ServiceUnknown (not NoReply) right after stop."""
        deadline = time.monotonic() + timeout
        while self._name_has_owner() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _name_has_owner(self) -> bool:
        if not self.bus_path.exists():
            return False
        out = _run(
            [
                "dbus-send",
                f"--bus={self.bus_address}",
                "--print-reply=literal",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
                f"string:{FW_NAME}",
            ],
            timeout=10,
        )
        return out.returncode == 0 and out.stdout.strip().endswith("true")

    def state(self) -> str | None:
        """firewalld's `state` property (INIT, RUNNING, FAILED) or None if not on the bus."""
        out = self._dbus_send(FW_PATH, "org.freedesktop.DBus.Properties.Get", f"string:{FW_NAME}", "string:state", timeout=2.0)
        return out.split()[-1] if out else None

    def firewalld_running(self) -> bool:
        pid = _read_pid(self._file("firewalld.pid"))
        return bool(pid and _pid_alive(pid) and self.bus_path.exists() and self.state() == "RUNNING")

    # --- talking to firewalld and the netns --------------------------------

    def _dbus_send(self, path: str, method: str, *args: str, timeout: float = 30.0) -> str | None:
        """One D-Bus call via dbus-send (a few ms; firewall-cmd costs ~150 ms). None on error."""
        if not self.bus_path.exists():
            return None
        proc = _run(
            [
                "dbus-send",
                f"--bus={self.bus_address}",
                "--print-reply=literal",
                f"--reply-timeout={int(timeout * 1000)}",
                f"--dest={FW_NAME}",
                path,
                method,
                *args,
            ],
            timeout=timeout + 5,
        )
        return proc.stdout.strip() if proc.returncode == 0 else None

    def reload(self) -> None:
        """firewalld's reload over D-Bus (~0.2 s; firewall-cmd --reload adds ~0.15 s)."""
        self._call("reload")

    def _call(self, method: str, interface: str = FW_NAME) -> str:
        out = self._dbus_send(FW_PATH, f"{interface}.{method}")
        if out is None:
            raise SandboxError(f"D-Bus call {interface}.{method} failed")
        return out

    def firewall_cmd(self, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """firewall-cmd against the sandbox bus."""
        return _run(["firewall-cmd", *args], env=self.env, check=check, timeout=timeout)

    def netns_exec(
        self, argv: Sequence[str], *, check: bool = False, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the sandbox netns (with the sandbox bus as system bus)."""
        return _run(["ip", "netns", "exec", self.netns, *argv], env=self.env, check=check, timeout=timeout, input=input)

    def peer_exec(self, argv: Sequence[str], *, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run argv inside the peer netns (see add_peer)."""
        return _run(["ip", "netns", "exec", self.peer_netns, *argv], check=check, timeout=timeout)

    def nft(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """nft inside the sandbox netns: what firewalld really did."""
        return self.netns_exec(["nft", *args], check=check)

    def ruleset(self) -> str:
        return self.nft("list", "ruleset", check=True).stdout

    # --- reset -----------------------------------------------------------

    def reset(self) -> None:
        """Back to the state right after start(), normally with one reload (~0.2 s).

        A reload (FlushAllOnReload=yes, Debian's default) drops runtime ports,
        rich rules, interface bindings and direct rules, but keeps panic mode
        and lockdown and re-reads the permanent config; so: restore etc/ from
        the pristine copy, leave panic/lockdown, reload, drop nft tables
        firewalld does not own, and restart firewalld if the ruleset still
        differs from the baseline.
        """
        if not self._file("etc.pristine").is_dir():
            raise SandboxError(f"sandbox {self.dir} is not started")
        config_changed = _sync_tree(self._file("etc.pristine"), self.etc_dir)
        if not self.firewalld_running():
            self.start_firewalld()
        else:
            if self._call("queryPanicMode").endswith("true"):
                self._call("disablePanicMode")
            if self._call("queryLockdown", FW_POLICIES).endswith("true"):
                self._call("disableLockdown", FW_POLICIES)
            self._call("reload")
        if self._recorded("peer-netns"):
            self.add_peer()
        if self._clean_ruleset():
            return
        self.stop_firewalld()
        self.start_firewalld()
        if not self._clean_ruleset():
            raise SandboxError(f"ruleset differs from baseline after restart (config restored: {config_changed})")

    def _clean_ruleset(self) -> bool:
        """Delete tables absent from the baseline; True if the ruleset now equals it."""
        baseline = self._recorded("baseline.nft")
        if baseline is None:
            return True
        current = self.ruleset()
        if current.strip() == baseline:
            return True
        keep = {line for line in baseline.splitlines() if line.startswith("table ")}
        for line in current.splitlines():
            if line.startswith("table ") and line not in keep:
                family, name = line.split()[1:3]
                self.nft("delete", "table", family, name, check=True)
        return self.ruleset().strip() == baseline

    # --- traffic ---------------------------------------------------------

    def add_peer(self) -> None:
        """Create NETNS-peer and a veth pair SANDBOX_IFACE <-> PEER_IFACE (idempotent)."""
        if self._recorded("peer-netns") and _run(["ip", "-n", self.netns, "link", "show", SANDBOX_IFACE]).returncode == 0:
            return
        self._delete_netns("peer-netns")
        if _netns_exists(self.peer_netns):
            raise SandboxError(f"netns {self.peer_netns} exists but was not created by {self.dir}")
        self._create_netns(self.peer_netns, "peer-netns")
        _run(
            [
                "ip",
                "-n",
                self.netns,
                "link",
                "add",
                SANDBOX_IFACE,
                "type",
                "veth",
                "peer",
                "name",
                PEER_IFACE,
                "netns",
                self.peer_netns,
            ],
            check=True,
        )
        for ns, iface, addr in ((self.netns, SANDBOX_IFACE, SANDBOX_ADDR), (self.peer_netns, PEER_IFACE, PEER_ADDR)):
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", iface], check=True)
            _run(["ip", "-n", ns, "link", "set", iface, "up"], check=True)

    def tcp_probe(self, port: int, timeout: float = 1.0, *, listen: bool = True) -> str:
        """Connect from the peer to SANDBOX_ADDR:port through the firewall.

        Returns "accepted" (handshake done), "refused" (RST or ICMP reject, e.g.
        firewalld's default icmp admin-prohibited) or "timeout" (dropped). With
        listen=True a throwaway listener runs in the sandbox netns meanwhile, so
        "refused" means the firewall rejected; pass listen=False if the test
        runs its own server on that port.
        """
        self.add_peer()
        listener = self._start_listener(port) if listen else None
        try:
            result = self.peer_exec(
                [sys.executable, "-I", "-S", "-c", CONNECT_SCRIPT, SANDBOX_ADDR, str(port), str(timeout)],
                check=True,
                timeout=timeout + 10,
            )
        finally:
            if listener is not None:
                listener.kill()
                listener.wait()
        outcome = result.stdout.strip()
        if outcome not in ("accepted", "refused", "timeout"):
            raise SandboxError(f"tcp_probe({port}): unexpected outcome {outcome!r}")
        return outcome

    def _start_listener(self, port: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-I", "-S", "-c", LISTENER_SCRIPT, str(port), "60"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            err = proc.communicate()[1]
            raise SandboxError(f"listener on port {port} did not start: {err.strip()}")
        return proc


# --- command line (contrib/sandbox) ----------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandbox",
        description="Run a throwaway firewalld on a private D-Bus inside its own network "
        "namespace (never touches the host firewall or /etc/firewalld).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "start": "start bus, netns and firewalld; print the bus address",
        "stop": "stop everything and delete the namespaces",
        "status": "show what runs (exit 0 if running, 3 if not)",
        "firewalld-start": "start firewalld only (bus and netns stay)",
        "firewalld-stop": "stop firewalld only (bus and netns stay; clients stay connected)",
        "reset": "back to the state right after start (what the tests' fw fixture does)",
        "add-peer": f"create the peer netns and veth {SANDBOX_IFACE}<->{PEER_IFACE}",
    }
    for name, text in helps.items():
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"sandbox directory (default {DEFAULT_DIR})")
        cmd.add_argument(
            "--name", default=None, help=f"network namespace name (default: the one recorded in DIR, else {DEFAULT_NETNS})"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print(f"sandbox: missing prerequisites: {', '.join(missing)}", file=sys.stderr)
        return 2
    sb = Sandbox(args.dir, args.name or DEFAULT_NETNS)
    if args.name and sb.netns != args.name:
        print(f"sandbox: {args.dir} belongs to netns {sb.netns}, not {args.name}", file=sys.stderr)
        return 2
    try:
        return _dispatch(sb, args.command)
    except (SandboxError, subprocess.SubprocessError, OSError) as e:
        print(f"sandbox: {e}", file=sys.stderr)
        return 1


def _dispatch(sb: Sandbox, command: str) -> int:
    if command == "start":
        if sb.is_running():
            print(f"sandbox: already running in {sb.dir} (netns {sb.netns})", file=sys.stderr)
        print(sb.start())
    elif command == "stop":
        sb.stop()
    elif command == "status":
        for key, value in sb.status().items():
            print(f"{key}: {value}")
        return 0 if sb.is_running() else 3
    elif command == "firewalld-start":
        sb.start_firewalld()
    elif command == "firewalld-stop":
        sb.stop_firewalld()
    elif command == "reset":
        sb.reset()
    elif command == "add-peer":
        sb.add_peer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
