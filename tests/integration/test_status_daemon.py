"""`fwrecon status` against a real daemon and firewalld: it reads the record
the daemon writes after each reconcile, and works the same once it stopped."""

from __future__ import annotations

import json
from collections.abc import Callable

from conftest import Daemon, Fwrecon, wait_until


def status(fwrecon: Fwrecon) -> tuple[int, dict]:
    result = fwrecon.status("--json")
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_status_follows_the_daemon_and_outlives_it(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    fwrecon.write_policy("web", '[zone.public]\nports = ["7300/tcp"]\n')
    fwrecon.write_policy("guard", '[[nft.chain]]\nfamily = "inet"\nchain = "guard"\n')
    daemon = daemon_factory()
    daemon.settled()
    code, report = status(fwrecon)
    assert code == 0 and report["converged"], report
    policies = {p["name"]: p for p in report["policies"]}
    assert policies["web"]["owned"] == {"firewalld": {"zone": ["zone public port 7300/tcp"]}}
    assert policies["guard"]["owned"] == {"nftables": {"nft": ["nft inet fwrecon chain guard"]}}
    last = report["last_reconcile"]
    assert last["command"] == "run" and last["result"] == "success" and last["pid"] == daemon.proc.pid

    fwrecon.write_policy("web", '[zone.public]\nports = ["7300/tcpx"]\n')
    wait_until(lambda: status(fwrecon)[1]["last_reconcile"]["trigger"] == "policy", 3, "the reconcile after the edit")
    code, report = status(fwrecon)
    web = {p["name"]: p for p in report["policies"]}["web"]
    assert code == 2 and web["status"] == "invalid" and "7300/tcpx" in web["reasons"][0]
    assert web["owned"] == {"firewalld": {"zone": ["zone public port 7300/tcp"]}}  # its last good version stays
    assert report["last_reconcile"]["result"] == "degraded"

    assert daemon.stop() == 0
    fwrecon.write_policy("web", '[zone.public]\nports = ["7300/tcp"]\n')
    code, report = status(fwrecon)  # no daemon: the files alone say it is not applied yet
    assert code == 2 and "policy files changed since the last reconcile: web" in report["why_not"]
    assert fwrecon.apply().returncode == 0
    code, report = status(fwrecon)
    assert code == 0 and report["last_reconcile"]["command"] == "apply", report
