-- The whole database of the Data Export System, applied by `exportctl db migrate` and by the tests.
-- Idempotent: applying it twice changes nothing. Works on PostgreSQL 15 and 18.
--
-- Two parts: the application's own source tables (users, files), which the system exports, and the
-- export system's tables and views.

-- ===========================================================================================
-- Part 1: the application's source tables
-- ===========================================================================================

CREATE TABLE IF NOT EXISTS users (
    id           uuid        PRIMARY KEY,
    email        text        NOT NULL,
    display_name text        NOT NULL,
    role         text        NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    settings     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- system fields: internal to the application, exported only with includeSystemFields
    deleted_at   timestamptz,
    is_internal  boolean     NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS files (
    id           uuid        PRIMARY KEY,
    owner_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    path         text        NOT NULL,
    size_bytes   bigint      NOT NULL CHECK (size_bytes >= 0),
    content_type text        NOT NULL,
    sha256       text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    metadata     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- system fields: internal to the application, exported only with includeSystemFields
    object_key   text        NOT NULL,
    deleted_at   timestamptz
);

-- A user's files in id order: the row source's keyset scan and the per-shard range scan.
CREATE INDEX IF NOT EXISTS files_owner_id_id_idx ON files (owner_id, id);

COMMENT ON TABLE users IS
    'The application''s users: the people whose data the system exports (source data, not ours).';
COMMENT ON TABLE files IS
    'The application''s file metadata; the bytes live in the bucket under object_key (source data).';

-- ===========================================================================================
-- Part 2: the export system
-- ===========================================================================================
--
-- Conventions:
-- - No name is schema-qualified: the file builds into the first schema of the search_path, which
--   is how `exportctl db check` rebuilds it in a scratch schema to find drift.
-- - Every constraint is named, so drift reports and error messages say which rule was broken.
-- - Closed vocabularies are CHECK constraints, not enum types: a CHECK can be widened by a plain
--   idempotent statement, an enum value can never be removed.
-- - Formats: json, csv, xml, jsonl. Compressions: none, gzip, zstd. Export types: user, bulk (the
--   API's `user_data` is stored as `user`). Priorities: low, normal, high (one queue each).
-- - Export and shard statuses: queued -> running -> completed | failed | cancelled; completed ->
--   expired once retention has passed and cleanup has deleted the objects.
-- - Digests are lowercase hex SHA-256; sizes are bytes; counts are records; times are timestamptz.
-- - Rate-limit counters live in Redis, not here.

CREATE TABLE IF NOT EXISTS export_templates (
    id               uuid        NOT NULL DEFAULT gen_random_uuid(),
    owner_id         uuid        REFERENCES users (id) ON DELETE CASCADE,
    name             text        NOT NULL,
    description      text        NOT NULL DEFAULT '',
    export_type      text        NOT NULL DEFAULT 'user',
    format           text        NOT NULL,
    compression      text        NOT NULL DEFAULT 'none',
    options          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    retention_days   integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_templates_pkey PRIMARY KEY (id),
    CONSTRAINT export_templates_owner_name_key UNIQUE NULLS NOT DISTINCT (owner_id, name),
    CONSTRAINT export_templates_name_check CHECK (length(btrim(name)) > 0),
    CONSTRAINT export_templates_export_type_check CHECK (export_type IN ('user', 'bulk')),
    CONSTRAINT export_templates_format_check CHECK (format IN ('json', 'csv', 'xml', 'jsonl')),
    CONSTRAINT export_templates_compression_check
        CHECK (compression IN ('none', 'gzip', 'zstd')),
    CONSTRAINT export_templates_options_check CHECK (jsonb_typeof(options) = 'object'),
    CONSTRAINT export_templates_retention_days_check CHECK (retention_days > 0)
);
COMMENT ON TABLE export_templates IS
    'Named, reusable export settings (format, compression, options, retention) that requests and '
    'schedules refer to; owner_id NULL means a system-wide template managed by administrators.';
COMMENT ON COLUMN export_templates.retention_days IS
    'Days an export made from this template is kept; NULL means EXPORT_RETENTION_DAYS.';

CREATE TABLE IF NOT EXISTS export_permissions (
    user_id                   uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    can_export_own            boolean     NOT NULL DEFAULT true,
    can_schedule              boolean     NOT NULL DEFAULT true,
    can_export_bulk           boolean     NOT NULL DEFAULT false,
    can_include_system_fields boolean     NOT NULL DEFAULT false,
    allowed_formats           text[]      NOT NULL DEFAULT ARRAY['json', 'csv', 'xml', 'jsonl'],
    rate_limit_per_hour       integer,
    granted_by                uuid        REFERENCES users (id) ON DELETE SET NULL,
    expires_at                timestamptz,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_permissions_pkey PRIMARY KEY (user_id),
    CONSTRAINT export_permissions_allowed_formats_check
        CHECK (allowed_formats <@ ARRAY['json', 'csv', 'xml', 'jsonl']),
    CONSTRAINT export_permissions_rate_limit_check CHECK (rate_limit_per_hour > 0)
);
COMMENT ON TABLE export_permissions IS
    'Per-user grants that refine what the token''s role allows: own exports, schedules, bulk '
    'exports, system fields, formats and an own rate limit. No row means the role''s defaults.';
COMMENT ON COLUMN export_permissions.rate_limit_per_hour IS
    'Accepted exports per hour for this user; NULL means EXPORT_RATE_LIMIT (counted in Redis).';

CREATE TABLE IF NOT EXISTS export_config (
    key         text        NOT NULL,
    value       jsonb       NOT NULL,
    description text        NOT NULL DEFAULT '',
    updated_by  uuid        REFERENCES users (id) ON DELETE SET NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_config_pkey PRIMARY KEY (key),
    CONSTRAINT export_config_key_check CHECK (key ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$')
);
COMMENT ON TABLE export_config IS
    'Runtime switches an administrator changes without a deploy (for example pausing maintenance); '
    'process configuration comes from the environment, not from here.';

CREATE TABLE IF NOT EXISTS export_schedules (
    id                uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id           uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name              text        NOT NULL,
    template_id       uuid        REFERENCES export_templates (id) ON DELETE SET NULL,
    export_type       text        NOT NULL DEFAULT 'user',
    format            text        NOT NULL,
    compression       text        NOT NULL DEFAULT 'none',
    options           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    priority          text        NOT NULL DEFAULT 'normal',
    cron_expression   text        NOT NULL,
    timezone          text        NOT NULL DEFAULT 'UTC',
    retention_keep_last integer,
    retention_days    integer,
    paused            boolean     NOT NULL DEFAULT false,
    paused_at         timestamptz,
    next_run_at       timestamptz,
    last_run_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_schedules_pkey PRIMARY KEY (id),
    CONSTRAINT export_schedules_name_check CHECK (length(btrim(name)) > 0),
    CONSTRAINT export_schedules_export_type_check CHECK (export_type IN ('user', 'bulk')),
    CONSTRAINT export_schedules_format_check CHECK (format IN ('json', 'csv', 'xml', 'jsonl')),
    CONSTRAINT export_schedules_compression_check
        CHECK (compression IN ('none', 'gzip', 'zstd')),
    CONSTRAINT export_schedules_options_check CHECK (jsonb_typeof(options) = 'object'),
    CONSTRAINT export_schedules_priority_check CHECK (priority IN ('low', 'normal', 'high')),
    -- Five cron fields or one of the @-macros; the scheduler parses it fully.
    CONSTRAINT export_schedules_cron_check CHECK (
        cron_expression ~ '^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+(\s+\S+){4})$'
    ),
    -- An unknown zone name makes this expression raise, so no row can carry one.
    CONSTRAINT export_schedules_timezone_check
        CHECK ((TIMESTAMPTZ '2000-01-01 00:00:00+00' AT TIME ZONE timezone) IS NOT NULL),
    CONSTRAINT export_schedules_keep_last_check CHECK (retention_keep_last > 0),
    CONSTRAINT export_schedules_retention_days_check CHECK (retention_days > 0),
    CONSTRAINT export_schedules_paused_check CHECK (paused = (paused_at IS NOT NULL))
);
COMMENT ON TABLE export_schedules IS
    'Recurring exports: a cron expression evaluated in an IANA time zone, an optional template, '
    'retention (keep the last N) and pause; the scheduler fires each occurrence once.';
COMMENT ON COLUMN export_schedules.next_run_at IS
    'Next occurrence in UTC, computed by the scheduler after each firing; NULL until computed.';
COMMENT ON COLUMN export_schedules.retention_keep_last IS
    'Keep the newest N completed exports of this schedule whose verification did not fail, and'
    ' always the newest that passed; NULL keeps all until expiry.';

CREATE TABLE IF NOT EXISTS export_requests (
    id                      uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id                 uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    template_id             uuid        REFERENCES export_templates (id) ON DELETE SET NULL,
    export_type             text        NOT NULL DEFAULT 'user',
    format                  text        NOT NULL,
    compression             text        NOT NULL DEFAULT 'none',
    options                 jsonb       NOT NULL DEFAULT '{}'::jsonb,
    priority                text        NOT NULL DEFAULT 'normal',
    scheduled_at            timestamptz NOT NULL,
    status                  text        NOT NULL DEFAULT 'pending',
    status_reason           text,
    request_id              text,
    idempotency_key         text,
    idempotency_fingerprint text,
    enqueued_at             timestamptz,
    cancelled_at            timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_requests_pkey PRIMARY KEY (id),
    CONSTRAINT export_requests_user_idempotency_key UNIQUE (user_id, idempotency_key),
    CONSTRAINT export_requests_export_type_check CHECK (export_type IN ('user', 'bulk')),
    CONSTRAINT export_requests_format_check CHECK (format IN ('json', 'csv', 'xml', 'jsonl')),
    CONSTRAINT export_requests_compression_check CHECK (compression IN ('none', 'gzip', 'zstd')),
    CONSTRAINT export_requests_options_check CHECK (jsonb_typeof(options) = 'object'),
    CONSTRAINT export_requests_priority_check CHECK (priority IN ('low', 'normal', 'high')),
    CONSTRAINT export_requests_status_check
        CHECK (status IN ('pending', 'enqueued', 'cancelled', 'skipped', 'failed')),
    CONSTRAINT export_requests_reason_check
        CHECK (status NOT IN ('skipped', 'failed') OR status_reason IS NOT NULL),
    CONSTRAINT export_requests_enqueued_check
        CHECK (status <> 'enqueued' OR enqueued_at IS NOT NULL),
    CONSTRAINT export_requests_idempotency_check
        CHECK ((idempotency_key IS NULL) = (idempotency_fingerprint IS NULL))
);
COMMENT ON TABLE export_requests IS
    'One-off exports asked for at a future time; the scheduler claims due pending rows with '
    'FOR UPDATE SKIP LOCKED and creates the export, which points back here.';
COMMENT ON COLUMN export_requests.idempotency_fingerprint IS
    'SHA-256 of the request body sent with the Idempotency-Key; a reuse with another body is refused.';

CREATE TABLE IF NOT EXISTS data_exports (
    id                      uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id                 uuid        NOT NULL REFERENCES users (id) ON DELETE NO ACTION,
    export_type             text        NOT NULL DEFAULT 'user',
    format                  text        NOT NULL,
    compression             text        NOT NULL DEFAULT 'none',
    options                 jsonb       NOT NULL DEFAULT '{}'::jsonb,
    priority                text        NOT NULL DEFAULT 'normal',
    status                  text        NOT NULL DEFAULT 'queued',
    progress                integer     NOT NULL DEFAULT 0,
    -- where it came from
    template_id             uuid        REFERENCES export_templates (id) ON DELETE SET NULL,
    export_request_id       uuid        REFERENCES export_requests (id) ON DELETE SET NULL,
    schedule_id             uuid        REFERENCES export_schedules (id) ON DELETE SET NULL,
    request_id              text,
    idempotency_key         text,
    idempotency_fingerprint text,
    -- the work: lease, attempts, consistent snapshot
    lease_owner             text,
    lease_expires_at        timestamptz,
    fencing_token           bigint      NOT NULL DEFAULT 0,
    attempts                integer     NOT NULL DEFAULT 0,
    snapshot_id             text,
    snapshot_at             timestamptz,
    shard_count             integer,
    -- the result
    object_key              text,
    multipart_upload_id     text,
    part_size_bytes         bigint,
    size_bytes              bigint,
    content_size_bytes      bigint,
    record_count            bigint,
    user_count              bigint,
    file_count              bigint,
    sha256                  text,
    content_sha256          text,
    compression_ratio       double precision,
    error_code              text,
    error_message           text,
    -- verification
    verification_status     text        NOT NULL DEFAULT 'pending',
    verification_report     jsonb,
    verified_at             timestamptz,
    -- time line
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    started_at              timestamptz,
    finished_at             timestamptz,
    expires_at              timestamptz,
    purged_at               timestamptz,
    CONSTRAINT data_exports_pkey PRIMARY KEY (id),
    CONSTRAINT data_exports_user_idempotency_key UNIQUE (user_id, idempotency_key),
    -- A scheduled request fires into exactly one export, whoever claimed it.
    CONSTRAINT data_exports_export_request_id_key UNIQUE (export_request_id),
    CONSTRAINT data_exports_export_type_check CHECK (export_type IN ('user', 'bulk')),
    CONSTRAINT data_exports_format_check CHECK (format IN ('json', 'csv', 'xml', 'jsonl')),
    CONSTRAINT data_exports_compression_check CHECK (compression IN ('none', 'gzip', 'zstd')),
    CONSTRAINT data_exports_options_check CHECK (jsonb_typeof(options) = 'object'),
    CONSTRAINT data_exports_priority_check CHECK (priority IN ('low', 'normal', 'high')),
    CONSTRAINT data_exports_status_check CHECK (
        status IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'expired')
    ),
    CONSTRAINT data_exports_progress_check CHECK (progress BETWEEN 0 AND 100),
    CONSTRAINT data_exports_idempotency_check
        CHECK ((idempotency_key IS NULL) = (idempotency_fingerprint IS NULL)),
    CONSTRAINT data_exports_lease_check CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL)),
    -- A running export always holds a lease, so a dead worker shows as an expired lease.
    CONSTRAINT data_exports_running_lease_check
        CHECK (status <> 'running' OR lease_expires_at IS NOT NULL),
    CONSTRAINT data_exports_fencing_token_check CHECK (fencing_token >= 0),
    CONSTRAINT data_exports_attempts_check CHECK (attempts >= 0),
    CONSTRAINT data_exports_shard_count_check CHECK (shard_count >= 0),
    CONSTRAINT data_exports_part_size_check CHECK (part_size_bytes > 0),
    CONSTRAINT data_exports_sizes_check CHECK (size_bytes >= 0 AND content_size_bytes >= 0),
    CONSTRAINT data_exports_counts_check
        CHECK (record_count >= 0 AND user_count >= 0 AND file_count >= 0),
    CONSTRAINT data_exports_sha256_check CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT data_exports_content_sha256_check CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT data_exports_compression_ratio_check CHECK (compression_ratio > 0),
    -- A completed export has everything a reader and the verifier need.
    CONSTRAINT data_exports_completed_check CHECK (
        status NOT IN ('completed', 'expired') OR (
            object_key IS NOT NULL AND size_bytes IS NOT NULL AND content_size_bytes IS NOT NULL
            AND record_count IS NOT NULL AND sha256 IS NOT NULL AND content_sha256 IS NOT NULL
        )
    ),
    -- No silent failure: a failed export says why.
    CONSTRAINT data_exports_failed_check CHECK (status <> 'failed' OR error_message IS NOT NULL),
    CONSTRAINT data_exports_finished_check CHECK (
        status NOT IN ('completed', 'failed', 'cancelled', 'expired') OR finished_at IS NOT NULL
    ),
    CONSTRAINT data_exports_verification_status_check
        CHECK (verification_status IN ('pending', 'passed', 'failed', 'skipped')),
    CONSTRAINT data_exports_verification_report_check
        CHECK (verification_report IS NULL OR jsonb_typeof(verification_report) = 'object'),
    CONSTRAINT data_exports_verified_check
        CHECK (verification_status NOT IN ('passed', 'failed') OR verified_at IS NOT NULL)
);
COMMENT ON TABLE data_exports IS
    'One export job and its result: a user''s own data or (bulk) the whole system. The API inserts '
    'it queued; the worker holding the lease writes progress, digests and counts; the verifier '
    'writes the verification outcome; cleanup marks it expired.';
