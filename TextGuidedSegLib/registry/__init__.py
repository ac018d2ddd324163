"""The bundle registry and the per-user bundle cache: where bundles come from and where they are kept.

The registry (``resources/registry.json``) lists the bundles users can get, each a versioned
:class:`RegistryEntry` of one ``kind``:

- ``"bundle"``: one of our bundle .zip files at ``url``, checked against ``sha256``; or a built-in bundle
  shipped with the library (``builtin``, e.g. the phantom demo), available offline.
- ``"monai"``: a published MONAI model-zoo weights file (``.pt``) at the publisher's ``url``, checked against
  the publisher's ``md5`` (from the bundle's ``large_files.yml``) and/or ``sha256``, then converted into our
  bundle with the shipped translated config ``resources/<import_config>``.
- ``"universal"``: a CLIP-Driven Universal Model checkpoint, converted by the universal importer.

An entry with ``license_acceptance`` (a non-commercial licence) is neither downloaded nor used before the user
accepts its licence (:meth:`BundleStore.accept_license`, ``fetch(..., accept_license=True)``, CLI
``--accept-license``); the acceptance is remembered per user in ``accepted_licenses.json`` beside the cache.

A :class:`BundleStore` is the cache folder. Downloads are streamed in chunks with a progress callback and a
cancel event, checked, converted where needed and moved into place atomically (a temporary folder in the
cache, then ``os.replace``): a failed, cancelled or mismatching download leaves nothing behind. A converted
download's folder holds ``source.json`` (url, md5, sha256, date of what was accepted). Where the publisher
gives no checksum, the sha256 of the first download is recorded (``known_downloads.json``) and later downloads
must match it (trust on first use). Where downloads are blocked, :meth:`BundleStore.import_bundle` copies a
bundle folder or .zip into the cache after checking it, and :meth:`BundleStore.import_monai` converts a MONAI
bundle folder or .zip.

The registry file is ``$TEXTGUIDEDSEG_REGISTRY`` when that variable is set (an in-house mirror), else the
shipped one. The cache folder is ``$TEXTGUIDEDSEG_HOME/bundles`` when that variable is set, else the
platform's per-user cache: ``~/.cache/textguidedseg/bundles`` (or ``$XDG_CACHE_HOME``) on Linux,
``~/Library/Caches/textguidedseg/bundles`` on macOS, ``%LOCALAPPDATA%\\textguidedseg\\bundles`` on Windows.

This package imports neither torch nor Slicer; only imports and conversions load the model stack.

Example::

    store = BundleStore()
    entry = store.entry("spleen_ct")
    path = store.fetch(entry, progress=lambda done, total: print(done, total))
    bundle = load_bundle(path)
"""

from __future__ import annotations

from .cache import (
    CONFIG_FILE,
    HOME_ENV,
    SOURCE_FILE,
    CachedBundle,
    bundle_vocabulary,
    default_cache_dir,
    read_bundle_config,
)
from .download import DownloadCancelled, ProgressCallback, sha256_stream
from .entries import (
    DEFAULT_REGISTRY,
    KINDS,
    REGISTRY_ENV,
    REGISTRY_FORMAT_VERSION,
    RESOURCES_DIR,
    LicenseNotAccepted,
    RegistryEntry,
    RegistryError,
    load_registry,
)
from .store import DEFAULT_PREFERENCE, DEMO_BUNDLE, BundleStore

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_PREFERENCE",
    "DEFAULT_REGISTRY",
    "DEMO_BUNDLE",
    "HOME_ENV",
    "KINDS",
    "REGISTRY_ENV",
    "REGISTRY_FORMAT_VERSION",
    "RESOURCES_DIR",
    "SOURCE_FILE",
    "BundleStore",
    "CachedBundle",
    "DownloadCancelled",
    "LicenseNotAccepted",
    "ProgressCallback",
    "RegistryEntry",
    "RegistryError",
    "bundle_vocabulary",
    "default_cache_dir",
    "load_registry",
    "read_bundle_config",
    "sha256_stream",
]
