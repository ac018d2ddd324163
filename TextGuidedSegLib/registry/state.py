"""Per-user registry state beside the bundle cache: accepted licences, trust-on-first-use download hashes."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .entries import RegistryEntry, RegistryError

logger = logging.getLogger(__name__)

LICENSES_FILE = "accepted_licenses.json"
KNOWN_DOWNLOADS_FILE = "known_downloads.json"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file's content; {} when the file does not exist."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RegistryError(f"cannot read {path} ({err}); fix or delete it") from err
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected a JSON object; fix or delete it")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same folder, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False, encoding="utf-8"
    )
    try:
        with handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


class UserState:
    """The JSON files in ``folder`` (``$TEXTGUIDEDSEG_HOME`` or the cache folder's parent).

    - ``accepted_licenses.json``: ``{"name==version": {"license": ..., "accepted": date}}``.
    - ``known_downloads.json``: ``{url: {"sha256": ..., "first_seen": date}}`` for entries whose publisher
      gives no checksum: the sha256 of the first download is trusted and every later download must match it.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def is_license_accepted(self, entry: RegistryEntry) -> bool:
        """True when the user accepted ``entry``'s licence (the same licence text name) before."""
        record = read_json(self.folder / LICENSES_FILE).get(entry.key)
        return isinstance(record, dict) and record.get("license") == entry.license

    def accept_license(self, entry: RegistryEntry) -> None:
        """Remember that the user accepted ``entry``'s licence."""
        path = self.folder / LICENSES_FILE
        data = read_json(path)
        data[entry.key] = {"license": entry.license, "license_url": entry.license_url, "accepted": now()}
        write_json(path, data)
        logger.info("accepted the licence %s of bundle %s (recorded in %s)", entry.license, entry.key, path)

    def known_sha256(self, url: str) -> dict[str, Any] | None:
        """The record of the first download of ``url`` (sha256, first_seen), None when never downloaded."""
        record = read_json(self.folder / KNOWN_DOWNLOADS_FILE).get(url)
        return record if isinstance(record, dict) else None

    def remember_sha256(self, url: str, sha256: str) -> None:
        """Record the sha256 of the first accepted download of ``url``."""
        path = self.folder / KNOWN_DOWNLOADS_FILE
        data = read_json(path)
        data.setdefault(url, {"sha256": sha256, "first_seen": now()})
        write_json(path, data)
