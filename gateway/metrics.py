"""Every metric the gateway exports, in one place, and the few functions that feed them.

Names follow Prometheus conventions: a ``gateway_`` prefix, base units
(seconds, bytes), ``_total`` on counters (prometheus-client appends it).
Model metrics follow the OpenTelemetry GenAI semantic conventions in their
Prometheus spelling (``gen_ai.client.token.usage`` ->
``gateway_gen_ai_client_token_usage``, attributes as ``gen_ai_*`` labels).
Labels are bounded: method names the registry knows (else ``unknown``),
configured model names, error and close codes; never a user, connection or
stream id.

**Several processes.** When ``PROMETHEUS_MULTIPROC_DIR`` is set before this
module is imported (a supervisor sets it for its workers), every process
writes its values to files in that directory and a scrape of any one of them
aggregates all of them: counters and histograms sum, live gauges
(``livesum``) count only processes still alive. When a worker dies the
supervisor calls :func:`worker_died` with its pid, which drops its live
gauges (its counters stay: totals never go backwards). A process that stops
cleanly does the same for itself (:func:`process_exiting`).

**Off.** ``GATEWAY_METRICS=off`` (read at import) replaces every metric by a
no-op: the benchmark's baseline, and a switch for whoever wants none.

**Hot paths.** Frames and bytes sent, and each call's count and duration,
are tallied in plain numbers and added to their metrics by :func:`flush`
(once a second, and before every scrape), so writing a frame costs two
integer additions and ending a call a few more, not locked counter updates
(memory-mapped ones in multiprocess mode).
"""

from __future__ import annotations

import os
import sys
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

import gateway
from gateway.jsonrpc.outbound import Outbound

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.errors import UpstreamError
    from gateway.providers.base import ModelConfig, Usage

