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
