"""Settings: parsing, defaults, every problem listed at once, and env.example kept in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.errors import SettingsError
from pipelines.settings import MIB, SPECS, Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "env.example"

MINIMAL_ENV = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/dataexport",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "S3_BUCKET": "data-export",
    "S3_ACCESS_KEY_ID": "key",
    "S3_SECRET_ACCESS_KEY": "secret",
    "JWT_SECRET": "x" * 48,
}


def test_minimal_environment_takes_the_seed_defaults() -> None:
    settings = Settings.from_env(MINIMAL_ENV)
    assert settings.export_retention_days == 7
    assert settings.export_max_size == 104_857_600
    assert settings.export_compression_enabled is True
    assert settings.export_rate_limit == 10
    assert settings.s3_region == "auto"
    assert settings.s3_part_size_bytes == 8 * MIB
    assert settings.jwt_algorithms == ("HS256",)
    assert settings.broker_url is None
    assert settings.effective_broker_url == "redis://127.0.0.1:6379/0"


def test_empty_environment_lists_every_required_variable_in_one_error() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({})
    required = {spec.env for spec in SPECS if spec.default is None}
    reported = {problem.split(" ")[0] for problem in caught.value.problems}
    assert reported == required
    for name in required:
        assert name in str(caught.value)


def test_malformed_values_are_all_reported_together() -> None:
    env = MINIMAL_ENV | {
        "EXPORT_RETENTION_DAYS": "seven",
        "EXPORT_COMPRESSION_ENABLED": "maybe",
        "DATABASE_URL": "mysql://localhost/db",
        "EXPORT_DEFAULT_COMPRESSION": "brotli",
    }
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    names = sorted(problem.split(":")[0] for problem in caught.value.problems)
    assert names == [
        "DATABASE_URL",
        "EXPORT_COMPRESSION_ENABLED",
        "EXPORT_DEFAULT_COMPRESSION",
        "EXPORT_RETENTION_DAYS",
    ]


def test_part_size_below_the_s3_minimum_is_rejected() -> None:
    with pytest.raises(SettingsError, match="S3_PART_SIZE_BYTES must be between"):
        Settings.from_env(MINIMAL_ENV | {"S3_PART_SIZE_BYTES": str(4 * MIB)})


def test_mixing_symmetric_and_asymmetric_jwt_algorithms_is_rejected() -> None:
    env = MINIMAL_ENV | {"JWT_ALGORITHMS": "HS256,RS256", "JWT_PUBLIC_KEY": "pem"}
    with pytest.raises(SettingsError, match="mixes HS"):
        Settings.from_env(env)


def test_asymmetric_algorithms_need_a_public_key_or_jwks_url() -> None:
    env = MINIMAL_ENV | {"JWT_ALGORITHMS": "RS256"}
    with pytest.raises(SettingsError, match="JWT_PUBLIC_KEY or JWT_JWKS_URL"):
        Settings.from_env(env)
    settings = Settings.from_env(env | {"JWT_JWKS_URL": "https://issuer.example/jwks.json"})
    assert settings.jwt_jwks_url == "https://issuer.example/jwks.json"


def test_short_hs256_secret_is_rejected() -> None:
    with pytest.raises(SettingsError, match="at least 32 characters"):
        Settings.from_env(MINIMAL_ENV | {"JWT_SECRET": "short"})


def test_unknown_jwt_algorithm_including_none_is_rejected() -> None:
    with pytest.raises(SettingsError, match="JWT_ALGORITHMS"):
        Settings.from_env(MINIMAL_ENV | {"JWT_ALGORITHMS": "none"})


def test_redacted_settings_hide_secrets() -> None:
    shown = Settings.from_env(MINIMAL_ENV).redacted()
    assert shown["s3_secret_access_key"] == "***"
    assert shown["jwt_secret"] == "***"
    assert shown["s3_bucket"] == "data-export"


def _env_example_entries() -> dict[str, str]:
    entries = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def test_env_example_lists_exactly_the_settings() -> None:
    assert set(_env_example_entries()) == {spec.env for spec in SPECS}


def test_env_example_shows_each_default() -> None:
    entries = _env_example_entries()
    for spec in SPECS:
        if spec.default is not None:
            assert entries[spec.env] == spec.default, spec.env
