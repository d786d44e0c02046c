"""Hostile input against the real command and a sandboxed firewalld.

A policy file or a state file holding anything at all must end in one line
that names the file, never in a traceback; a bad policy costs only itself,
and a corrupt state file stops the command before anything changes.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import Fwrecon, firewalld_snapshot

DEPTH = 100_000
NESTED = "x = " + "[" * DEPTH + "]" * DEPTH + "\n"
GOOD = """
[zone.public]
ports = ["8080/tcp"]
"""
NESTED_LINE = "nested.toml: nested too deeply: arrays and inline tables may nest about 200 levels deep (a policy needs three)"


def lines_naming(result: subprocess.CompletedProcess[str], needle: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if needle in line]


def public_ports(fwrecon: Fwrecon) -> set[str]:
    return set(fwrecon.sandbox.firewall_cmd("--zone=public", "--list-ports", check=True).stdout.split())


def test_apply_reports_a_deeply_nested_policy_in_one_line_and_applies_its_neighbour(fwrecon: Fwrecon) -> None:
    nested = fwrecon.write_policy("nested", "")
    nested.write_text(NESTED)  # not through dedent: 200 kB on one line
    fwrecon.write_policy("good", GOOD)

    result = fwrecon.apply()

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert lines_naming(result, "nested.toml") == [f"INVALID {NESTED_LINE} (last good version kept)"]
    assert public_ports(fwrecon) == {"8080/tcp"}  # really in firewalld, from the valid policy
    assert [entry["policies"] for entry in fwrecon.owned()] == [["good"]]


def test_check_reports_a_deeply_nested_policy_in_one_line(fwrecon: Fwrecon) -> None:
    nested = fwrecon.write_policy("nested", "")
    nested.write_text(NESTED)
    fwrecon.write_policy("good", GOOD)
    before = public_ports(fwrecon)

    result = fwrecon.run("check")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines() == [NESTED_LINE]
    assert public_ports(fwrecon) == before  # check changes nothing


@pytest.mark.parametrize("command", ["apply", "plan", "run"])
def test_non_utf8_state_file_stops_the_command_in_one_line_with_nothing_changed(fwrecon: Fwrecon, command: str) -> None:
    fwrecon.write_policy("good", GOOD)
    fwrecon.state_file.parent.mkdir(mode=0o700)
    content = b'{"version": 1, "owned": [], "pending": "\xff"}'
    fwrecon.state_file.write_bytes(content)
    before = firewalld_snapshot(fwrecon.sandbox)

    extra = ("--metrics-address", "off") if command == "run" else ()
    result = fwrecon.run(command, *extra, timeout=30)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # the rest are JSON log lines
    assert errors == [
        f"error: {fwrecon.state_file}: state file is corrupt (not UTF-8 text: invalid start byte at byte 40); "
        "refusing to start with an empty state, which would forget the rules fwrecon owns. Repair or move the file away."
    ]
    assert firewalld_snapshot(fwrecon.sandbox) == before
    assert "8080" not in fwrecon.sandbox.ruleset()
    assert fwrecon.state_file.read_bytes() == content
