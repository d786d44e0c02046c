"""A firewall that stops answering, or a tool that hangs, dies or prints garbage.

Every wait on a peer is bounded by ``--timeout``: ``apply`` ends within about
one timeout whatever the number of items, with one clear error line and no
traceback, keeps claiming in the state file whatever may have landed, and the
next ``apply`` converges with every item present exactly once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, Daemon, Fwrecon, wait_until

TIMEOUT = 2.0
# --timeout, plus 2 s for a tool that ignores SIGTERM, plus start-up and teardown of the command
BOUND = TIMEOUT + 2 + 4
PORTS = [f"{7100 + i}/tcp" for i in range(40)]
FREEZE_APPLY = Path(__file__).with_name("freeze_apply.py")
SLEEPS = ("sleep 4242", "sleep 4243")  # what the hanging fake tools run: none may be left behind

V4_POLICY = """
    [[direct.chain]]
    family = "ipv4"
    table = "filter"
    chain = "{chain}"

    [[direct.rule]]
    family = "ipv4"
    table = "filter"
    chain = "{chain}"
    args = ["-p", "tcp", "--dport", "{port}", "-j", "ACCEPT"]
"""

NFT_POLICY = """
    [[nft.chain]]
    family = "inet"
    chain = "{chain}"

    [[nft.rule]]
    family = "inet"
    chain = "{chain}"
    rule = "tcp dport {port} accept"
