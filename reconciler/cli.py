"""The ``fwrecon`` command line: check, plan, apply and run.

Exit codes are part of the interface, for scripts and CI:

* ``check``: 0 all policies valid, 1 any invalid (one line per error).
* ``plan``:  0 nothing to do, 2 changes pending, 1 error (invalid policy,
  firewall unreachable).
* ``apply``: 0 converged, 1 a policy failed (and was rolled back) or is
  invalid, or the firewall is unreachable.
* ``run``:   0 after SIGTERM/SIGINT, 1 on a fatal start-up error.
* ``status``: 0 converged (the last reconcile succeeded, no policy file
  changed since, every policy valid and applied), 2 not converged (the
  reasons are printed), 1 the state file or the status record cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import structlog

from . import __version__, status
from .backends.select import BACKEND_MODES, DEFAULT_TIMEOUT, BackendSet, connect_firewalld
from .backends.select import connect as select_backends
from .daemon import Controller, DaemonSettings
from .engine import PERSIST_MODES, Reconciler, gc_paused, held_by_others, log_policy_errors, tool_verdicts
from .errors import BackendUnavailable, PolicyError, StateError
from .logsetup import configure_logging
from .metrics import DEFAULT_METRICS_ADDRESS, MetricsAddressError, parse_metrics_address
from .model import ELEMENTS_LISTED, NFT_ITEMS, NFT_TABLE, IpsetEntry, Item, NftElement, Op, Permanent
from .policy import LoadResult, Policy, conflicting_sets, declarations, unresolved_references
from .policydir import load_policy_dir
from .state import State, StateStore

DEFAULT_POLICY_DIR = "/etc/fwrecon/policies.d"
DEFAULT_STATE_FILE = "/var/lib/fwrecon/state.json"

log = structlog.get_logger("fwrecon")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    files = argparse.ArgumentParser(add_help=False)  # what every command reads
    files.add_argument(
        "--policy-dir",
        type=Path,
        default=Path(DEFAULT_POLICY_DIR),
        help=f"directory of *.toml policies (default {DEFAULT_POLICY_DIR})",
    )
    files.add_argument(
        "--state-file", type=Path, default=Path(DEFAULT_STATE_FILE), help=f"ownership state (default {DEFAULT_STATE_FILE})"
    )
    files.add_argument(
        "--log-format",
        choices=("json", "console", "auto"),
        default="auto",
        help="log format on stderr (default: console on a terminal, else JSON lines)",
    )
    common = argparse.ArgumentParser(add_help=False, parents=[files])  # ... and those that reach the firewall
    common.add_argument(
        "--bus-address",
        help="D-Bus address of the system bus firewalld is on (default: $DBUS_SYSTEM_BUS_ADDRESS, else the system bus)",
    )
    common.add_argument(
        "--backend",
        choices=BACKEND_MODES,
        default="auto",
        help="auto (default): firewalld when it is on the bus, else iptables; firewalld: zones, policies "
        "and direct rules via firewalld; iptables: direct rules via iptables/ip6tables/ebtables; nftables: "
        "nft sections only. nft sections always go to fwrecon's own nftables table",
    )
    common.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"longest wait for one D-Bus call to firewalld or one iptables/nft run (default {DEFAULT_TIMEOUT:g}); "
        "a firewall that does not answer within it is treated as unreachable: nothing more is sent to it "
        "until the next reconcile",
    )

    writes = argparse.ArgumentParser(add_help=False, parents=[common])  # ... and those that plan or write
    writes.add_argument(
        "--persist",
        choices=PERSIST_MODES,
        default="runtime",
        help="runtime (default): firewalld items in firewalld's runtime only, re-added after each reload; "
        "permanent: in its permanent configuration too (/etc/firewalld), so a reload, restart or boot "
        "restores them with no gap and no re-apply",
    )

    parser = argparse.ArgumentParser(
        prog="fwrecon",
        description="Keep the host firewall (firewalld over D-Bus, else iptables/ebtables and nftables) equal to a directory of TOML policy files.",
        epilog="Exit codes: check 0 valid / 1 invalid; plan 0 no changes / 2 changes pending / 1 error; apply 0 converged / 1 failed; "
        "status 0 converged / 2 not converged / 1 unreadable.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"fwrecon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "check",
        parents=[common],
        help="validate policies; change nothing",
        description="Validate policy files offline; when the backend is reachable, also check that the zones, policies, "
        "services and ICMP types they name exist and that the backend in charge can express every section; "
        "nft sections are checked by 'nft -c'. Changes nothing.",
    )
    plan = sub.add_parser(
        "plan",
        parents=[writes],
        help="print the operations apply would run",
        description="Print the operations 'apply' would run, one per line with the policy that wants it.",
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser(
        "apply",
        parents=[writes],
        help="reconcile once",
        description="Reconcile once: apply what is missing, remove what fwrecon owns and no policy wants.",
    )
    run = sub.add_parser(
        "run",
        parents=[writes],
        help="run the daemon",
        description="Watch the policy directory and firewalld; keep the firewall equal to the policies. "
        "Re-applies after firewalld reloads or restarts, repairs drift, serves Prometheus metrics. "
        "SIGHUP re-reads policies; SIGTERM/SIGINT exit 0 leaving the rules in place.",
    )
    run.add_argument(
        "--metrics-address",
        default=DEFAULT_METRICS_ADDRESS,
        metavar="HOST:PORT",
        help=f"where /metrics listens (default {DEFAULT_METRICS_ADDRESS}; 'off' disables)",
    )
    run.add_argument(
        "--resync-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="full reconcile at least this often, as a safety net (default 60; 0 disables)",
    )
    status_parser = sub.add_parser(
        "status",
        parents=[files],
        help="what fwrecon owns and how the last reconcile went",
        description="Per policy: valid, invalid or failed with the reason, and what it owns on "
        "which backend; the last reconcile's time, trigger, operations and result. Reads only "
        "the policy files, the state file and the status record beside it (STATE_FILE.status.json, "
        "written after each reconcile by 'run' and 'apply'): works whether or not the daemon runs.",
    )
    status_parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format)
    try:
        if args.command == "run":
            return asyncio.run(cmd_run(args))  # the daemon pauses the collector per reconcile
        with gc_paused():  # one-shot commands are a single reconcile
            return asyncio.run(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return 130


def _print_errors(loaded: LoadResult, extra: dict[str, list[PolicyError]] | None = None) -> int:
    errors = [str(e) for e in loaded.all_errors()]
    for name in sorted(extra or {}):
        errors.extend(str(e) for e in (extra or {})[name] if str(e) not in errors)
    for line in errors:
        print(line)
    return len(errors)


@contextlib.asynccontextmanager
async def _reconciler(args: argparse.Namespace, store: StateStore) -> AsyncIterator[Reconciler]:
    """A Reconciler on the backends ``--backend`` selects; closed afterwards."""
    backends, router = await select_backends(args.backend, args.bus_address, args.timeout)
    try:
        yield Reconciler(router, store, names=router.known_names, persist=getattr(args, "persist", "runtime"))
    finally:
        await backends.close()


async def cmd_check(args: argparse.Namespace) -> int:
    """The checks `plan` and `apply` make (Reconciler.validate), without changing anything."""
    loaded = load_policy_dir(args.policy_dir)
    extra: dict[str, list[PolicyError]] = {}
    try:
        store = StateStore(args.state_file)
        try:
            state, known = store.load(), True
        except StateError as exc:  # (check is also a linter, run where the state file cannot be read)
            print(f"note: judged without what fwrecon owns ({exc})", file=sys.stderr)
            state, known = State(), False
        async with _reconciler(args, store) as reconciler:
            desired, _ = await reconciler.validate(loaded, state, thorough=True, ownership_known=known)
            extra = dict(desired.invalid)
            for note in desired.notes:
                print(f"note: {note}", file=sys.stderr)
    except BackendUnavailable as exc:
        print(f"note: {args.backend} backend not reachable, checked offline only ({exc})", file=sys.stderr)
        for name, errors in (await _nft_syntax_errors(args, loaded)).items():
            extra.setdefault(name, []).extend(errors)
        declared = declarations((item for policy in loaded.policies.values() for item in policy.items), None)
        for name, policy in loaded.policies.items():
            extra.setdefault(name, []).extend(unresolved_references(policy, declared))
        for name, errors in conflicting_sets(loaded.policies).items():
            extra.setdefault(name, []).extend(errors)
    count = _print_errors(loaded, extra)
    if count == 0:
        print(f"{len(loaded.policies)} policies valid")
    return 1 if count else 0


async def _nft_syntax_errors(args: argparse.Namespace, loaded: LoadResult) -> dict[str, list[PolicyError]]:
    """nft's own verdict on nft sections (``nft -c``: checks, commits nothing),
    through the same backend selection as every other command."""
    wanted: dict[Item, Policy] = {
        item: policy for policy in loaded.policies.values() for item in policy.items if isinstance(item, NFT_ITEMS)
    }
    if not wanted:
        return {}
    backends = BackendSet(args.backend, timeout=args.timeout)
    try:
        return await tool_verdicts(backends.offline(), wanted)
    except BackendUnavailable as exc:
        print(f"note: nft rules not checked by nft ({exc})", file=sys.stderr)
        return {}
    finally:
        await backends.close()


def _member_of_set(item: Item) -> tuple[str, str] | None:
    """For an nft set element or an ipset entry (or its permanent copy): the
    set's text and what its members are called."""
    if isinstance(item, Permanent):
        member = _member_of_set(item.item)
        return None if member is None else (f"{member[0]} (permanent)", member[1])
    if isinstance(item, NftElement):
        return f"nft {item.family} {NFT_TABLE} set {item.set}", "elements"
    if isinstance(item, IpsetEntry):
        return f"ipset {item.ipset}", "entries"
    return None


