"""Prometheus metrics: what policyd decided, how fast, and the state of the policy it serves.

The plugin route is a hot path (Ping, NewWorkConn and NewUserConn scale with traffic), so one
process records requests and decisions as plain Python numbers, turned into metric families only
when scraped: prometheus-client's own metrics take a lock per value, about eight per request.
Recording happens on the event-loop thread only (every route is async), so the numbers need no
lock. The policy's state (version, reloads) is read from the store when scraped, costing requests
nothing.

With several workers, prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by
`policyd serve --workers N` before the workers start) sums counters and histograms over all of
them, so there every request goes through prometheus-client's metrics, which keep their values in
the shared files; the policy's state is that of the worker that answers the scrape.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

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
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from policyd.errors import Location
from policyd.rules.decision import OUTCOME_LABELS, Decision, Op, outcome_label
from policyd.state.backend import LATENCY_BUCKETS_S, Backend

# The `reason` labels of CONNECTIONS_REFUSED (policyd.service.edge.Refusal names them).
REFUSAL_REASONS = ("allowlist", "max_connections", "header_timeout", "header_too_large", "body_timeout")

if TYPE_CHECKING:
    from policyd.service.shadow import ShadowPolicy
    from policyd.service.store import PolicyStore

CONTENT_TYPE = CONTENT_TYPE_LATEST
# A decision takes microseconds; the top buckets catch rules near the evaluation budget (100 ms).
EVAL_BUCKETS_US = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000)
HTTP_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
OTHER_PATH = "other"  # every path policyd does not serve shares one label: no cardinality from scans
VERSION_PATH_LABEL = "/versions/{version}"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric policyd exports: both ways of recording and docs/operations.md read this."""

    name: str  # the family's name; a counter is exported with `_total`, an info with `_info`
    kind: str  # counter | gauge | histogram | info
    help: str
    labels: tuple[str, ...] = ()
    notes: str = ""  # more for the docs' table

    @property
    def exported(self) -> str:
        return self.name + {"counter": "_total", "info": "_info"}.get(self.kind, "")


