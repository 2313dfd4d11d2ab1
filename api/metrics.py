"""Prometheus metrics of the API: request counts and latencies, export health and backlog gauges.

Request metrics live in a registry per app (each gunicorn worker counts its own requests; a
scraper sums the series over the `instance` it scrapes). Export health gauges are read from the
`export_health_metrics` view at scrape time, and the broker's queues and the bytes of stored
exports are read at scrape time too (cached a few seconds), so every API process reports the
same shared figures: rules take max() over them. Worker processes never compute these.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import falcon
import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from api.documents import HEALTH_FIELDS
from pipelines.errors import RetryableError

if TYPE_CHECKING:
    from workers.queue_stats import QueueStats

logger = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Seconds: the API's answers take about a millisecond; the top buckets catch a stuck backend.
LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Methods counted under their own name. gunicorn passes any token of capitals as a method, and
# requests are counted before they are authenticated: every other method shares the label
# "OTHER", so nobody can grow the series (and each scrape) by inventing methods.
COUNTED_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)

# Seconds one reading of the broker and of the stored bytes serves: scrapers and dashboards
# asking within a few seconds of each other share it, and Redis and PostgreSQL see at most one
# read per API process per interval however many scrapers there are.
BACKLOG_CACHE_SECONDS: Final = 5.0
# Milliseconds the stored-bytes sum may run: it scans the completed rows, and a scrape answers
# without the figure rather than holding a request thread behind a slow table.
STORAGE_STATEMENT_TIMEOUT_MS: Final = 2000

HealthReader = Callable[[], Mapping[str, Any]]
QueueReader = Callable[[], "Sequence[QueueStats]"]
StorageReader = Callable[[], int]
T = TypeVar("T")


class HealthCollector:
    """Expose `export_health_metrics` as gauges, and whether the database answered."""

    def __init__(self, read_health: HealthReader) -> None:
        self._read_health = read_health

    def collect(self) -> Iterator[Metric]:
        """Read the view and yield one gauge per column."""
        up = GaugeMetricFamily(
            "data_export_database_up", "Whether the database answered the last scrape."
        )
        try:
            row = self._read_health()
        except RetryableError as exc:
            logger.warning("metrics: database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for column, _ in HEALTH_FIELDS:
            value = row.get(column)
            if value is None:
                continue
            yield GaugeMetricFamily(
                f"data_export_{column}", f"export_health_metrics.{column}", value=float(value)
            )


def storage_used_bytes(conn: psycopg.Connection[Any]) -> int:
    """Return the stored bytes of every completed export, in one statement with a short timeout."""
    with conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = {STORAGE_STATEMENT_TIMEOUT_MS}")
        row = conn.execute(
            "SELECT coalesce(sum(size_bytes), 0)::bigint FROM data_exports"
            " WHERE status = 'completed'"
        ).fetchone()
    return int(row[0]) if row else 0


class _Cached(Generic[T]):
    """A reading reused for `seconds`, failures too, so an outage is not hammered by scrapes."""

    def __init__(
        self, read: Callable[[], T], *, seconds: float, clock: Callable[[], float]
    ) -> None:
        self._read = read
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._value: T | None = None
        self._error: RetryableError | None = None

    def get(self) -> T:
        """Return the cached reading, reading again once it is older than the interval."""
        with self._lock:
            now = self._clock()
            if self._at is None or now - self._at >= self._seconds:
                try:
                    self._value, self._error = self._read(), None
                except RetryableError as exc:
                    self._value, self._error = None, exc
                self._at = now
            if self._error is not None:
                raise self._error
            assert self._value is not None
            return self._value


# The queue gauges by QueueStats field, with their help texts.
QUEUE_GAUGES: Final = (
    (
        "ready",
        "data_export_queue_messages",
        "Messages waiting in a broker queue for a worker to take them.",
    ),
    (
        "in_flight",
        "data_export_queue_in_flight_messages",
        "Messages of a broker queue that a worker took and has not acknowledged yet.",
    ),
    (
        "delayed",
        "data_export_queue_delayed_messages",
        "Retries of a broker queue waiting for their backoff to pass.",
    ),
    (
        "dead",
        "data_export_queue_dead_messages",
        "Dead letters of a broker queue (failed for good; Dramatiq keeps them a week).",
    ),
)


class BacklogCollector:
    """Expose the broker's queues and the bytes of stored exports as gauges, read at scrape time."""

    def __init__(
        self,
        read_queues: QueueReader | None = None,
        read_storage: StorageReader | None = None,
        *,
        cache_seconds: float = BACKLOG_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queues = None
        self._storage = None
        if read_queues is not None:
            self._queues = _Cached(read_queues, seconds=cache_seconds, clock=clock)
        if read_storage is not None:
            self._storage = _Cached(read_storage, seconds=cache_seconds, clock=clock)

    def describe(self) -> Iterator[Metric]:
        """Name every gauge without reading anything (the registry asks when it is built)."""
        if self._queues is not None:
            yield _broker_up()
            yield from _queue_families().values()
        if self._storage is not None:
            yield _storage_used()

    def collect(self) -> Iterator[Metric]:
        """Yield the queue gauges (and whether the broker answered) and the stored bytes."""
        if self._queues is not None:
            yield from self._collect_queues(self._queues)
        if self._storage is not None:
            try:
                used = self._storage.get()
            except RetryableError as exc:
                logger.warning("metrics: stored bytes not read: %s", exc)
            else:
                gauge = _storage_used()
                gauge.add_metric([], float(used))
                yield gauge

    def _collect_queues(self, queues: _Cached[Sequence[QueueStats]]) -> Iterator[Metric]:
        up = _broker_up()
        try:
            stats = queues.get()
        except RetryableError as exc:
            logger.warning("metrics: broker queues not read: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        families = _queue_families()
        for queue in stats:
            for field, name, _ in QUEUE_GAUGES:
                families[name].add_metric([queue.name], float(getattr(queue, field)))
            # An empty queue reports 0, so an age alert resolves once the backlog drains.
            age = queue.oldest_ready_seconds or 0.0
            families["data_export_queue_oldest_message_age_seconds"].add_metric([queue.name], age)
        yield from families.values()


def _broker_up() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "data_export_broker_up", "Whether the broker answered the last queue reading."
    )


def _storage_used() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "data_export_storage_used_bytes",
        "Stored (compressed) bytes of every completed export not yet expired.",
        labels=[],
    )


