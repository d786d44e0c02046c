"""README's first command: contrib/demo runs on this machine and leaves nothing behind.

(Its daemon mode runs until Ctrl-C; ``--once`` and ``--reload`` run the same
set-up and tear-down and end by themselves.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from prereq import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = Path("/run/fwrecon-demo")
DEMO_NETNS = "fwrecon-demo"


def run_demo(*args: str) -> str:
    if DEMO_DIR.exists():
        skip_or_fail(f"{DEMO_DIR} exists: a demo is running on this machine")
    proc = subprocess.run([str(ROOT / "contrib" / "demo"), *args], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not DEMO_DIR.exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    assert DEMO_NETNS not in netns
    return proc.stdout


def test_demo_once_applies_the_shipped_policies() -> None:
    out = run_demo("--once")
    zone = out.split("== firewall-cmd --zone=public --list-all (sandbox)", 1)[1]
    assert "8080/tcp" in zone and "http https" in zone
    assert "FWRECON_IN 0 -p tcp --dport 9000 -j ACCEPT" in out
    assert "chain ssh_guard" in out


def test_demo_reload_shows_what_each_persist_mode_leaves_after_a_reload() -> None:
    out = run_demo("--reload")
    runtime, permanent = out.split("== fwrecon apply --persist permanent", 1)
    assert "zone public has ports []" in runtime
    assert "+ zone public port 8080/tcp  [web]" in runtime
    assert "zone public has ports [8080/tcp 60000-60010/udp]" in permanent
    assert "what fwrecon must re-add (fwrecon plan --persist permanent):\nnothing\n" in permanent
