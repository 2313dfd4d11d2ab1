"""`redact_url`: database URLs in logs, errors and reports keep everything but their secrets."""

from __future__ import annotations

import pytest

from pipelines.database import redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://export:s3cret@db.internal:5432/app",
            "postgresql://export:***@db.internal:5432/app",
        ),
        (
            "postgresql://export@db.internal/app?password=s3cret&sslmode=require",
            "postgresql://export@db.internal/app?password=***&sslmode=require",
        ),
        (
            "postgresql://db.internal/app?sslmode=verify-full&sslpassword=keypass&user=export",
            "postgresql://db.internal/app?sslmode=verify-full&sslpassword=***&user=export",
        ),
        (
            "postgres://u:one@h1,h2/app?pass%77ord=two&application_name=drill",
            "postgres://u:***@h1,h2/app?pass%77ord=***&application_name=drill",
        ),
    ],
)
def test_passwords_in_user_info_and_query_are_masked(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_url_without_secrets_is_unchanged() -> None:
    url = "postgresql://export@[::1]:5432/app?sslmode=require&options=-c%20search_path%3Dx"
    assert redact_url(url) == url


def test_conninfo_string_masks_password_and_ssl_key_password() -> None:
    redacted = redact_url("host=db.internal dbname=app password=s3cret sslpassword=keypass")
    assert "s3cret" not in redacted
    assert "keypass" not in redacted
    assert "password=***" in redacted
    assert "sslpassword=***" in redacted
    assert "host=db.internal" in redacted


@pytest.mark.parametrize("url", ["postgresql://u:p@[::1/app", "host='unclosed"])
def test_unparsable_url_is_not_echoed(url: str) -> None:
    assert redact_url(url) == "<unparsable connection string>"
