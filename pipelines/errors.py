"""The project's one rooted exception hierarchy.

Library exceptions (psycopg, boto3) are translated into these at the adapter boundary with
`raise ... from exc`, so callers decide on retry or failure without knowing which library failed.
"""


class ExportError(Exception):
    """Root of every error the project raises on purpose."""


class RetryableError(ExportError):
    """A transient failure: a dropped connection, an S3 5xx or throttling answer."""


class PermanentError(ExportError):
    """A failure that another attempt cannot fix: bad input, an unknown user, corrupt data."""


class SettingsError(PermanentError):
    """The process configuration is missing or malformed; the message lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{listing}")


class SizeLimitError(PermanentError):
    """The export grew past EXPORT_MAX_SIZE."""
