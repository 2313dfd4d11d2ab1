"""The floor of the API benchmark's enqueue: what accepting an export costs with nothing else.

`POST /floor/{user_id}` does only the two writes an accepted export cannot do without, with the
project's own code: the export row and its `export.requested` audit entry, committed by
`pipelines.jobs.create_export`'s one statement, and the message on the Dramatiq broker through
`workers.dispatch.Dispatcher`. No token, no grant, no rate limit, no idempotency, no request log.
`bench/api_bench.py` serves it with the API's own gunicorn configuration, beside the trivial app,
so the table shows how much of the API's cost per accepted export is these two writes.

`POST /floor/batched/{user_id}` is the same floor with the writes grouped: each request hands its
user id to one thread per gunicorn worker, which writes the rows and audit entries of every
request waiting at that moment with one statement and sends their messages in one Redis pipeline
(Dramatiq's own dispatch script, without its enqueue middleware hooks), then answers them all.
It is an upper bound of what grouping a worker's concurrent requests could gain, not a design
the API uses: it measures whether that design could reach a target before anyone builds it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import falcon
import orjson
import psycopg
from dramatiq.brokers.redis import RedisBroker
from psycopg.types.json import Jsonb

from api.database import ThreadLocalDatabase
from bench.trivial_app import PING_PATH, PingResource
from pipelines.database import connect
from pipelines.jobs import AuditEntry, NewExport, create_export
from pipelines.options import ExportOptions
from workers.broker import create_broker
from workers.dispatch import EXPORT_USER, EXPORTS_QUEUE, Dispatcher

FLOOR_PATH = "/floor/{user_id}"
BATCHED_FLOOR_PATH = "/floor/batched/{user_id}"
# Most requests one batch takes: far above the threads of a gunicorn worker, so every request
# waiting when a batch starts is in it.
MAX_BATCH = 256
# Seconds a request waits for its batch before the floor gives up on it (a fault, not a result).
BATCH_TIMEOUT_SECONDS = 10
# The options every floor export is accepted with: those of the enqueue benchmark's body.
FLOOR_OPTIONS = ExportOptions(format="json")


class FloorResource:
    """Write an export row with its audit entry, enqueue its message, answer 202 with its id."""

    def __init__(self, database: ThreadLocalDatabase, dispatcher: Dispatcher) -> None:
        self._database = database
        self._dispatcher = dispatcher

    def on_post(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        """Accept one export for `user_id` with the two writes and nothing else."""
        new = NewExport(user_id=user_id, export_type="user", options=FLOOR_OPTIONS)
        audit = AuditEntry(
            event="export.requested",
            message="user export requested as json",
            actor_type="user",
            actor_id=user_id,
        )
        # The API's own connection handling: one connection per thread, one statement in autocommit.
        with self._database.autocommit() as conn:
            created = create_export(conn, new, audit=audit)
        export_id = str(created.row["id"])
        self._dispatcher.enqueue_user_export(export_id)
        resp.status = falcon.HTTP_202
        resp.content_type = falcon.MEDIA_JSON
        resp.data = orjson.dumps({"export": {"id": export_id, "status": "queued"}})


# The rows and their audit entries of a whole batch: one statement, one round trip, one commit.
_INSERT_BATCH = """
    WITH created AS (
        INSERT INTO data_exports (user_id, export_type, format, compression, options, priority)
        SELECT u, 'user', %(format)s, %(compression)s, %(options)s, 'normal'
        FROM unnest(%(users)s::uuid[]) AS u
        RETURNING id, user_id
    ),
    logged AS (
        INSERT INTO export_logs (event, level, message, export_id, actor_type, actor_id)
        SELECT 'export.requested', 'info', %(message)s, id, 'user', user_id FROM created
    )
    SELECT id, user_id FROM created
"""


@dataclass
class _Pending:
    """One request waiting for its batch: its user, then its export id or the batch's error."""

    user_id: str
    done: threading.Event = field(default_factory=threading.Event)
    export_id: str | None = None
    error: BaseException | None = None


