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
save of what the file already holds writes nothing.  Set elements and ipset
entries are written in groups (one per set, owners and backend: ``"of"``
the set, ``"values"`` its elements), not one entry each: 100,000 elements
cost one sorted list rather than 100,000 objects, at every save.  Files of
version 1 (one entry per item) are read as well.  A file that cannot be
read or parsed raises `StateError`: silently starting empty would forget
every rule fwrecon owns.  Reading is defensive: whatever bytes the file holds
(not UTF-8, truncated, nested too deeply, too large, of the wrong shape or
types), the outcome is a `State` or ``<path>: state file is corrupt (...)``,
never a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import operator
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StateError
from .model import ITEM_KINDS, IpsetEntry, Item, NftElement, Ownership, json_type_name

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before elements and entries were grouped
# The item kinds written in groups: the fields a group shares, and the one that varies within it.
GROUPED: dict[type[Item], tuple[tuple[str, ...], str]] = {
    NftElement: (("family", "set"), "element"),
    IpsetEntry: (("ipset",), "entry"),
}
# (attrgetter gives a tuple of several fields, and one field's value itself)
_SHARED = {cls: operator.attrgetter(*shared) for cls, (shared, _) in GROUPED.items()}
# A state file larger than this is corrupt, refused before it is read.  An
# owned item takes ~150 bytes (measured: 10,000 ports and direct rules, 1.4
# MiB), so 512 MiB is over three million items, a thousand times the largest
# run measured (README, Performance); the cap bounds what a runaway or garbage file
# can make fwrecon allocate.
MAX_STATE_FILE_BYTES = 512 * 1024 * 1024
# A grouped element takes as little as ~8 bytes of the file but ~350 of
# memory once it is an item, so the size alone no longer bounds what a file
# can make fwrecon build: the items are counted too, with the same room as
# the size gave version 1 files.
MAX_STATE_ITEMS = 4_000_000
# ``pending`` is a note for humans (policy, op count, a few op texts, a time);
# deeper structures are not ours, and would strain deepcopy and the logger.
MAX_PENDING_DEPTH = 8


class _Corrupt(ValueError):
    """The file's content is not a state file fwrecon wrote."""


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

    def kept_by(self, policy: str) -> frozenset[Item]:
        """What ``policy`` has in force: what it owns, and what it wants that
        others hold (what it is held at when its file breaks, so the records
        of those stay too)."""
        return self.owned_by(policy) | {item for item, wanters in self.others.items() if policy in wanters}


def _owners(entry: dict[str, Any], where: str) -> tuple[frozenset[str], str | None]:
    """An owned entry's (or group's) policies and backend."""
    policies = entry.get("policies")
    if type(policies) is not list or not policies or any(type(p) is not str for p in policies):
        raise _Corrupt(f"{where}.policies must be a non-empty array of strings, got {_short(policies)}")
    backend = entry.get("backend")
    if backend is not None and type(backend) is not str:
        raise _Corrupt(f"{where}.backend must be a string or null, got {json_type_name(backend)}")
    return frozenset(policies), backend


def _grouped(groups: Any, owned: Ownership, placed: dict[Item, str]) -> None:
    """Add the ``owned_groups`` records to ``owned`` and ``placed``: each is
    ``of`` (an item without the field that varies, checked as strictly as
    any item), ``values`` (that field's values), the policies and backend."""
    if type(groups) is not list:
        raise _Corrupt(f"'owned_groups' must be an array, got {json_type_name(groups)}")
    names = {cls.kind: (cls, varying) for cls, (_, varying) in GROUPED.items()}
    count = len(owned)
    for index, group in enumerate(groups):
        where = f"owned_groups[{index}]"
        if type(group) is not dict or type(group.get("of")) is not dict or type(group.get("values")) is not list:
            raise _Corrupt(f"{where} must be an object with an 'of' object and a 'values' array")
        of, values = group["of"], group["values"]
        count += len(values)
        if count > MAX_STATE_ITEMS:
            raise _Corrupt(f"more than the {MAX_STATE_ITEMS:,} items a state file may hold")
        kind = of.get("kind")
        if type(kind) is not str or kind not in names or ITEM_KINDS.get(kind) is not names[kind][0]:
            raise _Corrupt(f"{where}.of: {_short(kind)} is not a kind kept in groups")
        cls, varying = names[kind]
        if varying in of:
            raise _Corrupt(f"{where}.of names {varying!r}, which its values give")
        try:
            template = Item.from_json({**of, varying: ""})
        except ValueError as exc:
            raise _Corrupt(f"{where}.of: {exc}") from exc
        fixed = {name: getattr(template, name) for name in of if name != "kind"}
        policies, backend = _owners(group, where)
        for at, value in enumerate(values):
            if type(value) is not str:
                raise _Corrupt(f"{where}.values[{at}] must be a string, got {json_type_name(value)}")
            item = cls(**fixed, **{varying: value})
            if item in owned:
                raise _Corrupt(f"{where}.values[{at}]: {item.describe()} is listed twice")
            owned[item] = policies
            if backend:
                placed[item] = backend


