"""Registry entries: what each downloadable or built-in bundle is, where it comes from, how it is checked."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGISTRY_FORMAT_VERSION = 1
#: Folder that built-in entries' ``builtin`` and ``import_config`` paths are relative to.
RESOURCES_DIR = Path(__file__).resolve().parent.parent / "resources"
#: The registry shipped with the library.
DEFAULT_REGISTRY = RESOURCES_DIR / "registry.json"
#: Environment variable naming another registry file (e.g. an in-house mirror) to use instead.
REGISTRY_ENV = "TEXTGUIDEDSEG_REGISTRY"

#: Entry kinds: our bundle .zip, a published MONAI weights file (converted with a shipped translated config),
#: a CLIP-Driven Universal Model checkpoint (converted by the universal importer).
KINDS = ("bundle", "monai", "universal")
_HEX_DIGITS = {"sha256": 64, "md5": 32}


class RegistryError(ValueError):
    """A registry file is malformed, an entry is unknown, or a download failed its checks."""


class LicenseNotAccepted(RegistryError):
    """An entry's licence must be accepted before it is downloaded or used; ``entry`` names it."""

    def __init__(self, entry: RegistryEntry) -> None:
        self.entry = entry
        super().__init__(
            f"bundle {entry.name} is licensed under {entry.license or 'its own terms'}"
            f"{f' ({entry.license_url})' if entry.license_url else ''}, which you must accept before it is "
            f"downloaded or used: run `textguidedseg bundles pull {entry.name} --accept-license` (Python: "
            "BundleStore.accept_license(entry) or fetch(..., accept_license=True))"
        )


@dataclass(frozen=True)
class RegistryEntry:
    """One downloadable (or built-in) bundle.

    Attributes:
        name: the name users type (``--bundle NAME``, ``bundles pull NAME``).
        version: the version of its weights (for MONAI bundles: their ``metadata.json`` version).
        kind: "bundle" (our .zip at ``url``), "monai" (a MONAI weights file at ``url``, converted with the
            translated config ``import_config``) or "universal" (a Universal Model checkpoint at ``url``).
        description: one paragraph for users.
        license: licence of the weights (SPDX-style, e.g. "Apache-2.0", "CC-BY-NC-ND-4.0").
        license_url: where the licence text is.
        license_acceptance: the user must accept the licence before it is downloaded or used.
        vocabulary: display names of the structures it segments, in channel order (for completion before
            download).
        url: where the file is downloaded from (``https://`` or ``file://``); None for a built-in.
        sha256: hex sha256 of the file at ``url``.
        md5: hex md5 of the file at ``url`` (as MONAI's ``large_files.yml`` publishes it).
        builtin: for a bundle shipped with the library, its path relative to ``TextGuidedSegLib/resources``.
        import_config: for a "monai" entry, our translated bundle config relative to ``resources``.
        size: download size in bytes, when known (shown to the user before downloading).
    """

    name: str
    version: str
    kind: str = "bundle"
    description: str = ""
    license: str = ""
    license_url: str | None = None
    license_acceptance: bool = False
    vocabulary: tuple[str, ...] = ()
    url: str | None = None
    sha256: str | None = None
    md5: str | None = None
    builtin: str | None = None
    import_config: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        for key in ("name", "version"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise RegistryError(f"registry entry: {key} must be a non-empty string, got {value!r}")
        if self.kind not in KINDS:
            raise RegistryError(
                f"registry entry {self.key}: kind must be one of {list(KINDS)}, got {self.kind!r}"
            )
        for algorithm, digits in _HEX_DIGITS.items():
            value = getattr(self, algorithm)
            if value is not None and not re.fullmatch(f"[0-9a-f]{{{digits}}}", str(value)):
                raise RegistryError(
                    f"registry entry {self.key}: '{algorithm}' must be {digits} lower-case hex digits, "
                    f"got {value!r}"
                )
        if (self.url is None) == (self.builtin is None):
            raise RegistryError(
                f"registry entry {self.key}: give exactly one of 'url' (downloadable) or 'builtin' (shipped)"
            )
        if self.builtin is not None and self.kind != "bundle":
            raise RegistryError(f"registry entry {self.key}: only a 'bundle' entry can be built in")
        if self.kind == "bundle" and self.url is not None and self.sha256 is None:
            raise RegistryError(
                f"registry entry {self.key}: a downloadable bundle needs 'sha256', 64 lower-case hex digits"
            )
        if self.kind == "monai":
            if self.sha256 is None and self.md5 is None:
                raise RegistryError(f"registry entry {self.key}: a 'monai' entry needs 'md5' or 'sha256'")
            if self.import_config is None:
                raise RegistryError(
                    f"registry entry {self.key}: a 'monai' entry needs 'import_config', the translated "
                    "config under resources/ (e.g. monai/<name>.json)"
                )
        elif self.import_config is not None:
            raise RegistryError(f"registry entry {self.key}: 'import_config' is for 'monai' entries only")
        for key in ("builtin", "import_config"):
            value = getattr(self, key)
            if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts):
                raise RegistryError(f"registry entry {self.key}: '{key}' must be a path inside resources/")
        if self.size is not None and (not isinstance(self.size, int) or self.size <= 0):
            raise RegistryError(f"registry entry {self.key}: 'size' must be a byte count > 0 or null")

    @property
    def key(self) -> str:
        """``name==version``: how the entry is named in settings and in the user interface."""
        return f"{self.name}=={self.version}"

    @property
    def file_stem(self) -> str:
        """File-system safe ``name-version``: the entry's file or folder name in the cache."""
        return safe_name(f"{self.name}-{self.version}")

    @property
    def is_builtin(self) -> bool:
        """True for a bundle shipped with the library (available offline)."""
        return self.builtin is not None

    @property
    def structures(self) -> tuple[str, ...]:
        """The structures it segments (same as :attr:`vocabulary`)."""
        return self.vocabulary

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping; :meth:`from_dict` restores an equal entry."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["vocabulary"] = list(self.vocabulary)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegistryEntry:
        """Build an entry from a registry JSON item; unknown keys raise a RegistryError naming them."""
        if not isinstance(data, dict):
            raise RegistryError(f"registry entry must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise RegistryError(f"registry entry {data.get('name')!r}: unknown key(s) {unknown}")
        return cls(**data)


def safe_name(text: str) -> str:
    """Replace characters unsafe in file names (keeps letters, digits, ``.``, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def version_key(version: str) -> tuple:
    """Sort key of a version string: numbers compare as numbers ("0.10.0" > "0.9.1")."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[.+-]", version)
    )


def load_registry(path: str | Path | None = None) -> list[RegistryEntry]:
    """Read a registry file into its entries, in file order.

    The default file is ``$TEXTGUIDEDSEG_REGISTRY`` when that variable is set, else the shipped registry.

    Raises:
        RegistryError: the file is not valid JSON, has another ``format_version``, or holds a malformed or
            duplicate entry.
    """
    if path is None:
        path = os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY
    path = Path(path)
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
