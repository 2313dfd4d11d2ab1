"""A bulk export taken while another process writes holds exactly one point in time.

Method. A writer process runs a stream of small transactions, each inserting one file or deleting
one file and, in the same transaction, appending `(seq, op, file_id)` to a log table. There is
one writer, so commit order is `seq` order, and any snapshot of the database sees exactly a
prefix of the log: changes 1..k and none after. The bulk export runs on real worker processes
meanwhile, shard after shard. The test then checks, with no trust in the export's own snapshot
machinery, that the exported files equal the files present before the writer started with exactly
such a prefix of the log applied, for some k: it replays the log one change at a time, keeping
the size of the difference between the replayed set and the exported set, and looks for a zero.
Shards that each read their own, later snapshot would hold later prefixes in later shards, and no
single prefix would match. The test also
checks that the writer committed changes while the shards were being read, so the check had
something to catch.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from worker_processes import (
    Workers,
    free_port,
    new_export,
    seed,
    settled,
    wait_for,
    worker_environment,
)

from pipelines.database import connect
from pipelines.formats import iter_records
from pipelines.manifest import parse_manifest
from pipelines.settings import Settings
from pipelines.storage.reader import iter_content, iter_object_bytes
from workers.broker import create_broker
from workers.dispatch import Dispatcher

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The writer: one file inserted or deleted per transaction, logged in the same transaction.
WRITER = """
import os, random, sys, time, uuid
import psycopg
url, stop, LIVE_FILES = sys.argv[1], sys.argv[2], sys.argv[3]
rng = random.Random(7)
with psycopg.connect(url) as conn:
    users = [r[0] for r in conn.execute("SELECT id FROM users WHERE deleted_at IS NULL")]
    files = [r[0] for r in conn.execute(LIVE_FILES)]
    conn.commit()
    while not os.path.exists(stop):
        with conn.transaction():
            if rng.random() < 0.5 or not files:
                new = uuid.uuid4()
                conn.execute(
                    "INSERT INTO files (id, owner_id, path, size_bytes, content_type, sha256,"
                    " object_key) VALUES (%s, %s, %s, 1, 'text/plain', repeat('a', 64), %s)",
                    (new, rng.choice(users), f"written/{new}.txt", f"objects/{new}"),
                )
                conn.execute("INSERT INTO change_log (op, file_id) VALUES ('insert', %s)", (new,))
                files.append(new)
            else:
                gone = files.pop(rng.randrange(len(files)))
                conn.execute("DELETE FROM files WHERE id = %s", (gone,))
                conn.execute("INSERT INTO change_log (op, file_id) VALUES ('delete', %s)", (gone,))
        time.sleep(0.002)
"""
# The files an export holds: live files of live users (the writer changes only those).
LIVE_FILES = (
    "SELECT f.id FROM files f JOIN users u ON u.id = f.owner_id"
    " WHERE f.deleted_at IS NULL AND u.deleted_at IS NULL"
)
# Changes the writer commits before the export starts, so the prefix is not trivially empty.
CHANGES_BEFORE = 50


@pytest.fixture
def workers(
    settings_env: dict[str, str], s3_bucket: str, redis_url: str, tmp_path: Path
) -> Iterator[Workers]:
    env = worker_environment(
        settings_env,
        s3_bucket=s3_bucket,
        redis_url=redis_url,
        dramatiq_queue_prefetch="1",
        dramatiq_prom_db=str(tmp_path / "metrics"),
        dramatiq_prom_port=str(free_port()),
    )
    started = Workers(env, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def _log_size(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM change_log").fetchone()
    assert row is not None
    return int(row[0])


def test_bulk_export_during_writes_holds_exactly_one_point_in_time(
    workers: Workers, s3_client: S3Client, tmp_path: Path
) -> None:
    url = workers.env["DATABASE_URL"]
    seed(url, 600, max_files=100, files=12_000)
    with connect(url) as conn:
        conn.execute(
            "CREATE TABLE change_log (seq bigserial PRIMARY KEY, op text NOT NULL,"
            " file_id uuid NOT NULL, committed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        initial = {str(r[0]) for r in conn.execute(LIVE_FILES)}
        users = conn.execute("SELECT count(*) FROM users WHERE deleted_at IS NULL").fetchone()
        conn.commit()
    stop = tmp_path / "stop-writer"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, str(stop), LIVE_FILES])
    try:
        deadline = time.monotonic() + 30
        while _log_size(url) < CHANGES_BEFORE:
            assert writer.poll() is None, "the writer stopped"
            assert time.monotonic() < deadline, "the writer commits nothing"
            time.sleep(0.05)
        workers.start(processes=1, threads=1, BULK_TARGET_SHARD_ROWS="1500")
        export_id = new_export(url, "bulk", "jsonl", "zstd")
        broker = create_broker(Settings.from_env(workers.env).effective_broker_url)
        try:
            Dispatcher(broker).enqueue_bulk_export(export_id)
        finally:
            broker.close()
        row = wait_for(url, export_id, settled, seconds=90)
    finally:
        stop.touch()
        writer.wait(timeout=30)
    assert writer.returncode == 0
    assert row is not None, workers.log_text()
    assert (row["status"], row["verification_status"]) == ("completed", "passed"), row

    bucket = workers.env["S3_BUCKET"]
    manifest = parse_manifest(
        b"".join(iter_object_bytes(s3_client, bucket=bucket, key=row["object_key"]))
    )
    assert len(manifest.objects) >= 4
    exported: list[str] = []
    user_count = 0
    for entry in manifest.objects:
        key = f"exports/{export_id}/{entry.name}"
        blobs = iter_object_bytes(s3_client, bucket=bucket, key=key)
        for record in iter_records(iter_content(blobs, "zstd"), format="jsonl"):
            if record.table.name == "files":
                exported.append(str(record.values[0]))
            else:
                user_count += 1
    found = set(exported)
    assert len(found) == len(exported), "a file was exported twice"
    assert users is not None
    assert user_count == users[0]

    with connect(url) as conn:
        log = [
            (str(op), str(file_id))
            for op, file_id in conn.execute("SELECT op, file_id FROM change_log ORDER BY seq")
        ]
        during = conn.execute(
            "SELECT count(*) FROM change_log WHERE committed_at BETWEEN"
            " (SELECT min(started_at) FROM export_shards WHERE export_id = %s) AND"
            " (SELECT max(finished_at) FROM export_shards WHERE export_id = %s)",
            (export_id, export_id),
        ).fetchone()
    assert during is not None
    assert during[0] > 0, "no change was committed while the shards were read"
    # Replay the log; `difference` is |replayed set △ exported set| after each change.
    difference = len(initial ^ found)
    matches = [0] if difference == 0 else []
    for applied, (op, file_id) in enumerate(log, start=1):
        present_after = op == "insert"
        difference += -1 if (file_id in found) == present_after else 1
        if difference == 0:
            matches.append(applied)
    assert matches, "no prefix of the changes gives the exported files: points in time are mixed"
    assert CHANGES_BEFORE <= matches[0] < len(log), (matches, len(log))
