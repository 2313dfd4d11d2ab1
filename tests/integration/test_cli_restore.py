"""`exportctl restore` from S3 chooses its server as `exportctl verify` does.

Both keys select the server the S3_* variables name (with or without S3_BUCKET: the s3:// source
names the bucket); no S3 variable at all selects the local development stack; anything in
between is an error, never the dev stack's S3 server in place of the one that was meant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from exportctl.cli import main
from exportctl.commands import restore as restore_command
from exportctl.commands import verify as verify_command
from exportctl.commands.verify import S3Config, configured_s3, s3_config
from exportctl.devstack import LocalStack
from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.errors import PermanentError
from pipelines.options import parse_options
from pipelines.runner import ExportLimits, export_all
from pipelines.storage.stores import S3Store

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from exportctl.devstack import StackEndpoints

S3_NAMES = ("S3_ENDPOINT_URL", "S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "S3_REGION")
ENDPOINT = "http://127.0.0.1:9"
KEYS = {"S3_ACCESS_KEY_ID": "AKID", "S3_SECRET_ACCESS_KEY": "SECRET"}
# S3 settings that name a server only in part: each must be refused, not replaced by the stack's.
PARTIAL_SETTINGS = [
    {"S3_ENDPOINT_URL": ENDPOINT},
    {"S3_BUCKET": "backups"},
    {"S3_ENDPOINT_URL": ENDPOINT, "S3_BUCKET": "backups", "S3_ACCESS_KEY_ID": "AKID"},
    {"S3_SECRET_ACCESS_KEY": "SECRET"},
]
S3_PART_BYTES = 5 * 1024 * 1024


@pytest.fixture
def dev_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Clear the S3 variables and fail the test if anything brings up the local dev stack."""

    def refuse(self: LocalStack, environ: object) -> None:
        raise AssertionError("the local development stack was started")

    monkeypatch.setattr(LocalStack, "up", refuse)
    root = tmp_path / "dev"
    monkeypatch.setenv("EXPORTCTL_DEV_ROOT", str(root))
    for name in S3_NAMES:
        monkeypatch.delenv(name, raising=False)
    return root


def test_restore_and_verify_share_one_s3_decision() -> None:
    assert restore_command.s3_config is verify_command.s3_config


def test_both_keys_select_the_named_server_with_or_without_a_bucket() -> None:
    assert configured_s3({"S3_ENDPOINT_URL": ENDPOINT, **KEYS}) == S3Config(
        endpoint_url=ENDPOINT,
        region="auto",
        access_key_id="AKID",
        secret_access_key="SECRET",
        bucket="",
    )
    aws = configured_s3({**KEYS, "S3_BUCKET": "backups", "S3_REGION": "eu-west-1"})
    assert aws is not None
    assert (aws.endpoint_url, aws.region, aws.bucket) == (None, "eu-west-1", "backups")


def test_no_s3_variable_selects_the_dev_stack() -> None:
    assert configured_s3({"S3_REGION": "auto", "DATABASE_URL": "postgresql://x/y"}) is None


@pytest.mark.parametrize("settings", PARTIAL_SETTINGS)
def test_partial_s3_settings_are_refused_naming_what_is_missing(
    settings: dict[str, str], dev_root: Path
) -> None:
    with pytest.raises(PermanentError, match="set, but not S3_") as refused:
        s3_config(settings)
    assert "unset every S3_* variable to use the local development stack" in str(refused.value)
    assert not dev_root.exists()


@pytest.mark.parametrize("settings", PARTIAL_SETTINGS)
def test_restore_with_partial_s3_settings_exits_1_without_starting_the_dev_stack(
    settings: dict[str, str],
    dev_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    target = "postgresql://postgres@127.0.0.1:9/never"

    assert main(["restore", "s3://backups/exports/drill/", "--database", target]) == 1

    error = capsys.readouterr().err
    assert error.startswith(f"exportctl: {next(iter(settings))}")
    assert "set, but not S3_" in error
    assert not dev_root.exists()


def test_restore_reads_the_configured_server_when_s3_bucket_is_unset(
    database_url: str,
    empty_database_url: str,
    s3_client: S3Client,
    *,
    stack: StackEndpoints,
    s3_bucket: str,
    dev_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with connect(database_url) as conn:
        seed_database(conn, users=5, files=20, max_files=10)
    store = S3Store(s3_client, bucket=s3_bucket, prefix="exports/cli-restore/")
    export_all(
        lambda: connect(database_url),
        options=parse_options("jsonl", {"includeSystemFields": True}, default_compression="zstd"),
        store=store,
        limits=ExportLimits(part_size=S3_PART_BYTES, max_size=None),
        target_shard_rows=10_000,
    )
    monkeypatch.setenv("S3_ENDPOINT_URL", stack.s3_endpoint_url)
    monkeypatch.setenv("S3_REGION", stack.s3_region)
    monkeypatch.setenv("S3_ACCESS_KEY_ID", stack.s3_access_key_id)
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", stack.s3_secret_access_key)

    assert main(["restore", store.location, "--database", empty_database_url]) == 0

    counts = "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM files)"
    with connect(database_url) as source, connect(empty_database_url) as target:
        assert target.execute(counts).fetchone() == source.execute(counts).fetchone() == (5, 20)
    assert not dev_root.exists()