COMMENT ON COLUMN data_exports.user_id IS
    'Who asked: the exported user for a user export, the administrator for a bulk export. '
    'A user row with exports cannot be deleted: its exports (and their objects) are purged first. '
    '(NO ACTION rather than RESTRICT: both refuse, and NO ACTION fails with the same SQLSTATE, '
    'foreign_key_violation, on PostgreSQL 15 and 18.)';
COMMENT ON COLUMN data_exports.request_id IS
    'Correlation id of the HTTP request that created the export, carried into worker logs.';
COMMENT ON COLUMN data_exports.fencing_token IS
    'Incremented each time a lease is granted; every write by the lease holder checks it, so a '
    'worker that lost its lease cannot overwrite the work of the one that took over.';
COMMENT ON COLUMN data_exports.snapshot_id IS
    'PostgreSQL exported snapshot (pg_export_snapshot) every shard of a bulk export reads.';
COMMENT ON COLUMN data_exports.object_key IS
    'The downloadable object of a user export, or the manifest of a bulk export.';
COMMENT ON COLUMN data_exports.multipart_upload_id IS
    'Open multipart upload of the export''s object; kept until completed or aborted so a retry can '
    'resume it and cleanup can abort an orphan.';
COMMENT ON COLUMN data_exports.size_bytes IS 'Stored (possibly compressed) bytes of the object(s).';
COMMENT ON COLUMN data_exports.content_size_bytes IS 'Uncompressed bytes of the serialized data.';
COMMENT ON COLUMN data_exports.sha256 IS 'SHA-256 of the stored bytes.';
COMMENT ON COLUMN data_exports.content_sha256 IS 'SHA-256 of the uncompressed content.';
COMMENT ON COLUMN data_exports.compression_ratio IS 'content_size_bytes / size_bytes.';

