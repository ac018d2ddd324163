"""``build_model``: a ``TextSegModel`` from a ``ModelConfig`` alone."""

from __future__ import annotations

from .base import TextSegModel
from .baselines import SwinUNETRBaseline, UNETRBaseline
from .config import ModelConfig
from .film_swinunetr import DecoderFiLMSwinUNETR, EncoderFiLMSwinUNETR
from .universal import UniversalModel

__all__ = ["MODEL_CLASSES", "build_model"]

#: ``ModelConfig.architecture`` -> class.
MODEL_CLASSES: dict[str, type[TextSegModel]] = {
    "film_v1": DecoderFiLMSwinUNETR,
    "film_v2": EncoderFiLMSwinUNETR,
    "universal": UniversalModel,
    "swinunetr": SwinUNETRBaseline,
    "unetr": UNETRBaseline,
}


def build_model(config: ModelConfig) -> TextSegModel:
    """Build the model ``config.architecture`` names, randomly initialised.

    Args:
        config: the model's hyper-parameters (validated when the config was made).

    Returns:
        a ``TextSegModel``; load weights with ``load_state_dict`` or ``load_pretrained_swinunetr``.

    Examples::

        >>> model = build_model(ModelConfig(architecture="film_v1", feature_size=12))
        >>> model.output
        'query'
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(
            f"build_model expects a ModelConfig, got {type(config).__name__}; use ModelConfig.from_dict(d) "
            "for a dict."
        )
    return MODEL_CLASSES[config.architecture](config)
