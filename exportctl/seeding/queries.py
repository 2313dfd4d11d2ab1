"""The SQL that generates demo data: set-based, deterministic, run entirely inside PostgreSQL.

Pseudo-randomness is a hash of (seed, stream, row number), never `random()`, so the same seed gives
the same rows however the work is split across sessions. Values come in as query parameters; the
only text composed here is this module's own constant SQL.
"""

from __future__ import annotations

# 2**52: the mantissa width of a float8, so a masked hash maps evenly onto [0, 1).
_UNIT_MASK = 4503599627370495
_UNIT_SCALE = 4503599627370496.0


def _unit(row: str, stream: int) -> str:
    """SQL for a uniform number in (0, 1) drawn from `row` on an independent `stream`."""
    salt = f"(%(seed)s::bigint * 256 + {stream})"
    return f"(((hashint8extended({row}, {salt}) & {_UNIT_MASK})::float8 + 0.5) / {_UNIT_SCALE})"


def _pick(row: str, stream: int, array: str) -> str:
    """SQL for a 1-based index into `array`, drawn from `row` on an independent `stream`."""
    salt = f"(%(seed)s::bigint * 256 + {stream})"
    return f"1 + (hashint8extended({row}, {salt}) & 2147483647) %% cardinality({array})"


def _digest(kind: str, row: str) -> str:
    """SQL for the md5 hex digest of the seed, a kind and a row number: the source of an id."""
    return f"md5('{kind}:' || %(seed)s::bigint || ':' || {row})"


def _uuid(digest: str) -> str:
    """SQL for a version-4-shaped uuid made from a column holding an md5 hex digest."""
    return (
        f"(substr({digest}, 1, 12) || '4' || substr({digest}, 14, 3) || 'a'"
        f" || substr({digest}, 18, 15))::uuid"
    )


# The object body of a file, a pure function of its id and `body_hash`
# (= hashtextextended(id::text, 0)): the id repeated on lines, 1 file in 64 empty, 1 in 64 of the
# rest up to 256 lines, the others 1-8 lines. Seeding hashes it; the object writer uploads it.
BODY_SQL = """repeat(id::text || E'\\n',
    CASE WHEN (body_hash & 63) = 0 THEN 0
         WHEN (body_hash & 4032) = 0 THEN 1 + ((body_hash >> 12) & 255)
         ELSE 1 + ((body_hash >> 12) & 7) END::int)"""

# One row per user: its id, creation time, file count and the global number of its first file.
# Counts follow a zero-inflated lognormal, scaled so they sum to exactly %(files)s with none above
# %(max_files)s: the heaviest users are capped and the rest share what is left ("water filling"),
# then the largest fractional remainders get one file more.
CREATE_PLAN = f"""
CREATE TEMPORARY TABLE seed_plan AS
WITH weights AS (
    SELECT i,
           CASE WHEN {_unit("i", 1)} < %(none_share)s THEN 0.0::float8
                ELSE exp(%(log_sigma)s
                         * sqrt(-2.0 * ln({_unit("i", 2)})) * cos(2.0 * pi() * {_unit("i", 3)}))
           END AS w
    FROM generate_series(0::bigint, %(users)s::bigint - 1) AS i
), target AS (
    -- Every user with a weight gets one file first, when there are files enough for that.
    SELECT one, %(files)s::bigint - one * nonzero AS spread, %(max_files)s::bigint - one AS cap
    FROM (SELECT count(*) FILTER (WHERE w > 0) AS nonzero,
                 CASE WHEN count(*) FILTER (WHERE w > 0) <= %(files)s THEN 1 ELSE 0 END AS one
          FROM weights) AS totals
), ranked AS (
    SELECT i, w,
           row_number() OVER heaviest AS r,
           coalesce(sum(w) OVER (heaviest ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
               AS heavier,
           sum(w) OVER () AS total
    FROM weights
    WINDOW heaviest AS (ORDER BY w DESC, i)
), cut AS (
    SELECT r,
           CASE WHEN total - heavier > 0 THEN (spread - (r - 1) * cap) / (total - heavier)
                ELSE 0.0 END AS k
    FROM ranked CROSS JOIN target
    WHERE (total - heavier > 0
           AND spread - (r - 1) * cap >= 0
           AND (spread - (r - 1) * cap) / (total - heavier) * w <= cap)
       OR (total - heavier = 0 AND spread = (r - 1) * cap)
    ORDER BY r
    LIMIT 1
), quota AS (
    SELECT ranked.i, ranked.w, target.one, target.cap,
           CASE WHEN ranked.r < cut.r THEN target.cap::float8 ELSE cut.k * ranked.w END AS q
    FROM ranked CROSS JOIN cut CROSS JOIN target
), floored AS (
    SELECT i, w, one, cap, floor(q)::bigint AS base, q - floor(q) AS frac,
           sum(floor(q)::bigint) OVER () AS placed
    FROM quota
), counted AS (
    SELECT i, {_digest("user", "i")} AS digest,
           CASE WHEN w > 0 THEN one ELSE 0 END + base
           + CASE WHEN w > 0 AND base < cap
                   AND row_number() OVER (PARTITION BY w > 0 AND base < cap
                                          ORDER BY frac DESC, i)
                       <= %(files)s::bigint - placed - one * count(*) FILTER (WHERE w > 0) OVER ()
                  THEN 1 ELSE 0 END AS files
    FROM floored
)
SELECT i,
       {_uuid("digest")} AS user_id,
       %(since)s::timestamptz + {_unit("i", 4)} * (%(until)s::timestamptz - %(since)s::timestamptz)
           AS created_at,
       files,
       (sum(files) OVER (ORDER BY i) - files)::bigint AS file_offset
FROM counted
"""

