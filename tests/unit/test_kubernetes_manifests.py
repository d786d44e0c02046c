"""contrib/kubernetes/ parses, and its DaemonSet and ConfigMap agree with
each other and with fwrecon: host network, the host's bus where
DBUS_SYSTEM_BUS_ADDRESS says, the capabilities the tools need, the policy
volume where --policy-dir reads it (read-only), the state on the host where
--state-file writes it, and policies that fwrecon itself accepts.

PyYAML is no dependency of fwrecon: the files are read by the system's
python3 with Debian's python3-yaml (contrib/setup test installs it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path, PurePosixPath

import pytest
from prereq import skip_or_fail

from reconciler.policy import PolicyFileInvalid, parse_policy

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "contrib" / "kubernetes"
SYSTEM_PYTHON = "/usr/bin/python3"
TO_JSON = "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1]))]))"


def documents(name: str) -> list[dict]:
    try:
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", TO_JSON, str(KUBERNETES / name)], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        skip_or_fail(f"the manifest check needs {SYSTEM_PYTHON}")
    if "No module named 'yaml'" in result.stderr:
        skip_or_fail("the manifest check needs python3-yaml (contrib/setup test installs it)")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def daemonset() -> dict:
    (document,) = documents("daemonset.yaml")
    assert document["kind"] == "DaemonSet"
    return document


@pytest.fixture(scope="module")
def configmap() -> dict:
    (document,) = documents("configmap.yaml")
    assert document["kind"] == "ConfigMap"
    return document


def flags(args: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in args if arg.startswith("--"))


def test_daemonset_runs_fwrecon_on_the_host_network_with_the_capabilities_it_needs(daemonset: dict) -> None:
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    (container,) = pod["containers"]
    assert container["args"][0] == "run"
    capabilities = container["securityContext"]["capabilities"]
    assert capabilities == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}  # those the systemd unit keeps too
    unit = (ROOT / "contrib/systemd/fwrecon.service").read_text()
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW" in unit


def test_daemonset_mounts_what_its_arguments_name(daemonset: dict, configmap: dict) -> None:
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    options = flags(container["args"])

    policies = mounts[options["policy-dir"]]
    assert policies["readOnly"] is True
    assert volumes[policies["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert volumes[policies["name"]]["configMap"]["defaultMode"] & 0o022 == 0

    state = mounts[str(PurePosixPath(options["state-file"]).parent)]
    assert volumes[state["name"]]["hostPath"]["path"] == "/var/lib/fwrecon"  # the host's, where the unit keeps it too

    env = {e["name"]: e["value"] for e in container["env"]}
    socket = PurePosixPath(env["DBUS_SYSTEM_BUS_ADDRESS"].removeprefix("unix:path="))
    bus = next(m for path, m in mounts.items() if PurePosixPath(path) in socket.parents)
    assert volumes[bus["name"]]["hostPath"]["path"] == str(socket.parent) == "/run/dbus"
    assert options["metrics-address"].startswith("127.0.0.1:")  # hostNetwork: loopback is the node's


def test_configmap_holds_policies_fwrecon_accepts(configmap: dict) -> None:
    data = configmap["data"]
    assert data and all(name.endswith(".toml") for name in data)
    for name, text in data.items():
        try:
            parsed = parse_policy(name, text.encode())
        except PolicyFileInvalid as invalid:
            pytest.fail(f"{name}: {[str(e) for e in invalid.errors]}")
        assert parsed.items, name
