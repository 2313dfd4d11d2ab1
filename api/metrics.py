"""Prometheus metrics of the API: request counts and latencies, and export health gauges.

Request metrics live in a registry per app (each gunicorn worker counts its own requests; a
scraper sums the series over the `instance` it scrapes). Export health gauges are read from the
`export_health_metrics` view at scrape time, so every worker reports the same shared figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import falcon
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from api.documents import HEALTH_FIELDS
from pipelines.errors import RetryableError

logger = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Seconds: the API's answers take about a millisecond; the top buckets catch a stuck backend.
LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

HealthReader = Callable[[], Mapping[str, Any]]


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


class ApiMetrics:
    """The app's registry and the request metrics the middleware records."""

    def __init__(self, read_health: HealthReader | None = None) -> None:
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

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count and time every request by route template (never by raw path: ids would explode)."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self._metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Start the clock."""
        req.context.metrics_started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        """Record the request's route, status and duration."""
        started = getattr(req.context, "metrics_started", None)
        route = req.uri_template or "unrouted"
        self._metrics.requests.labels(req.method, route, str(resp.status_code)).inc()
        if started is not None:
            self._metrics.latency.labels(req.method, route).observe(time.perf_counter() - started)