"""


def zone_ports(fwrecon: Fwrecon) -> list[str]:
    return fwrecon.sandbox.firewall_cmd("--zone=public", "--list-ports", check=True).stdout.split()


def owned_ports(fwrecon: Fwrecon) -> set[str]:
    return {f"{i['port']}/{i['protocol']}" for i in (e["item"] for e in fwrecon.owned()) if i["kind"] == "port"}


def firewalld_pid(fwrecon: Fwrecon) -> int:
    pid = fwrecon.sandbox.status()["firewalld_pid"]
    assert isinstance(pid, int)
    return pid


@pytest.fixture
def thaw(fwrecon: Fwrecon) -> Iterator[Callable[[], None]]:
    """SIGCONT for firewalld, also after a failed test (a frozen one would hang the next reset)."""
    pid = firewalld_pid(fwrecon)

    def cont() -> None:
        os.kill(pid, signal.SIGCONT)

    yield cont
    cont()


def assert_clear_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), result.stderr


def test_frozen_firewalld_apply_ends_within_one_timeout_and_next_apply_converges(
    fwrecon: Fwrecon, thaw: Callable[[], None]
) -> None:
    fwrecon.write_policy("many", f"[zone.public]\nports = {json.dumps(PORTS)}\n")
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            str(FREEZE_APPLY),
            str(firewalld_pid(fwrecon)),
            "10",
            *fwrecon.argv("apply", "--timeout", str(TIMEOUT))[3:],
        ],  # (fwrecon's arguments: no "python -m reconciler")
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    thaw()
    assert elapsed < BOUND, f"apply took {elapsed:.1f}s against a frozen firewalld"
    assert_clear_failure(result, "firewalld did not answer", f"within {TIMEOUT:g}s")
    landed = zone_ports(fwrecon)
    assert len(landed) >= 10
    assert set(landed) <= owned_ports(fwrecon)  # whatever may have landed is still claimed

    again = fwrecon.run("apply", "--timeout", str(TIMEOUT))
    assert again.returncode == 0, again.stdout + again.stderr
    final = zone_ports(fwrecon)
    assert sorted(final) == sorted(PORTS) and len(final) == len(set(final))
    assert owned_ports(fwrecon) == set(PORTS)


def test_daemon_marks_frozen_firewalld_down_keeps_it_in_charge_and_recovers(
    fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon], thaw: Callable[[], None]
) -> None:
    fwrecon.in_netns = True
    daemon = daemon_factory(extra=("--timeout", "1"))
    assert daemon.value("fwrecon_firewalld_up") == 1
    os.kill(firewalld_pid(fwrecon), signal.SIGSTOP)
    fwrecon.write_policy("web", '[zone.public]\nports = ["7300/tcp"]\n')
    wait_until(lambda: daemon.events("firewalld_unresponsive"), 10, "firewalld_unresponsive")
    assert daemon.value("fwrecon_firewalld_up") == 0
    assert daemon.value("fwrecon_backend", backend="firewalld") == 1  # no switch to iptables
    wait_until(lambda: len(daemon.events("backend_unavailable")) >= 2, 15, "a retry with backoff")
    thaw()
    wait_until(lambda: daemon.events("firewalld_responsive"), 20, "firewalld_responsive after the thaw")
    wait_until(lambda: zone_ports(fwrecon) == ["7300/tcp"], 5, "the port")
    assert daemon.value("fwrecon_firewalld_up") == 1
    assert len(daemon.events("firewalld_unresponsive")) == 1
    assert [e["backend"] for e in daemon.events("backend_selected")] == ["firewalld"]
    assert daemon.stop() == 0


# -- tools that hang, die or print garbage (no firewalld: a host on iptables/nftables) ------------


def fake_tool(directory: Path, name: str, body: str) -> None:
    """An executable ``name`` in ``directory``, put first on fwrecon's PATH."""
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def apply_with(fwrecon: Fwrecon, tools: Path | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if tools is not None:
        env["PATH"] = f"{tools}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        fwrecon.argv("apply", "--timeout", str(TIMEOUT)), capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )


def leftover_sleeps() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            if cmdline in SLEEPS:
                found.append(f"{entry.name}: {cmdline}")
    return found


def policy_for(backend: str, chain: str, port: int) -> str:
    return (V4_POLICY if backend == "iptables" else NFT_POLICY).format(chain=chain, port=port)


def rules_of(fwrecon: Fwrecon, backend: str, port: int) -> list[str]:
    if backend == "iptables":
        text = fwrecon.sandbox.netns_exec(["iptables-save", "-t", "filter"], check=True).stdout
    else:
        text = fwrecon.sandbox.netns_exec(["nft", "list", "table", "inet", "fwrecon"]).stdout
    return [line for line in text.splitlines() if f"dport {port} " in line]


def real(tool: str) -> str:
    path = shutil.which(tool, path="/usr/local/sbin:/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    assert path
    return path


def hanging(backend: str) -> tuple[str, str]:
    """The tool to fake and its script: it hangs (with a child of its own) where
    fwrecon writes policy b's batch, and does the real work for anything else
    (observe's reads, and the probe that learns how policy a's rules print)."""
    hang = f'case "$input" in *"dport 9101"*) {SLEEPS[0]} & exec {SLEEPS[1]};; esac'
    if backend == "iptables":
        return "iptables-restore", f'input=$(cat)\n{hang}\nprintf \'%s\\n\' "$input" | exec {real("iptables-restore")} "$@"\n'
    return "nft", (
        f'case " $* " in *" -f "*) input=$(cat)\n{hang}\n'
        f'printf \'%s\\n\' "$input" | exec {real("nft")} "$@";; esac\nexec {real("nft")} "$@"\n'
    )


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_hanging_tool_is_killed_within_the_timeout_and_nothing_is_lost(bare: Fwrecon, backend: str, tmp_path: Path) -> None:
    bare.backend = backend
    bare.write_policy("a", policy_for(backend, "FWRECON_A" if backend == "iptables" else "a", 9100))
    assert apply_with(bare, None).returncode == 0
    bare.write_policy("b", policy_for(backend, "FWRECON_B" if backend == "iptables" else "b", 9101))
    tool, body = hanging(backend)
    fake_tool(tmp_path / "bin", tool, body)

    started = time.monotonic()
    result = apply_with(bare, tmp_path / "bin")
    elapsed = time.monotonic() - started
    assert elapsed < BOUND, f"apply took {elapsed:.1f}s with a hanging {tool}"
    assert_clear_failure(result, tool, f"did not finish within {TIMEOUT:g}s")
    assert leftover_sleeps() == []
    assert len(rules_of(bare, backend, 9100)) == 1  # policy a untouched
    owned = {json.dumps(e, sort_keys=True) for e in bare.owned()}
    assert any("9101" in e for e in owned)  # b's intent kept: its batch may have landed

    again = apply_with(bare, None)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(rules_of(bare, backend, 9100)) == 1 and len(rules_of(bare, backend, 9101)) == 1


def test_tool_killed_mid_batch_is_a_clear_error_then_converges(bare: Fwrecon, tmp_path: Path) -> None:
    bare.backend = "iptables"
    bare.write_policy("b", policy_for("iptables", "FWRECON_B", 9102))
    fake_tool(tmp_path / "bin", "iptables-restore", "cat > /dev/null\nkill -9 $$\n")
    result = apply_with(bare, tmp_path / "bin")
    assert_clear_failure(result, "iptables-restore", "SIGKILL")
    again = apply_with(bare, None)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(rules_of(bare, "iptables", 9102)) == 1


GARBAGE_JSON = json.dumps(
    {
        "nftables": [
            {"table": {"family": "inet", "name": "fwrecon"}},
            {"rule": {"family": "inet", "table": "fwrecon", "chain": "c"}},
        ]
    }
)  # no handle


@pytest.mark.parametrize(
    "backend, tool, garbage, says",
    [
        ("iptables", "iptables-save", None, "iptables-save -t filter printed something that is not -save output"),
        ("nftables", "nft", None, "cannot parse nft -j output"),
        ("nftables", "nft", GARBAGE_JSON, "printed JSON that is not an nft listing"),
    ],
)
def test_garbage_listing_is_a_clear_error_and_nothing_is_written(
    bare: Fwrecon, tmp_path: Path, backend: str, tool: str, garbage: str | None, says: str
) -> None:
    bare.backend = backend
    bare.write_policy("b", policy_for(backend, "FWRECON_B" if backend == "iptables" else "b", 9103))
    output = tmp_path / "garbage"
    output.write_bytes(garbage.encode() if garbage else random.Random(7).randbytes(4000))
    if tool == "nft":
        fake_tool(tmp_path / "bin", "nft", f'case " $* " in *" list "*) exec cat {output};; esac\nexec {real("nft")} "$@"\n')
    else:
        fake_tool(tmp_path / "bin", tool, f"exec cat {output}\n")
    result = apply_with(bare, tmp_path / "bin")
    assert_clear_failure(result, says)
    assert rules_of(bare, backend, 9103) == []
