"""The shipped systemd unit, Prometheus alert rules and Grafana dashboard pass
their tools' checks; the alerts fire (or stay quiet) on the series in
alerts_test.yml; the dashboard asks only for metrics fwrecon exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from prereq import require_tools

from reconciler.backends.process import which
from reconciler.metrics import Metrics

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
    result = subprocess.run(
        [promtool, "check", "rules", str(ROOT / "contrib/prometheus/alerts.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    promtool = need("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(ROOT / "contrib/prometheus/alerts_test.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


DASHBOARD = ROOT / "contrib/grafana/fwrecon.json"
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",), "info": ("_info",)}


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_dashboard_queries_name_only_metrics_fwrecon_exports() -> None:
    exported = {family.name + suffix for family in Metrics().registry.collect() for suffix in SAMPLE_SUFFIXES[family.type]}
    queries = dashboard_queries()
    used = {name for query in queries for name in re.findall(r"\bfwrecon_[a-z_]+", query)}
    assert len(queries) >= 10 and used, queries
    assert used <= exported, used - exported


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = need("promtool")
    # Grafana's variables as Prometheus would see them once Grafana has filled them in
    rules = [
        {"record": f"fwrecon:dashboard_query_{i}", "expr": query.replace("$instance", ".*").replace("$__rate_interval", "5m")}
        for i, query in enumerate(dashboard_queries())
    ]
    (tmp_path / "queries.yml").write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "queries.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
