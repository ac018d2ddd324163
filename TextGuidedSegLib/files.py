"""File helpers shared by the artifacts the library writes or verifies (bundles, caches, models)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (checksums of bundle files, caches and local models)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(
    folder: Path, checksums: dict[str, str], source: Path, config_file: str, error: type[Exception]
) -> None:
    """Raise ``error`` naming the first file listed in ``config_file`` that is missing or differs."""
    if not checksums:
        raise error(f"{source}/{config_file}: no 'checksums' recorded; re-export the bundle with save_bundle")
    for relative, expected in checksums.items():
        file = folder / relative
        if not file.is_file():
            raise error(f"{source}: file {relative} listed in {config_file} is missing")
        if sha256_file(file) != expected:
            raise error(
                f"{source}: checksum mismatch for {relative} (the file was modified or corrupted); "
                "re-download or re-export the bundle"
            )


def file_mode(path: Path) -> int:
    """Permissions for a file about to be written: the existing file's, else the default under the umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
