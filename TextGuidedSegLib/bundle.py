"""Model bundles: a trained model as a folder (or a .zip of one) that inference can run from alone.

A bundle folder holds::

    config.json                    BundleConfig: model architecture, taxonomy, text encoder, pre-processing,
                                   inference defaults, format version, bundle version, file checksums
    model.safetensors              the model's state dict (no pickle anywhere)
    text_cache/embeddings.json     prompt -> embedding cache (see TextGuidedSegLib.text.EmbeddingCache)
    text_cache/embeddings.safetensors

Loading builds the model from ``config.json`` alone, checks every file against its sha256 and every weight
against the model's state dict, and fails with the offending file or key named.

Every bundle's model is a :class:`~TextGuidedSegLib.models.BundleModel`: it writes its own weight files
(``save_bundle_weights(folder)``). Architectures outside ``TextGuidedSegLib.models``
(:data:`EXTERNAL_ARCHITECTURES`, e.g. ``clipseg``) are rebuilt by their module; config, checksums and
embedding cache work as for every bundle.

``config.json`` carries a ``format_version``: an older one is upgraded in memory by :func:`_migrate`, with a
warning; a newer one is refused, naming the file and the version. Format 2 added ``intended_use``
(:data:`INTENDED_USES`): what the bundle is fit for, which the ``Segmenter`` turns into a caveat on real CT.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from TextGuidedSegLib import __version__
from TextGuidedSegLib.configs import check_keys, dataclass_from_dict, field_names, to_jsonable
from TextGuidedSegLib.files import extract_zip, sha256_file, verify_checksums
from TextGuidedSegLib.models import BundleModel, ModelConfig, TextSegModel, build_model
from TextGuidedSegLib.models.weights import (  # noqa: F401  (re-exported: the bundle's weight-file contract)
    DERIVED_BUFFERS,
    WEIGHTS_FILE,
    is_derived_buffer,
    state_dict_mismatch,
)
from TextGuidedSegLib.taxonomy import Taxonomy, get_taxonomy
from TextGuidedSegLib.text import EmbeddingCache, TextEncoderSpec

logger = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION = 2
#: What a bundle is fit for (``BundleConfig.intended_use``) -> what that means, in a user's words. The first
#: three are not validated on real CT: the ``Segmenter`` says so in its warnings when they run on one.
INTENDED_USES: dict[str, str] = {
    "phantom": "trained on procedural CT phantoms only; it has never seen a real CT",
    "synthetic": "a toy model (synthetic text embeddings or random weights), for trying the software only",
    "research": "a research model, not validated: check every result before using it",
    "published": "a published model (e.g. MONAI model zoo, CLIP-Driven Universal Model) used as released",
}
CONFIG_FILE = "config.json"
CACHE_DIR = "text_cache"
GLOBAL_PROMPT = "A Computed Tomography of abdomen organ"


#: Architectures served by another module: architecture -> module exposing ``model_config_from_dict(data)``
#: and ``load_bundle_model(folder, model_config, source)``, which returns a ``models.BundleModel``.
EXTERNAL_ARCHITECTURES: dict[str, str] = {
    "clipseg": "TextGuidedSegLib.clipseg.volume",
    "monai": "TextGuidedSegLib.models.monai_network",
}


class BundleError(ValueError):
    """A bundle cannot be read or does not match its own description; the message names the file or key."""


def _external_module(architecture: Any) -> Any:
    """The module serving an external architecture, or None for the library's own models."""
    if not isinstance(architecture, str) or architecture not in EXTERNAL_ARCHITECTURES:
        return None
    return importlib.import_module(EXTERNAL_ARCHITECTURES[architecture])


def _tuple3(value: Any, name: str) -> tuple[float, float, float] | tuple[int, int, int]:
    """Return ``value`` as a 3-tuple (a scalar is repeated); raise naming ``name`` otherwise."""
    if isinstance(value, (int, float)):
        return (value, value, value)
    values = tuple(value)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (one per axis), got {list(values)}")
    return values  # type: ignore[return-value]


#: Intensity steps a bundle may list (MONAI's array transforms of the same name) and the arguments each takes.
INTENSITY_STEPS: dict[str, tuple[str, ...]] = {
    "ScaleIntensityRange": ("a_min", "a_max", "b_min", "b_max", "clip"),
    "NormalizeIntensity": ("nonzero",),
    "ScaleIntensity": ("minv", "maxv"),
}
_INTERPOLATIONS = ("bilinear", "nearest")