class Batcher:
    """Write the exports of every request waiting at once with one statement and one pipeline."""

    def __init__(self, database_url: str, broker: RedisBroker) -> None:
        self._database_url = database_url
        self._broker = broker
        self._waiting: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="floor-batcher", daemon=True)
        self._thread.start()

    def accept(self, user_id: str) -> str:
        """Return the id of a new export for `user_id` once its batch is written and sent."""
        pending = _Pending(str(uuid.UUID(user_id)))  # the form PostgreSQL returns it in
        self._waiting.put(pending)
        if not pending.done.wait(BATCH_TIMEOUT_SECONDS):
            raise TimeoutError("the batch did not finish")
        if pending.error is not None:
            raise pending.error
        assert pending.export_id is not None
        return pending.export_id

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while True:
            batch = [self._waiting.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = connect(self._database_url, autocommit=True)
                self._write(conn, batch)
            except Exception as exc:  # every waiting request learns the batch failed
                for pending in batch:
                    pending.error = exc
            for pending in batch:
                pending.done.set()

    def _write(self, conn: psycopg.Connection[Any], batch: list[_Pending]) -> None:
        params = {
            "format": FLOOR_OPTIONS.format,
            "compression": FLOOR_OPTIONS.compression,
            "options": Jsonb(FLOOR_OPTIONS.as_json()),
            "users": [pending.user_id for pending in batch],
            "message": "user export requested as json",
        }
        # Each request takes an export of its own user (RETURNING order is not promised).
        created: dict[str, list[str]] = {}
        for export_id, user_id in conn.execute(_INSERT_BATCH, params):
            created.setdefault(str(user_id), []).append(str(export_id))
        ids = [export_id for user_ids in created.values() for export_id in user_ids]
        if len(ids) != len(batch):
            raise RuntimeError(f"wrote {len(ids)} exports for {len(batch)} requests")
        self._send(ids)
        for pending in batch:
            pending.export_id = created[pending.user_id].pop()

    def _send(self, export_ids: list[str]) -> None:
        """Send one message per export through Dramatiq's dispatch script, in one pipeline."""
        broker = self._broker
        pipe = broker.client.pipeline(transaction=False)
        dispatch = broker.scripts["dispatch"]
        # The same Lua stack bound `RedisBroker.enqueue` passes (a private helper of the broker).
        max_unpack = broker._max_unpack_size()  # type: ignore[no-untyped-call]
        for export_id in export_ids:
            message: dramatiq.Message[Any] = dramatiq.Message(
                queue_name=EXPORTS_QUEUE,
                actor_name=EXPORT_USER,
                args=(export_id,),
                kwargs={},
                options={"redis_message_id": str(uuid.uuid4())},
            )
            args = [
                "enqueue", int(time.time() * 1000), EXPORTS_QUEUE, broker.broker_id,
                broker.heartbeat_timeout, broker.dead_message_ttl, 0, max_unpack,
                message.options["redis_message_id"], message.encode(),
            ]  # fmt: skip
            dispatch(keys=[broker.namespace], args=args, client=pipe)
        pipe.execute()


class BatchedFloorResource:
    """The floor with the writes of concurrent requests grouped by a `Batcher`."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher

    def on_post(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        """Accept one export for `user_id` in the next batch."""
        export_id = self._batcher.accept(user_id)
        resp.status = falcon.HTTP_202
        resp.content_type = falcon.MEDIA_JSON
        resp.data = orjson.dumps({"export": {"id": export_id, "status": "queued"}})


def create_app(database_url: str, broker_url: str) -> falcon.App[falcon.Request, falcon.Response]:
    """Return the floor app writing to `database_url` and enqueueing on `broker_url`.

    It also answers the trivial app's `GET /ping`, which the benchmark waits for.
    """
    app: falcon.App[falcon.Request, falcon.Response] = falcon.App()
    broker = create_broker(broker_url)
    database = ThreadLocalDatabase(database_url)
    app.add_route(FLOOR_PATH, FloorResource(database, Dispatcher(broker)))
    if isinstance(broker, RedisBroker):
        app.add_route(BATCHED_FLOOR_PATH, BatchedFloorResource(Batcher(database_url, broker)))
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