CREATE TABLE IF NOT EXISTS export_shards (
    id                  uuid        NOT NULL DEFAULT gen_random_uuid(),
    export_id           uuid        NOT NULL REFERENCES data_exports (id) ON DELETE CASCADE,
    shard_index         integer     NOT NULL,
    user_id_from        uuid,
    user_id_to          uuid,
    status              text        NOT NULL DEFAULT 'queued',
    lease_owner         text,
    lease_expires_at    timestamptz,
    fencing_token       bigint      NOT NULL DEFAULT 0,
    attempts            integer     NOT NULL DEFAULT 0,
    object_key          text,
    multipart_upload_id text,
    part_size_bytes     bigint,
    size_bytes          bigint,
    content_size_bytes  bigint,
    record_count        bigint,
    user_count          bigint,
    file_count          bigint,
    sha256              text,
    content_sha256      text,
    error_code          text,
    error_message       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    CONSTRAINT export_shards_pkey PRIMARY KEY (id),
    CONSTRAINT export_shards_export_index_key UNIQUE (export_id, shard_index),
    -- Lets export_upload_parts insist that a part's shard belongs to the part's export.
    CONSTRAINT export_shards_id_export_key UNIQUE (id, export_id),
    CONSTRAINT export_shards_shard_index_check CHECK (shard_index >= 0),
    CONSTRAINT export_shards_range_check
        CHECK (user_id_from IS NULL OR user_id_to IS NULL OR user_id_from < user_id_to),
    CONSTRAINT export_shards_status_check CHECK (
        status IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'expired')
    ),
    CONSTRAINT export_shards_lease_check
        CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL)),
    CONSTRAINT export_shards_running_lease_check
        CHECK (status <> 'running' OR lease_expires_at IS NOT NULL),
    CONSTRAINT export_shards_fencing_token_check CHECK (fencing_token >= 0),
    CONSTRAINT export_shards_attempts_check CHECK (attempts >= 0),
    CONSTRAINT export_shards_part_size_check CHECK (part_size_bytes > 0),
    CONSTRAINT export_shards_sizes_check CHECK (size_bytes >= 0 AND content_size_bytes >= 0),
    CONSTRAINT export_shards_counts_check
        CHECK (record_count >= 0 AND user_count >= 0 AND file_count >= 0),
    CONSTRAINT export_shards_sha256_check CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT export_shards_content_sha256_check CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT export_shards_completed_check CHECK (
        status NOT IN ('completed', 'expired') OR (
            object_key IS NOT NULL AND size_bytes IS NOT NULL AND content_size_bytes IS NOT NULL
            AND record_count IS NOT NULL AND sha256 IS NOT NULL AND content_sha256 IS NOT NULL
        )
    ),
    CONSTRAINT export_shards_failed_check CHECK (status <> 'failed' OR error_message IS NOT NULL),
    CONSTRAINT export_shards_finished_check CHECK (
        status NOT IN ('completed', 'failed', 'cancelled', 'expired') OR finished_at IS NOT NULL
    )
);
COMMENT ON TABLE export_shards IS
    'A bulk export is split into shards of many users by user-id range, one message and one '
    'object each; the fan-in reads this table to notice when all are done or one failed for good.';