def _check_intensity_step(step: Any, position: int) -> dict[str, Any]:
    """Validate one ``preprocessing.intensity`` entry: ``{"transform": name, <its arguments>}``."""
    where = f"preprocessing.intensity[{position}]"
    if not isinstance(step, dict) or step.get("transform") not in INTENSITY_STEPS:
        raise ValueError(
            f"{where} must be {{'transform': one of {sorted(INTENSITY_STEPS)}, ...}}, got {step!r}"
        )
    allowed = INTENSITY_STEPS[step["transform"]]
    unknown = sorted(set(step) - {"transform", *allowed})
    if unknown:
        raise ValueError(
            f"{where}: unknown argument(s) {unknown} for {step['transform']}; valid: {list(allowed)}"
        )
    return dict(step)


@dataclass
class PreprocessConfig:
    """How a CT is brought into model space.

    Args:
        spacing: target voxel size in mm along (x, y, z) after reorientation to RAS.
        hu_window: (low, high) Hounsfield window mapped to [0, 1] with clipping (when ``intensity`` is None).
        crop_foreground: run the model only on the bounding box of voxels above 0 after the intensity steps
            (for the HU window: above its low end, the body), as the trainer's ``CropForegroundd`` does;
            outside it every probability is 0. Windows of mostly air change the instance-norm statistics of
            the 3D models, so they need it (on the demo phantoms Dice drops from 0.93-0.96 to 0.64-0.87
            without); CLIPSeg bundles (trained on whole slices) and MONAI bundles without the step do not.
        intensity: ordered intensity steps after resampling, each ``{"transform": name, **arguments}`` with a
            name of :data:`INTENSITY_STEPS` (MONAI's transform of that name); None: the ``hu_window`` mapping.
        interpolation: ``Spacing`` interpolation of the image, "bilinear" or "nearest".
    """

    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    hu_window: tuple[float, float] = (-175.0, 250.0)
    crop_foreground: bool = True
    intensity: list[dict[str, Any]] | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in _tuple3(self.spacing, "preprocessing.spacing"))
        if any(s <= 0 for s in self.spacing):
            raise ValueError(f"preprocessing.spacing must be positive, got {self.spacing}")
        low, high = (float(v) for v in self.hu_window)
        if not low < high:
            raise ValueError(
                f"preprocessing.hu_window must be (low, high) with low < high, got {self.hu_window}"
            )
        self.hu_window = (low, high)
        if not isinstance(self.crop_foreground, bool):
            raise ValueError(
                f"preprocessing.crop_foreground must be true or false, got {self.crop_foreground!r}"
            )
        if self.intensity is not None:
            self.intensity = [_check_intensity_step(step, i) for i, step in enumerate(self.intensity)]
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"preprocessing.interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}"
            )

    def intensity_steps(self) -> list[dict[str, Any]]:
        """The intensity steps to run: ``intensity``, or the HU window mapped onto [0, 1] with clipping."""
        if self.intensity is not None:
            return [dict(step) for step in self.intensity]
        low, high = self.hu_window
        return [
            {
                "transform": "ScaleIntensityRange",
                "a_min": low,
                "a_max": high,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            }
        ]


_PADDING_MODES = ("constant", "reflect", "replicate", "circular")


@dataclass
class InferenceConfig:
    """Sliding-window defaults a bundle was validated with (each can be overridden per call).

    Args:
        roi_size: sliding-window size in voxels (each divisible by 32 for Swin models).
        overlap: fraction of overlap between neighbouring windows, in [0, 1).
        threshold: probability above which a voxel belongs to a structure, in (0, 1).
        sw_batch_size: windows per forward pass.
        blend_mode: "gaussian" or "constant" weighting of overlapping windows.
        padding_mode: how windows reaching past the image are padded ("constant" zeros, "replicate", ...).
    """

    roi_size: tuple[int, int, int] = (96, 96, 96)
    overlap: float = 0.5
    threshold: float = 0.5
    sw_batch_size: int = 1
    blend_mode: str = "gaussian"
    padding_mode: str = "constant"

    def __post_init__(self) -> None:
        self.roi_size = tuple(int(s) for s in _tuple3(self.roi_size, "inference.roi_size"))
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"inference.overlap must be in [0, 1), got {self.overlap}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"inference.threshold must be in (0, 1), got {self.threshold}")
        if self.sw_batch_size < 1:
            raise ValueError(f"inference.sw_batch_size must be >= 1, got {self.sw_batch_size}")
        if self.blend_mode not in ("gaussian", "constant"):
            raise ValueError(
                f"inference.blend_mode must be 'gaussian' or 'constant', got {self.blend_mode!r}"
            )
        if self.padding_mode not in _PADDING_MODES:
            raise ValueError(
                f"inference.padding_mode must be one of {_PADDING_MODES}, got {self.padding_mode!r}"
            )


