"""Training checkpoint -> inference bundle (``TextGuidedSegLib.bundle``).

The bundle gets the checkpoint's weights and resolved ``ModelConfig``, the taxonomy subset trained on (its
channel order), the training pre-processing (spacing, HU window) and sliding window (ROI, validation overlap
and window batch), and an embedding cache holding exactly the vectors the model was trained with: the
structures' prompts, plus in global mode the conditioning prompts: the fixed global prompt, or each training
dataset's prompts (recorded as ``dataset_prompts``, with the ``dataset_key`` inference conditions on).
``text.encoder`` of the training config, when set, is recorded as the bundle's text encoder so that it can
also encode free text; a bundle trained on synthetic embeddings never has one and understands only its
vocabulary.
"""

from __future__ import annotations

import logging
from pathlib import Path

from TextGuidedSegLib.bundle import BundleConfig, InferenceConfig, PreprocessConfig, save_bundle
from TextGuidedSegLib.models import ModelConfig, build_model
from TextGuidedSegLib.taxonomy import get_taxonomy
from TextGuidedSegLib.text import EmbeddingCache, TextEncoderSpec

from .checkpoint import load_checkpoint
from .config import TRAINING_TAXONOMY, TrainConfig
from .embeddings import SYNTHETIC_ENCODER_ID

__all__ = ["default_intended_use", "export_bundle"]

logger = logging.getLogger(__name__)


def _description(config: TrainConfig, model_config: ModelConfig, step: int, synthetic: bool) -> str:
    lists = ", ".join(Path(p).name for p in config.data.train_lists)
    text = (
        f"{model_config.architecture} ({model_config.mode} mode, feature size {model_config.feature_size}) "
        "trained "
        f"for {step} steps on {lists} at {'x'.join(f'{s:g}' for s in config.data.spacing)} mm; structures: "
        f"{', '.join(config.structures)}."
    )
    if synthetic:
        text += (
            " Its text embeddings are synthetic (one fixed random vector per prompt, "
            f"{SYNTHETIC_ENCODER_ID}): it understands only these structures' prompts, not free text."
        )
    return text


def default_intended_use(config: TrainConfig, synthetic: bool) -> str:
    """What an exported bundle is fit for (``BundleConfig.intended_use``): "phantom" when every training list
    is a phantom set (``textguidedseg phantoms`` names it ``phantom.txt``, or ``data.default_dataset`` is
    ``phantom``), else "synthetic" with synthetic embeddings, else "research"."""
    lists = config.data.train_lists
    phantom_lists = bool(lists) and all("phantom" in str(p).lower() for p in lists)
    if config.data.default_dataset == "phantom" or phantom_lists:
        return "phantom"
    return "synthetic" if synthetic else "research"


def export_bundle(
    checkpoint_path: str | Path,
    output: str | Path,
    name: str | None = None,
    version: str = "0.1.0",
    description: str | None = None,
    license: str = "",
    overwrite: bool = False,
    intended_use: str | None = None,
    dataset_key: str | None = None,
) -> Path:
    """Write a bundle (folder, or ``.zip`` when ``output`` ends so) from a training checkpoint.

    Args:
        checkpoint_path: a ``ckpt_<step>.pt`` or ``best.pt`` of the trainer.
        output: the bundle folder or ``.zip`` path.
        name: the bundle name; default ``<architecture>_<run folder name>``.
        version: the bundle (weights) version.
        description: one paragraph for users; default: what was trained on what, for how long.
        license: licence of the weights.
        overwrite: replace an existing bundle at ``output``.
        intended_use: what the bundle is fit for (``bundle.INTENDED_USES``); default
            :func:`default_intended_use` ("research" unless trained on phantoms or synthetic embeddings).
        dataset_key: for a global-mode model trained on its datasets' prompts, the dataset key whose
            prompt inference conditions on; needed when the run had several datasets.

    Returns:
        the path written.
    """
    checkpoint_path = Path(checkpoint_path)
    state = load_checkpoint(checkpoint_path)
    config = TrainConfig.from_dict(state["config"], source=f"{checkpoint_path} (config)")
    model_config = ModelConfig.from_dict(state["model_config"])
    model = build_model(model_config)
    model.load_state_dict(state["model"])
    model.eval()
    taxonomy = get_taxonomy(TRAINING_TAXONOMY).subset(
        state["structures"], name=f"{TRAINING_TAXONOMY}-{len(state['structures'])}"
    )
    text = state.get("text")
    if text is not None:
        cache = EmbeddingCache(text["encoder_id"], int(text["embeddings"].shape[1]))
        cache.add(text["prompts"], text["embeddings"])
        synthetic = text["encoder_id"].startswith(SYNTHETIC_ENCODER_ID)
    else:  # text-free baselines: the structure names select channels, no embeddings needed
        cache = EmbeddingCache("none", model_config.text_dim)
        synthetic = False
    dataset_prompts = dict(text.get("dataset_prompts") or {}) if text is not None else {}
    if dataset_key and dataset_key not in dataset_prompts:
        trained = ", ".join(dataset_prompts) or "none (it was trained on one fixed prompt)"
        raise ValueError(f"dataset_key {dataset_key!r}: the checkpoint's dataset keys are {trained}")
    if len(dataset_prompts) > 1 and not dataset_key:
        raise ValueError(
            f"{checkpoint_path} was conditioned on each case's dataset prompt, with the keys "
            f"{', '.join(dataset_prompts)}: choose the key inference conditions on (dataset_key=..., "
            "--dataset-key KEY)"
        )
    encoder = None
    if config.text.encoder and not synthetic and text is not None:
        encoder = TextEncoderSpec(config.text.encoder, output=config.text.encoder_output)
    bundle_config = BundleConfig(
        name=name or f"{model_config.architecture}_{Path(config.run_dir).name}",
        model=model_config,
        taxonomy=taxonomy,
        text_encoder=encoder,
        version=version,
        description=description
        if description is not None
        else _description(config, model_config, state["step"], synthetic),
        license=license,
        global_prompt=config.text.global_prompt,
        dataset_prompts=dataset_prompts,
        dataset_key=dataset_key or "",
        preprocessing=PreprocessConfig(spacing=config.data.spacing, hu_window=config.data.hu_window),
        inference=InferenceConfig(
            roi_size=config.data.roi_size, overlap=config.val_overlap, sw_batch_size=config.val_sw_batch_size
        ),
        intended_use=intended_use or default_intended_use(config, synthetic),
    )
    path = save_bundle(output, model, bundle_config, cache, overwrite=overwrite)
    logger.info("exported %s (step %d) to %s", checkpoint_path, state["step"], path)
    return path
