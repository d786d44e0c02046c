"""Helpers for driving fwrecon against the sandboxed firewalld."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from fwsandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Fwrecon:
    """Runs the real ``fwrecon`` command (as a subprocess) against one sandbox."""

    sandbox: Sandbox
    policy_dir: Path
    state_file: Path

    def write_policy(self, name: str, text: str) -> Path:
        path = self.policy_dir / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        path.chmod(0o644)
        return path

    def remove_policy(self, name: str) -> None:
        (self.policy_dir / f"{name}.toml").unlink()

    def argv(self, command: str, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "reconciler", command,
            "--bus-address", self.sandbox.bus_address,
            "--policy-dir", str(self.policy_dir),
            "--state-file", str(self.state_file),
            "--log-format", "json",
            *extra,
        ]

    def run(self, command: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(command, *extra), capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def apply(self) -> subprocess.CompletedProcess[str]:
        return self.run("apply")

    def owned(self) -> list[dict]:
        if not self.state_file.exists():
            return []
        return json.loads(self.state_file.read_text())["owned"]


@pytest.fixture
def fwrecon(fw: Sandbox, tmp_path: Path) -> Fwrecon:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir(mode=0o755)
    return Fwrecon(fw, policy_dir, tmp_path / "state" / "state.json")


def firewalld_snapshot(sandbox: Sandbox) -> dict[str, str]:
    """Everything of the runtime config a test may touch, via firewall-cmd."""
    return {
        "public": sandbox.firewall_cmd("--zone=public", "--list-all", check=True).stdout,
        "internal": sandbox.firewall_cmd("--zone=internal", "--list-all", check=True).stdout,
        "policy": sandbox.firewall_cmd("--policy=allow-host-ipv6", "--list-all", check=True).stdout,
        "direct": sandbox.firewall_cmd("--direct", "--get-all-rules", check=True).stdout
        + sandbox.firewall_cmd("--direct", "--get-all-chains", check=True).stdout,
    }
