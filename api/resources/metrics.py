"""GET /metrics: the Prometheus text format, public like any scrape target on a private port."""

from __future__ import annotations

import falcon

from api.metrics import METRICS_CONTENT_TYPE, ApiMetrics


class MetricsResource:
    """Render the app's metrics."""

    auth_required = False

    def __init__(self, metrics: ApiMetrics) -> None:
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer the current metrics."""
        resp.content_type = METRICS_CONTENT_TYPE
        resp.data = self._metrics.render()