COMMENT ON COLUMN export_shards.user_id_from IS 'Inclusive lower bound of user ids; NULL = unbounded.';
COMMENT ON COLUMN export_shards.user_id_to IS 'Exclusive upper bound of user ids; NULL = unbounded.';

CREATE TABLE IF NOT EXISTS export_upload_parts (
    upload_id          text        NOT NULL,
    part_number        integer     NOT NULL,
    export_id          uuid        NOT NULL REFERENCES data_exports (id) ON DELETE CASCADE,
    shard_id           uuid,
    size_bytes         bigint      NOT NULL,
    content_size_bytes bigint      NOT NULL,
    record_count       bigint      NOT NULL,
    sha256             text        NOT NULL,
    etag               text        NOT NULL,
    resume_cursor      jsonb       NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_upload_parts_pkey PRIMARY KEY (upload_id, part_number),
    CONSTRAINT export_upload_parts_shard_fkey FOREIGN KEY (shard_id, export_id)
        REFERENCES export_shards (id, export_id) ON DELETE CASCADE,
    -- S3 and R2 number parts 1 to 10,000.
    CONSTRAINT export_upload_parts_part_number_check CHECK (part_number BETWEEN 1 AND 10000),
    CONSTRAINT export_upload_parts_sizes_check CHECK (size_bytes >= 0 AND content_size_bytes >= 0),
    CONSTRAINT export_upload_parts_record_count_check CHECK (record_count >= 0),
    CONSTRAINT export_upload_parts_sha256_check CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT export_upload_parts_etag_check CHECK (length(etag) > 0),
    CONSTRAINT export_upload_parts_resume_cursor_check CHECK (jsonb_typeof(resume_cursor) = 'object')
);
COMMENT ON TABLE export_upload_parts IS
    'Every part uploaded to a multipart upload of an export (shard_id NULL) or of a shard, with its '
    'SHA-256, ETag and where the row stream stood after it, so a redelivered job resumes after the '
    'last recorded part and completes the upload with the recorded ETags.';