def change_lines(policy: str, ops: Sequence[tuple[Op, str]]) -> list[str]:
    """One line per op (with its note, e.g. "unchanged"), except that many
    element changes to one set become one line: ``~ nft inet fwrecon set
    blocklist: 9,812 elements added, 14 removed  [policy]``, and likewise
    for an ipset's entries (``--json`` lists them all)."""
    counts: dict[tuple[str, str], Counter[str]] = {}
    for op, note in ops:
        if (member := _member_of_set(op.item)) is not None:
            counts.setdefault(member, Counter())[note or op.action] += 1
    big = {key for key, count in counts.items() if count.total() > ELEMENTS_LISTED}
    # An op on an item and the same op on its permanent copy are one line, "runtime+permanent".
    copies = {(op.action, op.item.item, note) for op, note in ops if isinstance(op.item, Permanent)}
    runtime = {(op.action, op.item, note) for op, note in ops if not isinstance(op.item, Permanent)}
    lines: list[str] = []
    for op, note in ops:
        item = op.item
        if isinstance(item, Permanent) and (op.action, item.item, note) in runtime:
            continue
        layers = "  runtime+permanent" if (op.action, item, note) in copies else ""
        if (member := _member_of_set(item)) is not None and member in big:
            count = counts.pop(member, None)
            if count is not None:
                text, word = member
                sign = "+" if not count["remove"] else "-" if not count["add"] else "~"
                parts = [f"{count['add']:,} {word} added"] if count["add"] else []
                parts += [f"{count['remove']:,} removed"] if count["remove"] else []
                parts += [f"{n:,} {what}" for what, n in sorted(count.items()) if what not in ("add", "remove")]
                lines.append(f"{sign} {text}: {', '.join(parts)}  [{policy}]{layers}")
            continue
        lines.append(f"{op.describe()}  [{policy}]{layers}" + (f"  ({note})" if note else ""))
    return lines


