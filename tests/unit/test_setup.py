"""contrib/setup never changes the user's own host: no service starts while it
installs, the services of packages it newly installed are disabled, and a
package (and service) the user already had is left exactly as it was.

The script runs for real, in a copy of the checkout, on stand-ins for
apt-get, dpkg-query, systemctl and update-rc.d that record what they are
asked and keep a fake package database: no package is installed, no unit is
touched, and nothing needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("apt-get", "dpkg-query", "systemctl", "update-rc.d", "id", "sudo")

# One program behind every stand-in, dispatching on its name.  The database
# (db.json) holds the installed packages and each package's files.
STAND_IN = r"""
import json, os, subprocess, sys
from pathlib import Path
here = Path(__file__).resolve().parent
db_path = here / "db.json"
db = json.loads(db_path.read_text())
name, args = Path(sys.argv[0]).name, sys.argv[1:]

def record(entry):
    with open(here / "calls.jsonl", "a") as log:
        log.write(json.dumps(entry) + "\n")

if name == "id":
    print(os.environ.get("FAKE_UID", "0"))  # the script runs "as root" whoever runs the test
elif name == "sudo":
    record({"tool": name, "args": args})
elif name == "dpkg-query":
    if args[0] == "-L":
        print("\n".join(db["files"].get(args[1], [])))
    elif args[1].startswith("-f=${Status}"):
        if args[2] not in db["installed"]:
            sys.exit(1)
        print("install ok installed", end="")
    else:
        print("\n".join(f"ii  {pkg}" for pkg in db["installed"]))
elif name == "apt-get":
    if "install" in args:
        policy = Path(os.environ["FWRECON_POLICY_RC_D"])
        verdict = subprocess.run([str(policy), "firewalld", "start"]).returncode if policy.exists() else None
        wanted = [a for a in args[args.index("install") + 1:] if not a.startswith("-") and a != "DPkg::Lock::Timeout=300"]
        record({"tool": name, "install": wanted, "policy_rc_d_verdict": verdict})
        db["installed"] += wanted + db["pulls_in"]
        db_path.write_text(json.dumps(db))
    else:
        record({"tool": name, "args": args})
else:
    record({"tool": name, "args": args})
"""

TEST_PACKAGES = [
    "firewalld",
    "nftables",
    "iptables",
    "ebtables",
    "dbus",
    "iproute2",
    "python3-venv",
    "procps",
    "prometheus",
    "systemd",
    "util-linux",
    "python3-yaml",
    "libvirt-daemon",
    "libvirt-daemon-system",
    "libvirt-clients",
    "dnsmasq-base",
    "libvirt-daemon-system-sysv",
]
DEMO_ONLY = {"firewalld", "nftables", "iptables", "ebtables", "dbus", "iproute2", "python3-venv"}


def an_init_script() -> str | None:
    """An executable /etc/init.d script of this machine (setup checks -x on the real path)."""
    scripts = sorted(p for p in Path("/etc/init.d").glob("*") if p.is_file() and os.access(p, os.X_OK))
    return str(scripts[0]) if scripts else None


class Host:
    """A copy of the checkout's setup, stand-ins on PATH, a fake package database."""

    def __init__(self, base: Path, installed: list[str], files: dict[str, list[str]], pulls_in: list[str]) -> None:
        self.repo = base / "repo"
        self.bin = base / "bin"
        self.policy_rc_d = base / "policy-rc.d"
        (self.repo / "contrib").mkdir(parents=True)
        for name in ("setup", "lib.sh"):
            shutil.copy2(ROOT / "contrib" / name, self.repo / "contrib" / name)
        shutil.copy2(ROOT / "pyproject.toml", self.repo / "pyproject.toml")
        shutil.copytree(ROOT / "constraints", self.repo / "constraints")
        later = time.time() + 60
        for venv in (".venv", ".venv-lowest"):  # venvs already up to date: setup only checks them
            (self.repo / venv / "bin").mkdir(parents=True)
            for tool in ("fwrecon", "python"):
                (self.repo / venv / "bin" / tool).write_text("#!/bin/sh\nexit 1\n")
                (self.repo / venv / "bin" / tool).chmod(0o755)
            for profile in ("demo", "test"):
                marker = self.repo / venv / f".installed-{profile}"
                marker.touch()
                os.utime(marker, (later, later))
        self.bin.mkdir()
        program = self.bin / "stand_in.py"
        program.write_text(f"#!{sys.executable}\n{STAND_IN}")
        program.chmod(0o755)
        for tool in TOOLS:
            (self.bin / tool).symlink_to(program)
        (self.bin / "db.json").write_text(json.dumps({"installed": installed, "files": files, "pulls_in": pulls_in}))

    def setup(self, *args: str, uid: int = 0) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "FWRECON_POLICY_RC_D": str(self.policy_rc_d),
            "FAKE_UID": str(uid),
        }
        return subprocess.run(
            ["bash", str(self.repo / "contrib" / "setup"), *args], capture_output=True, text=True, env=env, timeout=60
        )

    def calls(self, tool: str) -> list[dict]:
        path = self.bin / "calls.jsonl"
        entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [e for e in entries if e["tool"] == tool]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """The user already had prometheus, with its service; firewalld is missing
    and pulls in python3-firewall (no services of its own)."""
    script = an_init_script()
    files = {
        "prometheus": ["/lib/systemd/system/prometheus.service", "/usr/bin/promtool"],
        "firewalld": [
            "/lib/systemd/system/firewalld.service",
            "/usr/sbin/firewalld",
            "/lib/systemd/system/firewalld@.service",
            *([script] if script else []),
        ],
        "python3-firewall": ["/usr/lib/python3/dist-packages/firewall/__init__.py"],
    }
    installed = [p for p in TEST_PACKAGES if p != "firewalld"]
    return Host(tmp_path, installed, files, pulls_in=["python3-firewall"])


