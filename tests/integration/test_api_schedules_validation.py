"""What `POST /api/exports/schedules` refuses, against a real PostgreSQL: zones, cron, rarity.

Every refusal is a 400 naming the field; nothing is written for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest
from api_support import add_user, auth, build_client

from api.database import ThreadLocalDatabase
from pipelines.database import connect

SCHEDULES = "/api/exports/schedules"


@pytest.fixture
def client(database_url: str) -> Iterator[falcon.testing.TestClient]:
    database = ThreadLocalDatabase(database_url)
    yield build_client(database=database)
    database.close()


def create(
    client: falcon.testing.TestClient, user: uuid.UUID, **fields: Any
) -> falcon.testing.Result:
    body = {"name": "nightly", "cron": "0 3 * * *", "format": "json", **fields}
    return client.simulate_post(SCHEDULES, json=body, headers=auth(user))


def refused_field(result: falcon.testing.Result) -> list[str]:
    assert result.status_code == 400, result.text
    return [error["field"] for error in result.json["errors"]]


def schedules_of(database_url: str, user: uuid.UUID) -> int:
    with connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM export_schedules WHERE user_id = %s", (user,)
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(
    "zone",
    ["localtime", "Factory", "posixrules", "posix/Europe/Berlin", "right/Europe/Berlin"],
)
def test_time_zone_that_is_no_iana_name_is_refused_naming_timezone(
    client: falcon.testing.TestClient, database_url: str, zone: str
) -> None:
    user = add_user(database_url)
    assert refused_field(create(client, user, timezone=zone)) == ["timezone"]
    assert schedules_of(database_url, user) == 0


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Etc/GMT+3", "EST5EDT"])
def test_iana_time_zone_is_accepted(
    client: falcon.testing.TestClient, database_url: str, zone: str
) -> None:
    result = create(client, add_user(database_url), timezone=zone)
    assert result.status_code == 201, result.text
    assert result.json["schedule"]["timezone"] == zone


@pytest.mark.parametrize(
    "cron", ["² * * * *", "*/² * * * *", "٣ * * * *", "0 0 1-٣ * *", "0 \uff13 * * *"]
)
def test_cron_with_non_ascii_digits_is_refused_naming_cron(
    client: falcon.testing.TestClient, database_url: str, cron: str
) -> None:
    user = add_user(database_url)
    result = create(client, user, cron=cron)
    assert refused_field(result) == ["cron"]
    assert "ASCII" in result.json["errors"][0]["detail"]
    assert schedules_of(database_url, user) == 0


@pytest.mark.parametrize("cron", ["0 0 */28 2 1", "0 0 */31 6 5"])
def test_cron_firing_too_rarely_for_the_search_window_is_refused_naming_cron(
    client: falcon.testing.TestClient, database_url: str, cron: str
) -> None:
    user = add_user(database_url)
    result = create(client, user, cron=cron)
    assert refused_field(result) == ["cron"]
    assert "fires too rarely" in result.json["errors"][0]["detail"]
    assert schedules_of(database_url, user) == 0


@pytest.mark.parametrize("cron", ["0 0 29 2 *", "0 0 1 2 1", "@weekly"])
def test_cron_firing_rarely_but_within_the_window_is_accepted(
    client: falcon.testing.TestClient, database_url: str, cron: str
) -> None:
    result = create(client, add_user(database_url), cron=cron)
    assert result.status_code == 201, result.text


def test_bad_zone_and_bad_cron_are_both_named(
    client: falcon.testing.TestClient, database_url: str
) -> None:
    result = create(client, add_user(database_url), cron="٣ * * * *", timezone="localtime")
    assert sorted(refused_field(result)) == ["cron", "timezone"]
