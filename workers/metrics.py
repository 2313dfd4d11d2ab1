"""The workers' own Prometheus metrics: exports by outcome, rows, bytes, durations, verification,
webhook calls, messages sent again.

Worker processes write them with prometheus-client in multiprocess mode into the same folder as
Dramatiq's Prometheus middleware (`dramatiq_prom_db`), so one exposition server
(`workers.metrics_server`) serves both. prometheus-client picks its value store when first
imported, so it is imported here only after `use_multiprocess_dir` ran; until then (tests,
scripts) the metrics live in this process's memory only. Nothing here touches export data.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

# Dramatiq's own default folder for its metrics, so both writers agree without configuration.
DEFAULT_DB_PATH: Final = os.path.join(tempfile.gettempdir(), "dramatiq-prometheus")
DB_VARIABLE: Final = "dramatiq_prom_db"
# Export durations from a one-user export (under a second) to a multi-hour bulk export.
DURATION_BUCKETS_SECONDS: Final = (0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
# Compression ratios (content bytes / stored bytes) seen from incompressible to highly repetitive.
RATIO_BUCKETS: Final = (1, 1.5, 2, 3, 4, 6, 8, 12, 20)


def metrics_dir(environ: Mapping[str, str]) -> str:
    """Return the folder the worker processes write their metrics into."""
    return environ.get(DB_VARIABLE) or DEFAULT_DB_PATH


def use_multiprocess_dir(environ: Mapping[str, str], target: MutableMapping[str, str]) -> str:
    """Point prometheus-client at the shared metrics folder (set in `target`, the process env)."""
    path = metrics_dir(environ)
    os.makedirs(path, exist_ok=True)
    target["PROMETHEUS_MULTIPROC_DIR"] = path
    target["prometheus_multiproc_dir"] = path  # the name older prometheus-client reads
    return path


@dataclass(frozen=True)
class _Instruments:
    registry: CollectorRegistry
    exports: Counter
    rows: Counter
    stored_bytes: Counter
    content_bytes: Counter
    durations: Histogram
    ratios: Histogram
    verifications: Counter
    verify_durations: Histogram
    webhook_calls: Counter
    messages_resent: Counter


_lock = threading.Lock()
_instruments: _Instruments | None = None


def _get() -> _Instruments:
    global _instruments  # noqa: PLW0603 - built once per process, after the env is set
    with _lock:
        if _instruments is None:
            _instruments = _build()
        return _instruments


def _build() -> _Instruments:
    import prometheus_client as prom  # imported late: see the module docstring

    registry = prom.CollectorRegistry()  # private: the exposition reads the shared folder
    labels = ["export_type", "format"]
    return _Instruments(
        registry=registry,
        exports=prom.Counter(
            "data_export_exports",
            "User and bulk exports that ended, by outcome (a bulk export once, not per shard).",
            ["status", *labels],
            registry=registry,
        ),
        rows=prom.Counter(
            "data_export_rows", "Records written by completed exports.", labels, registry=registry
        ),
        stored_bytes=prom.Counter(
            "data_export_stored_bytes",
            "Bytes stored by completed exports (after compression).",
            labels,
            registry=registry,
        ),
        content_bytes=prom.Counter(
            "data_export_content_bytes",
            "Bytes of content written by completed exports (before compression).",
            labels,
            registry=registry,
        ),
        durations=prom.Histogram(
            "data_export_duration_seconds",
            "Time from an export's start to its end.",
            ["status", "export_type"],
            buckets=DURATION_BUCKETS_SECONDS,
            registry=registry,
        ),
        ratios=prom.Histogram(
            "data_export_compression_ratio",
            "Content bytes per stored byte of completed compressed exports.",
            ["compression"],
            buckets=RATIO_BUCKETS,
            registry=registry,
        ),
        verifications=prom.Counter(
            "data_export_verifications",
            "Verification runs, by outcome.",
            ["outcome", "export_type"],
            registry=registry,
        ),
        verify_durations=prom.Histogram(
            "data_export_verification_duration_seconds",
            "Time one verification run took.",
            ["export_type"],
            buckets=DURATION_BUCKETS_SECONDS,
            registry=registry,
        ),
        webhook_calls=prom.Counter(
            "data_export_webhook_calls",
            "Webhook call attempts, by event and outcome (delivered, retrying, abandoned).",
            ["event", "outcome"],
            registry=registry,
        ),
        messages_resent=prom.Counter(
            "data_export_messages_resent",
            "Messages of queued exports (kind=export) or bulk shards (kind=shard) sent again "
            "because the broker no longer held them.",
            ["kind"],
            registry=registry,
        ),
    )


def export_ended(
    *,
    status: str,
    export_type: str,
    export_format: str,
    compression: str,
    seconds: float | None,
    rows: int = 0,
    stored_bytes: int = 0,
    content_bytes: int = 0,
) -> None:
    """Count one user or bulk export that completed or failed (a bulk export once, at fan-in)."""
    metrics = _get()
    metrics.exports.labels(status, export_type, export_format).inc()
    if seconds is not None:
        metrics.durations.labels(status, export_type).observe(max(0.0, seconds))
    if status != "completed":
        return
    metrics.rows.labels(export_type, export_format).inc(rows)
    metrics.stored_bytes.labels(export_type, export_format).inc(stored_bytes)
    metrics.content_bytes.labels(export_type, export_format).inc(content_bytes)
    if compression != "none" and stored_bytes and content_bytes:
        metrics.ratios.labels(compression).observe(content_bytes / stored_bytes)


def export_row_ended(row: Mapping[str, Any], *, seconds: float | None = None) -> None:
    """Count an ended export from its `data_exports` row."""
    if seconds is None and row.get("started_at") and row.get("finished_at"):
        seconds = (row["finished_at"] - row["started_at"]).total_seconds()
    export_ended(
        status=str(row["status"]),
        export_type=str(row["export_type"]),
        export_format=str(row["format"]),
        compression=str(row["compression"]),
        seconds=seconds,
        rows=int(row.get("record_count") or 0),
        stored_bytes=int(row.get("size_bytes") or 0),
        content_bytes=int(row.get("content_size_bytes") or 0),
    )


def sample_value(name: str, labels: Mapping[str, str]) -> float:
    """Return one sample of this process's metrics, 0 when nothing was counted under it."""
    return _get().registry.get_sample_value(name, dict(labels)) or 0.0


def verification_ended(*, outcome: str, export_type: str, seconds: float) -> None:
    """Count one verification run and its duration."""
    metrics = _get()
    metrics.verifications.labels(outcome, export_type).inc()
    metrics.verify_durations.labels(export_type).observe(max(0.0, seconds))


def webhook_attempted(*, event: str, outcome: str) -> None:
    """Count one attempt to send a webhook call, by what became of it."""
    _get().webhook_calls.labels(event, outcome).inc()


def message_resent(*, kind: str) -> None:
    """Count one lost message sent again (`kind` is "export" or "shard")."""
    _get().messages_resent.labels(kind).inc()
