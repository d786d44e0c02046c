"""Helpers for driving fwrecon against the sandboxed firewalld."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from fwsandbox import Sandbox
from prometheus_client.parser import text_string_to_metric_families

from reconciler.model import Item
from reconciler.state import StateStore

ROOT = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def in_netns(netns: str, work: Callable[[], T]) -> T:
    """Run ``work`` in a short-lived thread that entered network namespace ``netns``.

    setns(CLONE_NEWNET) changes only the calling thread, which ends right
    after: the test process itself stays in its own namespace.  Sockets made
    there keep their namespace (e.g. to reach a daemon's metrics endpoint).
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def enter_and_run() -> None:
        try:
            with open(f"/run/netns/{netns}") as handle:
                if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}: {os.strerror(ctypes.get_errno())}")
            result.append(work())
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=enter_and_run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


@dataclass
class Fwrecon:
    """Runs the real ``fwrecon`` command (as a subprocess) against one sandbox."""

    sandbox: Sandbox
    policy_dir: Path
    state_file: Path
    in_netns: bool = False  # run fwrecon inside the sandbox netns (needed for iptables/nft work)
    backend: str | None = None  # --backend; None = fwrecon's default (auto)

    def write_policy(self, name: str, text: str) -> Path:
        path = self.policy_dir / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        path.chmod(0o644)
        return path

    def remove_policy(self, name: str) -> None:
        (self.policy_dir / f"{name}.toml").unlink()

    def argv(self, command: str, *extra: str, netns: bool | None = None) -> list[str]:
        """``netns``: run inside the sandbox netns (default: `in_netns`)."""
        prefix = ["ip", "netns", "exec", self.sandbox.netns] if (self.in_netns if netns is None else netns) else []
        backend = ["--backend", self.backend] if self.backend else []
        return [
            *prefix,
            sys.executable,
            "-m",
            "reconciler",
            command,
            *backend,
            "--bus-address",
            self.sandbox.bus_address,
            "--policy-dir",
            str(self.policy_dir),
            "--state-file",
            str(self.state_file),
            "--log-format",
            "json",
            *extra,
        ]

    def run(self, command: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(command, *extra), capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def apply(self) -> subprocess.CompletedProcess[str]:
        return self.run("apply")

    def status(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """`fwrecon status`: files only, so no bus address, no backend, no namespace."""
        argv = [
            sys.executable,
            "-m",
            "reconciler",
            "status",
            "--policy-dir",
            str(self.policy_dir),
            "--state-file",
            str(self.state_file),
            *extra,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)

    def owned(self) -> list[dict]:
        """The state file's owned items, one entry each (as version 1 wrote them: the file groups elements)."""
        state = StateStore(self.state_file).load()
        return [
            {"item": item.to_json(), "policies": sorted(state.owned[item]), "backend": state.placed.get(item)}
            for item in sorted(state.owned, key=Item.sort_key)
        ]


@pytest.fixture
def fwrecon(fw: Sandbox, tmp_path: Path) -> Fwrecon:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir(mode=0o755)
    return Fwrecon(fw, policy_dir, tmp_path / "state" / "state.json")


@pytest.fixture
def bare(fwrecon: Fwrecon) -> Fwrecon:
    """The sandbox namespace with firewalld stopped: a host without firewalld."""
    fwrecon.sandbox.stop_firewalld()
    fwrecon.in_netns = True
    return fwrecon


def firewalld_snapshot(sandbox: Sandbox) -> dict[str, str]:
    """Everything of the runtime config a test may touch, via firewall-cmd."""
    return {
        "public": sandbox.firewall_cmd("--zone=public", "--list-all", check=True).stdout,
        "internal": sandbox.firewall_cmd("--zone=internal", "--list-all", check=True).stdout,
        "policy": sandbox.firewall_cmd("--policy=allow-host-ipv6", "--list-all", check=True).stdout,
        "direct": sandbox.firewall_cmd("--direct", "--get-all-rules", check=True).stdout
        + sandbox.firewall_cmd("--direct", "--get-all-chains", check=True).stdout,
    }


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daemon:
    """One `fwrecon run` process with its log and metrics endpoint.

    Always inside the sandbox network namespace, whatever `Fwrecon.in_netns`
    says: its ``nft monitor`` and any iptables or nft work must never reach
    the host's own firewall.  Its metrics endpoint is reached from inside.
    """

    def __init__(
        self,
        fwrecon: Fwrecon,
        log_path: Path,
        resync: float = 3600,
        env: dict[str, str] | None = None,
        started_when: str = "reconcile",
        extra: tuple[str, ...] = (),
    ) -> None:
        """Start and wait for the log event ``started_when`` (by default the first reconcile);
        ``extra``: more arguments for ``fwrecon run``."""
        self.fwrecon = fwrecon
        self.log_path = log_path
        self.netns = fwrecon.sandbox.netns
        self.port = in_netns(self.netns, free_port)
        argv = fwrecon.argv(
            "run", "--metrics-address", f"127.0.0.1:{self.port}", "--resync-interval", str(resync), *extra, netns=True
        )
        self._log = open(log_path, "a")  # noqa: SIM115 (the daemon writes it; closed in stop())
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}
        )
        wait_until(lambda: self.events(started_when), 10, f"the first {started_when} event")

    def events(self, name: str | None = None) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                out.append(event)
        return out

    def reconciles(self) -> list[dict]:
        return self.events("reconcile")

    def metrics(self) -> dict[str, object]:
        def fetch() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as reply:
                return reply.read().decode()

        text = in_netns(self.netns, fetch)
        return {family.name: family for family in text_string_to_metric_families(text)}

    def value(self, name: str, **labels: str) -> float:
        family = self.metrics()[name]
        for sample in family.samples:  # type: ignore[attr-defined]
            if (
                sample.name in (name, name + "_total", name + "_count")
                and all(sample.labels.get(k) == v for k, v in labels.items())
                and (sample.name == name + "_count" or not sample.name.endswith("_count"))
            ):
                return sample.value
        raise KeyError(f"{name} {labels}")

    def histogram_sum(self, name: str) -> float:
        """The sum of every value a histogram observed (value() gives its count)."""
        return next(s.value for s in self.metrics()[name].samples if s.name == name + "_sum")  # type: ignore[attr-defined]

    def settled(self, quiet: float = 0.4) -> None:
        """Wait until no reconcile has happened for `quiet` seconds."""

        def calm() -> bool:
            count = len(self.reconciles())
            time.sleep(quiet)
            return len(self.reconciles()) == count

        wait_until(calm, 15, "the daemon to settle")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        finally:
            self._log.close()


@pytest.fixture
def daemon_factory(fwrecon: Fwrecon, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(**kwargs: object) -> Daemon:
        daemon = Daemon(fwrecon, tmp_path / f"fwrecon-{len(started)}.log", **kwargs)  # type: ignore[arg-type]
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
