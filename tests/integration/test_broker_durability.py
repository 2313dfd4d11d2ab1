"""A worker reads the real Redis broker's configuration and names what can lose queued messages:
an allkeys-* eviction policy evicts them, and without appendonly a restart loses them; the
volatile-* policies, which never touch Dramatiq's keys, are fine."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

from workers.broker import log_broker_durability, redis_durability_problems


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    opened = redis.Redis.from_url(redis_url, decode_responses=True)
    policy = opened.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        yield opened
    finally:
        opened.config_set("maxmemory-policy", policy)  # the session's server, as it was
        opened.close()


def _about(problems: list[str], setting: str) -> list[str]:
    return [problem for problem in problems if problem.startswith(setting)]


def test_appendonly_off_is_named_and_on_is_not(client: redis.Redis) -> None:
    appendonly = client.config_get("appendonly")["appendonly"]  # the local stack's is yes
    named = _about(redis_durability_problems(client), "appendonly")
    if appendonly == "yes":
        assert named == []
    else:
        (problem,) = named
        assert "a Redis restart loses the messages" in problem


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-ttl", "noeviction"])
def test_policies_that_spare_keys_without_expiry_are_fine(client: redis.Redis, policy: str) -> None:
    client.config_set("maxmemory-policy", policy)
    assert _about(redis_durability_problems(client), "maxmemory-policy") == []


def test_an_allkeys_policy_is_logged_as_an_error_at_worker_start(
    client: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client.config_set("maxmemory-policy", "allkeys-lru")
    (problem,) = _about(redis_durability_problems(client), "maxmemory-policy")
    assert "allkeys-lru" in problem
    assert "noeviction" in problem
    with caplog.at_level(logging.ERROR, logger="workers.broker"):
        log_broker_durability(redis_url)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("allkeys-lru" in message for message in logged)
