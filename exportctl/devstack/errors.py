"""Errors of the local development stack, rooted in the project's `ExportError`.

They carry a message an operator can act on: which package is missing, which port is taken,
which log to read.
"""

from __future__ import annotations

from pipelines.errors import PermanentError


class StackError(PermanentError):
    """The local stack could not be brought up, inspected or stopped."""


class StackPackagesMissingError(StackError):
    """The server binaries of the `stack` dependency group are not installed."""


class PortTakenError(StackError):
    """A port remembered in ports.json is now used by another program."""


class ProcessStartError(StackError):
    """A server process did not start or did not become ready in time."""
