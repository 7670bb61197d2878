"""Prometheus metrics: what policyd decided, how fast, and the state of the policy it serves.

The plugin route is a hot path (Ping, NewWorkConn and NewUserConn scale with traffic), so every
label child it touches is bound once: per (op, outcome) and per op at start, per rule on its first
hit. The policy's state (version, reloads) is read from the store when scraped, costing requests
nothing.

With several workers, prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by
`policyd serve --workers N` before the workers start) sums counters and histograms over all of
them; the policy's state is that of the worker that answers the scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from policyd.engine import Decision, Outcome
from policyd.errors import Location
from policyd.schema import Op

if TYPE_CHECKING:
    from policyd.store import PolicyStore

CONTENT_TYPE = CONTENT_TYPE_LATEST
# A decision takes microseconds; the top buckets catch rules near the evaluation budget (100 ms).
EVAL_BUCKETS_US = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000)
HTTP_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
OUTCOMES = (*(o.value for o in Outcome), "error")
OTHER_PATH = "other"  # every path policyd does not serve shares one label: no cardinality from scans

# `*_created` series double every scrape's size and tell nothing process_start_time_seconds does not.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _StoreCollector(Collector):
    """The serving policy and the reload history, read from the store at scrape time."""

    def __init__(self, store: PolicyStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        policy, stats = self.store.policy, self.store.stats
        info = InfoMetricFamily("policyd_policy", "The policy version serving.")
        info.add_metric([], {"version": policy.version})
        yield info
        yield GaugeMetricFamily(
            "policyd_policy_rules", "Rules in the serving policy.", value=policy.rule_count
        )
        yield GaugeMetricFamily(
            "policyd_policy_loaded_timestamp_seconds",
            "When the serving policy was loaded.",
            value=policy.loaded_at,
        )
        reloads = CounterMetricFamily("policyd_reloads", "Policy reloads, by result.", labels=["result"])
        reloads.add_metric(["success"], stats.successes)
        reloads.add_metric(["failure"], stats.failures)
        yield reloads
        yield GaugeMetricFamily(
            "policyd_last_reload_success_timestamp_seconds",
            "When a policy was last loaded successfully (start-up included).",
            value=stats.last_success_at,
        )
        yield GaugeMetricFamily(
            "policyd_last_reload_ok",
            "1 if the last reload attempt loaded (or nothing was reloaded yet), 0 if it failed.",
            value=0 if stats.last is not None and not stats.last.ok else 1,
        )


class Metrics:
    """Every metric policyd exports; `observe()` is called once per decision."""

    def __init__(self, store: PolicyStore, *, handler_path: str, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        # In multiprocess mode the live values are in files that MultiProcessCollector reads.
        target = None if multiprocess_dir else self.registry
        if multiprocess_dir:
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        else:
            ProcessCollector(registry=self.registry)
        self.registry.register(_StoreCollector(store))

        decisions = Counter(
            "policyd_decisions", "Decisions, by op and outcome.", ["op", "outcome"], registry=target
        )
        self._decisions = {(op, o): decisions.labels(op.value, o) for op in Op for o in OUTCOMES}
        evals = Histogram(
            "policyd_eval_duration_microseconds",
            "Time to decide one request, in microseconds.",
            ["op"],
            buckets=EVAL_BUCKETS_US,
            registry=target,
        )
        self._eval = {op: evals.labels(op.value) for op in Op}
        fail_open = Counter(
            "policyd_fail_open", "Rule errors answered allow (fail-open ops).", ["op"], registry=target
        )
        self._fail_open = {op: fail_open.labels(op.value) for op in Op}
        self._rule_hits = Counter(
            "policyd_rule_hits", "Decisions made by each rule (file:line).", ["rule"], registry=target
        )
        self._warn_hits = Counter(
            "policyd_warn_hits", "warn rules that fired (file:line).", ["rule"], registry=target
        )
        self._rule_children: dict[Location, Counter] = {}
        self._warn_children: dict[Location, Counter] = {}

        self._http_requests = Counter(
            "policyd_http_requests", "HTTP requests, by path and status.", ["path", "code"], registry=target
        )
        self._http_latency = Histogram(
            "policyd_http_request_duration_seconds",
            "Time to answer an HTTP request, by path.",
            ["path"],
            buckets=HTTP_BUCKETS_S,
            registry=target,
        )
        self.in_flight = Gauge(
            "policyd_http_requests_in_flight",
            "HTTP requests being answered (a graceful shutdown waits for these).",
            multiprocess_mode="livesum",
            registry=target,
        )
        self._paths = frozenset({handler_path, "/healthz", "/readyz", "/status", "/metrics"})
        self._http_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def path_label(self, path: str) -> str:
        return path if path in self._paths else OTHER_PATH

    def observe(self, decision: Decision) -> None:
        op = decision.op
        self._decisions[op, "error" if decision.error is not None else decision.outcome.value].inc()
        self._eval[op].observe(decision.eval_us)
        if decision.rule is not None:
            child = self._rule_children.get(decision.rule)
            if child is None:
                child = self._rule_children[decision.rule] = self._rule_hits.labels(decision.rule.rule)
            child.inc()
        for warning in decision.warnings:
            child = self._warn_children.get(warning.rule)
            if child is None:
                child = self._warn_children[warning.rule] = self._warn_hits.labels(warning.rule.rule)
            child.inc()
        if decision.failed_open:
            self._fail_open[op].inc()

    def observe_http(self, path_label: str, code: int, seconds: float) -> None:
        children = self._http_children.get((path_label, code))
        if children is None:
            children = self._http_children[path_label, code] = (
                self._http_requests.labels(path_label, str(code)),
                self._http_latency.labels(path_label),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