async def cmd_plan(args: argparse.Namespace) -> int:
    loaded = load_policy_dir(args.policy_dir)
    store = StateStore(args.state_file)
    try:
        async with _reconciler(args, store) as reconciler:
            plans, desired = await reconciler.plan(loaded)
        others = store.load().others
    except (BackendUnavailable, StateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    changes = [(plan.policy, op) for plan in plans for op in plan.ops]
    held = held_by_others(plans, others)
    errors = [str(e) for name in sorted(desired.invalid) for e in desired.invalid[name]]
    if args.json:
        print(
            json.dumps(
                {
                    "changes": [
                        {
                            "policy": p,
                            "action": op.action,
                            "layer": "permanent" if isinstance(op.item, Permanent) else "runtime",
                            "item": op.item.to_json(),
                            "text": op.item.describe(),
                        }
                        for p, op in changes
                    ],
                    "held_by_others": [{"policy": p, "item": item.to_json(), "text": item.describe()} for p, item in held],
                    "errors": errors,
                },
                indent=2,
            )
        )
    else:
        for plan in plans:
            for line in change_lines(plan.policy, [(op, "") for op in plan.ops]):
                print(line)
        for policy, item in held:
            print(f"= {item.describe()}  [{policy}] held by others")
        for line in errors:
            print(line, file=sys.stderr)
    if errors:
        return 1
    return 2 if changes else 0


async def cmd_apply(args: argparse.Namespace) -> int:
    loaded = load_policy_dir(args.policy_dir)
    store = StateStore(args.state_file)
    try:
        with store.locked():
            async with _reconciler(args, store) as reconciler:
                report = await reconciler.reconcile(loaded)
    except BackendUnavailable as exc:  # (the reconcile ran, holding the lock: say so in the status record)
        status.record_error(args.state_file, "apply", exc, 0.0, command="apply")
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log_policy_errors(report.invalid)
    outcome_of_all = "success" if report.converged and not report.invalid else "degraded"
    status.record_reconcile(args.state_file, "apply", outcome_of_all, loaded, report, report.duration, command="apply")
    for outcome in report.outcomes:
        done = [(op, "" if result.value == "applied" else result.value) for op, result in outcome.ops]
        for line in change_lines(outcome.policy, done):
            print(line)
        if outcome.status == "failed":
            print(f"FAILED {outcome.policy}: {outcome.error} (rolled back)")
    for name in sorted(report.invalid):
        for err in report.invalid[name]:
            print(f"INVALID {err} (last good version kept)")
    print(
        f"{report.write_ops} operations, {len(report.failed)} failed, {len(report.invalid)} invalid, {report.owned_items} owned items"
    )
    return 0 if report.converged and not report.invalid else 1


async def cmd_run(args: argparse.Namespace) -> int:
    settings = DaemonSettings(
        policy_dir=args.policy_dir,
        state_file=args.state_file,
        bus_address=args.bus_address,
        metrics_address=None if args.metrics_address == "off" else args.metrics_address,
        resync_interval=args.resync_interval,
        backend_mode=args.backend,
        persist=args.persist,
    )
    try:
        if settings.metrics_address is not None:
            parse_metrics_address(settings.metrics_address)  # a typo ends here, before anything starts
    except MetricsAddressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.policy_dir.is_dir():
        print(f"error: {args.policy_dir}: policy directory does not exist", file=sys.stderr)
        return 1
    try:
        return await Controller(
            settings,
            connect=functools.partial(connect_firewalld, timeout=args.timeout),
            backends=BackendSet(args.backend, timeout=args.timeout),
        ).run()
    except (StateError, MetricsAddressError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def cmd_status(args: argparse.Namespace) -> int:
    """Files only (see status.py): no bus, no port, the daemon running or not."""
    try:
        code, report = status.gather(args.policy_dir, args.state_file)
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return status.UNREADABLE
    print(json.dumps(report, indent=2) if args.json else status.render_text(report))
    return code


COMMANDS = {"check": cmd_check, "plan": cmd_plan, "apply": cmd_apply, "run": cmd_run, "status": cmd_status}
