"""The floor of the API benchmark's enqueue: what accepting an export costs with nothing else.

`POST /floor/{user_id}` does only the two writes an accepted export cannot do without, with the
project's own code: the export row and its `export.requested` audit entry, committed by
`pipelines.jobs.create_export`'s one statement, and the message on the Dramatiq broker through
`workers.dispatch.Dispatcher`. No token, no grant, no rate limit, no idempotency, no request log.
`bench/api_bench.py` serves it with the API's own gunicorn configuration, beside the trivial app,
so the table shows how much of the API's cost per accepted export is these two writes.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import falcon
import orjson
import psycopg

from bench.trivial_app import PING_PATH, PingResource
from pipelines.database import connect
from pipelines.jobs import AuditEntry, NewExport, create_export
from pipelines.options import ExportOptions
from workers.broker import create_broker
from workers.dispatch import Dispatcher

FLOOR_PATH = "/floor/{user_id}"
# The options every floor export is accepted with: those of the enqueue benchmark's body.
FLOOR_OPTIONS = ExportOptions(format="json")


class FloorResource:
    """Write an export row with its audit entry, enqueue its message, answer 202 with its id."""

    def __init__(self, database_url: str, dispatcher: Dispatcher) -> None:
        self._database_url = database_url
        self._dispatcher = dispatcher
        self._local = threading.local()

    def _connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = connect(self._database_url, autocommit=True)
            self._local.conn = conn
        return conn

    def on_post(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        """Accept one export for `user_id` with the two writes and nothing else."""
        new = NewExport(user_id=user_id, export_type="user", options=FLOOR_OPTIONS)
        audit = AuditEntry(
            event="export.requested",
            message="user export requested as json",
            actor_type="user",
            actor_id=user_id,
        )
        created = create_export(self._connection(), new, audit=audit)
        export_id = str(created.row["id"])
        self._dispatcher.enqueue_user_export(export_id)
        resp.status = falcon.HTTP_202
        resp.content_type = falcon.MEDIA_JSON
        resp.data = orjson.dumps({"export": {"id": export_id, "status": "queued"}})


def create_app(database_url: str, broker_url: str) -> falcon.App[falcon.Request, falcon.Response]:
    """Return the floor app writing to `database_url` and enqueueing on `broker_url`.

    It also answers the trivial app's `GET /ping`, which the benchmark waits for.
    """
    app: falcon.App[falcon.Request, falcon.Response] = falcon.App()
    dispatcher = Dispatcher(create_broker(broker_url))
    app.add_route(FLOOR_PATH, FloorResource(database_url, dispatcher))
    app.add_route(PING_PATH, PingResource())
    return app


def from_env() -> falcon.App[falcon.Request, falcon.Response]:
    """Return the floor app for the stack the benchmark set in the environment.

    gunicorn's entry point (`bench.floor_app:from_env()`): a factory, so that importing this
    module for its constants needs no environment.
    """
    return create_app(
        os.environ["DATABASE_URL"],  # noqa: TID251 - an entry point
        os.environ["BROKER_URL"],  # noqa: TID251 - an entry point
    )
