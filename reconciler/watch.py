"""Watch the policy directory with watchdog (inotify on Linux).

Every create, modify, delete or move that touches a policy file, in or out
of the directory, or the directory itself (any entry added, removed or
renamed: so also kubelet's rename over ``..data`` that publishes a new
version of a ConfigMap volume, tests/integration/test_kubernetes.py), calls
``notify`` from watchdog's thread; the controller
coalesces the bursts that editors (temp file + rename) and cp/tar (several
writes) produce.  Events carry no payload: the controller re-reads the whole
directory each time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .policydir import is_policy_file


class _Handler(FileSystemEventHandler):
    def __init__(self, directory: Path, notify: Callable[[], None]) -> None:
        self.directory = directory
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        for raw in paths:
            if not raw:
                continue
            path = Path(raw.decode() if isinstance(raw, bytes) else raw)
            if (path.parent == self.directory and is_policy_file(path)) or path == self.directory:
                self.notify()
                return


class PolicyWatcher:
    """Starts and stops a watchdog observer on one directory (not recursive)."""

    def __init__(self, directory: Path, notify: Callable[[], None]) -> None:
        self.directory = directory.resolve()
        self._observer = Observer()
        self._observer.schedule(_Handler(self.directory, notify), str(self.directory), recursive=False)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
