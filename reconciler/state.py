"""Ownership state: what fwrecon added, kept safe across crashes.

fwrecon only ever removes what this file says it added.  Before a transaction
that adds something the file does not claim yet, those items are recorded as
owned together with a ``pending`` note (the intent); after it, the real
outcome replaces that.  A crash in between leaves a file that claims a little
too much, never too little: an owned item that is absent is simply re-added
or let go on the next run, so nothing is orphaned and nothing is forgotten.
(Putting back rules the file already claims, as after a flush or a reload,
needs no intent.)

Writes are atomic (temp file, fsync, rename, fsync of the directory), and a
save of what the file already holds writes nothing.  A file that cannot be
read or parsed raises `StateError`: silently starting empty would forget
every rule fwrecon owns.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StateError
from .model import Item, Ownership

FORMAT_VERSION = 1


@dataclass
class State:
    owned: Ownership = field(default_factory=dict)
    pending: dict[str, Any] | None = None
    # Which backend holds each owned item, so a switch (firewalld appears or
    # goes away) can take it out of the old one: no duplicates left behind.
    placed: dict[Item, str] = field(default_factory=dict)
    # Items held by someone else that policies want: item -> those policies.
    # Never fwrecon's, even when a reload wipes them and fwrecon puts them back.
    others: Ownership = field(default_factory=dict)

    def owned_by(self, policy: str) -> frozenset[Item]:
        return frozenset(item for item, owners in self.owned.items() if policy in owners)


class StateStore:
    """Loads and atomically saves `State` at ``path``.

    The daemon loads the state at every reconcile; the store remembers what it
    last read or wrote, and while the file is unchanged (same inode, size and
    mtime: every save is a new inode) `load` returns a copy of that instead of
    parsing thousands of items again.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._known: tuple[tuple[int, int, int], State] | None = None

    def load(self) -> State:
        try:
            signature = _signature(os.stat(self.path))
            if self._known is not None and self._known[0] == signature:
                return _copy(self._known[1])
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return State()
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read state file: {exc.strerror}") from exc
        state = self._parse(text)
        self._known = (signature, _copy(state))
        return state

    def _parse(self, text: str) -> State:
        try:
            data = json.loads(text)
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            owned: Ownership = {}
            placed: dict[Item, str] = {}
            for entry in data["owned"]:
                item = Item.from_json(entry["item"])
                owned[item] = frozenset(str(p) for p in entry["policies"])
                if entry.get("backend"):
                    placed[item] = str(entry["backend"])
            others: Ownership = {}
            for entry in data.get("held_by_others", []):
                others[Item.from_json(entry["item"])] = frozenset(str(p) for p in entry["policies"])
            return State(owned=owned, pending=data.get("pending"), placed=placed, others=others)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(
                f"{self.path}: state file is corrupt ({exc}); refusing to start with an empty state, "
                "which would forget the rules fwrecon owns. Repair or move the file away."
            ) from exc

    def save(self, state: State) -> None:
        if self._holds(state):
            return
        payload = render(state)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                    signature = _signature(os.fstat(handle.fileno()))
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            self._known = (signature, _copy(state))
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self._known = None
            raise StateError(f"{self.path}: cannot write state file: {exc}") from exc

    def _holds(self, state: State) -> bool:
        """The file is still the one this store last read or wrote, and says exactly ``state``."""
        if self._known is None:
            return False
        signature, known = self._known
        try:
            if _signature(os.stat(self.path)) != signature:
                return False
        except OSError:
            return False
        return (known.owned == state.owned and known.placed == state.placed and known.pending == state.pending
                and known.others == state.others)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock so two fwrecon processes never interleave."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"{lock_path}: cannot open lock file: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StateError(f"{lock_path}: another fwrecon process is running against this state file") from exc
            yield
        finally:
            os.close(fd)


def render(state: State) -> str:
    """The file's JSON text: compact, items in plan order (read it with jq).

    Built from each item's cached JSON text, and each distinct owner set and
    backend name encoded once: 10,000 items cost milliseconds, not a fresh
    encode of every item at every save.
    """
    owned, placed = state.owned, state.placed
    owner_texts: dict[frozenset[str], str] = {}
    backend_texts: dict[str | None, str] = {None: "null"}
    entries = []
    for item in sorted(owned, key=Item.sort_key):
        owners = owned[item]
        if not owners:
            continue
        owners_text = owner_texts.get(owners)
        if owners_text is None:
            owners_text = owner_texts[owners] = json.dumps(sorted(owners), separators=(",", ":"))
        backend = placed.get(item)
        backend_text = backend_texts.get(backend)
        if backend_text is None:
            backend_text = backend_texts[backend] = json.dumps(backend)
        entries.append(f'{{"item":{item.json_text()},"policies":{owners_text},"backend":{backend_text}}}')
    pending = json.dumps(state.pending, separators=(",", ":"))
    held = ",".join(
        f'{{"item":{item.json_text()},"policies":{json.dumps(sorted(wanters), separators=(",", ":"))}}}'
        for item, wanters in sorted(state.others.items(), key=lambda pair: pair[0].sort_key())
        if wanters
    )
    return f'{{"version":{FORMAT_VERSION},"owned":[{",".join(entries)}],"held_by_others":[{held}],"pending":{pending}}}'


def _signature(status: os.stat_result) -> tuple[int, int, int]:
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def _copy(state: State) -> State:
    """A copy the caller may change freely (items and owner sets are immutable)."""
    return State(owned=dict(state.owned), pending=copy.deepcopy(state.pending), placed=dict(state.placed), others=dict(state.others))
