"""The bundle registry and the per-user bundle cache: where trained bundles come from and where they are kept.

The registry (``resources/registry.json``) lists the bundles users can get, each a versioned
:class:`RegistryEntry` with its name, version, download URL, sha256, licence, description and vocabulary (so
a user interface can offer completion before anything is downloaded). The demo bundle is a built-in entry: it
ships with the library (``resources/demo_bundle``) and is available offline.

A :class:`BundleStore` is the cache folder. Downloads are streamed in chunks with a progress callback,
checked against the registry's sha256 and moved into place atomically (a temporary file in the same folder,
then ``os.replace``): a failed or cancelled download, or one with the wrong checksum, leaves nothing behind.
Where downloads are blocked (hospital proxies), :meth:`BundleStore.import_bundle` copies a bundle folder or
.zip into the cache after checking it with :func:`TextGuidedSegLib.bundle.load_bundle`.

The cache folder is ``$TEXTGUIDEDSEG_HOME/bundles`` when that variable is set, else the platform's per-user
cache: ``~/.cache/textguidedseg/bundles`` (or ``$XDG_CACHE_HOME``) on Linux,
``~/Library/Caches/textguidedseg/bundles`` on macOS, ``%LOCALAPPDATA%\\textguidedseg\\bundles`` on Windows.

This module imports neither torch nor Slicer; only :meth:`BundleStore.import_bundle` loads the bundle (and
with it the model stack) to verify it.

Example::

    store = BundleStore()
    entry = store.entry("demo_phantom_film_v1")
    path = store.fetch(entry, progress=lambda done, total: print(done, total))
    bundle = load_bundle(path)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

REGISTRY_FORMAT_VERSION = 1
#: The registry shipped with the library.
DEFAULT_REGISTRY = Path(__file__).resolve().parent / "resources" / "registry.json"
#: Folder that built-in entries' ``builtin`` paths are relative to.
RESOURCES_DIR = Path(__file__).resolve().parent / "resources"
#: Environment variable overriding the cache location (the cache is ``$TEXTGUIDEDSEG_HOME/bundles``).
HOME_ENV = "TEXTGUIDEDSEG_HOME"
CONFIG_FILE = "config.json"  # the bundle's config file (same name as TextGuidedSegLib.bundle.CONFIG_FILE)
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TEMP_PREFIX = ".partial-"

ProgressCallback = Callable[[int, "int | None"], None]
"""Called as ``progress(done_bytes, total_bytes)``; ``total_bytes`` is None when the server does not say."""


class RegistryError(ValueError):
    """A registry file is malformed, an entry is unknown, or a download failed its checks."""


class DownloadCancelled(RuntimeError):
    """Raised when a download's cancel event was set; the partial file was removed."""


@dataclass(frozen=True)
class RegistryEntry:
    """One downloadable (or built-in) bundle.

    Attributes:
        name: the bundle's name, as in its ``config.json``.
        version: the version of its weights.
        description: one paragraph for users.
        license: licence of the weights.
        vocabulary: display names of the structures it segments (for completion before download).
        url: where the bundle .zip is downloaded from (``https://`` or ``file://``); None for a built-in.
        sha256: hex sha256 of the file at ``url``.
        builtin: for a bundle shipped with the library, its path relative to ``TextGuidedSegLib/resources``.
        size: download size in bytes, when known (shown to the user before downloading).
    """

    name: str
    version: str
    description: str = ""
    license: str = ""
    vocabulary: tuple[str, ...] = ()
    url: str | None = None
    sha256: str | None = None
    builtin: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        for key in ("name", "version"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise RegistryError(f"registry entry: {key} must be a non-empty string, got {value!r}")
        if (self.url is None) == (self.builtin is None):
            raise RegistryError(
                f"registry entry {self.key}: give exactly one of 'url' (downloadable) or 'builtin' (shipped)"
            )
        if self.url is not None and (self.sha256 is None or not _SHA256.match(self.sha256)):
            raise RegistryError(
                f"registry entry {self.key}: a downloadable bundle needs 'sha256', 64 lower-case hex digits "
                f"(got {self.sha256!r})"
            )
        if self.builtin is not None and (
            Path(self.builtin).is_absolute() or ".." in Path(self.builtin).parts
        ):
            raise RegistryError(f"registry entry {self.key}: 'builtin' must be a path inside resources/")

    @property
    def key(self) -> str:
        """``name==version``: how the entry is named in settings and in the user interface."""
        return f"{self.name}=={self.version}"

    @property
    def file_stem(self) -> str:
        """File-system safe ``name-version``: the entry's file or folder name in the cache."""
        return _safe_name(f"{self.name}-{self.version}")

    @property
    def is_builtin(self) -> bool:
        """True for a bundle shipped with the library (available offline)."""
        return self.builtin is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping; :meth:`from_dict` restores an equal entry."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "license": self.license,
            "vocabulary": list(self.vocabulary),
            "url": self.url,
            "sha256": self.sha256,
            "builtin": self.builtin,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegistryEntry:
        """Build an entry from a registry JSON item; unknown keys raise a RegistryError naming them."""
        if not isinstance(data, dict):
            raise RegistryError(f"registry entry must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise RegistryError(f"registry entry {data.get('name')!r}: unknown key(s) {unknown}")
        return cls(**data)


def _safe_name(text: str) -> str:
    """Replace characters unsafe in file names (keeps letters, digits, ``.``, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _version_key(version: str) -> tuple:
    """Sort key of a version string: numbers compare as numbers ("0.10.0" > "0.9.1")."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[.+-]", version)
    )


