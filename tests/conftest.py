"""Shared fixtures: a real, sandboxed firewalld for integration tests.

The sandbox itself lives in contrib/fwsandbox.py (also behind contrib/sandbox).
One sandbox per test session (its own netns and private bus, so parallel runs
never clash); `fw` resets it before each test. Tests needing asyncio call
asyncio.run() themselves (no pytest-asyncio).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "contrib"))

import fwsandbox  # noqa: E402
from prereq import skip_or_fail  # noqa: E402
from fwsandbox import Sandbox  # noqa: E402

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
_STALE_DIR = re.compile(r"fwrecon-t(\d+)-.+")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ is an integration test."""
    for item in items:
        if INTEGRATION_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


def require_sandbox_prerequisites() -> None:
    """Integration tests need root and the sandbox's tools (see tests/prereq.py)."""
    missing = fwsandbox.missing_prerequisites()
    if missing:
        skip_or_fail(f"integration tests need: {', '.join(missing)}")


@pytest.fixture(autouse=True)
def _integration_prerequisites(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("integration"):
        require_sandbox_prerequisites()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_stale_sandboxes() -> None:
    """Tear down sandboxes of earlier sessions that died without cleanup (e.g. SIGKILL)."""
    for path in Path(tempfile.gettempdir()).glob("fwrecon-t*-*"):
        match = _STALE_DIR.fullmatch(path.name)
        if match and path.is_dir() and not _pid_exists(int(match[1])):
            Sandbox(path).stop()
            shutil.rmtree(path, ignore_errors=True)


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Let SIGTERM unwind like Ctrl-C so fixture teardown still runs; returns an undo."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """One running sandbox (with the peer netns and veth) for the whole session.

    Not reset between tests: use `fw` for that. Its directory is removed at the
    end unless tests failed (then firewalld.log stays for a post-mortem).
    """
    require_sandbox_prerequisites()
    _reap_stale_sandboxes()
    pid = os.getpid()
    sb = Sandbox(tempfile.mkdtemp(prefix=f"fwrecon-t{pid}-"), f"fwrecon-t{pid}")
    atexit.register(sb.stop)
    undo_sigterm = _sigterm_as_interrupt()
    try:
        sb.start()
        sb.add_peer()
        yield sb
    finally:
        try:
            sb.stop()
        finally:
            atexit.unregister(sb.stop)
            undo_sigterm()
            if request.session.testsfailed == 0:
                shutil.rmtree(sb.dir, ignore_errors=True)


@pytest.fixture
def fw(sandbox: Sandbox) -> Sandbox:
    """The sandbox, reset to its just-started state (restarting firewalld if a test stopped it)."""
    sandbox.reset()
    return sandbox


@pytest.fixture
def bus_address(fw: Sandbox) -> str:
    """D-Bus address of a freshly reset sandboxed firewalld (for MessageBus(bus_address=...))."""
    return fw.bus_address
