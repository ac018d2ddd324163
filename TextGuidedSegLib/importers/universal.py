"""Import a CLIP-Driven Universal Model checkpoint (Liu et al., ICCV 2023, Swin UNETR) as a universal bundle.

The published ``clip_driven_universal_swin_unetr.pth`` is ``{"net": state_dict, ...}`` written from a
``DistributedDataParallel`` model (every key starts with ``module.``). Two layouts of the state dict exist:

- released: the backbone's modules at the top level (``swinViT.*``, ``encoder1.*`` ... ``decoder1.*``), from
  the repository's first model class, which held the head in the SwinUNETR itself;
- training: the same modules under ``backbone.`` (``model/Universal_model.py``, what ``train.py`` writes).

Both are read. The head maps one to one: ``precls_conv.*``, ``controller.*`` and ``text_to_vision.*`` keep
their names, ``GAP.*`` becomes ``image_pool.*``. The ``organ_embedding`` buffer ``(32, 512)`` (CLIP ViT-B/32
embeddings of "A computerized tomography of a {organ}", in universal32 order) becomes the bundle's embedding
cache, one vector per universal32 canonical prompt, so the bundle answers its 32 structures without a text
encoder. The Swin relative-position index tables (rebuilt by the model) are skipped; every other key is
checked against the model by name and shape.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from TextGuidedSegLib.bundle import (
    BundleConfig,
    BundleError,
    InferenceConfig,
    PreprocessConfig,
    is_derived_buffer,
    save_bundle,
)
from TextGuidedSegLib.models import ModelConfig, build_model
from TextGuidedSegLib.taxonomy import get_taxonomy
from TextGuidedSegLib.text import EmbeddingCache

__all__ = [
    "UNIVERSAL_BUNDLE_NAME",
    "UNIVERSAL_EMBEDDING_ID",
    "UNIVERSAL_LICENSE",
    "UniversalCheckpointError",
    "import_universal_checkpoint",
    "universal_bundle_config",
]

logger = logging.getLogger(__name__)

UNIVERSAL_BUNDLE_NAME = "universal_swinunetr"
UNIVERSAL_LICENSE = "CC BY-NC-ND 4.0"
UNIVERSAL_TAXONOMY = "universal32"
#: ``encoder_id`` of the embedding cache: the checkpoint's own organ embeddings (projected CLIP ViT-B/32
#: ``encode_text``; not the vectors of our ``CLIPTextEncoder``, which are unprojected).
UNIVERSAL_EMBEDDING_ID = "clip-driven-universal-model:organ_embedding(openai-clip-vit-b32-projected)"
UNIVERSAL_SOURCE = "https://github.com/ljwztc/CLIP-Driven-Universal-Model"

#: Top-level modules of the Swin UNETR backbone, as the released layout names them.
_BACKBONE_MODULES = frozenset(
    ["swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10"]
    + [f"decoder{i}" for i in range(1, 6)]
)
#: Head modules: checkpoint name -> ours.
_HEAD_MODULES = {
    "precls_conv": "precls_conv",
    "GAP": "image_pool",
    "controller": "controller",
    "text_to_vision": "text_to_vision",
}
_EMBEDDING_KEY = "organ_embedding"
_STATE_DICT_KEYS = ("net", "state_dict")
_DDP_PREFIX = re.compile(r"^(module\.)+")
#: How ``torch.load(weights_only=True)`` names a pickled class it refuses.
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


class UniversalCheckpointError(BundleError):
    """A Universal Model checkpoint cannot be read or does not fit the model; the message names file, key."""


def universal_bundle_config(model: ModelConfig) -> BundleConfig:
    """The bundle config of an imported Universal Model: universal32 taxonomy, its inference pre-processing.

    Pre-processing and sliding window as the Universal Model's test/inference scripts: RAS, 1.5 mm, HU
    -175..250 -> [0, 1] clipped, foreground crop, ROI 96^3, overlap 0.5, Gaussian blending, sigmoid > 0.5.
    """
    return BundleConfig(
        name=UNIVERSAL_BUNDLE_NAME,
        model=model,
        taxonomy=get_taxonomy(UNIVERSAL_TAXONOMY),
        text_encoder=None,
        version="1.0.0",
        description=(
            "CLIP-Driven Universal Model (Liu et al., ICCV 2023), Swin UNETR backbone, 32 abdominal organs "
            f"and tumours, converted from its published checkpoint ({UNIVERSAL_SOURCE}). Weights licensed "
            f"{UNIVERSAL_LICENSE}: non-commercial use only, no redistribution of modified weights."
        ),
        license=UNIVERSAL_LICENSE,
        preprocessing=PreprocessConfig(
            spacing=(1.5, 1.5, 1.5), hu_window=(-175.0, 250.0), crop_foreground=True
        ),
        inference=InferenceConfig(
            roi_size=(96, 96, 96), overlap=0.5, threshold=0.5, sw_batch_size=1, blend_mode="gaussian"
        ),
        intended_use="published",
    )


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict (``{"net": sd}`` or a bare state dict), ``module.`` prefixes removed."""
    if not path.is_file():
        raise UniversalCheckpointError(f"Universal Model checkpoint {path} does not exist or is not a file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _UNSUPPORTED_GLOBAL.search(str(err))
        if found is None:
            reason = _UNPICKLER_REASON.search(str(err))
            raise UniversalCheckpointError(
                f"{path}: not a readable PyTorch checkpoint"
                + (f" ({reason.group(1).strip()})" if reason else "")
            ) from err
        raise UniversalCheckpointError(
            f"{path}: refused to load: it holds a pickled {found.group(1)}, not only tensors and plain "
            "containers (read with torch.load(weights_only=True), which never runs pickled code); save "
            "the state dict alone, e.g. {'net': state_dict}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UniversalCheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    if not isinstance(data, Mapping):
        raise UniversalCheckpointError(f"{path}: holds a {type(data).__name__}, expected a dict")
    for key in _STATE_DICT_KEYS:
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    state: dict[str, torch.Tensor] = {}
    for key, value in data.items():
        if not isinstance(value, torch.Tensor):
            raise UniversalCheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a state dict or "
                f"a dict with one under {list(_STATE_DICT_KEYS)}"
            )
        name = _DDP_PREFIX.sub("", str(key))
        if name in state:
            raise UniversalCheckpointError(f"{path}: key {key!r} appears twice once 'module.' is removed")
        state[name] = value
    return state


def _our_key(key: str) -> str | None:
    """Our model's state-dict key for a checkpoint key (``module.`` removed), or None when it has none."""
    head, _, rest = key.partition(".")
    if head == "backbone" and rest.partition(".")[0] in _BACKBONE_MODULES:
        return key
    if head in _BACKBONE_MODULES:
        return f"backbone.{key}"
    if head in _HEAD_MODULES and rest:
        return f"{_HEAD_MODULES[head]}.{rest}"
    return None


def _checkpoint_key(ours: str) -> str:
    """The released-layout checkpoint name of one of our keys (for error messages)."""
    head, _, rest = ours.partition(".")
    if head == "backbone":
        return rest
    theirs = {v: k for k, v in _HEAD_MODULES.items()}
    return f"{theirs.get(head, head)}.{rest}"


def _check_tensor(path: Path, key: str, value: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``value`` as float32 after checking its shape and that it is floating point."""
    if tuple(value.shape) != shape:
        raise UniversalCheckpointError(
            f"{path}: {key!r} has shape {tuple(value.shape)}, the Universal Model (Swin UNETR) expects "
            f"{shape}; is this the Swin UNETR checkpoint (not the U-Net one)?"
        )
    if not value.is_floating_point():
        raise UniversalCheckpointError(f"{path}: {key!r} has dtype {value.dtype}, expected floating point")
    return value.to(torch.float32)


def _model_config(path: Path, state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """The ``universal`` config whose sizes the checkpoint implies (feature size from the patch embedding)."""
    for name in ("swinViT.patch_embed.proj.weight", "backbone.swinViT.patch_embed.proj.weight"):
        if name in state:
            embed = state[name]
            break
    else:
        raise UniversalCheckpointError(
            f"{path}: no 'swinViT.patch_embed.proj.weight' (with or without 'backbone.'): not a Swin UNETR "
            f"Universal Model checkpoint (first keys: {list(state)[:3]})"
        )
    if _EMBEDDING_KEY not in state:
        raise UniversalCheckpointError(
            f"{path}: missing key {_EMBEDDING_KEY!r} (the organ text embeddings); a checkpoint trained with "
            "encoding='rand_embedding' cannot answer text prompts"
        )
    embedding = state[_EMBEDDING_KEY]
    if embedding.ndim != 2 or embed.ndim != 5:
        raise UniversalCheckpointError(
            f"{path}: {_EMBEDDING_KEY!r} has shape {tuple(embedding.shape)} and the patch embedding "
            f"{tuple(embed.shape)}; expected (32, 512) and (feature_size, 1, 2, 2, 2)"
        )
    try:
        return ModelConfig(
            architecture="universal",
            mode="query",
            feature_size=int(embed.shape[0]),
            in_channels=int(embed.shape[1]),
            num_classes=len(get_taxonomy(UNIVERSAL_TAXONOMY)),
            text_dim=int(embedding.shape[1]),
        )
    except ValueError as err:
        raise UniversalCheckpointError(
            f"{path}: the checkpoint's sizes do not fit the model ({err})"
        ) from err


def _convert(path: Path, state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map the checkpoint onto ``model``'s keys; errors name the first missing, unexpected, mis-shaped key."""
    target = {k: v for k, v in model.state_dict().items() if not is_derived_buffer(k)}
    converted: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    for key, value in state.items():
        if key == _EMBEDDING_KEY or is_derived_buffer(key):
            continue
        ours = _our_key(key)
        if ours is None or ours not in target:
            raise UniversalCheckpointError(
                f"{path}: unexpected key {key!r}: the Universal Model (Swin UNETR, feature_size "
                f"{model.config.feature_size}) has no such weight"
            )
        if ours in converted:
            raise UniversalCheckpointError(
                f"{path}: {key!r} and {source_of[ours]!r} are the same weight (with and without 'backbone.')"
            )
        converted[ours] = _check_tensor(path, key, value, tuple(target[ours].shape))
        source_of[ours] = key
    missing = [k for k in target if k not in converted]
    if missing:
        raise UniversalCheckpointError(
            f"{path}: missing key {_checkpoint_key(missing[0])!r} ({len(missing)} missing in all; "
            "'module.' and 'backbone.' prefixes optional); the checkpoint is incomplete or of another model"
        )
    return converted


def import_universal_checkpoint(
    checkpoint: str | Path, output: str | Path, *, overwrite: bool = False
) -> Path:
    """Convert a Universal Model Swin UNETR checkpoint into a ``universal`` bundle (folder, or .zip by name).

    Args:
        checkpoint: the published ``.pth`` (read with ``torch.load(weights_only=True)``): ``{"net": sd}`` or a
            bare state dict, with or without ``module.`` prefixes, released or training key layout.
        output: the bundle to write.
        overwrite: replace an existing bundle at ``output``.

    Returns:
        ``output``.

    Raises:
        UniversalCheckpointError: (a ``BundleError``, so a ``ValueError``) unreadable file, pickled objects,
            or a missing, unexpected or mis-shaped key; the message names the file and the key.
        FileExistsError: ``output`` exists and ``overwrite`` is False.
    """
    path, output = Path(checkpoint), Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(
            f"{output} already exists; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    state = _read_checkpoint(path)
    config = _model_config(path, state)
    taxonomy = get_taxonomy(UNIVERSAL_TAXONOMY)
    embedding = _check_tensor(path, _EMBEDDING_KEY, state[_EMBEDDING_KEY], (len(taxonomy), config.text_dim))
    model = build_model(config)
    converted = _convert(path, state, model)
    derived = {k: v for k, v in model.state_dict().items() if is_derived_buffer(k)}
    model.load_state_dict({**derived, **converted}, strict=True)
    model.eval()
    cache = EmbeddingCache(UNIVERSAL_EMBEDDING_ID, config.text_dim).add(taxonomy.prompts, embedding)
    written = save_bundle(output, model, universal_bundle_config(config), cache, overwrite=overwrite)
    logger.info(
        "imported Universal Model checkpoint %s (%d weights, feature_size %d, %d organ embeddings) into %s",
        path,
        len(converted),
        config.feature_size,
        len(cache),
        written,
    )
    return written