def load_registry(path: str | Path | None = None) -> list[RegistryEntry]:
    """Read a registry file (default: the one shipped with the library) into its entries, in file order.

    Raises:
        RegistryError: the file is not valid JSON, has another ``format_version``, or holds a malformed or
            duplicate entry.
    """
    path = Path(path) if path is not None else DEFAULT_REGISTRY
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RegistryError(f"cannot read the bundle registry {path}: {err}") from err
    if not isinstance(data, dict) or data.get("format_version") != REGISTRY_FORMAT_VERSION:
        raise RegistryError(
            f"{path}: expected a JSON object with format_version {REGISTRY_FORMAT_VERSION}, "
            f"got {data.get('format_version') if isinstance(data, dict) else type(data).__name__!r}"
        )
    entries = []
    for item in data.get("bundles", []):
        try:
            entries.append(RegistryEntry.from_dict(item))
        except (RegistryError, TypeError) as err:
            raise RegistryError(f"{path}: {err}") from err
    keys = [e.key for e in entries]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise RegistryError(f"{path}: duplicate registry entries {duplicates}")
    return entries


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
    return _config_vocabulary(read_bundle_config(path), path)


def _config_vocabulary(config: dict[str, Any], path: str | Path) -> list[str]:
    """Display names of the structures of an already read bundle ``config`` (``path`` names it in errors)."""
    from TextGuidedSegLib.taxonomy import Taxonomy, get_taxonomy

    taxonomy = config.get("taxonomy")
    try:
        loaded = get_taxonomy(taxonomy) if isinstance(taxonomy, str) else Taxonomy.from_dict(taxonomy)
    except (KeyError, TypeError, ValueError) as err:
        raise RegistryError(f"{path}: the bundle's taxonomy cannot be read ({err})") from err
    return loaded.names


def sha256_stream(stream: BinaryIO, out: BinaryIO | None = None, **progress_args: Any) -> str:
    """Hex sha256 of a byte stream read to its end in chunks, copying it to ``out`` when given.

    Keyword arguments are passed to :func:`_copy_chunks` (``total``, ``progress``, ``cancel``).
    """
    digest = hashlib.sha256()
    _copy_chunks(stream, out, digest, **progress_args)
    return digest.hexdigest()


