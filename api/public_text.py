"""What a client reads about an export's failure and its audit trail: fixed wording, never ours.

Workers store the raw cause of a failure (`error_message`, `export_logs.message`): exception
text that can name hosts, buckets, upload ids and worker processes. It stays with operators, in
the database, the workers' log and webhook calls. Clients get the stable `code` or `event`
with the sentence below, which says what happened and what to do.
"""

from __future__ import annotations

from typing import Final

ENQUEUE_FAILED_CODE: Final = "enqueue_failed"
ENQUEUE_FAILED_MESSAGE: Final = (
    "The export could not be queued, so nothing was exported; retry later."
)
_OPERATOR_HINT: Final = "An operator finds the cause in the workers' log under this export's id."

ERROR_MESSAGES: Final = {
    ENQUEUE_FAILED_CODE: ENQUEUE_FAILED_MESSAGE,
    "size_limit": "The export is larger than this server allows for one export, so it was not "
    "stored.",
    "permanent": f"The export met an error another attempt cannot fix. {_OPERATOR_HINT}",
    "attempts_exhausted": f"Every attempt of the export failed, so it was given up. "
    f"{_OPERATOR_HINT}",
    "shard_failed": "A shard of this bulk export failed for good, so the export was not completed.",
    "stuck": "The export stopped making progress (its worker stopped, or no worker took it) and "
    "was given up; request it again.",
    "snapshot_lost": "The database snapshot this bulk export reads was lost before every shard "
    "finished; request it again.",
    "snapshot_timeout": "This bulk export took longer than its database snapshot may be held; "
    "request it again.",
}
_UNKNOWN_ERROR: Final = f"The export failed. {_OPERATOR_HINT}"

EVENT_MESSAGES: Final = {
    "export.requested": "Export requested.",
    "export.started": "Export started.",
    "export.planned": "Bulk export planned in shards.",
    "export.resumed": "A new attempt resumed the export from its last stored part.",
    "export.restarted": "A new attempt started the export again from the beginning.",
    "export.retrying": "An attempt failed; the export will be tried again.",
    "export.message_resent": "The export's job message was lost and has been sent again.",
    "export.completed": "Export completed.",
    "export.failed": "The export failed; its error says why.",
    "export.enqueue_failed": ENQUEUE_FAILED_MESSAGE,
    "export.stuck": "The export stopped making progress and was given up.",
    "export.snapshot_released": "The database snapshot of the bulk export was released.",
    "export.downloaded": "Export downloaded.",
    "export.expired": "The export reached the end of its retention.",
    "export.purged": "The export's stored data was deleted.",
    "shard.started": "A shard of the bulk export started.",
    "shard.completed": "A shard of the bulk export completed.",
    "shard.failed": "A shard of the bulk export failed.",
    "verification.requested": "Verification requested.",
    "verification.requeued": "Verification queued again.",
    "verification.reverify_queued": "Queued for its periodic verification while stored.",
    "verification.passed": "Verification passed: the stored export reads back as written.",
    "verification.failed": "Verification failed: the stored export does not read back as "
    "written; the verification report lists each problem.",
    "schedule.run_enqueued": "Started by a schedule.",
    "schedule.request_enqueued": "Started by a scheduled request.",
    "schedule.run_failed": "The job queue refused this scheduled export; a later scheduling pass "
    "sends it again.",
    "schedule.request_failed": "The job queue refused this scheduled export; a later scheduling "
    "pass sends it again.",
    "schedule.stopped": "The schedule stopped after this run: its expression has no later run.",
}


def error_message(code: str | None) -> str:
    """Return what a client reads about an export that failed with `code`."""
    return ERROR_MESSAGES.get(code or "", _UNKNOWN_ERROR)


def event_message(event: str) -> str:
    """Return what a client reads about an audit entry of `event`."""
    return EVENT_MESSAGES.get(event, f"Recorded: {event}.")
