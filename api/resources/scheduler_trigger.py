"""The internal trigger: `/api/exports/process-scheduled` runs one scheduler claiming pass.

Meant for an external cron; it takes the internal credential, never a user token, and answers
what the pass fired. Without a configured scheduler it answers 503.
"""

from __future__ import annotations

import falcon

from api.payloads import read_json_object
from api.problems import UNAVAILABLE_RETRY_AFTER_SECONDS, ProblemError, invalid_request
from api.resources.common import send_json
from workers.scheduling.process import PassRunner


class ProcessScheduledResource:
    """POST one claiming pass (internal credential only), answering what it enqueued."""

    internal_auth = True

    def __init__(self, scheduler: PassRunner | None) -> None:
        self._scheduler = scheduler

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Run a pass now and answer 200 with every item it fired."""
        if read_json_object(req):
            raise invalid_request({"": "this request takes no body (or an empty object)"})
        if self._scheduler is None:
            raise ProblemError(
                "service-unavailable",
                "Scheduling is not configured here.",
                headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
            )
        report = self._scheduler.run_pass()
        send_json(
            resp,
            {
                "now": report.now.isoformat(),
                "enqueued": len(report.enqueued()),
                "fired": [item.as_json() for item in report.fired],
                "maintenanceEnqueued": report.maintenance_enqueued,
            },
        )