COMMENT ON COLUMN export_upload_parts.resume_cursor IS
    'Row-source position after the last record in this part (keyset key), enough to continue.';
COMMENT ON COLUMN export_upload_parts.content_size_bytes IS
    'Uncompressed bytes that went into this part.';

CREATE TABLE IF NOT EXISTS export_schedule_runs (
    schedule_id   uuid        NOT NULL REFERENCES export_schedules (id) ON DELETE CASCADE,
    occurrence_at timestamptz NOT NULL,
    export_id     uuid        REFERENCES data_exports (id) ON DELETE SET NULL,
    status        text        NOT NULL,
    reason        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_schedule_runs_pkey PRIMARY KEY (schedule_id, occurrence_at),
    CONSTRAINT export_schedule_runs_status_check CHECK (status IN ('enqueued', 'skipped', 'failed')),
    CONSTRAINT export_schedule_runs_reason_check CHECK (status = 'enqueued' OR reason IS NOT NULL)
);
COMMENT ON TABLE export_schedule_runs IS
    'One row per fired occurrence of a schedule; its primary key is what makes any number of '
    'scheduler replicas enqueue each occurrence exactly once, and skipped runs keep their reason.';

CREATE TABLE IF NOT EXISTS export_logs (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    event       text        NOT NULL,
    level       text        NOT NULL DEFAULT 'info',
    message     text        NOT NULL,
    export_id   uuid        REFERENCES data_exports (id) ON DELETE NO ACTION,
    shard_id    uuid,
    export_request_id uuid,
    schedule_id uuid,
    actor_type  text        NOT NULL,
    actor_id    uuid,
    actor_name  text,
    client_ip   inet,
    user_agent  text,
    request_id  text,
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT export_logs_pkey PRIMARY KEY (id),
    CONSTRAINT export_logs_event_check CHECK (event ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$'),
    CONSTRAINT export_logs_level_check CHECK (level IN ('debug', 'info', 'warning', 'error')),
    CONSTRAINT export_logs_actor_type_check
        CHECK (actor_type IN ('user', 'admin', 'worker', 'scheduler', 'system')),
    CONSTRAINT export_logs_actor_check CHECK (actor_type NOT IN ('user', 'admin') OR actor_id IS NOT NULL),
    CONSTRAINT export_logs_details_check CHECK (jsonb_typeof(details) = 'object')
);
COMMENT ON TABLE export_logs IS
    'Append-only audit trail: who (actor), did what (event, message, details), when, from where '
    '(client_ip, user_agent) and under which request id, for every step and every download. '
    'Rows outlive the users, shards, requests and schedules they mention, which is why only '
    'export_id is a foreign key (exports are marked expired, never deleted).';

-- The audit trail cannot be rewritten: updates, deletes and truncation are refused. An owner who
-- must purge it disables the trigger explicitly, which is itself visible in the catalog.
CREATE OR REPLACE FUNCTION export_logs_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'export_logs is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE OR REPLACE TRIGGER export_logs_append_only
    BEFORE UPDATE OR DELETE ON export_logs
    FOR EACH ROW EXECUTE FUNCTION export_logs_refuse_change();
CREATE OR REPLACE TRIGGER export_logs_no_truncate
    BEFORE TRUNCATE ON export_logs
    FOR EACH STATEMENT EXECUTE FUNCTION export_logs_refuse_change();

CREATE TABLE IF NOT EXISTS export_analytics (
    id                          bigint           GENERATED ALWAYS AS IDENTITY,
    export_id                   uuid             NOT NULL REFERENCES data_exports (id) ON DELETE CASCADE,
    user_id                     uuid             NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    export_type                 text             NOT NULL,
    format                      text             NOT NULL,
    compression                 text             NOT NULL,
    size_bytes                  bigint           NOT NULL,
    content_size_bytes          bigint           NOT NULL,
    compression_ratio           double precision,
    record_count                bigint           NOT NULL,
    shard_count                 integer,
    queue_wait_ms               bigint,
    export_duration_ms          bigint,
    verify_duration_ms          bigint           NOT NULL,
    throughput_bytes_per_second double precision,
    verification_status         text             NOT NULL,
    problem_count               integer          NOT NULL DEFAULT 0,
    recorded_at                 timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT export_analytics_pkey PRIMARY KEY (id),
    CONSTRAINT export_analytics_export_type_check CHECK (export_type IN ('user', 'bulk')),
    CONSTRAINT export_analytics_format_check CHECK (format IN ('json', 'csv', 'xml', 'jsonl')),
    CONSTRAINT export_analytics_compression_check CHECK (compression IN ('none', 'gzip', 'zstd')),
    CONSTRAINT export_analytics_sizes_check CHECK (size_bytes >= 0 AND content_size_bytes >= 0),
    CONSTRAINT export_analytics_compression_ratio_check CHECK (compression_ratio > 0),
    CONSTRAINT export_analytics_record_count_check CHECK (record_count >= 0),
    CONSTRAINT export_analytics_shard_count_check CHECK (shard_count >= 0),
    CONSTRAINT export_analytics_durations_check CHECK (
        queue_wait_ms >= 0 AND export_duration_ms >= 0 AND verify_duration_ms >= 0
    ),
    CONSTRAINT export_analytics_throughput_check CHECK (throughput_bytes_per_second >= 0),
    CONSTRAINT export_analytics_verification_status_check
        CHECK (verification_status IN ('passed', 'failed')),
    CONSTRAINT export_analytics_problem_count_check CHECK (problem_count >= 0),
    CONSTRAINT export_analytics_outcome_check
        CHECK ((verification_status = 'passed') = (problem_count = 0))
);
COMMENT ON TABLE export_analytics IS
    'One row per verification run of an export: what it was, how big, how fast and whether it '
    'verified; the raw material of the statistics endpoints and capacity planning.';

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              uuid        NOT NULL DEFAULT gen_random_uuid(),
    event           text        NOT NULL,
    export_id       uuid        NOT NULL REFERENCES data_exports (id) ON DELETE CASCADE,
    export_row      jsonb       NOT NULL,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    owed_since      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    abandoned_at    timestamptz,
    last_error      text,
    CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_deliveries_event_check
        CHECK (event IN ('export.failed', 'verification.failed')),
    CONSTRAINT webhook_deliveries_export_row_check CHECK (jsonb_typeof(export_row) = 'object'),
    CONSTRAINT webhook_deliveries_attempts_check CHECK (attempts >= 0),
    -- A call ends one way: taken by the receiver, or given up with the reason.
    CONSTRAINT webhook_deliveries_outcome_check
        CHECK (delivered_at IS NULL OR abandoned_at IS NULL),
    CONSTRAINT webhook_deliveries_abandoned_check
        CHECK (abandoned_at IS NULL OR last_error IS NOT NULL)
);
COMMENT ON TABLE webhook_deliveries IS
    'Webhook calls owed to the operator (an outbox). The triggers below write one in the same '
    'transaction that fails an export or its verification, so a process killed after that commit '
    'cannot lose the call; workers send it, retry it with backoff and record the outcome. The id '
    'is the X-Export-Delivery header, the same on every attempt.';