def _queue_families() -> dict[str, GaugeMetricFamily]:
    families = {
        name: GaugeMetricFamily(name, help_text, labels=["queue"])
        for _, name, help_text in QUEUE_GAUGES
    }
    families["data_export_queue_oldest_message_age_seconds"] = GaugeMetricFamily(
        "data_export_queue_oldest_message_age_seconds",
        "Seconds since the oldest waiting message of a broker queue was first enqueued.",
        labels=["queue"],
    )
    return families


class ApiMetrics:
    """The app's registry and the request metrics the middleware records."""

    def __init__(
        self,
        read_health: HealthReader | None = None,
        *,
        read_queues: QueueReader | None = None,
        read_storage: StorageReader | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "data_export_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "data_export_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        if read_health is not None:
            self.registry.register(HealthCollector(read_health))
        if read_queues is not None or read_storage is not None:
            self.registry.register(BacklogCollector(read_queues, read_storage))

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count and time every request by route template (never by raw path: ids would explode)."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self._metrics = metrics
        # Labelled series by label values: `labels()` validates and locks on every call, and a
        # route template has a handful of methods and statuses, so each series is looked up once.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Start the clock."""
        req.context.metrics_started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        """Record the request's route, status and duration."""
        started = getattr(req.context, "metrics_started", None)
        route = req.uri_template or "unrouted"
        method = req.method if req.method in COUNTED_METHODS else "OTHER"
        status = resp.status_code
        counter = self._counted.get((method, route, status))
        if counter is None:
            counter = self._metrics.requests.labels(method, route, str(status))
            self._counted[(method, route, status)] = counter
        counter.inc()
        if started is not None:
            timer = self._timed.get((method, route))
            if timer is None:
                timer = self._metrics.latency.labels(method, route)
                self._timed[(method, route)] = timer
            timer.observe(time.perf_counter() - started)
