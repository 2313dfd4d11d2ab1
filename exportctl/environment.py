"""The environment a command runs with: the process's own, with the local stack filling gaps.

Commands that talk to PostgreSQL, Redis or S3 use the servers named by DATABASE_URL, REDIS_URL
and S3_ENDPOINT_URL when they are set; for any that is not, the local development stack under
`.dev/` (or EXPORTCTL_DEV_ROOT) is brought up and used, and a notice says so on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pipelines.settings import Settings

# The variables that name a service; when all are set the local stack is never touched.
SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT_URL")


def process_environ() -> Mapping[str, str]:
    """Return the process environment: `exportctl` is an entry point."""
    return os.environ  # noqa: TID251


def dev_root(environ: Mapping[str, str]) -> Path:
    """Return the local stack's folder."""
    return Path(environ.get("EXPORTCTL_DEV_ROOT") or ".dev")


def resolve_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment with the local stack's endpoints for every unset service."""
    environ = process_environ() if environ is None else environ
    missing = [name for name in SERVICE_VARIABLES if not environ.get(name)]
    if not missing:
        return dict(environ)
    from exportctl.devstack import LocalStack

    root = dev_root(environ)
    print(
        f"exportctl: {', '.join(missing)} not set; using the local stack under {root}/",
        file=sys.stderr,
    )
    endpoints = LocalStack(root).up(environ)
    return {**endpoints.as_env(), **{name: value for name, value in environ.items() if value}}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Return the settings of the resolved environment."""
    return Settings.from_env(resolve_environment(environ))
