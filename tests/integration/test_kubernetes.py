"""Policies delivered as a Kubernetes ConfigMap volume.

The daemon follows kubelet's AtomicWriter exactly as a volume changes (see
tests/kubelet_writer.py): one reconcile per published version, with every
file of that version and nothing of the one before.  And inside a container,
where such a volume is a read-only mount whose directory shows mode 0777,
fwrecon applies it (a read-only mount lifts the mode rule).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import Daemon, Fwrecon, wait_until
from kubelet_writer import AtomicWriter
from prereq import require_tools

HERE = Path(__file__).resolve().parent


def policy(*ports: int) -> str:
    return "[zone.public]\nports = [" + ", ".join(f'"{p}/tcp"' for p in ports) + "]\n"


def public_ports(fwrecon: Fwrecon) -> set[str]:
    return set(fwrecon.sandbox.firewall_cmd("--zone=public", "--list-ports").stdout.split())


def test_daemon_follows_each_published_version_in_one_reconcile(fwrecon: Fwrecon, daemon_factory: Callable[..., Daemon]) -> None:
    writer = AtomicWriter(fwrecon.policy_dir)
    writer.write({"web.toml": policy(7400)})
    daemon = daemon_factory()
    wait_until(lambda: public_ports(fwrecon) == {"7400/tcp"}, 3, "the first version")
    daemon.settled()

    def publish(payload: dict[str, str], expected: set[str], ops: int) -> None:
        before = len(daemon.reconciles())
        writer.write(payload)
        wait_until(lambda: public_ports(fwrecon) == expected, 3, f"the version with {sorted(expected)}")
        daemon.settled()
        after = [r for r in daemon.reconciles()[before:] if r["trigger"] == "policy"]
        assert [r["ops"] for r in after] == [ops], after  # one reconcile, the whole difference at once
        assert all(r["result"] == "success" for r in after)

    # only the content changes: the sole event in the directory is the rename over ..data
    publish({"web.toml": policy(7401)}, {"7401/tcp"}, ops=2)
    # a new file and a changed one, in one version
    publish({"web.toml": policy(7402), "db.toml": policy(7403)}, {"7402/tcp", "7403/tcp"}, ops=3)
    # a file leaves the ConfigMap: its visible link goes, and so do its items
    publish({"web.toml": policy(7402)}, {"7402/tcp"}, ops=1)
    assert not any(e for e in daemon.events("policy_invalid")), daemon.events("policy_invalid")
    assert daemon.stop() == 0


def test_a_read_only_volume_showing_mode_0777_is_applied(fwrecon: Fwrecon, tmp_path: Path) -> None:
    require_tools("the read-only mount test", ("unshare", "mount"))
    volume = tmp_path / "volume"
    volume.mkdir()
    AtomicWriter(volume).write({"web.toml": policy(7410)})
    volume.chmod(0o777)  # what the container sees (kubernetes issues 125876, 133641)
    pod = Fwrecon(fwrecon.sandbox, volume, tmp_path / "state.json")

    writable = pod.run("apply")
    assert writable.returncode == 1 and "refusing directory writable by group or others (mode 777)" in writable.stdout, writable

    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        sys.executable,
        str(HERE / "read_only_mount.py"),
        str(volume),
        *pod.argv("apply"),
    ]
    applied = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert public_ports(fwrecon) == {"7410/tcp"}
    assert str(volume) not in Path("/proc/self/mountinfo").read_text()  # the mount ended with its namespace