PLAN_SUMMARY = """
SELECT count(*),
       coalesce(sum(files), 0)::bigint,
       coalesce(percentile_disc(0.5) WITHIN GROUP (ORDER BY files), 0)::bigint,
       coalesce(percentile_disc(0.99) WITHIN GROUP (ORDER BY files), 0)::bigint,
       coalesce(max(files), 0)::bigint,
       count(*) FILTER (WHERE files = 0),
       count(*) FILTER (WHERE files >= 1000),
       count(*) FILTER (WHERE files >= 10000)
FROM seed_plan
"""

INSERT_USERS = f"""
INSERT INTO users (id, email, display_name, role, settings, created_at, updated_at, deleted_at,
                   is_internal)
SELECT id, email, display_name, role, settings, created_at, updated_at,
       CASE WHEN i = 2 OR {_unit("i", 17)} < %(deleted_share)s
            THEN updated_at + {_unit("i", 18)} * (%(until)s::timestamptz - updated_at) END,
       i = 3 OR {_unit("i", 19)} < %(internal_share)s
FROM (
    SELECT p.i, p.user_id AS id, p.created_at,
           p.created_at + {_unit("p.i", 10)} * (%(until)s::timestamptz - p.created_at)
               AS updated_at,
           CASE WHEN p.i < cardinality(%(name_samples)s::text[])
                THEN (%(name_samples)s::text[])[p.i + 1]
                WHEN {_unit("p.i", 11)} < %(nasty_share)s
                THEN (%(name_samples)s::text[])[{_pick("p.i", 12, "%(name_samples)s::text[]")}]
                ELSE (%(first_names)s::text[])[{_pick("p.i", 13, "%(first_names)s::text[]")}]
                     || ' ' ||
                     (%(last_names)s::text[])[{_pick("p.i", 14, "%(last_names)s::text[]")}]
           END AS display_name,
           CASE WHEN p.i < cardinality(%(email_samples)s::text[])
                THEN replace((%(email_samples)s::text[])[p.i + 1], '{{n}}', p.i::text)
                WHEN {_unit("p.i", 15)} < %(nasty_share)s
                THEN replace((%(email_samples)s::text[])[{
    _pick("p.i", 16, "%(email_samples)s::text[]")
}],
                             '{{n}}', p.i::text)
                ELSE 'user' || p.i || '@'
                     || (%(domains)s::text[])[{_pick("p.i", 20, "%(domains)s::text[]")}]
           END AS email,
           CASE WHEN p.i = 1 OR {_unit("p.i", 21)} < %(admin_share)s THEN 'admin' ELSE 'user' END
               AS role,
           CASE WHEN p.i < cardinality(%(json_samples)s::jsonb[])
                THEN (%(json_samples)s::jsonb[])[p.i + 1]
                WHEN {_unit("p.i", 22)} < %(nasty_share)s
                THEN (%(json_samples)s::jsonb[])[{_pick("p.i", 23, "%(json_samples)s::jsonb[]")}]
                WHEN {_unit("p.i", 24)} < %(empty_json_share)s THEN '{{}}'::jsonb
                ELSE jsonb_build_object(
                    'theme', (%(themes)s::text[])[{_pick("p.i", 25, "%(themes)s::text[]")}],
                    'locale', (%(locales)s::text[])[{_pick("p.i", 26, "%(locales)s::text[]")}],
                    'notifications', jsonb_build_object('email', {_unit("p.i", 27)} < 0.7,
                                                        'digest', {_unit("p.i", 28)} < 0.2))
           END AS settings
    FROM seed_plan AS p
) AS u
ORDER BY i
"""

