"""Conversion of a downloaded MONAI weights file or Universal Model checkpoint into one of our bundles."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .cache import SOURCE_FILE
from .entries import RegistryEntry, RegistryError
from .state import now


def convert_download(
    entry: RegistryEntry, weights: Path, output: Path, digests: Mapping[str, str], resources: Path
) -> Path:
    """Write our bundle for a "monai" or "universal" ``entry`` from its downloaded ``weights`` at ``output``.

    The bundle folder gets a ``source.json`` (entry, url, md5, sha256, date of the accepted download). MONAI
    weights are converted with the entry's translated config (``resources/<import_config>``) by
    :func:`TextGuidedSegLib.importers.monai_bundle.build_bundle_from_weights`, Universal Model checkpoints by
    :func:`TextGuidedSegLib.importers.universal.import_universal_checkpoint` (imported here: they need torch).
    """
    if entry.kind == "monai":
        config = translated_config(entry, resources)
        try:
            from TextGuidedSegLib.importers.monai_bundle import build_bundle_from_weights
        except ImportError as err:
            raise RegistryError(
                f"bundle {entry.key}: this installation cannot convert MONAI weights ({err})"
            ) from err
        written = Path(build_bundle_from_weights(config, weights, output))
    elif entry.kind == "universal":
        try:
            from TextGuidedSegLib.importers.universal import import_universal_checkpoint
        except ImportError as err:
            raise RegistryError(
                f"bundle {entry.key}: this installation cannot convert Universal Model checkpoints ({err})"
            ) from err
        written = Path(import_universal_checkpoint(weights, output))
    else:
        raise RegistryError(f"bundle {entry.key}: a {entry.kind!r} entry needs no conversion")
    source = {
        "name": entry.name,
        "version": entry.version,
        "kind": entry.kind,
        "url": entry.url,
        "md5": digests["md5"],
        "sha256": digests["sha256"],
        "license": entry.license,
        "downloaded": now(),
    }
    if written.is_dir():
        (written / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    return written


def translated_config(entry: RegistryEntry, resources: Path) -> dict[str, Any]:
    """A "monai" entry's translated bundle config (``resources/<import_config>``), named as the entry."""
    path = resources / entry.import_config
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RegistryError(
            f"bundle {entry.key}: cannot read its translated config {path} ({err}); reinstall the extension"
        ) from err
    if not isinstance(config, dict):
        raise RegistryError(f"bundle {entry.key}: {path} is not a JSON object")
    return {**config, "name": entry.name, "version": entry.version}
