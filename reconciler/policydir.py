"""Policy directories: which files are policies, who may have written them, reading them safely.

The I/O side of policies (`policy` parses the bytes).  Only ``*.toml`` files
are read; hidden files, editor backups and temp files are ignored.  Files (and
the directory) that someone else could have written are refused.  A file is
read with a bounded read, so a huge or growing file cannot eat the daemon's
memory; a directory that cannot be read holds every policy at its last good
version (`LoadResult.unreadable`).

Directories other tools manage (see `check_file_safety`, `load_policy_dir`):

* A policy file may be a symlink, as in a Kubernetes ConfigMap volume
  (``web.toml -> ..data/web.toml``, ``..data -> ..2026_12_05_10_00_00.123``):
  it is judged by where it leads, so a link is never a way around the rules.
* kubelet publishes a new version by renaming a ``..data_tmp`` symlink over
  ``..data``; a directory read while that happened is read again, so one
  reconcile never mixes two versions.
* A read-only mount lifts the "writable by group or others" rule: nobody can
  write through it (a ConfigMap volume inside a container shows mode 0777 on
  a read-only mount: kubernetes issues 125876 and 133641).  Only root mounts
  file systems, so whoever could change the files is whoever root let write
  the mount's source (the kubelet, on the host).  Ownership is still checked.
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

# kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go) publishes each
# version of a volume by renaming a symlink of this name to a new directory.
PUBLISHED_LINK = "..data"
# A directory that keeps changing version while it is read is read this often
# before the last reading counts (kubelet publishes at most every few seconds).
MAX_READS_WHILE_SWAPPED = 5
MAX_LINK_HOPS = 40  # the kernel's own limit (ELOOP)


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

    def previous(self, path: Path) -> Policy | None:
        """The file's last parsed version, whatever its content (`parse_policy` reuses its elements)."""
        entry = self._entries.get(path)
        return entry[1] if entry is not None else None

    def put(self, path: Path, digest: bytes, policy: Policy) -> None:
        self._entries[path] = (digest, policy)

    def keep_only(self, paths: Iterable[Path]) -> None:
        keep = set(paths)
        for path in [p for p in self._entries if p not in keep]:
            del self._entries[path]


def load_policy_dir(directory: Path | str, cache: PolicyCache | None = None) -> LoadResult:
    """Load and validate every policy file in ``directory``.

    A missing or unsafe directory is reported as an error of a pseudo-policy
    named after the directory, so callers see it like any other error.  When
    the directory's published version (``..data``) changed while it was read,
    it is read again: every file comes from one version.
    """
    directory = Path(directory)
    result = LoadResult()
    for _ in range(MAX_READS_WHILE_SWAPPED):
        version = published_version(directory)
        result = _load_dir(directory, cache)
        if published_version(directory) == version:
            break
        log.info("policy_dir_swapped_while_read", directory=str(directory))
    return result


def published_version(directory: Path) -> str | None:
    """Where ``directory/..data`` points now (None where there is no such link)."""
    try:
        return os.readlink(directory / PUBLISHED_LINK)
    except OSError:
        return None


def _load_dir(directory: Path, cache: PolicyCache | None) -> LoadResult:
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
    """Refuse files (and the directory) that someone else could have written.

    A symlink is judged by where it leads: its final target must pass the
    file rules, and so must every directory that could redirect it or swap
    what it leads to: each directory holding a link followed on the way,
    and each directory on the target's real path, up to the policy directory
    (already judged) or, for a target elsewhere, up to ``/``.  Above the
    target's own directory, a sticky directory others can write (``/tmp``)
    is accepted: nobody else can rename or remove what is in it.
    """
    info = _stat(path)
    kind = "directory" if is_dir else "file"
    if is_dir != stat.S_ISDIR(info.st_mode) or (not is_dir and not stat.S_ISREG(info.st_mode)):
        raise PolicyError(str(path), "", f"not a regular {kind}")
    link = not is_dir and path.is_symlink()
    _judge(path, info, f"file {os.path.realpath(path)} (the link's target)" if link else kind)
    if link:
        for directory, sticky_ok in _directories_on_the_way(path):
            where = _stat(directory)
            if sticky_ok and where.st_mode & stat.S_ISVTX:
                where = os.stat_result((where.st_mode & ~0o022, *tuple(where)[1:]))
            _judge(directory, where, f"directory {directory} (on the way to the link's target)")


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError as exc:
        raise PolicyError(str(path), "", "does not exist") from exc
    except OSError as exc:
        raise PolicyError(str(path), "", f"cannot stat: {exc.strerror}") from exc


def _judge(path: Path, info: os.stat_result, kind: str) -> None:
    """The owner and mode rules, for one file or directory."""
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not _read_only_mount(path):
        raise PolicyError(
            str(path), "", f"refusing {kind} writable by group or others (mode {stat.S_IMODE(info.st_mode):o}); chmod go-w it"
        )
    if info.st_uid not in (0, os.geteuid()):
        raise PolicyError(str(path), "", f"refusing {kind} owned by uid {info.st_uid} (must be root or uid {os.geteuid()})")


def _read_only_mount(path: Path) -> bool:
    """Whether ``path`` is on a read-only mount (nobody can write through it; see the module docstring)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _directories_on_the_way(link: Path) -> list[tuple[Path, bool]]:
    """(directory, sticky accepted) for every directory that could redirect ``link``.

    Follows the links one hop at a time: the directory holding each one, then
    the target's real path, from its own directory up to the directory that
    holds ``link`` (judged as the policy directory) or ``/``.
    """
    home = Path(os.path.realpath(link.parent))
    found: dict[Path, bool] = {}
    current = Path(os.path.abspath(link))
    for _ in range(MAX_LINK_HOPS):
        holder = Path(os.path.realpath(current.parent))
        found.setdefault(holder, False)
        if not current.is_symlink():
            break
        current = holder / os.readlink(current)
    else:
        raise PolicyError(str(link), "", f"more than {MAX_LINK_HOPS} symlinks on the way to its target")
    target_dir = Path(os.path.realpath(current)).parent
    for index, directory in enumerate([target_dir, *target_dir.parents]):
        if directory == home:
            break
        # sticky only above the target's own directory, never where a link lies (its owner could swap it)
        found[directory] = found.get(directory, True) and index > 0
    found.pop(home, None)  # the policy directory: judged by load_policy_dir, with its own rules
    return list(found.items())


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
        policy = parse_policy(path.name, raw, cache.previous(path) if cache is not None else None)
    except PolicyFileInvalid as invalid:
        if invalid.internal is not None:
            log.error(
                "policy_internal_error",
                file=label,
                error_type=type(invalid.internal).__name__,
                error=str(invalid.internal),
                exc_info=invalid.internal,
            )
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
