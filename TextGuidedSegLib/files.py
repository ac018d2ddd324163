"""File helpers shared by the artifacts the library writes or verifies (bundles, caches, models)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

#: Limits of :func:`extract_zip`: members, bytes of all members once extracted, and compression ratio of one
#: member (a zip bomb inflates a few kB into GB; a bundle's weights compress about 1.1:1, JSON about 5:1).
ZIP_MAX_MEMBERS = 10_000
ZIP_MAX_BYTES = 20 * 2**30
ZIP_MAX_RATIO = 200


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
    if not isinstance(checksums, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in checksums.items()
    ):
        raise error(f"{source}/{config_file}: 'checksums' must map file names to sha256 strings")
    for relative, expected in checksums.items():
        file = folder / relative
        if ".." in Path(relative).parts or Path(relative).is_absolute():
            raise error(f"{source}: {config_file} lists {relative!r}, a path outside the bundle")
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


def _zip_member_problem(member: zipfile.ZipInfo, seen: set[str]) -> str | None:
    """Why ``member`` must not be extracted (unsafe path, link, device, duplicate, bomb), or None."""
    name = member.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]) or "\x00" in name:
        return f"refusing unsafe member path {name!r}"
    kind = stat.S_IFMT(member.external_attr >> 16)  # 0: no Unix type recorded (a plain file)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return f"refusing member {name!r}: a symbolic link or special file, not a regular file"
    key = name.rstrip("/")
    if key in seen:
        return f"refusing duplicate member {name!r} (two entries with one name)"
    seen.add(key)
    if member.file_size > ZIP_MAX_RATIO * max(member.compress_size, 1024):
        return (
            f"refusing member {name!r}: it inflates {member.compress_size} bytes into {member.file_size} "
            f"(over {ZIP_MAX_RATIO}:1, a zip bomb?)"
        )
    return None


def extract_zip(archive_path: Path, target: Path, error: type[Exception]) -> None:
    """Extract the .zip ``archive_path`` into the folder ``target``, confined to it: the only extraction site.

    Every member is checked before anything is written: no absolute or ``..`` path, drive letter, symbolic
    link or special file, duplicate name, more than :data:`ZIP_MAX_MEMBERS` members, more than
    :data:`ZIP_MAX_BYTES` in all or a member inflating over :data:`ZIP_MAX_RATIO`:1. Members are then copied
    one by one (at most their declared size each; zipfile checks their CRC).

    Raises:
        error: an unsafe or corrupt archive; the message starts with ``archive_path``.
    """
    try:
        with zipfile.ZipFile(archive_path) as archive:
            members = archive.infolist()
            if len(members) > ZIP_MAX_MEMBERS:
                raise error(f"{archive_path}: {len(members)} members, over the {ZIP_MAX_MEMBERS} allowed")
            seen: set[str] = set()
            for member in members:
                problem = _zip_member_problem(member, seen)
                if problem is not None:
                    raise error(f"{archive_path}: {problem}")
            total = sum(member.file_size for member in members)
            if total > ZIP_MAX_BYTES:
                raise error(
                    f"{archive_path}: members add up to {total} bytes, over the {ZIP_MAX_BYTES} allowed"
                )
            root = target.resolve()
            for member in members:
                destination = (root / member.filename.replace("\\", "/")).resolve()
                if root not in destination.parents and destination != root:
                    raise error(f"{archive_path}: refusing unsafe member path {member.filename!r}")
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(destination, "xb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    except error:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, EOFError) as err:
        raise error(f"{archive_path}: not a valid .zip file ({err})") from err
    except (OSError, RuntimeError, ValueError) as err:  # a member over a file, an encrypted member, ...
        raise error(f"{archive_path}: cannot extract ({err})") from err