# Every metric, in one table, so both ways of recording export the same names.
DECISIONS = MetricSpec(
    "policyd_decisions",
    "counter",
    "Decisions, by op and outcome.",
    ("op", "outcome"),
    "`outcome`: `allow`, `reject`, `rewrite`, or `error` (a rule failed); "
    "every pair exported from start, at 0",
)
RULE_HITS = MetricSpec(
    "policyd_rule_hits",
    "counter",
    "Decisions made by each rule (file:line).",
    ("rule",),
    "`rule`: `file:line` of the deciding rule",
)
WARN_HITS = MetricSpec("policyd_warn_hits", "counter", "warn rules that fired (file:line).", ("rule",))
FAIL_OPEN = MetricSpec("policyd_fail_open", "counter", "Rule errors answered allow (fail-open ops).", ("op",))
EVAL_DURATION = MetricSpec(
    "policyd_eval_duration_microseconds",
    "histogram",
    "Time to decide one request, in microseconds.",
    ("op",),
    "buckets 5 µs … 250 ms",
)
HTTP_REQUESTS = MetricSpec(
    "policyd_http_requests",
    "counter",
    "HTTP requests, by path and status.",
    ("path", "code"),
    f"`path`: policyd's own paths, every other path `{OTHER_PATH}`",
)
HTTP_DURATION = MetricSpec(
    "policyd_http_request_duration_seconds",
    "histogram",
    "Time to answer an HTTP request, by path.",
    ("path",),
)
IN_FLIGHT = MetricSpec(
    "policyd_http_requests_in_flight",
    "gauge",
    "HTTP requests being answered (a graceful shutdown waits for these).",
)
CONNECTIONS_REFUSED = MetricSpec(
    "policyd_http_connections_refused",
    "counter",
    "Connections the HTTP edge closed, by reason.",
    ("reason",),
    "`reason`: `allowlist` (a peer no endpoint serves, at connect), `max_connections`, "
    "`header_timeout`, `header_too_large`, `body_timeout`; every reason exported from start, at 0",
)
POLICY_INFO = MetricSpec("policyd_policy", "info", "The policy version serving.", ("version",), "always 1")
POLICY_RULES = MetricSpec("policyd_policy_rules", "gauge", "Rules in the serving policy.")
POLICY_WARNINGS = MetricSpec(
    "policyd_policy_warnings",
    "gauge",
    "Warnings about the serving policy directory: no rule files, ignored near-miss file names.",
    (),
    "`/status` lists them under `policy.warnings`; alert on > 0 for a mis-mounted directory",
)
POLICY_LOADED = MetricSpec(
    "policyd_policy_loaded_timestamp_seconds", "gauge", "When the serving policy was loaded."
)
RELOADS = MetricSpec(
    "policyd_reloads",
    "counter",
    "Policy reloads, by result.",
    ("result",),
    "`success`: a new version went live; `failure`: an edit was refused",
)
LAST_RELOAD_SUCCESS = MetricSpec(
    "policyd_last_reload_success_timestamp_seconds",
    "gauge",
    "When a policy was last loaded successfully (start-up included).",
)
LAST_RELOAD_OK = MetricSpec(
    "policyd_last_reload_ok",
    "gauge",
    "1 if the last reload attempt loaded (or nothing was reloaded yet), 0 if it failed.",
    (),
    "alert on 0: an edit did not load and the previous version still serves",
)
SHADOW_DECISIONS = MetricSpec(
    "policyd_shadow_decisions",
    "counter",
    "Requests the shadow policy decided too, by op and how its answer compared.",
    ("op", "agreement"),
    "`agreement`: `same` (outcome, reason and rewritten content), `different`, or `error` (a shadow "
    "rule failed or ran out of budget); every pair exported from start, at 0",
)
SHADOW_SKIPPED = MetricSpec(
    "policyd_shadow_skipped",
    "counter",
    "Requests answered without a shadow decision, by why.",
    ("reason",),
    "`queue_full`: more were waiting than the shadow keeps; `time_share`: the shadow had used its "
    "share of the serving thread; `not_loaded`: no shadow policy has loaded yet; `state_busy`: "
    "its decisions waiting on a shared state backend were at their limit",
)
SHADOW_POLICY_INFO = MetricSpec(
    "policyd_shadow_policy",
    "info",
    "The shadow policy version deciding beside the serving one.",
    ("version",),
)
SHADOW_LAST_RELOAD_OK = MetricSpec(
    "policyd_shadow_last_reload_ok",
    "gauge",
    "1 if the shadow policy's last load attempt loaded, 0 if it failed (the last good one decides).",
)
RECORDED = MetricSpec(
    "policyd_recorded_requests",
    "counter",
    "Requests --record-requests recorded, or did not.",
    ("result",),
    "`written`; `too_large`: the line would pass a quarter of record_max_bytes; `failed`: it could "
    "not be made or written (see the log)",
)
STATE_CALLS = MetricSpec(
    "policyd_state_calls",
    "counter",
    "State function calls, by function and result.",
    ("function", "result"),
    "`result`: `ok`, `under`/`over` (rate()), `unavailable` (the backend failed)",
)
STATE_FAILURES = MetricSpec(
    "policyd_state_failures",
    "counter",
    "Decisions the state backend failed, by the failure mode applied.",
    ("mode",),
    "`mode`: `closed` (the op failed closed) or `open` (state answered empty)",
)
STATE_ERRORS = MetricSpec(
    "policyd_state_backend_errors",
    "counter",
    "State backend operations that failed or timed out.",
    ("operation",),
)
STATE_LATENCY = MetricSpec(
    "policyd_state_backend_latency_seconds", "histogram", "Time of one state backend round trip."
)
STATE_UP = MetricSpec("policyd_state_up", "gauge", "1 while the state backend answers, else 0.")
STATE_SESSIONS = MetricSpec(
    "policyd_state_sessions", "gauge", "Live client sessions in the state (all replicas).", (), "cached 5 s"
)
STATE_PROXIES = MetricSpec(
    "policyd_state_proxies", "gauge", "Live proxies in the state (all replicas).", (), "cached 5 s"
)
METRICS = (
    DECISIONS,
    RULE_HITS,
    WARN_HITS,
    FAIL_OPEN,
    EVAL_DURATION,
    HTTP_REQUESTS,
    HTTP_DURATION,
    IN_FLIGHT,
    CONNECTIONS_REFUSED,
    POLICY_INFO,
    POLICY_RULES,
    POLICY_WARNINGS,
    POLICY_LOADED,
    RELOADS,
    LAST_RELOAD_SUCCESS,
    LAST_RELOAD_OK,
    SHADOW_DECISIONS,
    SHADOW_SKIPPED,
    SHADOW_POLICY_INFO,
    SHADOW_LAST_RELOAD_OK,
    RECORDED,
    STATE_CALLS,
    STATE_FAILURES,
    STATE_ERRORS,
    STATE_LATENCY,
    STATE_UP,
    STATE_SESSIONS,
    STATE_PROXIES,
)
SHADOW_METRICS = frozenset({SHADOW_DECISIONS, SHADOW_SKIPPED, SHADOW_POLICY_INFO, SHADOW_LAST_RELOAD_OK})
AGREEMENTS = ("same", "different", "error")
SKIP_REASONS = ("queue_full", "time_share", "not_loaded", "state_busy")
RECORD_RESULTS = ("written", "too_large", "failed")

