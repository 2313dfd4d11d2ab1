"""The embedded local stack: PostgreSQL, Redis (Valkey) and S3 (SeaweedFS) on 127.0.0.1.

Servers come from the `stack` dependency group's wheels, run detached under one root folder, and
are reused across commands; `LocalStack` is the API for `exportctl dev` and the test fixtures.
"""

from __future__ import annotations

from exportctl.devstack.endpoints import ServiceStatus, StackEndpoints
from exportctl.devstack.errors import (
    PortTakenError,
    ProcessStartError,
    StackError,
    StackPackagesMissingError,
)
from exportctl.devstack.stack import LocalStack

__all__ = [
    "LocalStack",
    "PortTakenError",
    "ProcessStartError",
    "ServiceStatus",
    "StackEndpoints",
    "StackError",
    "StackPackagesMissingError",
]