__all__ = [
    "CONTENT_TYPE",
    "CallMetrics",
    "ModelCall",
    "error_kind",
    "exposition",
    "flush",
    "multiprocess_dir",
    "process_exiting",
    "samples",
    "sent",
    "stream_ended",
    "stream_started",
    "worker_died",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST


# A `_created` series per counter doubles the scrape for a timestamp nobody graphs.
disable_created_metrics()

ENABLED = os.environ.get("GATEWAY_METRICS", "on").strip().lower() not in ("0", "off", "false", "no")
"""False when ``GATEWAY_METRICS=off``: nothing is counted or exported."""


class _Off:
    """Stands in for every metric when metrics are off."""

    def labels(self, *values: str) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


_OFF = _Off()


def _metric(kind: Any, *args: Any, **kwargs: Any) -> Any:
    return kind(*args, **kwargs) if ENABLED else _OFF


def multiprocess_dir() -> str | None:
    """The shared directory of multiprocess mode, or None in single-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# Connections and users

CONNECTIONS = _metric(
    Gauge, "gateway_connections", "WebSocket connections open now", multiprocess_mode="livesum"
)
CONNECTIONS_ACCEPTED = _metric(
    Counter, "gateway_connections_accepted", "WebSocket connections accepted (handshake completed)"
)
CONNECTIONS_REJECTED = _metric(
    Counter,
    "gateway_connections_rejected",
    "Connections refused at the handshake (origin, unauthenticated, throttled) or at once "
    "(server_full)",
    ["reason"],
)
USERS = _metric(
    Gauge,
    "gateway_users",
    "Distinct authenticated users with a connection (per process, summed over processes)",
    multiprocess_mode="livesum",
)
CLOSE_CODES = _metric(
    Counter,
    "gateway_close_codes_sent",
    "WebSocket closes the server started, by close code",
    ["code"],
)
SLOW_CONSUMER_CLOSES = _metric(
    Counter,
    "gateway_slow_consumer_closes",
    "Connections closed (4000) because a frame could not be written within send_timeout",
)
WORKERS = _metric(
    Gauge, "gateway_workers", "Gateway processes serving now", multiprocess_mode="livesum"
)
BUILD_INFO = _metric(
    Gauge,
    "gateway_build_info",
    "Always 1; the labels name the gateway and Python versions",
    ["version", "python"],
    multiprocess_mode="max",
)

# Shared state

REDIS_UP = _metric(
    Gauge,
    "gateway_redis_up",
    "1 while Redis answers, 0 during an outage (the lowest over workers); absent without Redis",
    ["store"],
    multiprocess_mode="livemin",
)
REDIS_ERRORS = _metric(
    Counter,
    "gateway_redis_errors",
    "Redis calls that failed (refused, reset or timed out)",
    ["store"],
)


def redis_up(up: bool, store: str = "sessions") -> None:
    """Redis answered (``True``) or stopped answering (``False``)."""
    _child(REDIS_UP, store).set(1 if up else 0)


def redis_error(store: str = "sessions") -> None:
    """One Redis call failed."""
    _child(REDIS_ERRORS, store).inc()


# Frames

FRAMES_SENT = _metric(Counter, "gateway_frames_sent", "WebSocket frames written to clients")
BYTES_SENT = _metric(Counter, "gateway_sent_bytes", "Bytes of frame payload written to clients")
DELTAS_MERGED = _metric(
    Counter,
    "gateway_deltas_merged",
    "stream.delta pieces folded into a frame still queued (the reader was lagging)",
)

# JSON-RPC calls

_CALL_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
_CALL_BOUNDS = (*_CALL_BUCKETS, float("inf"))
"""Upper bounds of :data:`CALL_DURATION`'s buckets, as prometheus-client keeps them."""

CALLS = _metric(
    Counter,
    "gateway_calls",
    "JSON-RPC calls by method and outcome (ok, error, cancelled, aborted)",
    ["method", "outcome"],
)
CALL_DURATION = _metric(
    Histogram,
    "gateway_call_duration_seconds",
    "Time from the start of a call to its response (streams: to the final result)",
    ["method"],
    buckets=_CALL_BUCKETS,
)
ERRORS = _metric(
    Counter, "gateway_errors", "JSON-RPC error responses sent, by error code", ["code"]
)

# Streams

STREAMS = _metric(
    Gauge,
    "gateway_streams",
    "Answers streaming now, by model",
    ["model"],
    multiprocess_mode="livesum",
)
STREAMS_DETACHED = _metric(
    Gauge,
    "gateway_streams_detached",
    "Streams still running after the connection that asked went away",
    multiprocess_mode="livesum",
)
RESUMES = _metric(
    Counter,
    "gateway_stream_resumes",
    "stream.resume calls by outcome: resumed, not_found, gap",
    ["outcome"],
)

# Models (OpenTelemetry GenAI semantic conventions, Prometheus spelling)

_GENAI = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
]
TOKEN_USAGE = _metric(
    Histogram,
    "gateway_gen_ai_client_token_usage",
    "Tokens used per operation, by token type (input, output)",
    [*_GENAI, "gen_ai_token_type"],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
)
OPERATION_DURATION = _metric(
    Histogram,
    "gateway_gen_ai_client_operation_duration_seconds",
    "Duration of a model operation, failovers included; error_type set when it failed",
    [*_GENAI, "error_type"],
    buckets=(
        0.01,
        0.02,
        0.04,
        0.08,
        0.16,
        0.32,
        0.64,
        1.28,
        2.56,
        5.12,
        10.24,
        20.48,
        40.96,
        81.92,
    ),
)
TIME_TO_FIRST_CHUNK = _metric(
    Histogram,
    "gateway_gen_ai_client_operation_time_to_first_chunk_seconds",
    "Time from the start of an operation to its first output chunk",
    _GENAI,
    buckets=(
        0.001,
        0.005,
        0.01,
        0.02,
        0.04,
        0.06,
        0.08,
        0.1,
        0.25,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        7.5,
        10.0,
    ),
)
TIME_PER_OUTPUT_CHUNK = _metric(
    Histogram,
    "gateway_gen_ai_client_operation_time_per_output_chunk_seconds",
    "Mean time between output chunks after the first, one observation per operation",
    _GENAI,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
)
FAILOVERS = _metric(
    Counter,
    "gateway_gen_ai_failovers",
    "Failovers to the next model, by the model that failed and why",
    ["gen_ai_provider_name", "gen_ai_request_model", "error_type"],
)
UPSTREAM_ERRORS = _metric(
    Counter,
    "gateway_gen_ai_upstream_errors",
    "Errors from upstream models (those failed over included), by kind",
    ["gen_ai_provider_name", "gen_ai_request_model", "error_type"],
)

BUILD_INFO.labels(gateway.__version__, ".".join(map(str, sys.version_info[:3]))).set(1)


# Hot-path tallies


class _Tally:
    __slots__ = ("bytes", "frames", "merged")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.merged = 0


_tally = _Tally()


