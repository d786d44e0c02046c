"""The status record, and `fwrecon status` built from it and the state file.

Why: an operator asks "what does fwrecon own here, from which policy, on
which backend, and how did the last reconcile go?", whether or not the daemon
runs, and without a port to ask it on.  The state file already says what is
owned and where (`State.placed`); this small record, kept beside it as
``<state file>.status.json``, says the rest: when the last reconcile ran, why
(its trigger), how many operations it needed, its result (success, degraded,
error) and each policy's verdict with its reason.  The daemon writes it after
every reconcile and ``fwrecon apply`` after its one; both write atomically
(temp file, rename), so a reader never sees half a record.

It is a report, not ownership: it is not fsynced (after a power cut it may be
an older one, or unreadable, until the next reconcile writes it again), a
write that fails is logged and costs nothing else, and a record that cannot
be read makes `status` say so instead of guessing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .model import ELEMENTS_LISTED, Item
from .policydir import is_policy_file, load_policy_dir
from .state import StateStore

if TYPE_CHECKING:
    from .engine import ReconcileReport
    from .policy import LoadResult

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
SUFFIX = ".status.json"
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a record names policies and their reasons; bounded like a policy file
UNRECORDED = "unrecorded"  # an owned item whose backend the state file does not say (written before it did)

# `fwrecon status` exit codes (also in cli.py's docstring and README)
CONVERGED, UNREADABLE, NOT_CONVERGED = 0, 1, 2


def record_path(state_file: Path) -> Path:
    return state_file.with_name(state_file.name + SUFFIX)


@dataclass
class Verdict:
    status: str  # valid | invalid | failed
    reasons: list[str] = field(default_factory=list)


@dataclass
class Record:
    command: str  # run | apply
    pid: int
    started: float  # wall-clock time the reconcile started
    finished: float
    trigger: str
    ops: int
    result: str  # success | degraded | error
    error: str | None = None
    last_success: float | None = None
    # From the last reconcile that ran to its end (an error keeps the previous ones).
    policies: dict[str, Verdict] = field(default_factory=dict)
    policies_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> Record:
        """Exactly the shape `to_json` writes; ValueError for anything else."""
        if type(data) is not dict or data.get("version") != FORMAT_VERSION:
            raise ValueError("not a status record of this version")
        fields = {k: v for k, v in data.items() if k != "version"}
        policies = fields.get("policies")
        if type(policies) is not dict:
            raise ValueError("'policies' must be an object")
        verdicts = {}
        for name, verdict in policies.items():
            if type(verdict) is not dict or type(verdict.get("status")) is not str or type(verdict.get("reasons")) is not list:
                raise ValueError(f"policies.{name} must be an object with 'status' and 'reasons'")
            verdicts[name] = Verdict(verdict["status"], [str(r) for r in verdict["reasons"]])
        fields["policies"] = verdicts
        try:
            record = cls(**fields)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc
        for name, kind in (("command", str), ("pid", int), ("trigger", str), ("ops", int), ("result", str)):
            if type(getattr(record, name)) is not kind:
                raise ValueError(f"'{name}' must be a {kind.__name__}")
        for name in ("started", "finished"):
            if type(getattr(record, name)) not in (int, float):
                raise ValueError(f"'{name}' must be a number")
        return record


def read_record(state_file: Path) -> tuple[Record | None, str | None]:
    """The record beside ``state_file`` (None if there is none yet), or why it cannot be read."""
    path = record_path(state_file)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path}: cannot read status record: {exc.strerror or exc}"
    try:
        if len(raw) > MAX_RECORD_BYTES:
            raise ValueError(f"larger than {MAX_RECORD_BYTES // 2**20} MiB")
        return Record.from_json(json.loads(raw)), None
    except (ValueError, RecursionError) as exc:
        return None, f"{path}: status record is unreadable ({exc}); the next reconcile writes a new one"


_unwritable: set[Path] = set()  # records whose last write failed (said once, until one succeeds)


def write_record(state_file: Path, record: Record) -> None:
    """Replace the record atomically; a failure is logged (once), never raised."""
    path = record_path(state_file)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".status-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record.to_json(), handle, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        if path not in _unwritable:
            log.warning("status_record_unwritable", path=str(path), error=str(exc))
            _unwritable.add(path)
        return
    _unwritable.discard(path)


def verdicts(loaded: LoadResult, report: ReconcileReport) -> dict[str, Verdict]:
    """Each policy's verdict in a reconcile that ran to its end."""
    found = {name: Verdict("valid") for name in loaded.policies}
    for name, errors in report.invalid.items():
        found[name] = Verdict("invalid", [str(e) for e in errors])
    for outcome in report.failed:
        found[outcome.policy] = Verdict("failed", [f"{outcome.error} (rolled back)"])
    return found


