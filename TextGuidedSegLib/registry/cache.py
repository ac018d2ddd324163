"""The cache folder: where it is, how a cached bundle is read without torch, and the atomic move into it."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .entries import RegistryError

#: Environment variable overriding the cache location (the cache is ``$TEXTGUIDEDSEG_HOME/bundles``).
HOME_ENV = "TEXTGUIDEDSEG_HOME"
CONFIG_FILE = "config.json"  # the bundle's config file (same name as TextGuidedSegLib.bundle.CONFIG_FILE)
#: Written into a bundle folder converted from a download: url, md5, sha256 and date of what was accepted.
SOURCE_FILE = "source.json"
#: Prefix of the temporary files and folders in the cache (skipped when listing, removed on failure).
TEMP_PREFIX = ".partial-"


def default_cache_dir() -> Path:
    """The per-user bundle cache folder: ``$TEXTGUIDEDSEG_HOME/bundles``, else the platform default."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / "bundles"
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "textguidedseg" / "bundles"


def read_bundle_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a bundle folder or .zip as a dict, without loading the model (no torch).

    Raises:
        RegistryError: the path holds no readable ``config.json``.
    """
    path = Path(path)
    try:
        if path.is_file():
            with zipfile.ZipFile(path) as archive:
                names = sorted(
                    (n for n in archive.namelist() if Path(n).name == CONFIG_FILE), key=lambda n: n.count("/")
                )
                if not names:
                    raise RegistryError(f"{path}: no {CONFIG_FILE} inside; is this a TextGuidedSeg bundle?")
                text = archive.read(names[0]).decode("utf-8")
        else:
            text = (path / CONFIG_FILE).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RegistryError(f"{path}: cannot read the bundle's {CONFIG_FILE} ({err})") from err
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: {CONFIG_FILE} is not a JSON object")
    return data


def bundle_vocabulary(path: str | Path) -> list[str]:
    """Display names of the structures a bundle folder or .zip segments, read from its config (no torch)."""
    return config_vocabulary(read_bundle_config(path), path)


def config_vocabulary(config: dict[str, Any], path: str | Path) -> list[str]:
    """Display names of the structures of an already read bundle ``config`` (``path`` names it in errors)."""
    from TextGuidedSegLib.taxonomy import Taxonomy, get_taxonomy

    taxonomy = config.get("taxonomy")
    try:
        loaded = get_taxonomy(taxonomy) if isinstance(taxonomy, str) else Taxonomy.from_dict(taxonomy)
    except (KeyError, TypeError, ValueError) as err:
        raise RegistryError(f"{path}: the bundle's taxonomy cannot be read ({err})") from err
    return loaded.names


@dataclass
class CachedBundle:
    """A bundle in the cache (downloaded or imported).

    Attributes:
        name: its registry name when it came from a registry download (its ``source.json``), else the name in
            its ``config.json``.
        version: its version, likewise.
        path: the bundle folder or .zip.
        vocabulary: display names of its structures.
        source: the ``source.json`` of a converted download (url, md5, sha256, date); None otherwise.
    """

    name: str
    version: str
    path: Path
    vocabulary: list[str] = field(default_factory=list)
    source: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        """``name==version``, as :attr:`RegistryEntry.key`."""
        return f"{self.name}=={self.version}"


def install(root: Path, staged: Path, stem: str, staging: Path) -> Path:
    """Move a staged bundle (.zip file or folder) to ``root/stem[.zip]`` and return that path.

    The cached copy of the same stem is replaced (a folder replaces a zip and back): it is first set aside in
    ``staging`` (a temporary folder in ``root``) and put back if the final move fails.
    """
    target = root / (f"{stem}.zip" if staged.is_file() else stem)
    moved: list[tuple[Path, Path]] = []
    try:
        for index, existing in enumerate((root / f"{stem}.zip", root / stem)):
            if existing.exists():
                aside = staging / f"previous-{index}"
                os.replace(existing, aside)
                moved.append((aside, existing))
        os.replace(staged, target)
    except BaseException:
        for aside, existing in reversed(moved):
            os.replace(aside, existing)
        raise
    return target
