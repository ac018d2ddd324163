"""The per-user bundle cache: registry downloads (with conversion of MONAI and Universal Model weights),
offline imports, licence acceptance, name resolution and the default bundle."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .cache import (
    CONFIG_FILE,
    SOURCE_FILE,
    TEMP_PREFIX,
    CachedBundle,
    config_vocabulary,
    default_cache_dir,
    install,
    read_bundle_config,
)
from .convert import convert_download
from .download import Opener, ProgressCallback, check_digests, download
from .entries import (
    RESOURCES_DIR,
    LicenseNotAccepted,
    RegistryEntry,
    RegistryError,
    load_registry,
    safe_name,
    version_key,
)
from .state import UserState, read_json

logger = logging.getLogger("TextGuidedSegLib.registry")

#: The built-in demo bundle (phantoms only).
DEMO_BUNDLE = "demo_phantom_film_v1"
#: ``segment`` without ``--bundle`` uses the first installed of these, else :data:`DEMO_BUNDLE`. Licence-gated
#: entries are never a default.
DEFAULT_PREFERENCE = ("wholebody_ct_highres", "wholebody_ct_lowres", "swin_unetr_btcv")


class BundleStore:
    """The per-user bundle cache: registry downloads and offline imports.

    Args:
        root: the cache folder (created on first write); default :func:`default_cache_dir`.
        entries: registry entries; default :func:`load_registry` of the shipped registry.
        resources: folder that built-in entries and translated configs are relative to (tests point it
            elsewhere).
        state_dir: folder of the per-user state (accepted licences, first-download hashes); default the
            parent of ``root`` (``$TEXTGUIDEDSEG_HOME``).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        entries: Sequence[RegistryEntry] | None = None,
        resources: str | Path | None = None,
        state_dir: str | Path | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.entries = list(entries) if entries is not None else load_registry()
        self.resources = Path(resources) if resources is not None else RESOURCES_DIR
        self.state = UserState(state_dir if state_dir is not None else self.root.parent)

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
        return max(matches, key=lambda e: version_key(e.version))

    def find(self, name: str) -> RegistryEntry | None:
        """The registry entry ``name`` or ``name==version``; None when the registry has none."""
        try:
            return self.entry(name)
        except RegistryError:
            return None

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

    # -- licences --------------------------------------------------------------------------------------

    def is_license_accepted(self, entry: RegistryEntry) -> bool:
        """True when ``entry`` needs no acceptance or the user accepted its licence."""
        return not entry.license_acceptance or self.state.is_license_accepted(entry)

    def accept_license(self, entry: RegistryEntry) -> None:
        """Remember (per user) that the user accepted ``entry``'s licence."""
        if entry.license_acceptance:
            self.state.accept_license(entry)

    def check_license(self, entry: RegistryEntry) -> None:
        """Raise :class:`LicenseNotAccepted` (naming ``--accept-license``) unless ``entry`` may be used."""
        if not self.is_license_accepted(entry):
            raise LicenseNotAccepted(entry)

    # -- download --------------------------------------------------------------------------------------

    def fetch(
        self,
        entry: RegistryEntry,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        opener: Opener | None = None,
        accept_license: bool = False,
        local_file: str | Path | None = None,
    ) -> Path:
        """Return ``entry``'s local path, downloading (and for "monai"/"universal" entries converting) it
        first when it is not in the cache.

        Args:
            entry: a registry entry.
            progress: ``progress(done_bytes, total_bytes)`` during the download.
            cancel: set it to stop the download (raises :class:`DownloadCancelled`).
            opener: ``opener(url)`` returning a readable binary response (default ``urllib.request.urlopen``;
                tests pass a fake).
            accept_license: accept (and remember) the entry's licence; never implied.
            local_file: a copy of the file at the entry's url, downloaded elsewhere (blocked networks); it is
                checked and converted exactly as a download.

        Raises:
            LicenseNotAccepted: the entry's licence must be accepted first.
            RegistryError: a built-in bundle is missing from the installation, the download failed or its md5
                or sha256 differs from the registry's; nothing is left in the cache.
        """
        if accept_license:
            self.accept_license(entry)
        self.check_license(entry)
        local = self.path(entry)
        if local is not None:
            return local
        if entry.is_builtin:
            raise RegistryError(
                f"bundle {entry.key} should ship with TextGuidedSegLib at {self.resources / entry.builtin} "
                "but is not there; reinstall the extension or import the bundle from a folder or .zip"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=TEMP_PREFIX))
        try:
            suffix = ".zip" if entry.kind == "bundle" else Path(entry.url.split("?")[0]).suffix or ".pt"
            downloaded = staging / f"download{suffix}"
            url = Path(local_file).resolve().as_uri() if local_file is not None else entry.url
            logger.info("downloading bundle %s (%s) from %s", entry.key, entry.kind, url)
            digests = download(url, downloaded, f"bundle {entry.key}", opener, entry.size, progress, cancel)
            check_digests(digests, {"md5": entry.md5, "sha256": entry.sha256}, f"bundle {entry.key}", url)
            first_use = entry.md5 is None and entry.sha256 is None
            if first_use:
                self._check_first_use(entry, digests["sha256"])
            if entry.kind == "bundle":
                target = install(self.root, downloaded, entry.file_stem, staging)
            else:
                target = install(
                    self.root,
                    convert_download(entry, downloaded, staging / "bundle", digests, self.resources),
                    entry.file_stem,
                    staging,
                )
            if first_use:
                self.state.remember_sha256(entry.url, digests["sha256"])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("bundle %s saved to %s", entry.key, target)
        return target

    def _check_first_use(self, entry: RegistryEntry, sha256: str) -> None:
        """For an entry without a published checksum: the download must match the first one's sha256."""
        known = self.state.known_sha256(entry.url)
        if known is None:
            logger.warning(
                "bundle %s: the publisher gives no checksum; trusting this first download (sha256 %s) and "
                "checking later downloads against it",
                entry.key,
                sha256,
            )
        elif known.get("sha256") != sha256:
            raise RegistryError(
                f"bundle {entry.key} from {entry.url}: sha256 {sha256} differs from {known.get('sha256')}, "
                f"that of the first download ({known.get('first_seen')}); the file changed and was not kept"
            )

    # -- offline import --------------------------------------------------------------------------------

    def import_bundle(self, source: str | Path, verify: Callable[[Path], Any] | None = None) -> CachedBundle:
        """Copy a bundle folder or .zip into the cache after checking it; replaces the same name and version.

        Args:
            source: a bundle folder or .zip (e.g. copied from a USB stick where downloads are blocked).
            verify: called with ``source`` to check it, raising on a bad bundle (default
                :func:`TextGuidedSegLib.bundle.load_bundle`, which checks every checksum and weight).

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
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=TEMP_PREFIX))
        try:
            if source.is_file():
                staged = staging / "bundle.zip"
                shutil.copyfile(source, staged)
            else:
                staged = staging / "bundle"
                shutil.copytree(source, staged, ignore=shutil.ignore_patterns("__pycache__", ".*"))
            target = install(self.root, staged, safe_name(f"{name}-{version}"), staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("imported bundle %s==%s from %s into %s", name, version, source, target)
        return CachedBundle(name, version, target, self._vocabulary(config, target))

    def import_monai(
        self,
        source: str | Path,
        weights: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> CachedBundle:
        """Convert a MONAI bundle folder or .zip into one of our bundles in the cache (replacing the same name
        and version); see :func:`TextGuidedSegLib.importers.monai_bundle.import_monai_bundle`."""
        from TextGuidedSegLib.importers.monai_bundle import import_monai_bundle

        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=TEMP_PREFIX))
        try:
            written = Path(
                import_monai_bundle(source, weights, staging / "bundle", overrides=overrides, name=name)
            )
            config = read_bundle_config(written)
            bundle_name, version = str(config.get("name", "")), str(config.get("version", ""))
            target = install(self.root, written, safe_name(f"{bundle_name}-{version}"), staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("imported MONAI bundle %s as %s==%s into %s", source, bundle_name, version, target)
        return CachedBundle(bundle_name, version, target, self._vocabulary(config, target))

    # -- the cache -------------------------------------------------------------------------------------

    def cached(self) -> list[CachedBundle]:
        """The downloaded and imported bundles in the cache; unreadable items are skipped."""
        if not self.root.is_dir():
            return []
        found = []
        for item in sorted(self.root.iterdir()):
            if item.name.startswith(TEMP_PREFIX) or not (item.suffix == ".zip" or item.is_dir()):
                continue
            try:
                config = read_bundle_config(item)
                source = read_json(item / SOURCE_FILE) if item.is_dir() else {}
            except RegistryError as err:
                logger.warning("skipping %s in the bundle cache: %s", item, err)
                continue
            name = source.get("name") or config.get("name")
            version = source.get("version") or config.get("version")
            vocabulary = self._vocabulary(config, item)
            found.append(CachedBundle(str(name), str(version), item, vocabulary, source or None))
        return found

    def resolve(self, bundle: str | Path) -> Path:
        """The local path of ``bundle``: a folder or .zip as given, a registry name (``name`` or
        ``name==version``) or an installed bundle's name. Never downloads.

        Raises:
            LicenseNotAccepted: a licence-gated entry whose licence was not accepted.
            RegistryError: unknown, or a registry entry not installed yet (the message gives the
                ``textguidedseg bundles pull NAME`` command).
        """
        path = Path(bundle).expanduser()
        if path.exists():
            return path
        text = str(bundle)
        entry = self.find(text)
        if entry is not None:
            self.check_license(entry)
            local = self.path(entry)
            if local is not None:
                return local
            if not entry.is_builtin:
                size = f", {entry.size / 1e6:.0f} MB" if entry.size else ""
                raise RegistryError(
                    f"bundle {entry.name} is not installed: run `textguidedseg bundles pull {entry.name}` "
                    f"(downloads {entry.url}{size}) or import it with `textguidedseg bundles import PATH`"
                )
            return self.fetch(entry)  # raises: the built-in bundle is missing from this installation
        for cached in self.cached():
            if text in (cached.key, cached.name):
                return cached.path
        raise RegistryError(
            f"bundle {text!r} is no file or folder, and neither a registry entry nor an installed bundle "
            f"(registry: {', '.join(e.name for e in self.entries) or 'empty'}); "
            "see `textguidedseg bundles list`"
        )

    def default_bundle(self, preference: Sequence[str] = DEFAULT_PREFERENCE) -> RegistryEntry:
        """The bundle used when none is named: the first installed entry of ``preference`` (licence-free or
        accepted), else the built-in demo :data:`DEMO_BUNDLE`."""
        for name in preference:
            entry = self.find(name)
            if entry is not None and self.is_available(entry) and self.is_license_accepted(entry):
                return entry
        return self.entry(DEMO_BUNDLE)

    def remove(self, name: str) -> list[Path]:
        """Delete the cached copies of bundle ``name`` (every version, or ``name==version``); return them.

        Raises:
            RegistryError: ``name`` is built in, or nothing of that name is installed.
        """
        wanted, _, version = name.partition("==")
        builtin = [e for e in self.entries if e.name == wanted and e.is_builtin]
        paths = [
            p
            for e in self.entries
            if e.name == wanted and not e.is_builtin and version in ("", e.version)
            if (p := self.path(e)) is not None
        ]
        paths += [c.path for c in self.cached() if c.name == wanted and version in ("", c.version)]
        paths = sorted(set(paths))
        if not paths:
            if builtin:
                raise RegistryError(
                    f"bundle {wanted} is built in (ships with the library) and cannot be removed"
                )
            raise RegistryError(
                f"bundle {name!r} is not installed in {self.root}; see `textguidedseg bundles list`"
            )
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            logger.info("removed %s", path)
        return paths

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
            removed += not item.name.startswith(TEMP_PREFIX)
        logger.info("cleared %d bundle(s) from %s", removed, self.root)
        return removed

    @staticmethod
    def _vocabulary(config: dict[str, Any], path: Path) -> list[str]:
        """The vocabulary of a cached bundle whose config was read already; [] when it cannot be read."""
        try:
            return config_vocabulary(config, path)
        except RegistryError:
            return []
