"""GET /api/exports/stats: the caller's statistics, and system statistics for administrators."""

from __future__ import annotations

import falcon

from api.database import Database
from api.documents import health_document, summary_document, user_stats_document
from api.payloads import bool_param, check_params
from api.permissions import Action, require
from api.problems import invalid_request
from api.queries import health_metrics, system_summary, user_summary
from api.resources.common import principal_of, send_json

STATS_PARAMETERS = frozenset({"include_system"})


class StatsResource:
    """Statistics from `user_export_summary`, `export_summary` and `export_health_metrics`."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer user statistics, plus system statistics when an administrator asks."""
        principal = principal_of(req)
        require(principal, Action.READ)
        params = check_params(req, STATS_PARAMETERS)
        problems: dict[str, str] = {}
        include_system = bool_param(params, "include_system", problems)
        if problems:
            raise invalid_request(problems)
        if include_system:
            require(principal, Action.SYSTEM_STATS)
        with self._database.transaction() as conn:
            document: dict[str, object] = {
                "user": user_stats_document(user_summary(conn, principal.user_id))
            }
            if include_system:
                document["system"] = {
                    "summary": summary_document(system_summary(conn)),
                    "health": health_document(health_metrics(conn)),
                }
        send_json(resp, document)
