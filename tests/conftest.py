"""Shared fixtures: a real, sandboxed firewalld for integration tests.

The sandbox itself lives in contrib/fwsandbox.py (also behind contrib/sandbox).
One sandbox per test session (its own netns and private bus, so parallel runs
never clash); `fw` resets it before each test. Tests needing asyncio call
asyncio.run() themselves (no pytest-asyncio).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "contrib"))

import fwsandbox  # noqa: E402
from fwsandbox import Sandbox  # noqa: E402
from prereq import skip_or_fail  # noqa: E402

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
_STALE_DIR = re.compile(r"fwrecon-t(\d+)-.+")
# Every process the session starts inherits this; whatever still carries it
# when the session ends outlived its test (see pytest_sessionfinish).
SESSION_MARKER = "FWRECON_TEST_SESSION"
LEFTOVER_GRACE = 2.0  # seconds for processes already dying (a SIGKILLed daemon's child) to go


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ[SESSION_MARKER] = str(os.getpid())


def session_processes(marker: str) -> dict[int, str]:
    """Live processes (pid -> command line) whose environment has ``SESSION_MARKER=marker``,
    except this one; zombies and processes already exiting do not count."""
    wanted = f"{SESSION_MARKER}={marker}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
        if state not in ("Z", "X", "x"):
            found[int(entry.name)] = cmdline
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if a process it started is still running; kill those.

    Session fixtures (the sandbox's dbus-daemon and firewalld) are torn down
    before this hook runs, so they must be gone too.
    """
    marker = os.environ.get(SESSION_MARKER)
    if marker != str(os.getpid()):
        return
    deadline = time.monotonic() + LEFTOVER_GRACE
    leftovers = session_processes(marker)
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.1)
        leftovers = session_processes(marker)
    if not leftovers:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def write(line: str) -> None:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line, file=sys.stderr)

    if reporter is not None:
        reporter.write("\n")  # the progress line may still be open
    write(f"ERROR: {len(leftovers)} process(es) started by the test session still running at its end (killed now):")
    for pid, cmdline in sorted(leftovers.items()):
        write(f"  pid {pid}: {cmdline}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