def _copy_chunks(
    stream: BinaryIO,
    out: BinaryIO | None,
    digest: Any,
    total: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Copy ``stream`` to ``out`` in 1 MiB chunks, hashing into ``digest``; return the bytes copied.

    ``progress(done, total)`` is called after each chunk; a set ``cancel`` event raises DownloadCancelled.
    """
    done = 0
    if progress is not None:
        progress(0, total)
    while True:
        if cancel is not None and cancel.is_set():
            raise DownloadCancelled("download cancelled")
        chunk = stream.read(_CHUNK)
        if not chunk:
            return done
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, total)


@dataclass
class CachedBundle:
    """A bundle in the cache (downloaded or imported).

    Attributes:
        name: its name, from its ``config.json``.
        version: its version.
        path: the bundle folder or .zip.
        vocabulary: display names of its structures.
    """

    name: str
    version: str
    path: Path
    vocabulary: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """``name==version``, as :attr:`RegistryEntry.key`."""
        return f"{self.name}=={self.version}"


class BundleStore:
    """The per-user bundle cache: registry downloads and offline imports.

    Args:
        root: the cache folder (created on first write); default :func:`default_cache_dir`.
        entries: registry entries; default :func:`load_registry` of the shipped registry.
        resources: folder that built-in entries are relative to (tests point it elsewhere).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        entries: Sequence[RegistryEntry] | None = None,
        resources: str | Path | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.entries = list(entries) if entries is not None else load_registry()
        self.resources = Path(resources) if resources is not None else RESOURCES_DIR

    # -- registry --------------------------------------------------------------------------------------

    def entry(self, name: str, version: str | None = None) -> RegistryEntry:
        """The registry entry ``name`` (``name==version`` works too); the newest version when not given."""
        if version is None and "==" in name:
            name, version = name.split("==", 1)
        matches = [e for e in self.entries if e.name == name and (version is None or e.version == version)]
        if not matches:
            known = ", ".join(e.key for e in self.entries) or "none"
            wanted = f"{name!r} version {version}" if version else repr(name)
            raise RegistryError(f"no bundle {wanted} in the registry (known: {known})")
        return max(matches, key=lambda e: _version_key(e.version))

    def path(self, entry: RegistryEntry) -> Path | None:
        """Where ``entry`` is available locally (the shipped folder, or the cached .zip/folder); else None."""
        if entry.is_builtin:
            shipped = self.resources / entry.builtin
            return shipped if (shipped / CONFIG_FILE).is_file() or shipped.is_file() else None
        for candidate in (self.root / f"{entry.file_stem}.zip", self.root / entry.file_stem):
            if candidate.exists():
                return candidate
        return None

    def is_available(self, entry: RegistryEntry) -> bool:
        """True when ``entry`` can be used without a download."""
        return self.path(entry) is not None

    # -- download --------------------------------------------------------------------------------------

    def fetch(
        self,
        entry: RegistryEntry,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        opener: Callable[[str], Any] | None = None,
    ) -> Path:
        """Return ``entry``'s local path, downloading it first when it is not in the cache.

        Args:
            entry: a registry entry.
            progress: ``progress(done_bytes, total_bytes)`` during the download.
            cancel: set it to stop the download (raises :class:`DownloadCancelled`).
            opener: ``opener(url)`` returning a readable binary response (default ``urllib.request.urlopen``;
                tests pass a fake).

        Raises:
            RegistryError: a built-in bundle is missing from the installation, the download failed or its
                sha256 differs from the registry's; nothing is left in the cache.
        """
        local = self.path(entry)
        if local is not None:
            return local
        if entry.is_builtin:
            raise RegistryError(
                f"bundle {entry.key} should ship with TextGuidedSegLib at {self.resources / entry.builtin} "
                "but is not there; reinstall the extension or import the bundle from a folder or .zip"
            )
        return self._download(entry, progress, cancel, opener or _urlopen)

    def _download(
        self,
        entry: RegistryEntry,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
        opener: Callable[[str], Any],
    ) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / f"{entry.file_stem}.zip"
        handle = tempfile.NamedTemporaryFile(dir=self.root, prefix=_TEMP_PREFIX, suffix=".zip", delete=False)
        partial = Path(handle.name)
        logger.info("downloading bundle %s from %s", entry.key, entry.url)
        try:
            with handle:
                try:
                    response = opener(entry.url)
                except OSError as err:
                    raise RegistryError(
                        f"cannot download bundle {entry.key} from {entry.url} ({err}); where downloads are "
                        "blocked, download the .zip elsewhere and import it"
                    ) from err
                with response:
                    total = _content_length(response) or entry.size
                    try:
                        digest = sha256_stream(
                            response, handle, total=total, progress=progress, cancel=cancel
                        )
                    except OSError as err:
                        raise RegistryError(
                            f"download of bundle {entry.key} from {entry.url} failed: {err}"
                        ) from err
            if digest != entry.sha256:
                raise RegistryError(
                    f"bundle {entry.key} from {entry.url}: sha256 {digest} differs from the registry's "
                    f"{entry.sha256}; the file was corrupted or replaced, and was not kept"
                )
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        logger.info("bundle %s saved to %s", entry.key, target)
        return target

    # -- offline import --------------------------------------------------------------------------------

    def import_bundle(self, source: str | Path, verify: Callable[[Path], Any] | None = None) -> CachedBundle:
        """Copy a bundle folder or .zip into the cache after checking it; replaces the same name and version.

        Args:
            source: a bundle folder or .zip (e.g. copied from a USB stick where downloads are blocked).
            verify: called with ``source`` to check it, raising on a bad bundle (default
                :func:`TextGuidedSegLib.bundle.load_bundle`, which checks every checksum and weight).

        Returns:
            The cached bundle.

        Raises:
            TextGuidedSegLib.bundle.BundleError or RegistryError: a broken bundle; the cache is unchanged.
        """
        source = Path(source)
        if not source.exists():
            raise RegistryError(f"cannot import bundle {source}: it does not exist")
        if verify is None:
            from TextGuidedSegLib.bundle import load_bundle

            verify = load_bundle
        verify(source)
        config = read_bundle_config(source)
        name, version = str(config.get("name", "")), str(config.get("version", ""))
        if not name or not version:
            raise RegistryError(f"{source}: its {CONFIG_FILE} has no name or version")
        stem = _safe_name(f"{name}-{version}")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=_TEMP_PREFIX))
        try:
            if source.is_file():
                target = self.root / f"{stem}.zip"
                staged = staging / "bundle.zip"
                shutil.copyfile(source, staged)
            else:
                target = self.root / stem
                staged = staging / "bundle"
                shutil.copytree(source, staged, ignore=shutil.ignore_patterns("__pycache__", ".*"))
            # set aside what this bundle replaces (a folder replaces a zip of the same bundle and back), and
            # put it back if the final move fails, so a failed import never loses the cached copy
            moved: list[tuple[Path, Path]] = []
            try:
                for index, existing in enumerate((self.root / f"{stem}.zip", self.root / stem)):
                    if existing.exists():
                        aside = staging / f"previous-{index}"
                        os.replace(existing, aside)
                        moved.append((aside, existing))
                os.replace(staged, target)
            except BaseException:
                for aside, existing in reversed(moved):
                    os.replace(aside, existing)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("imported bundle %s==%s from %s into %s", name, version, source, target)
        return CachedBundle(
            name=name, version=version, path=target, vocabulary=self._vocabulary(config, target)
        )

    # -- the cache -------------------------------------------------------------------------------------

    def cached(self) -> list[CachedBundle]:
        """The downloaded and imported bundles in the cache; unreadable items are skipped."""
        if not self.root.is_dir():
            return []
        found = []
        for item in sorted(self.root.iterdir()):
            if item.name.startswith(_TEMP_PREFIX) or not (item.suffix == ".zip" or item.is_dir()):
                continue
            try:
                config = read_bundle_config(item)
            except RegistryError as err:
                logger.warning("skipping %s in the bundle cache: %s", item, err)
                continue
            found.append(
                CachedBundle(
                    name=str(config.get("name")),
                    version=str(config.get("version")),
                    path=item,
                    vocabulary=self._vocabulary(config, item),
                )
            )
        return found

    def clear(self) -> int:
        """Remove every downloaded and imported bundle (built-ins stay); return how many were removed."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for item in self.root.iterdir():
            if item.is_dir():
                shutil.rmtree(item)
            else:
                item.unlink()
            removed += not item.name.startswith(_TEMP_PREFIX)
        logger.info("cleared %d bundle(s) from %s", removed, self.root)
        return removed

    @staticmethod
    def _vocabulary(config: dict[str, Any], path: Path) -> list[str]:
        """The vocabulary of a cached bundle whose config was read already; [] when it cannot be read."""
        try:
            return _config_vocabulary(config, path)
        except RegistryError:
            return []


def _urlopen(url: str) -> Any:
    """Open ``url`` for streaming (60 s socket timeout)."""
    return urllib.request.urlopen(url, timeout=60)  # noqa: S310 - registry URLs are https:// or file://


def _content_length(response: Any) -> int | None:
    """The Content-Length of a urllib response, None when absent."""
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