# `*_created` series double every scrape's size and tell nothing process_start_time_seconds does not.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _StoreCollector(Collector):
    """The serving policy and the reload counts, read from the store at scrape time."""

    def __init__(self, store: PolicyStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        policy, stats = self.store.policy, self.store.stats
        info = InfoMetricFamily(POLICY_INFO.name, POLICY_INFO.help)
        info.add_metric([], {"version": policy.version})
        yield info
        yield GaugeMetricFamily(POLICY_RULES.name, POLICY_RULES.help, value=policy.rule_count)
        yield GaugeMetricFamily(POLICY_WARNINGS.name, POLICY_WARNINGS.help, value=len(policy.warnings))
        yield GaugeMetricFamily(POLICY_LOADED.name, POLICY_LOADED.help, value=policy.loaded_at)
        reloads = CounterMetricFamily(RELOADS.name, RELOADS.help, labels=RELOADS.labels)
        reloads.add_metric(["success"], stats.successes)
        reloads.add_metric(["failure"], stats.failures)
        yield reloads
        yield GaugeMetricFamily(
            LAST_RELOAD_SUCCESS.name, LAST_RELOAD_SUCCESS.help, value=stats.last_success_at
        )
        failed = stats.last is not None and not stats.last.ok
        yield GaugeMetricFamily(LAST_RELOAD_OK.name, LAST_RELOAD_OK.help, value=0 if failed else 1)


class _ShadowCollector(Collector):
    """The shadow policy's version and last load, read at scrape time."""

    def __init__(self, shadow: ShadowPolicy) -> None:
        self.shadow = shadow

    def collect(self) -> Iterator[Metric]:
        policy = self.shadow.policy
        info = InfoMetricFamily(SHADOW_POLICY_INFO.name, SHADOW_POLICY_INFO.help)
        if policy is not None:
            info.add_metric([], {"version": policy.version})
        yield info
        ok = 1 if self.shadow.last_attempt_ok else 0
        yield GaugeMetricFamily(SHADOW_LAST_RELOAD_OK.name, SHADOW_LAST_RELOAD_OK.help, value=ok)


class _StateCollector(Collector):
    """The state backend's counts, health and live totals, read when scraped (this process's)."""

    def __init__(self, backend: Backend, counts: Callable[[], tuple[tuple[int, int] | None, str]]) -> None:
        self.backend = backend
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        stats = self.backend.stats
        with stats.lock:
            calls = stats.calls  # already a copy, summed over the threads' tables
            failures = dict(stats.failures)
            errors = dict(stats.errors)
            latency = list(stats.latency_counts)
            latency_sum = stats.latency_sum
        family = CounterMetricFamily(STATE_CALLS.name, STATE_CALLS.help, labels=STATE_CALLS.labels)
        for (function, result), count in sorted(calls.items()):
            family.add_metric([function, result], count)
        yield family
        family = CounterMetricFamily(STATE_FAILURES.name, STATE_FAILURES.help, labels=STATE_FAILURES.labels)
        for mode in ("closed", "open"):
            family.add_metric([mode], failures.get(mode, 0))
        yield family
        family = CounterMetricFamily(STATE_ERRORS.name, STATE_ERRORS.help, labels=STATE_ERRORS.labels)
        for operation, count in sorted(errors.items()):
            family.add_metric([operation], count)
        yield family
        histogram = _Histogram(LATENCY_BUCKETS_S)
        histogram.counts, histogram.sum = latency, latency_sum
        family_h = HistogramMetricFamily(STATE_LATENCY.name, STATE_LATENCY.help)
        family_h.add_metric([], histogram.buckets(), histogram.sum)
        yield family_h
        yield GaugeMetricFamily(STATE_UP.name, STATE_UP.help, value=1 if self.backend.health().ok else 0)
        counts, _ = self.counts()
        if counts is not None:
            yield GaugeMetricFamily(STATE_SESSIONS.name, STATE_SESSIONS.help, value=counts[0])
            yield GaugeMetricFamily(STATE_PROXIES.name, STATE_PROXIES.help, value=counts[1])


class _Histogram:
    """Bucket counts (each bucket alone, as prometheus-client keeps them) and the sum."""

    __slots__ = ("bounds", "counts", "les", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.les = [floatToGoString(b) for b in (*bounds, float("inf"))]  # type: ignore[no-untyped-call]
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf's
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # `le` buckets: the first bound >= value, as prometheus-client's Histogram.observe finds it.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative `(le, count)` pairs, +Inf last, as HistogramMetricFamily takes them."""
        out: list[tuple[str, float]] = []
        total = 0
        for le, count in zip(self.les, self.counts, strict=True):
            total += count
            out.append((le, total))
        return out


class _Recorder(Protocol):
    """Where the route's numbers go: plain numbers (one process) or prometheus-client's files."""

    def observe(self, decision: Decision) -> None: ...
    def request_started(self) -> None: ...
    def request_done(self, path: str, code: int, seconds: float) -> None: ...
    def connection_refused(self, reason: str) -> None: ...
    def shadow_decided(self, op: Op, agreement: str) -> None: ...
    def shadow_skipped(self, reason: str) -> None: ...
    def recorded(self, result: str, n: int = 1) -> None: ...


class _Tally(Collector):
    """One process's requests and decisions as plain numbers, exported when scraped."""

    def __init__(self) -> None:
        self.decisions = {(op, outcome): 0 for op in Op for outcome in OUTCOME_LABELS}
        self.evals = {op: _Histogram(EVAL_BUCKETS_US) for op in Op}
        self.fail_open = dict.fromkeys(Op, 0)
        self.rule_hits: dict[Location, int] = {}
        self.warn_hits: dict[Location, int] = {}
        self.http_requests: dict[tuple[str, int], int] = {}
        self.http_durations: dict[str, _Histogram] = {}
        self.in_flight = 0
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self.shadow_decisions = {(op, a): 0 for op in Op for a in AGREEMENTS}
        self.shadow_skips = dict.fromkeys(SKIP_REASONS, 0)
        self.shadow = False  # the shadow families are exported only when a shadow is configured
        self.record_results = dict.fromkeys(RECORD_RESULTS, 0)

    def observe(self, decision: Decision) -> None:
        op = decision.op
        self.decisions[op, outcome_label(decision)] += 1
        self.evals[op].observe(decision.eval_us)
        rule = decision.rule
        if rule is not None:
            self.rule_hits[rule] = self.rule_hits.get(rule, 0) + 1
        for warning in decision.warnings:
            self.warn_hits[warning.rule] = self.warn_hits.get(warning.rule, 0) + 1
        if decision.failed_open:
            self.fail_open[op] += 1

    def request_started(self) -> None:
        self.in_flight += 1

    def request_done(self, path: str, code: int, seconds: float) -> None:
        self.in_flight -= 1
        key = (path, code)
        self.http_requests[key] = self.http_requests.get(key, 0) + 1
        durations = self.http_durations.get(path)
        if durations is None:
            durations = self.http_durations[path] = _Histogram(HTTP_BUCKETS_S)
        durations.observe(seconds)

    def connection_refused(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def shadow_decided(self, op: Op, agreement: str) -> None:
        self.shadow_decisions[op, agreement] += 1

    def shadow_skipped(self, reason: str) -> None:
        self.shadow_skips[reason] += 1

    def recorded(self, result: str, n: int = 1) -> None:
        self.record_results[result] += n

    def collect(self) -> Iterator[Metric]:
        # Snapshots (list(...)) so a scrape from another thread cannot see a dict change size.
        decisions = CounterMetricFamily(DECISIONS.name, DECISIONS.help, labels=DECISIONS.labels)
        for (op, outcome), count in list(self.decisions.items()):
            decisions.add_metric([op.value, outcome], count)
        yield decisions
        evals = HistogramMetricFamily(EVAL_DURATION.name, EVAL_DURATION.help, labels=EVAL_DURATION.labels)
        for op, histogram in list(self.evals.items()):
            evals.add_metric([op.value], histogram.buckets(), histogram.sum)
        yield evals
        fail_open = CounterMetricFamily(FAIL_OPEN.name, FAIL_OPEN.help, labels=FAIL_OPEN.labels)
        for op, count in list(self.fail_open.items()):
            fail_open.add_metric([op.value], count)
        yield fail_open
        for spec, hits in ((RULE_HITS, self.rule_hits), (WARN_HITS, self.warn_hits)):
            by_rule: dict[str, int] = {}  # locations of one rule (file:line) share its label
            for location, count in list(hits.items()):
                by_rule[location.rule] = by_rule.get(location.rule, 0) + count
            family = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
            for rule, count in by_rule.items():
                family.add_metric([rule], count)
            yield family
        requests = CounterMetricFamily(HTTP_REQUESTS.name, HTTP_REQUESTS.help, labels=HTTP_REQUESTS.labels)
        for (path, code), count in list(self.http_requests.items()):
            requests.add_metric([path, str(code)], count)
        yield requests
        durations = HistogramMetricFamily(HTTP_DURATION.name, HTTP_DURATION.help, labels=HTTP_DURATION.labels)
        for path, histogram in list(self.http_durations.items()):
            durations.add_metric([path], histogram.buckets(), histogram.sum)
        yield durations
        yield GaugeMetricFamily(IN_FLIGHT.name, IN_FLIGHT.help, value=self.in_flight)
        refused = CounterMetricFamily(
            CONNECTIONS_REFUSED.name, CONNECTIONS_REFUSED.help, labels=CONNECTIONS_REFUSED.labels
        )
        for reason, count in list(self.refused.items()):
            refused.add_metric([reason], count)
        yield refused
        recorded = CounterMetricFamily(RECORDED.name, RECORDED.help, labels=RECORDED.labels)
        for result, count in list(self.record_results.items()):
            recorded.add_metric([result], count)
        yield recorded
        if self.shadow:
            shadow = CounterMetricFamily(
                SHADOW_DECISIONS.name, SHADOW_DECISIONS.help, labels=SHADOW_DECISIONS.labels
            )
            for (op, agreement), count in list(self.shadow_decisions.items()):
                shadow.add_metric([op.value, agreement], count)
            yield shadow
            skipped = CounterMetricFamily(
                SHADOW_SKIPPED.name, SHADOW_SKIPPED.help, labels=SHADOW_SKIPPED.labels
            )
            for reason, count in list(self.shadow_skips.items()):
                skipped.add_metric([reason], count)
            yield skipped


class _ClientMetrics:
    """prometheus-client's own metrics; in multiprocess mode their values live in the files.

    Every label child the route touches is bound once: per (op, outcome) and per op at start, per
    rule and per (path, code) on first use. `registry` is None in multiprocess mode, where
    MultiProcessCollector reads the values from the files instead.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        decisions = Counter(DECISIONS.name, DECISIONS.help, DECISIONS.labels, registry=registry)
        self._decisions = {(op, o): decisions.labels(op.value, o) for op in Op for o in OUTCOME_LABELS}
        evals = Histogram(
            EVAL_DURATION.name,
            EVAL_DURATION.help,
            EVAL_DURATION.labels,
            buckets=EVAL_BUCKETS_US,
            registry=registry,
        )
        self._evals = {op: evals.labels(op.value) for op in Op}
        fail_open = Counter(FAIL_OPEN.name, FAIL_OPEN.help, FAIL_OPEN.labels, registry=registry)
        self._fail_open = {op: fail_open.labels(op.value) for op in Op}
        self._rule_hits = Counter(RULE_HITS.name, RULE_HITS.help, RULE_HITS.labels, registry=registry)
        self._warn_hits = Counter(WARN_HITS.name, WARN_HITS.help, WARN_HITS.labels, registry=registry)
        self._rule_children: dict[Location, Counter] = {}
        self._warn_children: dict[Location, Counter] = {}
        self._http_requests = Counter(
            HTTP_REQUESTS.name, HTTP_REQUESTS.help, HTTP_REQUESTS.labels, registry=registry
        )
        self._http_durations = Histogram(
            HTTP_DURATION.name,
            HTTP_DURATION.help,
            HTTP_DURATION.labels,
            buckets=HTTP_BUCKETS_S,
            registry=registry,
        )
        self._http_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._in_flight = Gauge(
            IN_FLIGHT.name, IN_FLIGHT.help, multiprocess_mode="livesum", registry=registry
        )
        refused = Counter(
            CONNECTIONS_REFUSED.name,
            CONNECTIONS_REFUSED.help,
            CONNECTIONS_REFUSED.labels,
            registry=registry,
        )
        self._refused = {reason: refused.labels(reason) for reason in REFUSAL_REASONS}
        self._registry = registry
        recorded = Counter(RECORDED.name, RECORDED.help, RECORDED.labels, registry=registry)
        self._recorded = {result: recorded.labels(result) for result in RECORD_RESULTS}
        self._shadow: dict[tuple[Op, str], Counter] = {}
        self._skips: dict[str, Counter] = {}

    def watch_shadow(self) -> None:
        """Create the shadow's counters (exported only when a shadow is configured)."""
        shadow = Counter(
            SHADOW_DECISIONS.name, SHADOW_DECISIONS.help, SHADOW_DECISIONS.labels, registry=self._registry
        )
        self._shadow = {(op, a): shadow.labels(op.value, a) for op in Op for a in AGREEMENTS}
        skipped = Counter(
            SHADOW_SKIPPED.name, SHADOW_SKIPPED.help, SHADOW_SKIPPED.labels, registry=self._registry
        )
        self._skips = {reason: skipped.labels(reason) for reason in SKIP_REASONS}

    def shadow_decided(self, op: Op, agreement: str) -> None:
        self._shadow[op, agreement].inc()

    def shadow_skipped(self, reason: str) -> None:
        self._skips[reason].inc()

    def recorded(self, result: str, n: int = 1) -> None:
        self._recorded[result].inc(n)

    def observe(self, decision: Decision) -> None:
        op = decision.op
        self._decisions[op, outcome_label(decision)].inc()
        self._evals[op].observe(decision.eval_us)
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

    def request_started(self) -> None:
        self._in_flight.inc()

    def request_done(self, path: str, code: int, seconds: float) -> None:
        self._in_flight.dec()
        children = self._http_children.get((path, code))
        if children is None:
            children = self._http_children[path, code] = (
                self._http_requests.labels(path, str(code)),
                self._http_durations.labels(path),
            )
        children[0].inc()
        children[1].observe(seconds)

    def connection_refused(self, reason: str) -> None:
        self._refused[reason].inc()


class Metrics:
    """Every metric policyd exports.

    The route calls `request_started()` and `request_done()` around every HTTP request and
    `observe()` once per decision; `render()` is the /metrics body.
    """

    def __init__(self, store: PolicyStore, *, handler_path: str, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        recorder: _Recorder
        if multiprocess_dir:
            # The live values are in files that MultiProcessCollector reads.
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
            self.registry.register(_StoreCollector(store))
            recorder = self._client = _ClientMetrics()
            self._tally: _Tally | None = None
        else:
            ProcessCollector(registry=self.registry)
            self.registry.register(_StoreCollector(store))
            recorder = self._tally = _Tally()
            self.registry.register(self._tally)
        # The recorder's own bound methods: the route's calls go straight to them.
        self.observe = recorder.observe
        self.request_started = recorder.request_started
        self.request_done = recorder.request_done
        self.connection_refused = recorder.connection_refused
        self.shadow_decided = recorder.shadow_decided
        self.shadow_skipped = recorder.shadow_skipped
        self.recorded = recorder.recorded
        self._paths = frozenset({handler_path, "/healthz", "/readyz", "/status", "/metrics", "/versions"})

    def watch_shadow(self, shadow: ShadowPolicy) -> None:
        """Export the shadow policy's metrics (SHADOW_METRICS), for a service that has one."""
        self.registry.register(_ShadowCollector(shadow))
        if self._tally is not None:
            self._tally.shadow = True
        else:
            self._client.watch_shadow()

    def register_state(
        self, backend: Backend, counts: Callable[[], tuple[tuple[int, int] | None, str]]
    ) -> None:
        """Export the state backend's metrics (read at scrape time, like the policy's)."""
        self.registry.register(_StateCollector(backend, counts))

    def path_label(self, path: str) -> str:
        if path in self._paths:
            return path
        # One label for every version asked for: no cardinality from the names people try.
        return VERSION_PATH_LABEL if path.startswith("/versions/") else OTHER_PATH

    def render(self) -> bytes:
        return generate_latest(self.registry)
