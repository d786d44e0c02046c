"""`fwrecon status`: what each policy owns on which backend, its verdict, the
last reconcile, and an exit code that says whether everything is converged,
built from real policy files, the state file a reconcile wrote and the
status record beside it (against the recording backend)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler import status
from reconciler.backends.memory import MemoryBackend
from reconciler.engine import Reconciler
from reconciler.errors import BackendUnavailable, StateError
from reconciler.model import Port, Scope
from reconciler.policydir import load_policy_dir
from reconciler.state import StateStore

WEB = '[zone.public]\nports = ["8080/tcp"]\n'
DB = '[zone.internal]\nports = ["5432/tcp"]\n'


class Host:
    """A policy directory, a state file, and reconciles that record their status as the daemon does."""

    def __init__(self, base: Path, backend: MemoryBackend | None = None) -> None:
        self.policy_dir = base / "policies"
        self.policy_dir.mkdir(mode=0o755)
        self.state_file = base / "state" / "state.json"
        self.backend = backend or MemoryBackend()

    def write(self, name: str, text: str) -> Path:
        path = self.policy_dir / f"{name}.toml"
        path.write_text(text)
        path.chmod(0o644)
        return path

    def reconcile(self, trigger: str = "policy") -> str:
        loaded = load_policy_dir(self.policy_dir)
        report = asyncio.run(Reconciler(self.backend, StateStore(self.state_file)).reconcile(loaded))
        result = "success" if report.converged and not report.invalid else "degraded"
        status.record_reconcile(self.state_file, trigger, result, loaded, report, report.duration)
        return result

    def status(self) -> tuple[int, dict]:
        return status.gather(self.policy_dir, self.state_file)


def fwrecon_status(host: Host, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real command, as a process (main() configures logging for the whole process)."""
    argv = [
        sys.executable,
        "-m",
        "reconciler",
        "status",
        "--policy-dir",
        str(host.policy_dir),
        "--state-file",
        str(host.state_file),
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])


def by_name(report: dict) -> dict[str, dict]:
    return {p["name"]: p for p in report["policies"]}


def test_converged_host_says_what_each_policy_owns_where(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.write("web", WEB)
    host.write("db", DB)
    assert host.reconcile() == "success"
    code, report = host.status()
    assert code == status.CONVERGED and report["converged"] and report["why_not"] == []
    assert by_name(report)["web"] == {
        "name": "web",
        "status": "valid",
        "reasons": [],
        "owned": {"memory": {"zone": ["zone public port 8080/tcp"]}},
        "held_by_others": [],
    }
    last = report["last_reconcile"]
    assert (last["trigger"], last["ops"], last["result"], last["command"]) == ("policy", 2, "success", "run")
    text = status.render_text(report)
    assert "owns on memory: zone public port 8080/tcp" in text and text.endswith("\nconverged")


def test_a_policy_file_changed_since_the_last_reconcile_is_not_converged(tmp_path: Path) -> None:
    host = Host(tmp_path)
    path = host.write("web", WEB)
    host.reconcile()
    later = time.time() + 5
    os.utime(path, (later, later))
    host.write("new", DB)
    code, report = host.status()
    assert code == status.NOT_CONVERGED
    assert report["why_not"] == ["policy files changed since the last reconcile: new, web"]
    assert by_name(report)["new"]["status"] == "pending"


def test_invalid_and_failed_policies_say_why(tmp_path: Path) -> None:
    refused = Port(Scope("zone", "internal"), "5432", "tcp")
    host = Host(tmp_path, MemoryBackend(refuse=[refused]))
    host.write("web", WEB)
    host.write("db", DB)
    host.write("bad", '[zone.public]\nports = ["80/tcpx"]\n')
    assert host.reconcile() == "degraded"
    code, report = host.status()
    assert code == status.NOT_CONVERGED
    policies = by_name(report)
    assert policies["web"]["status"] == "valid"
    assert policies["bad"]["status"] == "invalid" and "bad.toml: zone.public.ports[0]" in policies["bad"]["reasons"][0]
    assert policies["db"]["status"] == "failed" and "refused zone internal port 5432/tcp" in policies["db"]["reasons"][0]
    assert policies["db"]["owned"] == {}  # rolled back: it owns nothing
    assert "the last reconcile's result was degraded" in report["why_not"]
    assert "policies not in force as written: bad, db" in report["why_not"]


def test_an_error_keeps_the_verdicts_and_last_success_of_the_reconcile_before(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.write("web", WEB)
    host.reconcile()
    first, _ = status.read_record(host.state_file)
    status.record_error(host.state_file, "resync", BackendUnavailable("firewalld did not answer"), 10.0)
    code, report = host.status()
    assert code == status.NOT_CONVERGED
    assert report["why_not"] == ["the last reconcile's result was error: firewalld did not answer"]
    assert by_name(report)["web"]["status"] == "valid"
    record, _ = status.read_record(host.state_file)
    assert record is not None and first is not None and record.last_success == first.last_success
    assert "last success: " in status.render_text(report)


def test_a_removed_policy_still_owns_its_items_until_the_next_reconcile(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.write("web", WEB)
    host.reconcile()
    (host.policy_dir / "web.toml").unlink()
    code, report = host.status()
    assert code == status.NOT_CONVERGED
    web = by_name(report)["web"]
    assert web["status"] == "removed" and web["owned"] == {"memory": {"zone": ["zone public port 8080/tcp"]}}
    host.reconcile()
    code, report = host.status()
    assert code == status.CONVERGED and report["policies"] == []


def test_without_any_reconcile_status_reads_the_files_and_says_nothing_was_recorded(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.write("web", WEB)
    code, report = host.status()
    assert code == status.NOT_CONVERGED and report["last_reconcile"] is None
    assert by_name(report)["web"]["status"] == "valid"  # (checked offline)
    assert report["why_not"][0].startswith("no reconcile recorded yet")


def test_an_unreadable_record_or_state_file_is_said_with_exit_1(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.write("web", WEB)
    host.reconcile()
    status.record_path(host.state_file).write_text("{half a rec")
    code, report = host.status()
    assert code == status.UNREADABLE and "status record is unreadable" in report["why_not"][0]

    host.state_file.write_text("garbage")
    with pytest.raises(StateError):
        host.status()
    result = fwrecon_status(host)
    assert result.returncode == status.UNREADABLE and "state file is corrupt" in result.stderr, result


def test_cli_status_json_and_exit_code(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.write("web", WEB)
    host.reconcile()
    result = fwrecon_status(host, "--json")
    assert result.returncode == status.CONVERGED, result
    printed = json.loads(result.stdout)
    assert printed["converged"] is True and by_name(printed)["web"]["owned"]["memory"]["zone"] == ["zone public port 8080/tcp"]


def test_a_record_that_cannot_be_written_costs_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    status.record_error(blocker / "state.json", "startup", BackendUnavailable("x"), 0.0)  # logged, not raised
    assert not status.record_path(blocker / "state.json").exists()
