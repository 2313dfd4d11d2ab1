"""GET /healthz (the process answers) and GET /readyz (the database and broker answer).

Readiness runs each injected check and answers 503 problem details naming the ones that failed,
so a load balancer stops sending traffic that would only fail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import falcon

from api.problems import UNAVAILABLE_RETRY_AFTER_SECONDS, ProblemError
from api.resources.common import send_json
from pipelines.errors import ExportError

logger = logging.getLogger(__name__)

Check = Callable[[], None]


class HealthResource:
    """Answer 200 while the process can serve requests at all."""

    auth_required = False

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Say the process is alive."""
        send_json(resp, {"status": "ok"})


class ReadyResource:
    """Answer 200 when every backing service answers, 503 naming those that do not."""

    auth_required = False

    def __init__(self, checks: Mapping[str, Check]) -> None:
        self._checks = dict(checks)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Run every check and report each one."""
        results: dict[str, str] = {}
        for name, check in self._checks.items():
            try:
                check()
            except (ExportError, OSError) as exc:
                logger.warning("readiness check %s failed: %s", name, exc)
                results[name] = "unavailable"
            else:
                results[name] = "ok"
        failed = sorted(name for name, result in results.items() if result != "ok")
        if failed:
            raise ProblemError(
                "service-unavailable",
                f"Not ready: {', '.join(failed)} unavailable.",
                headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
                extensions={"checks": results},
            )
        send_json(resp, {"status": "ready", "checks": results})
