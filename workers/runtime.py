"""What a worker process needs to run jobs: settings, an S3 client, connections, stores, a queue.

Built once per process by the entry point (`workers.actors`) and handed to the job functions, so
tests call the same functions with their own runtime and no broker. Opens nothing until asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final, Protocol

import psycopg

from pipelines.database import connect
from pipelines.settings import Settings
from pipelines.storage.stores import S3Store
from workers import dispatch
from workers.config import WorkerSettings
from workers.lost_messages import JobFinder, job_finder
from workers.webhook_outbox import Outbox, outbox_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

APPLICATION_NAME: Final = "data-export-worker"


class JobQueue(Protocol):
    """The messages workers send to other workers, and maintenance sends again."""

    def enqueue_user_export(
        self, export_id: str, *, request_id: str | None = None, priority: str = "normal"
    ) -> None:
        """Queue the export of one user's data on its priority's queue."""

    def enqueue_bulk_export(self, export_id: str, *, request_id: str | None = None) -> None:
        """Queue the planning of a bulk export."""

    def enqueue_shard(self, export_id: str, shard_id: str) -> None:
        """Queue one shard of a bulk export."""

    def enqueue_verification(self, export_id: str) -> None:
        """Queue a verification run of a completed export."""


@dataclass(frozen=True)
class Runtime:
    """A worker process's configuration and clients."""

    settings: Settings
    worker: WorkerSettings
    s3: S3Client
    queue: JobQueue

    @cached_property
    def webhooks(self) -> Outbox:
        """Return the process's webhook sender (a no-op when WEBHOOK_URL is empty)."""
        return outbox_for(self.settings.webhook_url, self.settings.webhook_secret, self.connect)

    @cached_property
    def live_jobs(self) -> JobFinder | None:
        """Return the finder of jobs with a live broker message (None: the broker is not Redis)."""
        queues = (*dispatch.USER_EXPORT_QUEUES.values(), dispatch.BULK_QUEUE)
        return job_finder(self.settings.effective_broker_url, queues)

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """Open a database connection with the statement timeout set."""
        return connect(
            self.settings.database_url,
            statement_timeout_ms=self.settings.statement_timeout_ms,
            application_name=APPLICATION_NAME,
            autocommit=autocommit,
        )

    def store(self, export_id: str) -> S3Store:
        """Return the store that holds one export's objects."""
        return S3Store(self.s3, bucket=self.settings.s3_bucket, prefix=self.prefix(export_id))

    def prefix(self, export_id: str) -> str:
        """Return the key prefix of one export's objects."""
        return f"{self.settings.s3_export_prefix}{export_id}/"