# The files of the users whose first file number lies in [%(from_file)s, %(to_file)s).
INSERT_FILES = f"""
INSERT INTO files (id, owner_id, path, size_bytes, content_type, sha256, created_at, updated_at,
                   metadata, object_key, deleted_at)
SELECT id, owner_id, path, octet_length(body), content_type,
       encode(sha256(convert_to(body, 'UTF8')), 'hex'), created_at, updated_at, metadata,
       'files/' || owner_id || '/' || id,
       CASE WHEN deleted
            THEN updated_at + {_unit("g", 40)} * (%(until)s::timestamptz - updated_at) END
FROM (
    SELECT g, id, owner_id, path, content_type, created_at, updated_at, metadata, deleted,
           {BODY_SQL} AS body
    FROM (
        SELECT f.g, f.id, f.owner_id, f.created_at, f.deleted,
               f.created_at + {_unit("f.g", 33)} ^ 3 * (%(until)s::timestamptz - f.created_at)
                   AS updated_at,
               hashtextextended(f.id::text, 0) AS body_hash,
               CASE WHEN f.g < cardinality(%(path_samples)s::text[])
                    THEN (%(path_samples)s::text[])[f.g + 1]
                    WHEN {_unit("f.g", 42)} < %(long_share)s
                    THEN (%(path_samples)s::text[])[cardinality(%(path_samples)s::text[])]
                    WHEN {_unit("f.g", 43)} < %(nasty_share)s
                    THEN (%(path_samples)s::text[])[
                        1 + (hashint8extended(f.g, %(seed)s::bigint * 256 + 44) & 2147483647)
                            %% (cardinality(%(path_samples)s::text[]) - 1)]
                    ELSE '/' || (%(folders)s::text[])[{_pick("f.g", 41, "%(folders)s::text[]")}]
                         || '/' || (%(stems)s::text[])[{_pick("f.g", 45, "%(stems)s::text[]")}]
                         || '-' || f.g || '.' || (%(extensions)s::text[])[f.kind]
               END AS path,
               CASE WHEN f.g < cardinality(%(type_samples)s::text[])
                    THEN (%(type_samples)s::text[])[f.g + 1]
                    WHEN {_unit("f.g", 46)} < %(nasty_share)s / 4
                    THEN (%(type_samples)s::text[])[{_pick("f.g", 47, "%(type_samples)s::text[]")}]
                    ELSE (%(content_types)s::text[])[f.kind]
               END AS content_type,
               CASE WHEN f.g < cardinality(%(json_samples)s::jsonb[])
                    THEN (%(json_samples)s::jsonb[])[f.g + 1]
                    WHEN {_unit("f.g", 48)} < %(nasty_share)s
                    THEN (%(json_samples)s::jsonb[])[{
    _pick("f.g", 49, "%(json_samples)s::jsonb[]")
}]
                    ELSE (%(metadata_pool)s::jsonb[])[{
    _pick("f.g", 50, "%(metadata_pool)s::jsonb[]")
}]
               END AS metadata
        FROM (
            SELECT g, {_uuid("digest")} AS id, owner_id,
                   owner_created_at + {_unit("g", 30)} * (%(until)s::timestamptz - owner_created_at)
                       AS created_at,
                   {_pick("g", 31, "%(content_types)s::text[]")} AS kind,
                   g = 1 OR {_unit("g", 32)} < %(deleted_share)s AS deleted
            FROM (
                SELECT p.file_offset + j AS g, {_digest("file", "p.file_offset + j")} AS digest,
                       p.user_id AS owner_id, p.created_at AS owner_created_at
                FROM seed_plan AS p
                CROSS JOIN LATERAL generate_series(0::bigint, p.files - 1) AS j
                WHERE p.file_offset >= %(from_file)s AND p.file_offset < %(to_file)s
                  AND p.files > 0
                OFFSET 0
            ) AS f
            OFFSET 0
        ) AS f
        OFFSET 0
    ) AS f
    OFFSET 0
) AS f
"""
