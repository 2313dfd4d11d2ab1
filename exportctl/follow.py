"""Follow exports through the API until they settle: progress bars on a terminal, lines otherwise.

An export settles when it failed (or was cancelled or expired), or completed and its verification
ran. A tracked item may not have an export yet (a scheduled request before it fires): its
resolver is asked on every poll until it names one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from exportctl.api_client import ApiClient

# Seconds between status polls: a user export of the demo takes about a second; polling faster
# would only load the API (one request per unsettled export per poll).
POLL_SECONDS = 1.0
ENDED = frozenset({"failed", "cancelled", "expired"})

Resolver = Callable[[], str | None]


@dataclass
class Tracked:
    """One export to follow, by id or by a resolver that finds its id later."""

    label: str
    export_id: str | None = None
    resolve: Resolver | None = None
    document: dict[str, Any] | None = None
    waiting_for: str = "waiting"
    task: TaskID | None = field(default=None, repr=False)
    last_line: str = field(default="", repr=False)


def settled(document: dict[str, Any]) -> bool:
    """Return whether the export will not change any more (apart from downloads)."""
    status = document["status"]
    if status in ENDED:
        return True
    return bool(status == "completed" and document["verification"]["status"] != "pending")


def unusable_reason(document: dict[str, Any]) -> str | None:
    """Return why the export is of no use (it failed, expired, or failed verification), or None."""
    status = document["status"]
    if status == "completed":
        if (document.get("verification") or {}).get("status") == "failed":
            return "completed, but its verification FAILED: do not rely on it"
        return None
    if status == "expired":
        return "expired: its retention ended and its objects were deleted"
    if status in ENDED:
        error = document.get("error") or {}
        return f"{status}: {error.get('message') or 'no reason recorded'}"
    return None


def describe(document: dict[str, Any] | None, waiting_for: str) -> str:
    """Return a short state: queued, running 40%, verifying, verified, FAILED ..."""
    if document is None:
        return waiting_for
    status = document["status"]
    if status == "running":
        return f"running {document.get('progress') or 0}%"
    if status == "completed":
        verification = document["verification"]["status"]
        return {"pending": "verifying", "passed": "verified"}.get(
            verification, f"verification {verification.upper()}"
        )
    if status in ENDED:
        error = document.get("error") or {}
        return f"{status.upper()}: {error.get('message', '')}".rstrip(": ")
    return str(status)


def follow(
    client: ApiClient,
    items: Sequence[Tracked],
    *,
    timeout_seconds: float,
    stream: TextIO,
    console: Console | None = None,
    on_poll: Callable[[], None] | None = None,
) -> bool:
    """Poll until every item settled or time ran out; return whether all settled."""
    deadline = time.monotonic() + timeout_seconds
    if console is not None:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bars:
            for item in items:
                item.task = bars.add_task(item.label, total=100, state=item.waiting_for)
            return _loop(client, items, deadline, on_poll, lambda item: _bar(bars, item))
    return _loop(client, items, deadline, on_poll, lambda item: _line(stream, item))


def _loop(
    client: ApiClient,
    items: Sequence[Tracked],
    deadline: float,
    on_poll: Callable[[], None] | None,
    show: Callable[[Tracked], None],
) -> bool:
    while True:
        if on_poll is not None:
            on_poll()
        for item in items:
            if item.document is not None and settled(item.document):
                continue
            if item.export_id is None and item.resolve is not None:
                item.export_id = item.resolve()
            if item.export_id is not None:
                answer = client.get(f"/api/exports/{item.export_id}/status")
                item.document = answer["export"]
            show(item)
        if all(item.document is not None and settled(item.document) for item in items):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def _bar(bars: Progress, item: Tracked) -> None:
    assert item.task is not None
    document = item.document
    done = 100 if document is not None and settled(document) else _progress(document)
    bars.update(item.task, completed=done, state=describe(document, item.waiting_for))


def _line(stream: TextIO, item: Tracked) -> None:
    state = describe(item.document, item.waiting_for)
    if state != item.last_line:
        item.last_line = state
        print(f"    {item.label}: {state}", file=stream, flush=True)


def _progress(document: dict[str, Any] | None) -> int:
    if document is None:
        return 0
    return 100 if document["status"] == "completed" else int(document.get("progress") or 0)
