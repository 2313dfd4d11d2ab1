"""Structured logs: one JSON object per line, carrying the request and export ids in context.

The API binds `request_id` per request and the workers bind `export_id` per job through
`log_context`; every record logged meanwhile carries them without callers passing them. Only
`configure_logging` touches the root logger, and only when an entry point calls it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
export_id_var: ContextVar[str | None] = ContextVar("export_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}


@contextmanager
def log_context(*, request_id: str | None = None, export_id: str | None = None) -> Iterator[None]:
    """Bind a request id and/or export id to every log record emitted inside the block."""
    tokens = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if export_id is not None:
        tokens.append((export_id_var, export_id_var.set(export_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    """Format records as JSON lines with timestamp, level, logger, message and context ids."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON."""
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        export_id = getattr(record, "export_id", None) or export_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        if export_id:
            entry["export_id"] = export_id
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """Format records for a terminal, with the context ids when they are bound."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one readable line, followed by any traceback."""
        line = super().format(record)
        ids = [
            f"{name}={value}"
            for name, value in (
                ("request_id", request_id_var.get()),
                ("export_id", export_id_var.get()),
            )
            if value
        ]
        return f"{line} [{' '.join(ids)}]" if ids else line


def configure_logging(*, level: str, log_format: str, stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (stderr by default) as JSON lines or text."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