def _held_by_others(entries: Any) -> Ownership:
    """The ``held_by_others`` records (absent in files of older versions)."""
    if type(entries) is not list:
        raise _Corrupt(f"'held_by_others' must be an array, got {json_type_name(entries)}")
    others: Ownership = {}
    for index, entry in enumerate(entries):
        where = f"held_by_others[{index}]"
        if type(entry) is not dict or "item" not in entry:
            raise _Corrupt(f"{where} must be an object with an 'item'")
        try:
            item = Item.from_json(entry["item"])
        except ValueError as exc:
            raise _Corrupt(f"{where}.item: {exc}") from exc
        policies = entry.get("policies")
        if type(policies) is not list or not policies or any(type(p) is not str for p in policies):
            raise _Corrupt(f"{where}.policies must be a non-empty array of strings, got {_short(policies)}")
        if item in others:
            raise _Corrupt(f"{where}: {item.describe()} is listed twice")
        others[item] = frozenset(policies)
    return others


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
        self._entry_texts: EntryTexts = {}  # the last save's entries (`render_entries`)

    def load(self) -> State:
        """The state in the file (empty if there is none); StateError for anything unusable."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return State()
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read state file: {exc.strerror}") from exc
        try:
            with open(fd, "rb", closefd=True) as handle:
                status = os.fstat(handle.fileno())
                signature = _signature(status)
                if self._known is not None and self._known[0] == signature:
                    return _copy(self._known[1])
                if not stat.S_ISREG(status.st_mode):
                    raise StateError(f"{self.path}: cannot read state file: not a regular file")
                if status.st_size > MAX_STATE_FILE_BYTES:
                    raise self._corrupt(
                        f"{status.st_size} bytes, more than the {_size_text(MAX_STATE_FILE_BYTES)} a state file may hold"
                    )
                raw = handle.read(MAX_STATE_FILE_BYTES + 1)  # bounded, should it grow meanwhile
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read state file: {exc.strerror or exc}") from exc
        if len(raw) > MAX_STATE_FILE_BYTES:
            raise self._corrupt(f"more than the {_size_text(MAX_STATE_FILE_BYTES)} a state file may hold")
        try:
            state = self._parse(raw)
            known = _copy(state)
        except _Corrupt as exc:
            raise self._corrupt(str(exc)) from exc
        except RecursionError as exc:
            raise self._corrupt("nested too deeply") from exc
        except MemoryError as exc:
            raise StateError(f"{self.path}: cannot load state file: out of memory") from exc
        self._known = (signature, known)
        return state

    def _corrupt(self, reason: str) -> StateError:
        return StateError(
            f"{self.path}: state file is corrupt ({reason}); refusing to start with an empty state, "
            "which would forget the rules fwrecon owns. Repair or move the file away."
        )

    @staticmethod
    def _parse(raw: bytes) -> State:
        """Exactly the shape `render` writes, by exact JSON types; raises _Corrupt otherwise.

        Keys this version does not know are ignored at the top level and in
        entries (a later minor addition), never inside items: an item field
        fwrecon does not know could make two different items one.
        """
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Corrupt(f"not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:  # JSONDecodeError, or an integer beyond int()'s digit limit
            raise _Corrupt(f"not JSON: {exc}") from exc
        if type(data) is not dict:
            raise _Corrupt(f"expected a JSON object, got {json_type_name(data)}")
        version = data.get("version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise _Corrupt(f"unsupported version {_short(version)}")
        if "owned" not in data:
            raise _Corrupt("missing 'owned'")
        entries = data["owned"]
        if type(entries) is not list:
            raise _Corrupt(f"'owned' must be an array, got {json_type_name(entries)}")
        pending = data.get("pending")
        if pending is not None and type(pending) is not dict:
            raise _Corrupt(f"'pending' must be an object or null, got {json_type_name(pending)}")
        if pending is not None and _too_deep(pending, MAX_PENDING_DEPTH):
            raise _Corrupt(f"'pending' is nested more than {MAX_PENDING_DEPTH} levels deep")
        owned: Ownership = {}
        placed: dict[Item, str] = {}
        for index, entry in enumerate(entries):
            where = f"owned[{index}]"
            if type(entry) is not dict:
                raise _Corrupt(f"{where} must be an object, got {json_type_name(entry)}")
            if "item" not in entry:
                raise _Corrupt(f"{where}: missing 'item'")
            try:
                item = Item.from_json(entry["item"])
            except ValueError as exc:
                raise _Corrupt(f"{where}.item: {exc}") from exc
            if item in owned:
                raise _Corrupt(f"{where}: {item.describe()} is listed twice")
            policies, backend = _owners(entry, where)
            owned[item] = policies
            if backend:
                placed[item] = backend
        _grouped(data.get("owned_groups", []), owned, placed)
        return State(owned=owned, pending=pending, placed=placed, others=_held_by_others(data.get("held_by_others", [])))

    def save(self, state: State) -> None:
        if self._holds(state):
            return
        if len(state.owned) > MAX_STATE_ITEMS:  # (a file `load` would call corrupt: refused before anything lands)
            raise StateError(
                f"{self.path}: cannot write state file: {len(state.owned):,} owned items, "
                f"more than the {MAX_STATE_ITEMS:,} a state file may hold"
            )
        payload, entry_texts = render_entries(state, self._entry_texts)
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
            self._entry_texts = entry_texts
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
        return (
            known.owned == state.owned
            and known.placed == state.placed
            and known.pending == state.pending
            and known.others == state.others
        )

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


EntryTexts = dict[Item, tuple[frozenset[str], "str | None", str]]


def render(state: State) -> str:
    """The file's JSON text: compact, items in plan order (read it with jq)."""
    return render_entries(state, {})[0]