def record_reconcile(
    state_file: Path,
    trigger: str,
    result: str,
    loaded: LoadResult,
    report: ReconcileReport,
    duration: float,
    *,
    command: str = "run",
) -> None:
    """After a reconcile that ran to its end (result success or degraded)."""
    now = time.time()
    if result == "success":
        last_success: float | None = now
    else:
        previous, _ = read_record(state_file)
        last_success = previous.last_success if previous else None
    write_record(
        state_file,
        Record(
            command=command,
            pid=os.getpid(),
            started=now - duration,
            finished=now,
            trigger=trigger,
            ops=report.write_ops,
            result=result,
            last_success=last_success,
            policies=verdicts(loaded, report),
            policies_at=now - duration,
        ),
    )


def record_error(state_file: Path, trigger: str, error: BaseException, duration: float, *, command: str = "run") -> None:
    """After a reconcile that could not run: the policies' verdicts stay those of the last one that did."""
    now = time.time()
    previous, _ = read_record(state_file)
    write_record(
        state_file,
        Record(
            command=command,
            pid=os.getpid(),
            started=now - duration,
            finished=now,
            trigger=trigger,
            ops=0,
            result="error",
            error=str(error),
            last_success=previous.last_success if previous else None,
            policies=previous.policies if previous else {},
            policies_at=previous.policies_at if previous else None,
        ),
    )


# -- fwrecon status ----------------------------------------------------------------


def section(item: Item) -> str:
    """The policy-file section an item belongs to: zone, policy, direct or nft."""
    return item.container()[0]


def _changed_since(directory: Path, names: set[str], since: float) -> list[str]:
    """Policy files added, removed or modified since ``since`` (compared with the names judged then)."""
    try:
        files = {p.name[: -len(".toml")]: p for p in directory.iterdir() if is_policy_file(p)}
    except OSError:
        return []  # the directory's own error is reported as a policy error
    changed = sorted(files.keys() ^ names)
    for name, path in files.items():
        with contextlib.suppress(OSError):
            if name in names and os.stat(path).st_mtime > since:
                changed.append(name)
    return sorted(set(changed))


