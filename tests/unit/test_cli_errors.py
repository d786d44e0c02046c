"""Mistakes an operator makes on the command line end in one line naming the
thing, exit 1, no traceback (run as a real process: what a shell sees)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.metrics import MetricsAddressError, parse_metrics_address

ROOT = Path(__file__).resolve().parents[2]


def fwrecon(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    policies = tmp_path / "policies"
    policies.mkdir(mode=0o755, exist_ok=True)
    base = ["--policy-dir", str(policies), "--state-file", str(tmp_path / "state.json"), "--log-format", "json"]
    return subprocess.run(
        [sys.executable, "-c", "import sys; from reconciler.cli import main; sys.exit(main())", argv[0], *base, *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the JSON log lines."""
    return [line for line in result.stderr.splitlines() if not line.startswith("{")]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9847", ("127.0.0.1", 9847)),
        ("[::1]:9100", ("::1", 9100)),
        ("localhost:1", ("localhost", 1)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_metrics_address_accepted(address: str, expected: tuple[str, int]) -> None:
    assert parse_metrics_address(address) == expected


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("garbage", "not HOST:PORT"),
        (":9847", "not HOST:PORT"),
        ("127.0.0.1:0", "port '0' is not a number from 1 to 65535"),
        ("127.0.0.1:65536", "port '65536' is not a number from 1 to 65535"),
        ("127.0.0.1:http", "port 'http' is not a number from 1 to 65535"),
        ("127.0.0.1:٣", "port '٣' is not a number from 1 to 65535"),
        ("[::1:9847", "an IPv6 address goes in brackets"),
        ("::1:9847", "an IPv6 address goes in brackets"),
        ("bad host:80", "host 'bad host' is not an IP address or a host name"),
    ],
)
def test_metrics_address_refused_with_the_reason(address: str, problem: str) -> None:
    with pytest.raises(MetricsAddressError) as info:
        parse_metrics_address(address)
    assert str(info.value).startswith(f"--metrics-address {address!r}: {problem}")


def test_run_with_a_garbage_metrics_address_is_one_line(tmp_path: Path) -> None:
    result = fwrecon(tmp_path, "run", "--metrics-address", "garbage", "--backend", "nftables")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert error_lines(result) == ["error: --metrics-address 'garbage': not HOST:PORT (e.g. 127.0.0.1:9847, or 'off')"]


def test_run_with_the_metrics_port_in_use_names_the_address(tmp_path: Path) -> None:
    with contextlib.closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = fwrecon(tmp_path, "run", "--metrics-address", address, "--backend", "nftables")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert error_lines(result) == [f"error: cannot serve metrics on {address}: address already in use"]


def test_unreachable_bus_names_the_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "no-bus-here"
    result = fwrecon(tmp_path, "apply", "--backend", "firewalld", "--bus-address", f"unix:path={socket_path}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert error_lines(result) == [
        f"error: cannot connect to the D-Bus system bus at unix:path={socket_path}: No such file or directory"
    ]


def test_default_bus_is_named_by_its_socket(tmp_path: Path) -> None:
    from reconciler.backends.firewalld import DEFAULT_SYSTEM_BUS

    if Path(DEFAULT_SYSTEM_BUS.removeprefix("unix:path=")).exists():
        pytest.skip("this machine has a system bus at the default socket: the 'cannot connect' case cannot happen")
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SYSTEM_BUS_ADDRESS"}
    result = fwrecon(tmp_path, "apply", "--backend", "firewalld", env=env)
    assert result.returncode == 1
    assert error_lines(result) == [
        "error: cannot connect to the D-Bus system bus at unix:path=/var/run/dbus/system_bus_socket: No such file or directory"
    ]
