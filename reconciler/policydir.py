"""Policy directories: which files are policies, who may have written them, reading them safely.

The I/O side of policies (`policy` parses the bytes).  Only ``*.toml`` files
are read; hidden files, editor backups and temp files are ignored.  Files (and
the directory) that someone else could have written are refused.  A file is
read with a bounded read, so a huge or growing file cannot eat the daemon's
memory; a directory that cannot be read holds every policy at its last good
version (`LoadResult.unreadable`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import structlog

from .errors import PolicyError
from .policy import LoadResult, Policy, PolicyFileInvalid, internal_error, one_line, parse_policy

log = structlog.get_logger(__name__)

# A policy file larger than this is refused before a byte of it is read, and
# the read itself stops there, so a huge (or still growing) file cannot eat
# the daemon's memory.  64 MiB holds about three million entries of an
# address list (``"10.1.2.3/32",`` on its own line is ~20 bytes), while what
# parsing costs stays bounded: tomllib peaks at about four times the text
# (measured: 200,000 sources, 3.8 MiB, 13 MiB peak).
MAX_POLICY_FILE_BYTES = 64 * 1024 * 1024


def is_policy_file(path: Path) -> bool:
    """``*.toml``, not hidden, not an editor's backup or lock file."""
    name = path.name
    return name.endswith(".toml") and not name.startswith((".", "#", "~")) and len(name) > len(".toml")


def policy_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if is_policy_file(p))


class PolicyCache:
    """Parsed policies by file content, for a process that reloads often.

    The daemon re-reads every file on every reconcile (level-triggered), but
    parsing 10,000 TOML tables costs ~0.25 s; an unchanged file (same bytes,
    same path) is not parsed again.  Keyed by content, not by mtime: two
    writes within one clock tick would share an mtime.  Safety checks still
    run on every read.
    """

    def __init__(self) -> None:
        self._entries: dict[Path, tuple[bytes, Policy]] = {}

    def get(self, path: Path, digest: bytes) -> Policy | None:
        entry = self._entries.get(path)
        return entry[1] if entry is not None and entry[0] == digest else None

    def put(self, path: Path, digest: bytes, policy: Policy) -> None:
        self._entries[path] = (digest, policy)

    def keep_only(self, paths: Iterable[Path]) -> None:
        keep = set(paths)
        for path in [p for p in self._entries if p not in keep]:
            del self._entries[path]


def load_policy_dir(directory: Path | str, cache: PolicyCache | None = None) -> LoadResult:
    """Load and validate every policy file in ``directory``.

    A missing or unsafe directory is reported as an error of a pseudo-policy
    named after the directory, so callers see it like any other error.
    """
    directory = Path(directory)
    result = LoadResult()
    try:
        check_file_safety(directory, is_dir=True)
        files = policy_files(directory)
    except PolicyError as err:
        result.errors[str(directory)] = [err]
        result.unreadable = True
        return result
    except OSError as exc:
        result.errors[str(directory)] = [PolicyError(str(directory), "", f"cannot read policy directory: {exc.strerror}")]
        result.unreadable = True
        return result
    for path in files:
        name = path.name[: -len(".toml")]
        try:
            result.policies[name] = load_policy_file(path, cache)
        except PolicyFileInvalid as invalid:
            result.errors[name] = invalid.errors
        except Exception as exc:  # a bug must cost one policy, never the whole reconcile
            log.error("policy_internal_error", file=path.name, error_type=type(exc).__name__, error=str(exc), exc_info=exc)
            result.errors[name] = [internal_error(one_line(path.name), exc)]
    if cache is not None:
        cache.keep_only(files)
    return result


def check_file_safety(path: Path, *, is_dir: bool = False) -> None:
    """Refuse files (and the directory) that someone else could have written."""
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise PolicyError(str(path), "", "does not exist") from exc
    except OSError as exc:
        raise PolicyError(str(path), "", f"cannot stat: {exc.strerror}") from exc
    kind = "directory" if is_dir else "file"
    if is_dir != stat.S_ISDIR(info.st_mode) or (not is_dir and not stat.S_ISREG(info.st_mode)):
        raise PolicyError(str(path), "", f"not a regular {kind}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PolicyError(
            str(path), "", f"refusing {kind} writable by group or others (mode {stat.S_IMODE(info.st_mode):o}); chmod go-w it"
        )
    if info.st_uid not in (0, os.geteuid()):
        raise PolicyError(str(path), "", f"refusing {kind} owned by uid {info.st_uid} (must be root or uid {os.geteuid()})")


def load_policy_file(path: Path, cache: PolicyCache | None = None) -> Policy:
    """Parse and validate one file; raises PolicyFileInvalid with every error.

    Nothing else escapes: whatever goes wrong with one file (too large, not
    UTF-8, nested too deeply, out of memory, even a bug in validation) makes
    that one policy invalid with a line naming the file, and the others apply.
    """
    label = one_line(path.name)  # a file name may hold a line break too
    try:
        check_file_safety(path)
        raw = _read_bounded(path)
    except PolicyError as err:
        raise PolicyFileInvalid([PolicyError(label, "", err.message)]) from err
    except OSError as exc:
        raise PolicyFileInvalid([PolicyError(label, "", f"cannot read: {exc.strerror or exc}")]) from exc
    except MemoryError as exc:
        raise PolicyFileInvalid([PolicyError(label, "", "cannot read: out of memory")]) from exc
    digest = hashlib.sha256(raw).digest()
    if cache is not None and (cached := cache.get(path, digest)) is not None:
        return cached
    try:
        policy = parse_policy(path.name, raw)
    except PolicyFileInvalid as invalid:
        if invalid.internal is not None:
            log.error("policy_internal_error", file=label, error_type=type(invalid.internal).__name__,
                      error=str(invalid.internal), exc_info=invalid.internal)
        raise
    if cache is not None:
        cache.put(path, digest, policy)
    return policy


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, refusing more than MAX_POLICY_FILE_BYTES (checked before and while reading)."""
    limit = MAX_POLICY_FILE_BYTES
    limit_text = f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit} bytes"
    too_large = f"file is larger than {limit_text}, the limit for one policy file"
    # O_NONBLOCK: should the file have been swapped for a FIFO since the safety check, open() must not hang.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb", closefd=True) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PolicyError(str(path), "", "not a regular file")
        if info.st_size > limit:
            raise PolicyError(str(path), "", f"{too_large} ({info.st_size} bytes)")
        raw = handle.read(limit + 1)  # a file still growing stops here too
    if len(raw) > limit:
        raise PolicyError(str(path), "", too_large)
    return raw