@dataclass
class BundleConfig:
    """Everything needed to rebuild and run a bundle's model, stored as ``config.json``.

    Args:
        name: short identifier of the bundle (e.g. "film_v1_universal32").
        model: the model's architecture hyper-parameters.
        taxonomy: the structures the model was trained on, in channel order.
        text_encoder: the text encoder that made the embeddings; None for a bundle that only carries its
            embedding cache (it understands its cached vocabulary and nothing else).
        version: the bundle's own version (of the weights), free text such as "1.0.0".
        description: one paragraph for users (shown by ``textguidedseg info`` and in Slicer).
        license: licence of the weights.
        global_prompt: the conditioning prompt of a global-mode model trained on one fixed prompt.
        dataset_prompts: a global-mode model trained on its datasets' prompts (the seed's conditioning):
            dataset key -> the prompts whose mean embedding conditioned that dataset's cases; ``{}`` when it
            was trained on ``global_prompt``. See :meth:`conditioning_prompts`.
        dataset_key: the key of ``dataset_prompts`` inference conditions on ("" = the only one).
        preprocessing: spacing and HU window.
        inference: sliding-window defaults.
        intended_use: what the bundle is fit for, one of :data:`INTENDED_USES`: "phantom" (trained on
            procedural phantoms), "synthetic" (toy: synthetic embeddings or random weights), "research" (not
            validated; the default, and what bundles of format 1 get unless their description names
            phantoms) or "published" (a published model as released). Anything but "published" makes the
            ``Segmenter`` warn when it runs on a real CT.
        format_version: version of this file layout (not of the weights).
    """

    name: str
    model: ModelConfig
    taxonomy: Taxonomy
    text_encoder: TextEncoderSpec | None = None
    version: str = "0.1.0"
    description: str = ""
    license: str = ""
    global_prompt: str = GLOBAL_PROMPT
    dataset_prompts: dict[str, list[str]] = field(default_factory=dict)
    dataset_key: str = ""
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    intended_use: str = "research"
    format_version: int = BUNDLE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.intended_use not in INTENDED_USES:
            raise ValueError(
                f"intended_use must be one of {', '.join(INTENDED_USES)}, got {self.intended_use!r}"
            )
        if self.model.output == "channels" and self.model.num_classes != len(self.taxonomy):
            raise ValueError(
                f"model.num_classes is {self.model.num_classes} but the taxonomy has {len(self.taxonomy)} "
                "structures: a channel-output model needs one channel per taxonomy structure"
            )
        prompts = self.dataset_prompts
        if not isinstance(prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and v and all(isinstance(p, str) for p in v)
            for k, v in prompts.items()
        ):
            raise ValueError("dataset_prompts must map each dataset key to a non-empty list of prompts")
        if self.dataset_key and self.dataset_key not in self.dataset_prompts:
            raise ValueError(
                f"dataset_key {self.dataset_key!r} is not a key of dataset_prompts "
                f"({', '.join(self.dataset_prompts) or 'none'})"
            )

    def conditioning_prompts(self, dataset_key: str | None = None) -> list[str]:
        """The prompts whose mean embedding conditions a global-mode model: ``[global_prompt]``, or those of
        ``dataset_key`` (default: the bundle's ``dataset_key``, else its only dataset key).

        Raises:
            BundleError: the key is unknown, or none is given and the bundle has several.
        """
        if not self.dataset_prompts:
            return [self.global_prompt]
        keys = ", ".join(self.dataset_prompts)
        key = dataset_key or self.dataset_key
        if not key and len(self.dataset_prompts) == 1:
            key = next(iter(self.dataset_prompts))
        if not key:
            raise BundleError(
                f"bundle {self.name!r} is conditioned on a dataset's prompt and was trained with the keys "
                f"{keys}: choose one (dataset_key in {CONFIG_FILE}, or export with --dataset-key KEY)"
            )
        if key not in self.dataset_prompts:
            raise BundleError(f"bundle {self.name!r} has no dataset key {key!r}; it was trained with {keys}")
        return list(self.dataset_prompts[key])

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (the content of ``config.json`` without checksums): every field, through
        its own ``to_dict`` where it has one, plus the library version that wrote it."""
        values = {name: getattr(self, name) for name in field_names(type(self))}
        out: dict[str, Any] = {"format_version": values.pop("format_version"), "library_version": __version__}
        for name, value in values.items():
            out[name] = value.to_dict() if hasattr(value, "to_dict") else to_jsonable(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleConfig:
        """Build from a ``config.json`` dict (an older format is migrated, with a warning); unknown or missing
        keys raise a BundleError naming them."""
        data = _migrate(dict(data))
        data.pop("checksums", None)
        data.pop("library_version", None)
        check_keys(data, field_names(cls), where=CONFIG_FILE, error=BundleError)
        for required in ("name", "model", "taxonomy"):
            if required not in data:
                raise BundleError(f"{CONFIG_FILE}: missing required key {required!r}")
        try:
            taxonomy = data["taxonomy"]
            data["taxonomy"] = (
                get_taxonomy(taxonomy) if isinstance(taxonomy, str) else Taxonomy.from_dict(taxonomy)
            )
            model = data["model"]
            external = _external_module(model.get("architecture")) if isinstance(model, dict) else None
            data["model"] = (
                external.model_config_from_dict(model) if external else ModelConfig.from_dict(model)
            )
            if data.get("text_encoder") is not None:
                data["text_encoder"] = TextEncoderSpec.from_dict(data["text_encoder"])
            for name, section in (("preprocessing", PreprocessConfig), ("inference", InferenceConfig)):
                values = data.get(name, {})
                data[name] = dataclass_from_dict(section, values, CONFIG_FILE, what=name, error=BundleError)
            return cls(**data)
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"{CONFIG_FILE}: {err}") from err


def _format_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    """Format 0: a ``config.json`` without ``format_version`` (every release wrote it, so only hand-written
    configs lack it); format 1 records it and is otherwise the same."""
    return {**data, "format_version": 1}


def _format_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    """Format 2 adds ``intended_use``. A format-1 bundle is "phantom" when its description names phantoms (the
    trainer's export wrote the training lists there), else "research": nothing says it was validated."""
    described = str(data.get("description", "")).lower()
    return {**data, "intended_use": "phantom" if "phantom" in described else "research", "format_version": 2}


#: ``format_version`` -> the step that upgrades a ``config.json`` of that version to the next one.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _format_0_to_1, 1: _format_1_to_2}


def _migrate(data: dict[str, Any], where: str = CONFIG_FILE) -> dict[str, Any]:
    """Upgrade ``config.json`` data of an older ``format_version`` to the current one, with a warning.

    Raises:
        BundleError: a newer or unknown ``format_version``, naming ``where`` and the version.
    """
    version = data.get("format_version", 0)
    oldest = min(_MIGRATIONS, default=BUNDLE_FORMAT_VERSION)
    known = isinstance(version, int) and not isinstance(version, bool)
    if not known or not oldest <= version <= BUNDLE_FORMAT_VERSION:
        newer = known and version > BUNDLE_FORMAT_VERSION
        raise BundleError(
            f"{where}: format_version {version!r} is not supported by this library (it reads versions "
            f"{oldest} to {BUNDLE_FORMAT_VERSION}); "
            + ("update TextGuidedSegLib" if newer else "re-export the bundle with save_bundle")
        )
    if version < BUNDLE_FORMAT_VERSION:
        logger.warning(
            "%s: bundle format %d is older than the current %d; upgraded in memory (re-save the bundle with "
            "save_bundle to store format %d)",
            where,
            version,
            BUNDLE_FORMAT_VERSION,
            BUNDLE_FORMAT_VERSION,
        )
    while version < BUNDLE_FORMAT_VERSION:
        data = _MIGRATIONS[version](data)
        version = data["format_version"]
    return data


@dataclass
class Bundle:
    """A loaded bundle: its config, the model (eval mode, on CPU until moved) and its embedding cache.

    Attributes:
        config: the bundle's configuration.
        model: the model, built from ``config.model`` with the bundle's weights loaded.
        cache: prompt -> embedding cache shipped with the bundle (may be empty for text-free models).
        source: where the bundle was loaded from (folder or .zip).
        sha256: the bundle's checksum: of the .zip, or of a folder's ``config.json`` (which records the
            sha256 of every other file); None for a bundle built in memory.
    """

    config: BundleConfig
    model: BundleModel
    cache: EmbeddingCache
    source: Path | None = None
    sha256: str | None = None

    @property
    def vocabulary(self) -> list[str]:
        """Display names of the structures the bundle was trained on, in channel order."""
        return [s.name for s in self.config.taxonomy]


def _write_bundle_folder(
    folder: Path, config: BundleConfig, model: BundleModel, cache: EmbeddingCache
) -> None:
    """Write the bundle files into an existing empty ``folder`` (config last, with checksums)."""
    model.save_bundle_weights(folder)
    cache.save(folder / CACHE_DIR)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    checksums = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
    payload = config.to_dict()
    payload["checksums"] = checksums
    (folder / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def save_bundle(
    path: str | Path,
    model: BundleModel,
    config: BundleConfig,
    cache: EmbeddingCache,
    overwrite: bool = False,
) -> Path:
    """Save ``model``, its ``config`` and embedding ``cache`` as a bundle folder (or a .zip, by suffix).

    The bundle is written to a temporary sibling first and moved into place at the end, so an existing
    bundle at ``path`` is either replaced whole (``overwrite=True``) or left untouched.

    Args:
        path: target folder, or a ``.zip`` file path.
        model: a model built from ``config.model``.
        config: the bundle configuration.
        cache: embeddings of the prompts the bundle must understand without a text encoder.
        overwrite: replace an existing bundle at ``path``.

    Returns:
        The path written.
    """
    path = Path(path)
    if not isinstance(model, BundleModel):
        raise TypeError(f"save_bundle needs a models.BundleModel, got {type(model).__name__}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if model.config.to_dict() != config.model.to_dict():
        raise BundleError(
            "the model's config differs from config.model: build the model from the bundle config"
        )
    if config.text_encoder is None and model.uses_text and len(cache) == 0:
        raise BundleError(
            "a bundle without a text encoder needs an embedding cache of its vocabulary: "
            "build one with EmbeddingCache.build(taxonomy.prompts, encoder) before saving"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staging = Path(tmp) / "bundle"
        staging.mkdir()
        _write_bundle_folder(staging, config, model, cache)
        if path.suffix == ".zip":
            staged_zip = Path(tmp) / "bundle.zip"
            with zipfile.ZipFile(staged_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(staging.rglob("*")):
                    if file.is_file():
                        archive.write(file, file.relative_to(staging).as_posix())
            os.replace(staged_zip, path)
        else:
            if path.exists():
                backup = Path(tmp) / "previous"
                os.replace(path, backup)
            os.replace(staging, path)
    logger.info("saved bundle %r (%s) to %s", config.name, config.model.architecture, path)
    return path


def _extract_zip(archive_path: Path, target: Path) -> Path:
    """Extract a bundle .zip into ``target`` safely and return the folder holding ``config.json``."""
    extract_zip(archive_path, target, BundleError)  # confined: no "..", links, duplicates or zip bombs
    configs = sorted(target.rglob(CONFIG_FILE), key=lambda p: len(p.parts))
    if not configs:
        raise BundleError(f"{archive_path}: no {CONFIG_FILE} inside; is this a TextGuidedSeg bundle?")
    return configs[0].parent


def _read_config(folder: Path, source: Path) -> tuple[BundleConfig, dict[str, str]]:
    """Read and validate ``config.json``; return the config and the recorded checksums."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise BundleError(f"{source}: no {CONFIG_FILE}; is this a TextGuidedSeg bundle folder?")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{source}/{CONFIG_FILE}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise BundleError(f"{source}/{CONFIG_FILE}: expected a JSON object")
    checksums = data.get("checksums", {})
    try:
        config = BundleConfig.from_dict(_migrate(data, f"{source}/{CONFIG_FILE}"))
    except BundleError as err:
        raise BundleError(f"{source}: {err}") from err
    return config, checksums


def _load_weights(model: TextSegModel, weights_path: Path, source: Path) -> None:
    """Load safetensors weights into ``model``, naming any missing, unexpected or mis-shaped key."""
    try:
        state = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own SafetensorError
        raise BundleError(f"{source}/{WEIGHTS_FILE}: cannot read weights ({err})") from err
    built = model.state_dict()
    problem = state_dict_mismatch(built, state)
    if problem is not None:
        raise BundleError(
            f"{source}: {WEIGHTS_FILE} does not match the architecture in {CONFIG_FILE} "
            f"({model.config.architecture}, feature_size {model.config.feature_size}): {problem}"
        )
    stored = [k for k in state if is_derived_buffer(k)]
    if stored:  # written before 2026-11-23, when bundles stopped storing them
        logger.warning(
            "%s/%s holds %d buffer(s) the model rebuilds itself (%s); they are ignored. Re-save the bundle "
            "with save_bundle to leave them out.",
            source,
            WEIGHTS_FILE,
            len(stored),
            ", ".join(DERIVED_BUFFERS),
        )
    state = {k: v for k, v in state.items() if not is_derived_buffer(k)}
    derived = {k: v for k, v in built.items() if is_derived_buffer(k)}
    model.load_state_dict({**derived, **state}, strict=True)


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Load a bundle folder or .zip: build the model from its config, load weights and embedding cache.

    Never unpickles: config is JSON, weights and embeddings are safetensors.

    Args:
        path: bundle folder, a .zip holding one, or the name of a registry entry or installed bundle
            (``load_bundle("demo_phantom_film_v1")``; see ``textguidedseg bundles list``; never downloads).
        verify: check every file against the sha256 recorded in ``config.json``.

    Returns:
        The bundle, with its model in eval mode on CPU.

    Raises:
        BundleError: the bundle is missing a file, was modified, or its config does not match its weights.
        RegistryError: ``path`` is neither a file nor a known name, or names a bundle not installed yet.
    """
    source = Path(path)
    if not source.exists() and (len(source.parts) > 1 or source.suffix == ".zip"):
        raise BundleError(f"bundle {source} does not exist (pass a bundle folder, a .zip or a registry name)")
    if not source.exists():
        from TextGuidedSegLib.registry import BundleStore  # a registry name or an installed bundle's name

        source = BundleStore().resolve(str(path))
    with tempfile.TemporaryDirectory(prefix="textguidedseg-bundle-") as tmp:
        folder = _extract_zip(source, Path(tmp)) if source.is_file() else source
        config, checksums = _read_config(folder, source)
        digest = sha256_file(source if source.is_file() else folder / CONFIG_FILE)
        if verify:
            verify_checksums(folder, checksums, source, CONFIG_FILE, BundleError)
        external = _external_module(config.model.architecture)
        if external is not None:
            model = external.load_bundle_model(folder, config.model, source)
        else:
            try:  # sizes in config.json the weights cannot match (a huge text_dim) fail here, not later
                model = build_model(config.model)
            except (RuntimeError, MemoryError, ValueError, TypeError, OverflowError) as err:
                raise BundleError(
                    f"{source}: cannot build the model {CONFIG_FILE} describes ({type(err).__name__}: {err})"
                ) from err
            _load_weights(model, folder / WEIGHTS_FILE, source)
        model.eval()
        cache_dir = folder / CACHE_DIR
        try:
            cache = EmbeddingCache.load(cache_dir)
        except Exception as err:
            raise BundleError(f"{source}: cannot read the embedding cache in {CACHE_DIR}/ ({err})") from err
    if cache.dim != config.model.text_dim and model.uses_text and len(cache):
        raise BundleError(
            f"{source}: the embedding cache holds {cache.dim}-d vectors but the model expects "
            f"text_dim {config.model.text_dim}"
        )
    logger.info("loaded bundle %r v%s from %s", config.name, config.version, source)
    return Bundle(config=config, model=model, cache=cache, source=source, sha256=digest)


def bundle_summary(bundle: Bundle) -> dict[str, Any]:
    """A JSON-safe description of a bundle for ``textguidedseg info`` and the Slicer panel."""
    config = bundle.config
    n_params = sum(p.numel() for p in bundle.model.parameters())
    return {
        "name": config.name,
        "version": config.version,
        "description": config.description,
        "license": config.license,
        "intended_use": config.intended_use,
        "architecture": config.model.architecture,
        "network": getattr(config.model, "network", None),  # an imported MONAI network's class
        "mode": config.model.mode,
        "feature_size": config.model.feature_size,
        "parameters": n_params,
        "text_encoder": None if config.text_encoder is None else config.text_encoder.to_dict(),
        "cached_prompts": len(bundle.cache),
        "structures": [s.name for s in config.taxonomy],
        "preprocessing": to_jsonable(config.preprocessing),
        "inference": to_jsonable(config.inference),
        "source": str(bundle.source) if bundle.source else None,
    }
