"""Running firewall tools (iptables-restore, nft, ...): the one way to do it.

argv lists only, never a shell; a timeout on every run; optionally inside a
network namespace (``ip netns exec``, which the tests use); the sbin
directories on the search path even when the daemon's PATH lacks them; a
missing tool, a missing namespace or a hung tool becomes `BackendUnavailable`.

No child outlives fwrecon: a long-lived child (``nft monitor``, started with
``spawn(..., die_with_parent=True)``) asks the kernel for SIGKILL when its
parent dies (``prctl(PR_SET_PDEATHSIG)``, which survives ``ip netns exec``:
that execs, it does not fork), so even a ``kill -9`` of fwrecon takes it
along.  Short runs (`ToolRunner.run`) do not: they are bounded by the timeout
already (the tool is killed and reaped when it expires, and the run raises
`BackendUnavailable`), and the ``preexec_fn`` that sets the signal forces
fork (copying the page tables of the whole process) where Python would
otherwise use vfork: measured +3.5 to +4.5 ms per run, 2.7 ms → 6.3-7.4 ms
for ``nft --version``, more in a bigger daemon; every observe and batch runs
tools.  A short run orphaned by a ``kill -9`` finishes its batch on its own
(its input is a file, not a pipe, so it never waits for fwrecon); only a
tool that hangs by itself would stay, and the next run's timeout tells.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..errors import BackendUnavailable

SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# What `ip netns exec` prints when it, not the tool, failed.
NETNS_FAILURES = ("Cannot open network namespace", "exec of ")


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved once at import (nothing to look up in a forked child)."""
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):  # not glibc/musl on Linux
        return None


_PRCTL = _load_prctl()
_SIGKILL = int(signal.SIGKILL)


def parent_death_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGKILL when this process dies.

    The parent may die between fork and prctl; the child then has a new
    parent already, so it checks and exits at once.  (The signal follows the
    *thread* that forked: spawn from the event-loop thread, which lives as
    long as the process.)  None where prctl is not available.
    """
    if _PRCTL is None:
        return None
    parent = os.getpid()
    prctl, sigkill, getppid, exit_now = _PRCTL, _SIGKILL, os.getppid, os._exit

    def preexec() -> None:  # runs in the child between fork and exec: no imports, no allocations to speak of
        prctl(PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if getppid() != parent:
            exit_now(1)

    return preexec


def search_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])


def which(name: str) -> str | None:
    return shutil.which(name, path=search_path())


@dataclass(frozen=True)
class ToolResult:
    returncode: int
    stdout: str
    stderr: str


async def kill(proc: asyncio.subprocess.Process, *, group: bool = False) -> None:
    """Terminate, then kill, and reap ``proc`` (no zombies), even while being cancelled.

    ``group``: ``proc`` leads a process group of its own (``start_new_session``);
    signal the whole group, and after ``proc`` is gone SIGKILL what is left of
    it (a wrapper script's own children).  The group id cannot be reused while
    any member lives.
    """
    # os.kill, not proc.send_signal: Popen.send_signal polls first and so may reap
    # the child behind asyncio's child watcher (which then reports status 255).
    # Until asyncio has reaped it, the pid cannot have been reused.
    send = os.killpg if group else os.kill
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            send(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(2):
                await asyncio.shield(proc.wait())
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                send(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class ToolRunner:
    """Runs tools for one backend, in ``netns`` when given.

    The backends' one seam to the host: a test hands a backend a subclass
    (constructor argument ``tools``) whose `run` and `which` answer from
    canned output, instead of patching the backend's internals.
    """

    def __init__(self, netns: str | None = None, timeout: float = 30.0) -> None:
        self.netns = netns
        self.timeout = timeout

    def which(self, name: str) -> str | None:
        """Where ``name`` is installed (sbin directories included), or None."""
        return which(name)

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` with the tool resolved on the search path, inside the namespace if any."""
        tool = self.which(argv[0]) or argv[0]
        argv = [tool, *argv[1:]]
        if self.netns is not None:
            argv = [which("ip") or "ip", "netns", "exec", self.netns, *argv]
        return argv

    async def spawn(self, argv: list[str], *, die_with_parent: bool = False, **kwargs: Any) -> asyncio.subprocess.Process:
        """Start a tool; ``die_with_parent`` for long-running ones such as
        ``nft monitor`` (see module docstring)."""
        full = self.argv(argv)
        env = {**os.environ, "LC_ALL": "C", "PATH": search_path()}
        if die_with_parent:
            kwargs["preexec_fn"] = parent_death_preexec()
        try:
            return await asyncio.create_subprocess_exec(*full, env=env, **kwargs)
        except OSError as exc:  # not installed, not executable
            raise BackendUnavailable(f"cannot run {full[0]}: {exc}") from exc

    async def run(
        self,
        argv: list[str],
        stdin: str | None = None,
        on_start: Callable[[int], None] | None = None,
        on_exit: Callable[[int], None] | None = None,
    ) -> ToolResult:
        """Run to completion with the timeout; ``on_start(pid)`` / ``on_exit(pid)``
        bracket the run however it ends (e.g. to recognise our own changes in a monitor).

        Input and output go through anonymous in-memory files, not pipes: the
        tool reads and writes at its own pace with no event-loop round trip per
        64 KiB (a 1,000-rule restore script: ~3 ms faster).
        """
        with _memory_file(stdin) as source, _memory_file() as out, _memory_file() as err:
            # A session of its own: a hung tool is killed with whatever it started.
            proc = await self.spawn(
                argv,
                stdin=source if source is not None else asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            if on_start is not None:
                on_start(proc.pid)
            try:
                async with asyncio.timeout(self.timeout):
                    await proc.wait()
            except TimeoutError as exc:
                await kill(proc, group=True)
                raise BackendUnavailable(f"{' '.join(argv[:4])} did not finish within {self.timeout:g}s (killed)") from exc
            except BaseException:
                await kill(proc, group=True)
                raise
            finally:
                if on_exit is not None:
                    on_exit(proc.pid)
            result = ToolResult(proc.returncode if proc.returncode is not None else -1, _text_of(out), _text_of(err))
        if result.returncode < 0:
            # Crashed or killed from outside, maybe mid-commit: what it did is unknown.
            raise BackendUnavailable(
                f"{' '.join(argv[:4])} died of {_signal_name(-result.returncode)}"
                + (f": {result.stderr.strip()[:200]}" if result.stderr.strip() else "")
            )
        if result.returncode != 0 and self.netns is not None and any(s in result.stderr for s in NETNS_FAILURES):
            raise BackendUnavailable(f"cannot run in network namespace {self.netns}: {result.stderr.strip()}")
        return result


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@contextlib.contextmanager
def _memory_file(content: str | None = "") -> Iterator[BinaryIO | None]:
    """An anonymous file holding ``content`` (None: no file at all), in memory
    (memfd) where the kernel allows it, else a deleted temporary file."""
    if content is None:
        yield None
        return
    try:
        handle = open(os.memfd_create("fwrecon", os.MFD_CLOEXEC), "w+b")  # noqa: SIM115 (closed by the with below)
    except OSError:  # memfd_create refused (an old kernel, a strict seccomp profile)
        handle = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the with below)
    with handle:
        if content:
            handle.write(content.encode())
            handle.flush()
            handle.seek(0)
        yield handle


def _text_of(handle: BinaryIO | None) -> str:
    assert handle is not None
    handle.seek(0)
    return handle.read().decode(errors="replace")


def process_gone(pid: int) -> bool:
    """No process ``pid`` exists (a scratch object named after it is stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False