def gather(policy_dir: Path, state_file: Path) -> tuple[int, dict[str, Any]]:
    """(exit code, report) from the policy files, the state file and the record.

    Converged (0) means: the last reconcile succeeded, no policy file changed
    since, every policy is valid and applied, and no transaction was cut off.
    Reads only; a state file that cannot be read raises StateError (the clear
    message plan, apply and run give too).
    """
    state = StateStore(state_file).load()
    record, problem = read_record(state_file)
    loaded = load_policy_dir(policy_dir)
    judged = record.policies if record else {}
    names = set(loaded.policies) | set(loaded.errors) | set(judged)
    owned_by: dict[str, list[Item]] = {}
    for item, owners in state.owned.items():
        for owner in owners:
            owned_by.setdefault(owner, []).append(item)
            names.add(owner)
    held_by: dict[str, list[Item]] = {}
    for item, wanters in state.others.items():
        for wanter in wanters:
            held_by.setdefault(wanter, []).append(item)
    policies: list[dict[str, Any]] = []
    for name in sorted(names):
        if name in loaded.errors:  # what is wrong now, whatever the last reconcile said
            verdict = Verdict("invalid", [str(e) for e in loaded.errors[name]])
        elif name in loaded.policies:
            verdict = judged.get(name) or (
                Verdict("valid") if record is None else Verdict("pending", ["added since the last reconcile"])
            )
        else:
            verdict = Verdict("removed", ["its file is gone; what it owns goes at the next reconcile"])
        owned: dict[str, dict[str, list[str]]] = {}
        for item in sorted(owned_by.get(name, []), key=Item.sort_key):
            backend = state.placed.get(item, UNRECORDED)
            owned.setdefault(backend, {}).setdefault(section(item), []).append(item.describe())
        held = [item.describe() for item in sorted(held_by.get(name, []), key=Item.sort_key)]
        policies.append(
            {"name": name, "status": verdict.status, "reasons": verdict.reasons, "owned": owned, "held_by_others": held}
        )

    why: list[str] = []
    if problem:
        why.append(problem)
    elif record is None:
        why.append("no reconcile recorded yet (neither `fwrecon run` nor `fwrecon apply` has run with this state file)")
    else:
        if record.result != "success":
            why.append(f"the last reconcile's result was {record.result}" + (f": {record.error}" if record.error else ""))
        # (compared with the reconcile that judged the policies: an error since judged none)
        changed = _changed_since(policy_dir, set(judged), record.policies_at) if record.policies_at is not None else []
        if changed:
            why.append(f"policy files changed since the last reconcile: {', '.join(changed)}")
    bad = [p["name"] for p in policies if p["status"] not in ("valid", "pending")]  # (pending: said as changed)
    if bad:
        why.append(f"policies not in force as written: {', '.join(bad)}")
    if state.pending:
        why.append("a transaction was cut off (the next reconcile converges it)")
    report = {
        "converged": not why,
        "why_not": why,
        "policy_dir": str(policy_dir),
        "state_file": str(state_file),
        "last_reconcile": _last(record),
        "policies": policies,
    }
    code = CONVERGED if not why else UNREADABLE if problem else NOT_CONVERGED
    return code, report


def _last(record: Record | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "time": _iso(record.finished),
        "started": _iso(record.started),
        "command": record.command,
        "pid": record.pid,
        "trigger": record.trigger,
        "ops": record.ops,
        "result": record.result,
        "error": record.error,
        "last_success": _iso(record.last_success) if record.last_success else None,
    }


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def render_text(report: dict[str, Any]) -> str:
    """What `fwrecon status` prints without --json: one line per item owned."""
    lines = []
    last = report["last_reconcile"]
    if last:
        line = (
            f"last reconcile: {last['time']} by fwrecon {last['command']} (pid {last['pid']}), "
            f"trigger {last['trigger']}, {last['ops']} ops, {last['result']}"
        )
        lines.append(line + (f": {last['error']}" if last["error"] else ""))
        if last["result"] != "success":
            lines.append(f"last success: {last['last_success'] or 'never'}")
    else:
        lines.append("last reconcile: none recorded")
    for policy in report["policies"]:
        lines.append(f"policy {policy['name']}: {policy['status']}")
        lines.extend(f"  {reason}" for reason in policy["reasons"])
        for backend, sections in policy["owned"].items():
            for items in sections.values():
                lines.extend(f"  owns on {backend}: {item}" for item in _elements_counted(items))
        lines.extend(f"  held by others: {item}" for item in policy["held_by_others"])
    if report["converged"]:
        lines.append("converged")
    else:
        lines.append("not converged: " + "; ".join(report["why_not"]))
    return "\n".join(lines)


_ELEMENT = re.compile(r"(nft \S+ \S+ set \S+) element |(ipset \S+) entry ")


def _set_of(match: re.Match[str], item: str) -> str:
    """The set a member's description names (its permanent copies apart)."""
    return (match[1] or match[2]) + (" (permanent)" if item.endswith(" (permanent)") else "")


def _elements_counted(items: list[str]) -> list[str]:
    """``items`` (descriptions), a set's elements (an ipset's entries) as one line when there are many."""
    counts = Counter(_set_of(match, item) for item in items if (match := _ELEMENT.match(item)))
    many = {name for name, count in counts.items() if count > ELEMENTS_LISTED}
    lines = []
    for item in items:
        match = _ELEMENT.match(item)
        if match is None or _set_of(match, item) not in many:
            lines.append(item)
        elif (name := _set_of(match, item)) in counts:
            lines.append(f"{name}: {counts.pop(name):,} {'elements' if match[1] else 'entries'}")
    return lines