COMMENT ON COLUMN webhook_deliveries.export_row IS
    'The export row as the event left it; the call describes the export at that moment.';
COMMENT ON COLUMN webhook_deliveries.owed_since IS
    'When the call became owed: at the event, or when an operator asked for it again. A call '
    'owed for longer than a day is given up.';
COMMENT ON COLUMN webhook_deliveries.next_attempt_at IS
    'When the call may be sent next. A sender claims a call by moving this past its request '
    'timeout, so a sender that dies mid-call leaves it to the next one.';

-- Every path that fails an export (a worker, the stuck-job sweep, the API when the broker did
-- not take the message) or records a failed verification owes the operator a call.
CREATE OR REPLACE FUNCTION webhook_deliveries_owe_call() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    INSERT INTO webhook_deliveries (event, export_id, export_row)
    VALUES (TG_ARGV[0], NEW.id, to_jsonb(NEW));
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER data_exports_failed_webhook
    AFTER UPDATE OF status ON data_exports
    FOR EACH ROW
    WHEN (NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed')
    EXECUTE FUNCTION webhook_deliveries_owe_call('export.failed');
CREATE OR REPLACE TRIGGER data_exports_verification_failed_webhook
    AFTER UPDATE OF verification_status, verified_at ON data_exports
    FOR EACH ROW
    WHEN (NEW.verification_status = 'failed' AND NEW.verified_at IS DISTINCT FROM OLD.verified_at)
    EXECUTE FUNCTION webhook_deliveries_owe_call('verification.failed');

-- -------------------------------------------------------------------------------------------
-- Indexes for the hot queries (constraints above already index primary and unique keys)
-- -------------------------------------------------------------------------------------------

-- GET /api/exports: a user's exports, newest first, keyset-paged.
CREATE INDEX IF NOT EXISTS data_exports_user_created_idx
    ON data_exports (user_id, created_at DESC, id DESC);
-- Cleanup: completed exports past their retention.
CREATE INDEX IF NOT EXISTS data_exports_expires_idx
    ON data_exports (expires_at) WHERE status = 'completed';
-- Cleanup: running exports whose worker stopped renewing its lease.
CREATE INDEX IF NOT EXISTS data_exports_lease_idx
    ON data_exports (lease_expires_at) WHERE status = 'running';
-- Webhook senders: the calls still owed, soonest first.
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx
    ON webhook_deliveries (next_attempt_at) WHERE delivered_at IS NULL AND abandoned_at IS NULL;
-- Deleting an export deletes its calls.
CREATE INDEX IF NOT EXISTS webhook_deliveries_export_idx ON webhook_deliveries (export_id);
-- Cleanup: queued exports whose message was lost, oldest first.
CREATE INDEX IF NOT EXISTS data_exports_queued_idx
    ON data_exports (created_at) WHERE status = 'queued';
-- Cleanup: multipart uploads still open, to abort the abandoned ones.
CREATE INDEX IF NOT EXISTS data_exports_open_upload_idx
    ON data_exports (updated_at) WHERE multipart_upload_id IS NOT NULL;
-- Verifier catch-up: completed exports not yet verified.
CREATE INDEX IF NOT EXISTS data_exports_unverified_idx
    ON data_exports (finished_at) WHERE status = 'completed' AND verification_status = 'pending';
-- Re-verification: stored exports whose last passed verification is oldest.
CREATE INDEX IF NOT EXISTS data_exports_reverify_idx
    ON data_exports (verified_at) WHERE status = 'completed' AND verification_status = 'passed';
-- Schedule retention ("keep the last N") and the ON DELETE SET NULL of schedules and templates.
CREATE INDEX IF NOT EXISTS data_exports_schedule_idx
    ON data_exports (schedule_id, created_at DESC) WHERE schedule_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS data_exports_template_idx
    ON data_exports (template_id) WHERE template_id IS NOT NULL;

-- Shards by export come from export_shards_export_index_key; these serve cleanup.
CREATE INDEX IF NOT EXISTS export_shards_lease_idx
    ON export_shards (lease_expires_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS export_shards_open_upload_idx
    ON export_shards (updated_at) WHERE multipart_upload_id IS NOT NULL;
-- Queued shards: lost messages to send again, shards that never ran.
CREATE INDEX IF NOT EXISTS export_shards_queued_idx
    ON export_shards (updated_at) WHERE status = 'queued';

-- Parts of an export or shard (resume, cascade delete).
CREATE INDEX IF NOT EXISTS export_upload_parts_export_idx ON export_upload_parts (export_id);
CREATE INDEX IF NOT EXISTS export_upload_parts_shard_idx
    ON export_upload_parts (shard_id, export_id) WHERE shard_id IS NOT NULL;

-- The scheduler: due one-off requests and due recurring schedules.
CREATE INDEX IF NOT EXISTS export_requests_due_idx
    ON export_requests (scheduled_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS export_requests_user_created_idx
    ON export_requests (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS export_requests_template_idx
    ON export_requests (template_id) WHERE template_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS export_schedules_due_idx
    ON export_schedules (next_run_at) WHERE NOT paused;
CREATE INDEX IF NOT EXISTS export_schedules_user_created_idx
    ON export_schedules (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS export_schedules_template_idx
    ON export_schedules (template_id) WHERE template_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS export_schedule_runs_export_idx
    ON export_schedule_runs (export_id) WHERE export_id IS NOT NULL;

-- The status endpoint lists an export's log entries; audits ask "what did this actor do".
CREATE INDEX IF NOT EXISTS export_logs_export_idx
    ON export_logs (export_id, id) WHERE export_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS export_logs_actor_idx
    ON export_logs (actor_id, created_at) WHERE actor_id IS NOT NULL;
-- Time-range audits over an append-only table whose rows arrive in time order.
CREATE INDEX IF NOT EXISTS export_logs_created_brin_idx ON export_logs USING brin (created_at);

CREATE INDEX IF NOT EXISTS export_analytics_export_idx ON export_analytics (export_id);
CREATE INDEX IF NOT EXISTS export_analytics_user_recorded_idx
    ON export_analytics (user_id, recorded_at);
CREATE INDEX IF NOT EXISTS export_analytics_recorded_idx ON export_analytics (recorded_at);

-- -------------------------------------------------------------------------------------------
-- Views for the statistics endpoint (sums cast to bigint and averages to double precision, so
-- clients get integers and floats, never arbitrary-precision decimals)
-- -------------------------------------------------------------------------------------------

CREATE OR REPLACE VIEW export_summary AS
SELECT
    export_type,
    format,
    status,
    count(*)                                                    AS export_count,
    coalesce(sum(size_bytes), 0)::bigint                        AS total_size_bytes,
    coalesce(sum(content_size_bytes), 0)::bigint                AS total_content_size_bytes,
    coalesce(sum(record_count), 0)::bigint                      AS total_records,
    avg(compression_ratio)                                      AS avg_compression_ratio,
    avg(extract(epoch FROM finished_at - started_at))::double precision AS avg_duration_seconds,
    min(created_at)                                             AS first_created_at,
    max(created_at)                                             AS last_created_at
FROM data_exports
GROUP BY export_type, format, status;
COMMENT ON VIEW export_summary IS
    'System statistics: exports per type, format and status with total sizes and records, mean '
    'compression ratio and mean run time (started to finished).';

CREATE OR REPLACE VIEW export_health_metrics AS
WITH exports AS (
    SELECT
        count(*) FILTER (WHERE status = 'queued')                      AS queued_count,
        count(*) FILTER (WHERE status = 'running')                     AS running_count,
        count(*) FILTER (WHERE status = 'running' AND lease_expires_at < now())
                                                                       AS stuck_count,
        count(*) FILTER (WHERE status = 'completed'
                           AND finished_at >= now() - interval '24 hours')
                                                                       AS completed_last_24h,
        count(*) FILTER (WHERE status = 'failed'
                           AND finished_at >= now() - interval '24 hours')
                                                                       AS failed_last_24h,
        count(*) FILTER (WHERE status = 'completed' AND verification_status = 'pending')
                                                                       AS awaiting_verification,
        count(*) FILTER (WHERE verification_status = 'failed'
                           AND verified_at >= now() - interval '24 hours')
                                                                       AS verification_failed_last_24h,
        count(*) FILTER (WHERE status = 'completed' AND expires_at < now())
                                                                       AS awaiting_cleanup,
        count(*) FILTER (WHERE multipart_upload_id IS NOT NULL
                           AND (status <> 'running' OR lease_expires_at < now()))
                                                                       AS abandoned_uploads,
        extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued'))::double precision
                                                                       AS oldest_queued_age_seconds,
        avg(extract(epoch FROM finished_at - started_at))
            FILTER (WHERE status = 'completed' AND finished_at >= now() - interval '24 hours')
            ::double precision                                         AS avg_duration_seconds_24h,
        -- How long the oldest of the exports awaiting_cleanup counts has waited: unlike the
        -- count, it stays low while cleanup keeps up with a steady stream of expiring exports.
        extract(epoch FROM now() - min(expires_at)
            FILTER (WHERE status = 'completed' AND expires_at < now()))::double precision
            AS oldest_awaiting_cleanup_age_seconds
    FROM data_exports
), shards AS (
    SELECT
        count(*) FILTER (WHERE status = 'running' AND lease_expires_at < now()) AS stuck_count,
        count(*) FILTER (WHERE multipart_upload_id IS NOT NULL
                           AND (status <> 'running' OR lease_expires_at < now()))
                                                                                AS abandoned_uploads
    FROM export_shards
), due AS (
    -- What the scheduler should already have fired: recurring occurrences and one-off requests.
    SELECT next_run_at AS due_at FROM export_schedules WHERE NOT paused AND next_run_at < now()
    UNION ALL
    SELECT scheduled_at FROM export_requests WHERE status = 'pending' AND scheduled_at < now()
), scheduling AS (
    SELECT
        count(*) FILTER (WHERE due_at < now() - interval '10 minutes')  AS overdue_scheduled_count,
        extract(epoch FROM now() - min(due_at))::double precision       AS oldest_due_age_seconds
    FROM due
)
SELECT
    exports.queued_count,
    exports.running_count,
    exports.stuck_count,
    shards.stuck_count                                             AS stuck_shard_count,
    exports.completed_last_24h,
    exports.failed_last_24h,
    exports.completed_last_24h::double precision
        / nullif(exports.completed_last_24h + exports.failed_last_24h, 0) AS success_rate_24h,
    exports.awaiting_verification,
    exports.verification_failed_last_24h,
    exports.awaiting_cleanup,
    exports.abandoned_uploads + shards.abandoned_uploads           AS abandoned_uploads,
    exports.oldest_queued_age_seconds,
    exports.avg_duration_seconds_24h,
    scheduling.overdue_scheduled_count,
    scheduling.oldest_due_age_seconds,
    exports.oldest_awaiting_cleanup_age_seconds
FROM exports CROSS JOIN shards CROSS JOIN scheduling;
COMMENT ON VIEW export_health_metrics IS
    'One row of operational health: backlog, stuck jobs (expired leases), outcomes and success '
    'rate over the last 24 hours, verification backlog and failures, cleanup backlog, and '
    'scheduled exports not fired on time (the scheduler fires within seconds; 10 minutes late '
    'means it is not running, so the backups it should take are not being taken).';

CREATE OR REPLACE VIEW user_export_summary AS
SELECT
    user_id,
    count(*)                                                              AS total_exports,
    count(*) FILTER (WHERE status = 'completed')                          AS completed_exports,
    count(*) FILTER (WHERE status = 'failed')                             AS failed_exports,
    count(*) FILTER (WHERE status IN ('queued', 'running'))               AS active_exports,
    count(*) FILTER (WHERE verification_status = 'passed')                AS verified_exports,
    coalesce(sum(size_bytes) FILTER (WHERE status = 'completed'), 0)::bigint
                                                                          AS completed_size_bytes,
    max(created_at)                                                       AS last_export_at,
    max(finished_at) FILTER (WHERE status = 'completed')                  AS last_completed_at
FROM data_exports
GROUP BY user_id;
COMMENT ON VIEW user_export_summary IS
    'Per-user statistics, one row per user with at least one export (a user with none has no row).';
