"""No process fwrecon starts outlives it, and none the test session starts outlives the session."""

from __future__ import annotations

import os
import subprocess
import sys
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


def running(cmdline: str) -> list[int]:
    """Live processes whose command line is ``cmdline``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip() == cmdline and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
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
    monitors = wait_until(
        lambda: [pid for pid, cmd in children(daemon.proc.pid).items() if "nft monitor" in cmd], 5, "the nft monitor child"
    )
    (monitor,) = monitors  # type: ignore[misc]
    daemon.proc.kill()
    daemon.proc.wait()
    wait_until(lambda: not alive(monitor), 2, f"nft monitor (pid {monitor}) to die with its parent")


def test_a_session_that_leaves_a_process_behind_fails_and_kills_it(tmp_path: Path) -> None:
    """tests/conftest.py's end-of-session check, run on a throwaway session of its own."""
    (tmp_path / "test_leaves.py").write_text(
        "import subprocess\n\ndef test_leaves_a_sleep():\n    subprocess.Popen(['sleep', '4244'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # tests/: its conftest as a plugin
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout and "still running at its end" in result.stdout, result.stdout
    assert "sleep 4244" in result.stdout
    assert not running("sleep 4244")  # killed, not orphaned
