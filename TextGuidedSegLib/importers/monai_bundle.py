"""MONAI model-zoo bundles -> our bundles: configuration translated as data, weights checked key by key.

:func:`import_monai_bundle` reads a MONAI bundle folder or ``.zip`` (``configs/metadata.json``,
``configs/inference.json``, ``models/*.pt``, ``LICENSE``), translates it with :func:`translate_monai_bundle`
and writes one of our bundles with :func:`build_bundle_from_weights` (config.json + model.safetensors).

The translation (``inference.json`` read by :class:`MonaiConfigReader`, nothing evaluated):

- ``network_def``: ``_target_`` in :data:`MONAI_NETWORKS`, its arguments as data (SwinUNETR's removed
  ``img_size`` is dropped, with a log line);
- ``preprocessing``: ``Orientationd`` (RAS), ``Spacingd`` (pixdim, mode), ``ScaleIntensityRanged``,
  ``NormalizeIntensityd`` (nonzero), ``ScaleIntensityd`` (minv, maxv), ``CropForegroundd`` (default rule,
  after the intensity steps); ``LoadImaged``, ``EnsureTyped``, ``EnsureChannelFirstd`` are what our reader
  does anyway; any other transform or argument is refused, naming the entry;
- ``inferer``: ``SlidingWindowInferer`` (roi_size, sw_batch_size, overlap, mode, padding_mode);
- ``postprocessing``: ``Activationsd`` (softmax / sigmoid), ``AsDiscreted`` (argmax, threshold), ``Invertd``
  (``nearest_interp``; argmax before it, or nearest, inverts labels; otherwise probabilities), ``SaveImaged``
  ignored;
- ``metadata.json``: the output ``channel_def`` -> taxonomy (the anatomy vocabulary), version, description;
  ``LICENSE`` -> licence.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from TextGuidedSegLib.bundle import BUNDLE_FORMAT_VERSION, BundleConfig, save_bundle
from TextGuidedSegLib.files import extract_zip
from TextGuidedSegLib.importers.monai_config import MonaiConfigError, MonaiConfigReader, parse_conditional
from TextGuidedSegLib.importers.monai_translation import (
    channel_taxonomy,
    read_inference,
    read_licence,
    read_network,
    read_postprocessing,
    read_preprocessing,
)
from TextGuidedSegLib.models.monai_network import (
    MONAI_ARCHITECTURE,
    MonaiNetworkConfig,
    MonaiNetworkModel,
)

__all__ = [
    "MonaiConfigError",
    "SHIPPED_TRANSLATIONS",
    "build_bundle_from_weights",
    "import_monai_bundle",
    "read_monai_weights",
    "shipped_translation",
    "translate_monai_bundle",
    "write_shipped_translations",
]

logger = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent.parent / "resources" / "monai"
#: Our registry entries built from MONAI bundles: entry name -> (MONAI bundle folder, overrides).
SHIPPED_TRANSLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "wholebody_ct_highres": ("wholeBody_ct_segmentation", {"displayable_configs#highres": True}),
    "wholebody_ct_lowres": ("wholeBody_ct_segmentation", {"displayable_configs#highres": False}),
    "swin_unetr_btcv": ("swin_unetr_btcv_segmentation", {}),
    "spleen_ct": ("spleen_ct_segmentation", {}),
}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "monai_bundle"


def translate_monai_bundle(
    folder: str | Path, *, overrides: Mapping[str, Any] | None = None, name: str | None = None
) -> dict[str, Any]:
    """Translate a MONAI bundle folder into our ``config.json`` content (without checksums).

    Args:
        folder: the bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``LICENSE``).
        overrides: ``{"a#b": value}`` set in ``inference.json`` before resolution.
        name: our bundle's name (default: the folder's name, snake_case).

    Raises:
        MonaiConfigError: an entry, transform or argument the translation cannot honour (named).
    """
    folder = Path(folder)
    reader = MonaiConfigReader.from_file(folder / "configs" / "inference.json", overrides)
    try:
        metadata = json.loads((folder / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MonaiConfigError(f"{folder}/configs/metadata.json: cannot read it ({err})") from err
    network, kwargs = read_network(reader)
    activation, invert, threshold = read_postprocessing(reader)
    model = MonaiNetworkConfig(
        network=network,
        kwargs=kwargs,
        activation=activation,
        invert=invert,
        source=f"MONAI model zoo {folder.name} {metadata.get('version', '')}".strip(),
    )
    name = name or _slug(folder.name)
    description = str(metadata.get("description", "")).strip()
    taxonomy = channel_taxonomy(metadata, model.num_classes, background=activation == "softmax", name=name)
    inference = read_inference(reader)
    if threshold is not None:
        inference["threshold"] = threshold
    config = BundleConfig.from_dict(
        {
            "format_version": BUNDLE_FORMAT_VERSION,
            "name": name,
            "version": str(metadata.get("version", "0.0.0")),
            "description": f"{description} (MONAI model zoo: {model.source[len('MONAI model zoo ') :]})",
            "license": read_licence(folder),
            "model": model.to_dict(),
            "taxonomy": taxonomy.to_dict(),
            "text_encoder": None,
            "preprocessing": read_preprocessing(reader),
            "inference": inference,
            "intended_use": "published",  # the model zoo's weights, as released
        }
    )
    data = config.to_dict()
    data.pop("library_version", None)
    return data


def read_monai_weights(path: str | Path) -> dict[str, Any]:
    """A published MONAI checkpoint -> the network's state dict (never unpickles: ``weights_only=True``).

    Accepts a plain state dict or ``{"model" | "state_dict" | "net": state dict}``; a DDP ``module.`` prefix
    is removed.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise MonaiConfigError(f"weights {path} do not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors of every kind
        raise MonaiConfigError(
            f"{path}: cannot read it as a weights-only PyTorch checkpoint ({err})"
        ) from err
    if isinstance(data, dict) and not all(isinstance(v, torch.Tensor) for v in data.values()):
        inner = [k for k in ("model", "state_dict", "net") if isinstance(data.get(k), dict)]
        if not inner:
            raise MonaiConfigError(
                f"{path}: not a state dict, nor {{'model' | 'state_dict' | 'net': state dict}} "
                f"(top-level keys: {sorted(map(str, data))[:8]})"
            )
        data = data[inner[0]]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise MonaiConfigError(f"{path}: the state dict holds values that are not tensors")
    if data and all(k.startswith("module.") for k in data):
        data = {k[len("module.") :]: v for k, v in data.items()}
    return data


def build_bundle_from_weights(
    config: str | Path | Mapping[str, Any],
    weights: str | Path,
    output: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """Our bundle from a translated ``config.json`` (a path or its content) and published MONAI weights.

    Args:
        config: a translation by :func:`translate_monai_bundle` (e.g. ``resources/monai/spleen_ct.json``).
        weights: the published ``.pt`` (a state dict, possibly wrapped or with ``module.`` prefixes).
        output: bundle folder or ``.zip`` to write.
        overwrite: replace an existing bundle at ``output``.

    Raises:
        BundleError: the config is not a ``monai`` translation, or the weights do not match its network (the
            first missing, unexpected or mis-shaped key is named).
    """
    if not isinstance(config, Mapping):
        config = json.loads(Path(config).read_text(encoding="utf-8"))
    bundle_config = BundleConfig.from_dict(dict(config))
    if bundle_config.model.architecture != MONAI_ARCHITECTURE:
        raise MonaiConfigError(f"config: architecture {bundle_config.model.architecture!r} is not 'monai'")
    model = MonaiNetworkModel(bundle_config.model)  # type: ignore[arg-type]
    model.load_network_state(read_monai_weights(weights), f"weights {weights}")
    from TextGuidedSegLib.text import EmbeddingCache

    cache = EmbeddingCache("none", 1)  # text-free: nothing cached
    return save_bundle(output, model, bundle_config, cache, overwrite=overwrite)  # type: ignore[arg-type]


def _bundle_folder(root: Path, source: Path) -> Path:
    configs = sorted(root.rglob("configs/inference.json"), key=lambda p: len(p.parts))
    if not configs:
        raise MonaiConfigError(f"{source}: no configs/inference.json; is this a MONAI bundle?")
    return configs[0].parent.parent


def _choose_branch(reader: MonaiConfigReader, weights: Path, overrides: dict[str, Any]) -> None:
    """Set the condition of a ``"$'a.pt' if @x else 'b.pt'"`` entry that names ``weights`` (wholeBody)."""
    for key, value in reader.data.items():
        conditional = parse_conditional(value) if isinstance(value, str) else None
        if conditional is None or conditional.ref in overrides:
            continue
        condition = conditional.condition_for(weights.name)
        if condition is not None:
            overrides[conditional.ref] = condition
            logger.info("%s names %s: setting %s = %s", key, weights.name, conditional.ref, condition)


def import_monai_bundle(
    source: str | Path,
    weights: str | Path | None = None,
    output: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Import a MONAI bundle folder or ``.zip`` as one of our bundles.

    Args:
        source: the MONAI bundle (``configs/metadata.json``, ``configs/inference.json`` [, ``models/*.pt``]).
        weights: the ``.pt`` to import (default: ``models/<modelname>``, else ``models/model.pt``).
            When the config's ``modelname`` chooses between files by a condition (wholeBody's
            ``highres``), naming one of them sets that condition.
        output: our bundle folder or ``.zip`` (default: ``./<name>``).
        overrides: ``{"a#b": value}`` entries of ``inference.json`` set before translation.
        name: our bundle's name (default: the MONAI bundle's folder name, plus the weights' suffix, e.g.
            ``wholebody_ct_segmentation_lowres``).
        overwrite: replace an existing bundle at ``output``.

    Returns:
        The path written.
    """
    source = Path(source)
    if not source.exists():
        raise MonaiConfigError(f"MONAI bundle {source} does not exist (pass its folder or .zip)")
    with tempfile.TemporaryDirectory(prefix="textguidedseg-monai-") as tmp:
        if source.is_file():
            extract_zip(source, Path(tmp), MonaiConfigError)  # confined: TextGuidedSegLib.files
            folder = _bundle_folder(Path(tmp), source)
        else:
            folder = _bundle_folder(source, source)
        overrides = dict(overrides or {})
        reader = MonaiConfigReader.from_file(folder / "configs" / "inference.json", overrides)
        if weights is not None:
            _choose_branch(reader, Path(weights), overrides)
            reader = MonaiConfigReader.from_file(folder / "configs" / "inference.json", overrides)
        else:
            modelname = reader.get("modelname", "model.pt")
            weights = folder / "models" / str(modelname)
            if not Path(weights).is_file():
                raise MonaiConfigError(
                    f"{source}: no weights at models/{modelname}; pass them with --weights"
                )
        stem = Path(weights).name.split(".")[0]
        suffix = stem[len("model") :] if stem.startswith("model") else f"_{stem}"
        name = name or _slug(folder.name + suffix)
        config = translate_monai_bundle(folder, overrides=overrides, name=name)
        output = Path(output) if output is not None else Path.cwd() / name
        path = build_bundle_from_weights(config, weights, output, overwrite=overwrite)
    logger.info("imported MONAI bundle %s (%s) as %s", source, Path(weights).name, path)
    return path


def shipped_translation(entry: str) -> dict[str, Any]:
    """The shipped translation ``resources/monai/<entry>.json`` (for :func:`build_bundle_from_weights`)."""
    path = RESOURCES / f"{entry}.json"
    if not path.is_file():
        raise MonaiConfigError(
            f"no shipped MONAI translation {entry!r}; available: {sorted(SHIPPED_TRANSLATIONS)}"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def write_shipped_translations(zoo: str | Path, output: str | Path = RESOURCES) -> list[Path]:
    """Regenerate ``resources/monai/*.json`` from the MONAI bundle folders under ``zoo``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for entry, (folder, overrides) in SHIPPED_TRANSLATIONS.items():
        config = translate_monai_bundle(Path(zoo) / folder, overrides=overrides, name=entry)
        path = output / f"{entry}.json"
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m TextGuidedSegLib.importers.monai_bundle ZOO``: regenerate the shipped translations."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "zoo", help="folder holding the MONAI bundle folders (e.g. ../shared/data/monai_model_zoo)"
    )
    args = parser.parse_args(argv)
    for path in write_shipped_translations(args.zoo):
        print(path)


if __name__ == "__main__":
    main()
