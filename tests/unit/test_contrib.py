"""The shipped systemd unit and Prometheus alert rules pass their tools' checks,
and the alerts fire (or stay quiet) on the series in alerts_test.yml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prereq import require_tools

from reconciler.backends.process import which

ROOT = Path(__file__).resolve().parents[2]


def need(tool: str) -> str:
    require_tools(f"the {tool} check", [tool], root=False)
    return which(tool)  # type: ignore[return-value]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    fwrecon = Path(sys.executable).with_name("fwrecon")
    assert fwrecon.exists(), "install the project (pip install -e .) first"
    unit = (ROOT / "contrib/systemd/fwrecon.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit
    # verify checks that ExecStart exists: point it at this venv's fwrecon
    (tmp_path / "fwrecon.service").write_text(unit.replace("/opt/fwrecon/bin/fwrecon", str(fwrecon)))
    result = subprocess.run([analyze, "verify", str(tmp_path / "fwrecon.service")], capture_output=True, text=True)
    problems = [line for line in result.stderr.splitlines() if "fwrecon.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_alert_rules_pass_promtool() -> None:
    promtool = need("promtool")
    result = subprocess.run([promtool, "check", "rules", str(ROOT / "contrib/prometheus/alerts.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    promtool = need("promtool")
    result = subprocess.run([promtool, "test", "rules", str(ROOT / "contrib/prometheus/alerts_test.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