def sent(size: int) -> None:
    """One frame of ``size`` bytes was written to a client."""
    tally = _tally
    tally.frames += 1
    tally.bytes += size


class _Count:
    """Increments of one counter child not yet added to it (see :func:`flush`)."""

    __slots__ = ("child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.n = 0


class _Times:
    """Observations of one histogram child not yet added to it (see :func:`flush`)."""

    __slots__ = ("child", "counts", "total")

    def __init__(self, child: Any, buckets: int) -> None:
        self.child = child
        self.counts = [0] * buckets
        self.total = 0.0


_counts: list[_Count] = []
_times: list[_Times] = []


def _add_times(times: _Times) -> None:
    """Add tallied observations to their histogram child: per bucket and to its sum.

    prometheus-client (pinned to 0.26.x) keeps a histogram child's values in
    ``_buckets`` (one value per upper bound, not cumulative) and ``_sum``, and
    derives ``_count`` from the buckets; ``Histogram.observe`` is the same
    two updates for one observation. tests/test_metrics.py checks the
    exported counts exactly.
    """
    child = times.child
    if isinstance(child, _Off):
        return
    counts, total = times.counts, times.total
    times.counts, times.total = [0] * len(counts), 0.0
    child._sum.inc(total)
    for i, n in enumerate(counts):
        if n:
            child._buckets[i].inc(n)


def flush() -> None:
    """Move the hot-path tallies into their metrics (cheap; call as often as you like)."""
    tally = _tally
    frames, size, tally.frames, tally.bytes = tally.frames, tally.bytes, 0, 0
    if frames:
        FRAMES_SENT.inc(frames)
        BYTES_SENT.inc(size)
    merged = Outbound.merged_total - tally.merged
    if merged:
        tally.merged += merged
        DELTAS_MERGED.inc(merged)
    for count in _counts:
        if count.n:
            n, count.n = count.n, 0
            count.child.inc(n)
    for times in _times:
        if times.total or any(times.counts):
            _add_times(times)


# JSON-RPC


class CallMetrics:
    """The JSON-RPC session's observer (:class:`gateway.jsonrpc.session.CallObserver`).

    ``known(name)`` says whether a method name is registered: others are
    counted as ``unknown`` so a client cannot mint label values.
    """

    __slots__ = ("_calls", "_durations", "_errors", "_known")

    def __init__(self, known: Callable[[str], bool]) -> None:
        self._known = known
        self._calls: dict[tuple[str, str], _Count] = {}
        self._durations: dict[str, _Times] = {}
        self._errors: dict[int, Any] = {}

    def _count(self, method: str, outcome: str) -> None:
        count = self._calls.get((method, outcome))
        if count is None:
            count = self._calls[(method, outcome)] = _Count(CALLS.labels(method, outcome))
            _counts.append(count)
        count.n += 1

    def call_ended(self, method: str, outcome: str, seconds: float) -> None:
        """A call of registered ``method`` ended (ok, error, cancelled, aborted).

        Tallied in plain numbers and added to the metrics by :func:`flush`: a
        call costs a few additions, not three locked updates (memory-mapped
        ones with ``--workers``)."""
        self._count(method, outcome)
        times = self._durations.get(method)
        if times is None:
            child = CALL_DURATION.labels(method)
            times = self._durations[method] = _Times(child, len(_CALL_BOUNDS))
            _times.append(times)
        times.counts[bisect_left(_CALL_BOUNDS, seconds)] += 1
        times.total += seconds

    def call_refused(self, method: object) -> None:
        """A call was refused before it ran (unknown method, bad params, not logged in...)."""
        name = method if isinstance(method, str) and self._known(method) else "unknown"
        self._count(name, "error")

    def sent(self, message: Any) -> None:
        """A response (or batch of responses) is being sent: count its errors."""
        if isinstance(message, list):
            for item in message:
                self.sent(item)
            return
        error = message.get("error") if isinstance(message, dict) else None
        if error is None:
            return
        code = error.get("code", 0)
        child = self._errors.get(code)
        if child is None:
            child = self._errors[code] = ERRORS.labels(str(code))
        child.inc()


# Streams and models

_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached: label values here are bounded (config names)."""
    key = (id(metric), labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def stream_started(model: str) -> None:
    """An answer of ``model`` (a configured name) starts streaming."""
    _child(STREAMS, model).inc()


def stream_ended(model: str) -> None:
    """An answer of ``model`` ended (however it ended)."""
    _child(STREAMS, model).dec()


def stream_detached() -> None:
    """A stream's connection went away; it goes on (resumable)."""
    STREAMS_DETACHED.inc()


def detached_stream_ended() -> None:
    STREAMS_DETACHED.dec()


def stream_resume(outcome: str) -> None:
    """A ``stream.resume`` call: ``resumed``, ``not_found`` or ``gap``."""
    _child(RESUMES, outcome).inc()


_ERROR_KINDS = {
    "UpstreamAuthError": "auth",
    "UpstreamRateLimited": "rate_limited",
    "UpstreamUnavailable": "unavailable",
    "UpstreamTimeout": "timeout",
    "UpstreamProtocolError": "protocol",
}


def error_kind(exc: BaseException) -> str:
    """A bounded name for an upstream failure (``other`` for refusals such as a 400)."""
    return _ERROR_KINDS.get(type(exc).__name__, "other")


class ModelCall:
    """One model operation (a routed stream with its failovers), as the GenAI metrics see it."""

    __slots__ = (
        "_chunks",
        "_closed",
        "_error",
        "_first",
        "_last",
        "_provider",
        "_requested",
        "_response",
        "_start",
    )

    def __init__(self, requested: str) -> None:
        self._requested = requested
        self._response = requested
        self._provider = ""
        self._start = 0.0
        self._first = 0.0
        self._last = 0.0
        self._chunks = 0
        self._error: str | None = None
        self._closed = False

    def _labels(self) -> tuple[str, str, str, str]:
        return ("chat", self._provider, self._requested, self._response)

    def attempt(self, config: ModelConfig) -> None:
        """An attempt on ``config`` starts (the first, or one after a failover)."""
        if not self._start:
            self._start = time.perf_counter()
        self._response, self._provider = config.name, config.provider

    def chunk(self) -> None:
        """An output chunk with text arrived."""
        now = time.perf_counter()
        if not self._chunks:
            self._first = now
            _child(TIME_TO_FIRST_CHUNK, *self._labels()).observe(now - self._start)
        self._chunks += 1
        self._last = now

    def upstream_error(self, exc: UpstreamError, *, failover: bool) -> None:
        """The current attempt failed; ``failover`` says whether the next model is tried."""
        kind = error_kind(exc)
        _child(UPSTREAM_ERRORS, self._provider, self._response, kind).inc()
        if failover:
            _child(FAILOVERS, self._provider, self._response, kind).inc()
        else:
            self._error = kind

    def closed(self, usage: Callable[[], Usage]) -> None:
        """The operation is over (finished, failed or cancelled); ``usage`` gives its tokens."""
        if self._closed or not self._start:
            return
        self._closed = True
        labels = self._labels()
        _child(OPERATION_DURATION, *labels, self._error or "").observe(
            time.perf_counter() - self._start
        )
        if self._chunks > 1:
            _child(TIME_PER_OUTPUT_CHUNK, *labels).observe(
                (self._last - self._first) / (self._chunks - 1)
            )
        used = usage()
        _child(TOKEN_USAGE, *labels, "input").observe(used.prompt_tokens)
        _child(TOKEN_USAGE, *labels, "output").observe(used.completion_tokens)


# Exposition and process lifecycle


def _registry() -> CollectorRegistry:
    flush()
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


def exposition() -> bytes:
    """The Prometheus text format of every metric, over all processes in multiprocess mode."""
    return generate_latest(_registry())


def samples() -> list[tuple[str, dict[str, str], float]]:
    """Every sample as (name, labels, value), aggregated like :func:`exposition`."""
    return [
        (s.name, dict(s.labels), s.value)
        for family in _registry().collect()
        for s in family.samples
    ]


def worker_started() -> None:
    """This process serves (one ``gateway_workers``)."""
    WORKERS.inc()


def process_exiting() -> None:
    """This process stops serving: drop its live gauges (multiprocess mode)."""
    flush()
    WORKERS.dec()
    if multiprocess_dir() is not None:
        worker_died(os.getpid())


def worker_died(pid: int, path: str | None = None) -> None:
    """A worker ``pid`` is gone (crashed or stopped): its live gauges no longer count.

    For the supervisor: call it when a worker exits, with the workers'
    ``PROMETHEUS_MULTIPROC_DIR`` as ``path`` (default: this process's). Its
    counters stay.
    """
    path = path or multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, path)
