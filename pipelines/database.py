"""PostgreSQL connections with the session settings every part of the system relies on.

`connect` is the one way the project opens a connection: UTC time zone, ISO dates, a statement
timeout so no query blocks a worker forever, TCP keepalives so a vanished server is noticed, and
connection failures translated into `RetryableError`. It opens connections; it runs no queries.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import conninfo

from pipelines.errors import ExportError, PermanentError, RetryableError

# Seconds to wait for the server to accept a connection: long enough for a busy server on a
# loaded machine, short enough that a dead host fails the attempt instead of hanging it.
CONNECT_TIMEOUT_SECONDS = 10
# TCP keepalive: first probe after 30 s idle, then every 10 s, give up after 3 misses, so a
# connection to a server that vanished (host down, network cut) fails in about a minute.
KEEPALIVE_IDLE_SECONDS = 30
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_COUNT = 3
DEFAULT_APPLICATION_NAME = "data-export"
# What a password looks like in logs and error messages.
REDACTED = "***"
# libpq connection parameters that hold a secret, wherever the URL carries them (the user-info
# part, the query string, or key=value conninfo).
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def _session_options(existing: str | None, statement_timeout_ms: int | None) -> str:
    """Return libpq `options` that set the session parameters, after any the URL already has."""
    settings = ["-c TimeZone=UTC", "-c DateStyle=ISO,YMD"]
    if statement_timeout_ms is not None:
        settings.append(f"-c statement_timeout={statement_timeout_ms}")
    return " ".join([existing, *settings] if existing else settings)


def connect(
    url: str,
    *,
    statement_timeout_ms: int | None = None,
    application_name: str = DEFAULT_APPLICATION_NAME,
    autocommit: bool = False,
) -> psycopg.Connection[tuple[Any, ...]]:
    """Open a connection to `url` with UTC, ISO dates and the given statement timeout."""
    if statement_timeout_ms is not None and statement_timeout_ms < 0:
        raise ValueError(f"statement_timeout_ms must be zero or more, got {statement_timeout_ms}")
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise PermanentError(f"malformed database URL {redact_url(url)}: {exc}") from exc
    existing = params.get("options")
    options = _session_options(str(existing) if existing else None, statement_timeout_ms)
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            application_name=application_name,
            options=options,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            keepalives=1,
            keepalives_idle=KEEPALIVE_IDLE_SECONDS,
            keepalives_interval=KEEPALIVE_INTERVAL_SECONDS,
            keepalives_count=KEEPALIVE_COUNT,
        )
    except psycopg.OperationalError as exc:
        raise RetryableError(f"cannot connect to PostgreSQL at {redact_url(url)}: {exc}") from exc
    except psycopg.ProgrammingError as exc:
        raise PermanentError(f"invalid database URL {redact_url(url)}: {exc}") from exc


def redact_url(url: str) -> str:
    """Return `url` with every password replaced by `***`, fit for logs and error messages."""
    if "://" not in url:
        try:
            params = conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            return "<unparsable connection string>"
        for name in SECRET_PARAMETERS & params.keys():
            if params[name]:
                params[name] = REDACTED
        return conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed host such as an unclosed IPv6 bracket
        return "<unparsable connection string>"
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:{REDACTED}@{host}")
    if parts.query:
        parts = parts._replace(query=_redact_query(parts.query))
    return parts.geturl()


def _redact_query(query: str) -> str:
    """Return a URL query with the value of every secret parameter replaced, the rest as given."""
    redacted = []
    for item in query.split("&"):
        name, equals, _ = item.partition("=")
        secret = equals and unquote(name) in SECRET_PARAMETERS
        redacted.append(f"{name}={REDACTED}" if secret else item)
    return "&".join(redacted)


def translate_error(exc: psycopg.Error, action: str) -> ExportError:
    """Return the project error for a psycopg failure while doing `action`."""
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return PermanentError(f"{action}: {exc.diag.message_primary}; run `exportctl db migrate`")
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return RetryableError(f"{action}: statement timeout or cancellation ({exc})")
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.SerializationFailure):
        return RetryableError(f"{action}: {exc}")
    return PermanentError(f"{action}: {exc}")
