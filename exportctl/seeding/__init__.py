"""Demo data for the application's source tables, generated inside PostgreSQL.

`seed_database` fills `users` and `files`; `write_objects` puts a matching object in the bucket for
every file; `damage_objects` breaks a few of them so integrity checks have faults to find.
"""

from __future__ import annotations

from exportctl.seeding.database import (
    DEFAULT_MAX_FILES,
    DEFAULT_SEED,
    SeedReport,
    TableNotEmptyError,
    find_coverage,
    seed_database,
)
from exportctl.seeding.objects import DamagedObject, damage_objects, write_objects

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_SEED",
    "DamagedObject",
    "SeedReport",
    "TableNotEmptyError",
    "damage_objects",
    "find_coverage",
    "seed_database",
    "write_objects",
]