def render_entries(state: State, previous: EntryTexts) -> tuple[str, EntryTexts]:
    """`render`, reusing the entries of the last render (``previous``, each
    entry's text by item) that did not change, and the entries for the next.

    Built from each item's cached JSON text, and each distinct owner set and
    backend name encoded once: 10,000 items cost milliseconds, not a fresh
    encode of every item at every save.  Set elements and ipset entries go
    in groups (`GROUPED`): a pass that sorts them by set, owners and backend,
    and one list of strings each.
    """
    owned, placed = state.owned, state.placed
    owner_texts: dict[frozenset[str], str] = {}
    backend_texts: dict[str | None, str] = {None: "null"}

    def owners_text(owners: frozenset[str]) -> str:
        text = owner_texts.get(owners)
        if text is None:
            text = owner_texts[owners] = json.dumps(sorted(owners), separators=(",", ":"))
        return text

    def backend_text(backend: str | None) -> str:
        text = backend_texts.get(backend)
        if text is None:
            text = backend_texts[backend] = json.dumps(backend)
        return text

    fresh: EntryTexts = {}
    single: list[Item] = []
    groups: dict[tuple[type[Item], Any, frozenset[str], str | None], list[str]] = {}
    last: tuple[type[Item], Any, frozenset[str], str | None] | None = None  # the group of the item before
    values: list[str] = []
    for item, owners in owned.items():
        if not owners:
            continue
        cls = type(item)
        shared = _SHARED.get(cls)
        if shared is None:
            single.append(item)
            continue
        key = (cls, shared(item), owners, placed.get(item))
        # (Items come in runs of one group, 100,000 elements added together: a run costs one lookup.)
        if key != last:
            last, values = key, groups.setdefault(key, [])
        values.append(getattr(item, GROUPED[cls][1]))
    entries = []
    for item in sorted(single, key=Item.sort_key):
        owners, backend = owned[item], placed.get(item)
        known = previous.get(item)
        if known is not None and known[1] == backend and known[0] == owners:
            entries.append(known[2])
            fresh[item] = known
            continue
        text = f'{{"item":{item.json_text()},"policies":{owners_text(owners)},"backend":{backend_text(backend)}}}'
        entries.append(text)
        fresh[item] = (owners, backend, text)
    grouped = []
    for (cls, shared_values, owners, backend), values in sorted(
        groups.items(), key=lambda pair: (pair[0][0].kind, pair[0][1], sorted(pair[0][2]), pair[0][3] or "")
    ):
        fields_of = shared_values if type(shared_values) is tuple else (shared_values,)
        of = json.dumps({"kind": cls.kind, **dict(zip(GROUPED[cls][0], fields_of, strict=True))}, separators=(",", ":"))
        values.sort()
        grouped.append(
            f'{{"of":{of},"policies":{owners_text(owners)},"backend":{backend_text(backend)},'
            f'"values":{json.dumps(values, separators=(",", ":"))}}}'
        )
    pending = json.dumps(state.pending, separators=(",", ":"))
    held = ",".join(
        f'{{"item":{item.json_text()},"policies":{json.dumps(sorted(wanters), separators=(",", ":"))}}}'
        for item, wanters in sorted(state.others.items(), key=lambda pair: pair[0].sort_key())
        if wanters
    )
    return (
        f'{{"version":{FORMAT_VERSION},"owned":[{",".join(entries)}],"owned_groups":[{",".join(grouped)}],'
        f'"held_by_others":[{held}],"pending":{pending}}}',
        fresh,
    )


def _too_deep(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > limit:
            return True
        if type(current) is dict:
            stack.extend((child, depth + 1) for child in current.values())
        elif type(current) is list:
            stack.extend((child, depth + 1) for child in current)
    return False


def _short(value: Any, limit: int = 100) -> str:
    """JSON text for an error message, cut short: a corrupt file's values can be huge."""
    try:
        text = json.dumps(value)
    except (RecursionError, ValueError):
        return f"<{json_type_name(value)}>"
    return text if len(text) <= limit else text[:limit] + "…"


def _size_text(size: int) -> str:
    return f"{size // 2**20} MiB" if size % 2**20 == 0 else f"{size} bytes"


def _signature(status: os.stat_result) -> tuple[int, int, int]:
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def _copy(state: State) -> State:
    """A copy the caller may change freely (items and owner sets are immutable)."""
    return State(
        owned=dict(state.owned), pending=copy.deepcopy(state.pending), placed=dict(state.placed), others=dict(state.others)
    )