def test_setup_installs_with_every_start_denied_and_disables_only_what_it_installed(host: Host) -> None:
    result = host.setup("test")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # quiet unless something fails

    (install,) = host.calls("apt-get")[1:]  # (after apt-get update)
    assert install["install"] == ["firewalld"]
    assert install["policy_rc_d_verdict"] == 101  # invoke-rc.d / deb-systemd-invoke: no start allowed
    assert not host.policy_rc_d.exists()  # removed again: it was setup's own

    disabled = [c["args"] for c in host.calls("systemctl")]
    assert disabled == [["--no-reload", "disable", "firewalld.service"]]  # not prometheus, not the template
    script = an_init_script()
    assert [c["args"] for c in host.calls("update-rc.d")] == ([[Path(script).name, "disable"]] if script else [])


def test_setup_leaves_an_existing_policy_rc_d_as_it_was(host: Host) -> None:
    host.policy_rc_d.write_text("#!/bin/sh\n# the admin's own\nexit 101\n")
    host.policy_rc_d.chmod(0o755)
    before = host.policy_rc_d.read_text()
    result = host.setup("test")
    assert result.returncode == 0, result.stderr
    assert host.policy_rc_d.read_text() == before


def test_setup_with_nothing_missing_changes_nothing(tmp_path: Path) -> None:
    host = Host(tmp_path, TEST_PACKAGES, {}, pulls_in=[])
    result = host.setup()  # the default profile is test
    assert result.returncode == 0 and result.stdout == result.stderr == "", result
    assert host.calls("apt-get") == host.calls("systemctl") == host.calls("update-rc.d") == []


def test_the_demo_installs_only_what_the_demo_needs(tmp_path: Path) -> None:
    host = Host(tmp_path, [], {}, pulls_in=[])
    result = host.setup("demo")
    assert result.returncode == 0, result.stderr
    (install,) = host.calls("apt-get")[1:]
    assert set(install["install"]) == DEMO_ONLY  # no prometheus, libvirt or test tools


def test_setup_refuses_an_unknown_profile(tmp_path: Path) -> None:
    result = Host(tmp_path, [], {}, pulls_in=[]).setup("everything")
    assert result.returncode == 2 and "usage" in result.stderr


def test_as_a_user_it_runs_itself_again_through_sudo_keeping_ci(tmp_path: Path) -> None:
    host = Host(tmp_path, [], {}, pulls_in=[])
    result = host.setup("demo", uid=1000)
    assert result.returncode == 0, result.stderr
    script = str((host.repo / "contrib" / "setup").resolve())
    assert [c["args"] for c in host.calls("sudo")] == [["--preserve-env=CI", "--", script, "demo"]]
    assert host.calls("apt-get") == []  # nothing ran as the user itself


def test_as_a_user_without_sudo_it_says_to_run_it_as_root(tmp_path: Path) -> None:
    if shutil.which("sudo"):  # (not a missing prerequisite: the case cannot be made where sudo is installed)
        pytest.skip("sudo is installed here: the machine without sudo cannot be imitated")
    host = Host(tmp_path, [], {}, pulls_in=[])
    (host.bin / "sudo").unlink()
    env = {
        **os.environ,
        "PATH": f"{host.bin}:{os.environ['PATH']}",
        "FAKE_UID": "1000",
        "FWRECON_POLICY_RC_D": str(host.policy_rc_d),
    }
    result = subprocess.run(["bash", str(host.repo / "contrib" / "setup")], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1 and result.stderr == "setup: needs root (and sudo is not installed): run it as root\n", result
