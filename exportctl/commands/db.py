"""`exportctl db migrate | check`: apply `schema.sql` to a database, or report drift from it.

Needs nothing but a database: `--database-url`, else `DATABASE_URL`, else the local dev stack's
PostgreSQL (brought up when it is not running). Both actions exit 0 when the database matches
`schema.sql` and 1 with every difference listed when it does not, so a migration that could not
repair something (a dropped column, a changed type) never reports success.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg

from pipelines.database import connect, redact_url
from pipelines.schema import apply_schema, schema_drift

APPLICATION_NAME = "exportctl-db"
# Milliseconds `migrate` waits for a table lock before giving up: long enough for ordinary
# transactions to finish, short enough not to stall every writer queued behind the migration.
DEFAULT_LOCK_TIMEOUT_MS = 10_000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exportctl db migrate` and `exportctl db check`."""
    parser = subparsers.add_parser("db", help="apply schema.sql (migrate) or report drift (check)")
    actions = parser.add_subparsers(dest="db_action", required=True, metavar="ACTION")
    migrate_parser = actions.add_parser(
        "migrate", help="apply schema.sql (idempotent), then check for remaining drift"
    )
    migrate_parser.add_argument(
        "--lock-timeout-ms",
        type=int,
        default=DEFAULT_LOCK_TIMEOUT_MS,
        help="milliseconds to wait for a table lock before giving up (default %(default)s)",
    )
    migrate_parser.set_defaults(handler=migrate)
    check_parser = actions.add_parser(
        "check", help="list every difference between the database and schema.sql"
    )
    check_parser.set_defaults(handler=check)
    for action_parser in (migrate_parser, check_parser):
        action_parser.add_argument(
            "--database-url",
            help="PostgreSQL URL (default: DATABASE_URL, else the local dev stack's database)",
        )


def migrate(args: argparse.Namespace) -> int:
    """Apply `schema.sql`, then report any drift the application could not repair."""
    url = _database_url(args.database_url, _environ())
    with _open(url) as conn:
        apply_schema(conn, lock_timeout_ms=args.lock_timeout_ms)
        print(f"applied schema.sql to {redact_url(url)}")
        return _report(schema_drift(conn), url)


def check(args: argparse.Namespace) -> int:
    """Report every difference between the database and `schema.sql`."""
    url = _database_url(args.database_url, _environ())
    with _open(url) as conn:
        return _report(schema_drift(conn), url)


def _report(drift: list[str], url: str) -> int:
    if not drift:
        print(f"{redact_url(url)} matches schema.sql")
        return 0
    print(f"{redact_url(url)} differs from schema.sql in {len(drift)} place(s):")
    for problem in drift:
        print(f"  - {problem}")
    sys.stdout.flush()
    print("exportctl db: schema drift found", file=sys.stderr)
    return 1


def _open(url: str) -> psycopg.Connection[Any]:
    return connect(url, application_name=APPLICATION_NAME, autocommit=True)


def _database_url(given: str | None, environ: Mapping[str, str]) -> str:
    """Return the URL to use: the option, DATABASE_URL, or the local dev stack's database."""
    if given:
        return given
    if environ.get("DATABASE_URL"):
        return environ["DATABASE_URL"]
    from exportctl.devstack import LocalStack  # the stack's packages are only needed here

    root = Path(environ.get("EXPORTCTL_DEV_ROOT", ".dev"))
    return LocalStack(root).up(environ).database_url


def _environ() -> Mapping[str, str]:
    """Return the process environment: this command is an entry point."""
    return os.environ  # noqa: TID251
