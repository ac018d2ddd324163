"""What a bundle is, read from its files alone: ``config.json``, the checksums, the safetensors headers and
the embedding cache's index. Nothing here imports torch or MONAI, so ``textguidedseg info`` answers at once.

It checks what can be checked without building the model: every file against its recorded sha256 and
every weight file's header. Whether the weights fit the architecture is
:func:`TextGuidedSegLib.bundle.load_bundle`'s check (``textguidedseg info --load``).

Example::

    summary = describe_bundle("TextGuidedSegLib/resources/demo_bundle")   # or a bundle .zip
    summary["name"], summary["structures"]   # 'demo_phantom_film_v1', ['Liver', 'Spleen', ...]
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from TextGuidedSegLib.files import extract_zip, sha256_file, verify_checksums
from TextGuidedSegLib.registry import CONFIG_FILE, RegistryError, read_bundle_config
from TextGuidedSegLib.registry.cache import config_vocabulary

__all__ = ["describe_bundle", "safetensors_header"]

#: Where a bundle keeps its prompt -> embedding cache (``bundle.CACHE_DIR``, spelt here to stay torch-free).
CACHE_INDEX = "text_cache/embeddings.json"


def safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) of a ``.safetensors`` file, from its header (no tensor is read).

    Raises:
        RegistryError: the file is no safetensors file (the message names it).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as weights:
            return {
                key: (weights.get_slice(key).get_dtype(), tuple(weights.get_slice(key).get_shape()))
                for key in weights.keys()  # noqa: SIM118  (safe_open is no mapping)
            }
    except (SafetensorError, OSError) as err:
        raise RegistryError(f"{path}: not a readable safetensors file ({err})") from err


def _cached_prompts(folder: Path, source: Path) -> int:
    """Number of prompts in the bundle's embedding cache (0 without one)."""
    index = folder / CACHE_INDEX
    if not index.is_file():
        return 0
    try:
        return len(json.loads(index.read_text(encoding="utf-8"))["prompts"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RegistryError(f"{source}: cannot read {CACHE_INDEX} ({err})") from err


def _describe_folder(folder: Path, source: Path, verify: bool) -> dict[str, Any]:
    """The description of a bundle folder (``source`` names it in errors: the folder or its .zip)."""
    config = read_bundle_config(folder)
    checksums = config.get("checksums") or {}
    if verify:
        verify_checksums(folder, checksums, source, CONFIG_FILE, RegistryError)
    weight_files = sorted(
        name for name in checksums if name.endswith(".safetensors") and not name.startswith("text_cache/")
    )
    weights = tensors = 0
    for name in weight_files:
        header = safetensors_header(folder / name)
        tensors += len(header)
        weights += sum(math.prod(shape) for _, shape in header.values())
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    encoder = config.get("text_encoder")
    return {
        "name": config.get("name"),
        "version": config.get("version"),
        "description": config.get("description", ""),
        "license": config.get("license", ""),
        "intended_use": config.get("intended_use"),
        "format_version": config.get("format_version", 0),
        "architecture": model.get("architecture"),
        "network": model.get("network"),
        "mode": model.get("mode"),
        "feature_size": model.get("feature_size"),
        "weights": weights,
        "tensors": tensors,
        "files": {name: (folder / name).stat().st_size for name in checksums if (folder / name).is_file()},
        "text_encoder": encoder if isinstance(encoder, dict) else None,
        "cached_prompts": _cached_prompts(folder, source),
        "structures": config_vocabulary(config, source),
        "preprocessing": config.get("preprocessing", {}),
        "inference": config.get("inference", {}),
        "checksums_verified": verify,
    }


def describe_bundle(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """A JSON-safe description of a bundle folder or .zip read from its files, without torch.

    Keys as :func:`TextGuidedSegLib.bundle.bundle_summary` where they mean the same, except that the stored
    weights are counted from the safetensors headers (``weights``: values, ``tensors``: arrays; buffers
    included) instead of the built model's parameters; plus ``files`` (name -> bytes), ``sha256`` (of the
    .zip, or of a folder's ``config.json``, as the sidecar records it) and ``checksums_verified``.

    Raises:
        RegistryError: no readable ``config.json``, a listed file missing or modified, or a weight file
            that is no safetensors file; the message names the file.
    """
    source = Path(path)
    if source.is_file():
        with tempfile.TemporaryDirectory(prefix="textguidedseg-info-") as tmp:
            extract_zip(source, Path(tmp), RegistryError)  # confined: no "..", links or zip bombs
            configs = sorted(Path(tmp).rglob(CONFIG_FILE), key=lambda p: len(p.parts))
            if not configs:
                raise RegistryError(f"{source}: no {CONFIG_FILE} inside; is this a TextGuidedSeg bundle?")
            summary = _describe_folder(configs[0].parent, source, verify)
    elif (source / CONFIG_FILE).is_file():
        summary = _describe_folder(source, source, verify)
    else:
        raise RegistryError(f"{source}: no {CONFIG_FILE}; is this a TextGuidedSeg bundle folder?")
    digest = sha256_file(source if source.is_file() else source / CONFIG_FILE)
    return {**summary, "source": str(source), "sha256": digest}
