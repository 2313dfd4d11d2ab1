"""A real worker's Prometheus endpoint: loopback only, Dramatiq's metrics and the project's."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from worker_processes import (
    Workers,
    free_port,
    new_export,
    seed,
    settled,
    wait_for,
    worker_environment,
)

from pipelines.settings import Settings
from workers.broker import create_broker
from workers.dispatch import Dispatcher

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# /proc/net/tcp states: 0A is LISTEN.
LISTEN = "0A"
LOOPBACK_HEX = "0100007F"


@pytest.fixture
def workers(
    settings_env: dict[str, str], s3_bucket: str, redis_url: str, tmp_path: Path
) -> Iterator[Workers]:
    env = worker_environment(
        settings_env,
        s3_bucket=s3_bucket,
        redis_url=redis_url,
        dramatiq_queue_prefetch="2",
        dramatiq_prom_db=str(tmp_path / "metrics"),
        dramatiq_prom_port=str(free_port()),
    )
    started = Workers(env, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def _listeners(port: int) -> list[str]:
    """Return the local addresses (hex) listening on `port`, IPv4 and IPv6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if int(port_hex, 16) == port and fields[3] == LISTEN:
                found.append(address)
    return found


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_worker_metrics_are_served_on_loopback_with_export_and_dramatiq_figures(
    workers: Workers,
) -> None:
    env = workers.env
    seed(env["DATABASE_URL"], 5, max_files=40, files=60)
    port = int(env["dramatiq_prom_port"])
    workers.start()
    export_id = new_export(env["DATABASE_URL"], "user", "csv", "zstd")
    broker = create_broker(Settings.from_env(env).effective_broker_url)
    try:
        Dispatcher(broker).enqueue_user_export(export_id)
    finally:
        broker.close()
    row = wait_for(env["DATABASE_URL"], export_id, settled, seconds=60)
    assert row is not None, workers.log_text()
    assert (row["status"], row["verification_status"]) == ("completed", "passed")

    samples = _scrape(port)

    listeners = _listeners(port)
    assert listeners == [LOOPBACK_HEX], listeners
    user_csv = "export_type=user,format=csv"
    assert samples[f"data_export_exports_total{{{user_csv},status=completed}}"] == 1
    assert samples[f"data_export_rows_total{{{user_csv}}}"] == row["record_count"]
    assert samples[f"data_export_stored_bytes_total{{{user_csv}}}"] == row["size_bytes"]
    assert samples["data_export_compression_ratio_count{compression=zstd}"] == 1
    assert samples["data_export_verifications_total{export_type=user,outcome=passed}"] == 1
    assert samples["dramatiq_messages_total{actor_name=export_user,queue_name=exports}"] == 1
