"""Every Prometheus metric fwrecon exports, in one place.

Names follow Prometheus conventions (``fwrecon_*``, ``_seconds``,
``_total``); labels are low-cardinality (trigger, result, action, backend,
policy name).  Metrics live on their own registry so that several daemons in
one test process never collide, and the HTTP endpoint binds to loopback
unless told otherwise.
"""

from __future__ import annotations

import ipaddress

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from . import __version__
from .errors import FwreconError

# 9100-9999 is Prometheus' range for exporters; 9847 is fwrecon's default.
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9847"
# success: every policy applied; degraded: the reconcile ran to its end but a
# policy is invalid or was rolled back; error: it could not run (firewall away).
RESULTS = ("success", "degraded", "error")
TRIGGERS = ("startup", "policy", "reload", "owner", "drift", "resync", "signal", "settle")
_RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_WRITE_BUCKETS = (0, 1, 10, 100, 1000, 10000)


class Metrics:
    """The metric objects, created on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconcile_duration = Histogram(
            "fwrecon_reconcile_duration_seconds",
            "Time of one reconcile (observe, plan, apply)",
            ["trigger"],
            registry=r,
            buckets=_RECONCILE_BUCKETS,
        )
        self.reconciles = Counter("fwrecon_reconciles", "Reconciles run", ["trigger", "result"], registry=r)
        self.operations = Counter("fwrecon_operations", "Firewall write operations", ["backend", "action", "result"], registry=r)
        self.rollbacks = Counter("fwrecon_rollbacks", "Transactions rolled back", ["policy"], registry=r)
        self.reapply_after_reload = Histogram(
            "fwrecon_reapply_after_reload_seconds",
            "From firewalld's Reloaded signal (or its return to the bus) to converged",
            registry=r,
            buckets=_RECONCILE_BUCKETS,
        )
        self.writes_after_reload = Histogram(
            "fwrecon_writes_after_reload",
            "Write operations of each reconcile that follows a firewalld reload or restart"
            " (0 with --persist permanent: firewalld restored everything itself)",
            registry=r,
            buckets=_WRITE_BUCKETS,
        )
        self.event_to_converged = Histogram(
            "fwrecon_event_to_converged_seconds",
            "From a policy file event to converged",
            registry=r,
            buckets=_RECONCILE_BUCKETS,
        )
        self.drift_repairs = Counter("fwrecon_drift_repairs", "Operations that repaired drift made outside fwrecon", registry=r)
        self.firewalld_reloads = Counter("fwrecon_firewalld_reloads", "firewalld reloads seen, not made by fwrecon", registry=r)
        self.own_reloads = Counter("fwrecon_own_reloads", "firewalld reloads fwrecon made to load new ipsets", registry=r)
        self.firewalld_up = Gauge("fwrecon_firewalld_up", "1 while firewalld is on the bus", registry=r)
        self.policies = Gauge("fwrecon_policies", "Policy files by state", ["state"], registry=r)
        self.owned_items = Gauge("fwrecon_owned_items", "Firewall items fwrecon added and owns", registry=r)
        self.set_elements = Gauge(
            "fwrecon_nft_set_elements", "Elements fwrecon owns in each nft set of its table", ["family", "set"], registry=r
        )
        self.ipset_entries = Gauge(
            "fwrecon_ipset_entries", "Runtime entries fwrecon owns in each firewalld ipset", ["ipset"], registry=r
        )
        self.last_success = Gauge("fwrecon_last_success_timestamp_seconds", "When the last reconcile converged", registry=r)
        self.last_queued = Gauge(
            "fwrecon_last_queued_timestamp_seconds",
            "When a reconcile was last requested (if it is far ahead of last success, something is stuck)",
            registry=r,
        )
        self.active_backend = Gauge(
            "fwrecon_backend", "1 for the backend in charge of zones/direct rules (auto mode switches)", ["backend"], registry=r
        )
        self.build_info = Gauge("fwrecon_build_info", "fwrecon version", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        for trigger in TRIGGERS:
            self.reconcile_duration.labels(trigger=trigger)
            for result in RESULTS:
                self.reconciles.labels(trigger=trigger, result=result)
        for state in ("valid", "invalid"):
            self.policies.labels(state=state)

    def serve(self, address: str) -> None:
        """Expose /metrics on HOST:PORT (a background thread); MetricsAddressError if that cannot be."""
        host, port = parse_metrics_address(address)
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise MetricsAddressError(f"cannot serve metrics on {address}: {reason}") from exc


class MetricsAddressError(FwreconError):
    """``--metrics-address`` is not HOST:PORT, or nothing can listen there."""


def parse_metrics_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6; HOST an address or a name) -> (host, port)."""
    host, colon, port_text = address.rpartition(":")
    problem = None
    if not colon or not host:
        problem = "not HOST:PORT"
    elif not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        problem = f"port {port_text!r} is not a number from 1 to 65535"
    elif host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        problem = "an IPv6 address goes in brackets, like [::1]:9847"
    else:
        host = host[1:-1] if host.startswith("[") else host
        if not _valid_host(host):
            problem = f"host {host!r} is not an IP address or a host name"
    if problem:
        raise MetricsAddressError(f"--metrics-address {address!r}: {problem} (e.g. {DEFAULT_METRICS_ADDRESS}, or 'off')")
    return host, int(port_text)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        labels = host.rstrip(".").split(".")
        return len(host) <= 253 and all(
            0 < len(label) <= 63 and label.isascii() and label.replace("-", "").isalnum() and not label.startswith("-")
            for label in labels
        )
