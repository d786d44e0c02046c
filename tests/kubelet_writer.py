"""kubelet's AtomicWriter, step by step: how a ConfigMap volume changes.

pkg/volume/util/atomic_writer.go (Write) publishes each version of a volume
as a new hidden timestamped directory and swaps one symlink to it:

    ..2026_12_05_10_00_00.0123456789/web.toml   the version's files
    ..data -> ..2026_12_05_10_00_00.0123456789   swapped by rename(2)
    web.toml -> ..data/web.toml                  the names users see

Each step below is one of kubelet's, in its order, so tests see exactly the
file system events and intermediate states a real volume goes through.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

DATA = "..data"
DATA_TMP = "..data_tmp"


class AtomicWriter:
    def __init__(self, target: Path) -> None:
        self.target = target

    def current(self) -> dict[str, str]:
        """The files of the version published now."""
        data = self.target / DATA
        return {p.name: p.read_text() for p in data.iterdir()} if data.exists() else {}

    def write(self, payload: dict[str, str], mode: int = 0o644) -> Path:
        """Publish ``payload`` (file name -> text) as the volume's new version; returns its directory."""
        old = os.readlink(self.target / DATA) if (self.target / DATA).is_symlink() else None
        to_remove = set(self.current()) - set(payload)
        # new timestamped directory (os.MkdirTemp with kubelet's time layout), 0755, with the payload
        version = Path(tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()), dir=self.target))
        version.chmod(0o755)
        for name, text in payload.items():
            (version / name).write_text(text)
            (version / name).chmod(mode)
        # ..data_tmp -> the new directory, renamed over ..data: the swap
        os.symlink(version.name, self.target / DATA_TMP)
        os.rename(self.target / DATA_TMP, self.target / DATA)
        # the visible names, for files new in this version
        for name in payload:
            if not (self.target / name).is_symlink():
                os.symlink(f"{DATA}/{name}", self.target / name)
        # visible names of files no longer in the payload, then the old version
        for name in to_remove:
            (self.target / name).unlink()
        if old:
            shutil.rmtree(self.target / old)
        return version
