"""No process fwrecon starts outlives it, and none the test session starts outlives the session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import Daemon, Fwrecon, wait_until



def children(pid: int) -> dict[int, str]:
    """Live children of ``pid``: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == pid and stat[0] not in ("Z", "X"):
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_nft_monitor_dies_with_a_sigkilled_daemon(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    fwrecon.backend = "nftables"
    daemon = daemon_factory(started_when="nft_monitor_started")
    monitors = wait_until(lambda: [pid for pid, cmd in children(daemon.proc.pid).items() if "nft monitor" in cmd],
                          5, "the nft monitor child")
    (monitor,) = monitors  # type: ignore[misc]
    daemon.proc.kill()
    daemon.proc.wait()
    wait_until(lambda: not alive(monitor), 2, f"nft monitor (pid {monitor}) to die with its parent")
