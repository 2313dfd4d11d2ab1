"""Split all users into shards by user-id range, sized by how many rows each range holds.

A shard is many users, never one: per-user objects measured five times slower than shards of
many users. Ranges are half-open `[low, high)` over the users' uuid order, so together they cover
every user exactly once, including users created after planning (the first range has no lower
bound, the last no upper bound). The plan reads one snapshot; it never loads all users at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg

from pipelines.sources import UserRange

# Rows (a user plus their files) per shard: about 500 MB of CSV at 466 bytes a row, which keeps
# a shard a few minutes of work for one worker and a bulk export of 5 M rows at ten shards.
TARGET_SHARD_ROWS = 1_000_000
# Users streamed per fetch while planning.
PLAN_BATCH_USERS = 10_000


def plan_shards(
    conn: psycopg.Connection[Any], *, target_rows: int = TARGET_SHARD_ROWS
) -> list[UserRange]:
    """Return user-id ranges covering every user, each holding about `target_rows` rows."""
    if target_rows <= 0:
        raise ValueError(f"target_rows must be positive, got {target_rows}")
    cuts = list(_cut_points(conn, target_rows))
    bounds: list[str | None] = [None, *cuts, None]
    return [UserRange(low=bounds[i], high=bounds[i + 1]) for i in range(len(bounds) - 1)]


def _cut_points(conn: psycopg.Connection[Any], target_rows: int) -> Iterator[str]:
    """Yield the user ids at which a new shard starts."""
    query = """
        SELECT u.id::text, 1 + coalesce(f.files, 0)
        FROM users u
        LEFT JOIN (SELECT owner_id, count(*) AS files FROM files GROUP BY owner_id) f
            ON f.owner_id = u.id
        ORDER BY u.id
    """
    in_shard = 0
    with conn.cursor(name="plan_shards") as cursor:
        cursor.itersize = PLAN_BATCH_USERS
        cursor.execute(query)
        for user_id, rows in cursor:
            if in_shard and in_shard + rows > target_rows:
                yield user_id
                in_shard = 0
            in_shard += rows
