"""The registry of the library's models and ``build_model``: a ``TextSegModel`` from a ``ModelConfig`` alone.

Each class declares what it is (``architecture``, ``uses_text``, ``modes``, ``swin_backbone``); the registry
and the capability tuples are derived from them here, so a new model is its own file plus one line below.
``ModelConfig`` reads them when a config is checked (the classes import ``config``, so it cannot import them).
"""

from __future__ import annotations

from .base import TextSegModel
from .baselines import SwinUNETRBaseline, UNETRBaseline
from .config import ModelConfig
from .film_swinunetr import DecoderFiLMSwinUNETR, EncoderFiLMSwinUNETR
from .universal import UniversalModel

__all__ = [
    "ARCHITECTURES",
    "GLOBAL_MODE_ARCHITECTURES",
    "MODEL_CLASSES",
    "SWIN_ARCHITECTURES",
    "TEXT_ARCHITECTURES",
    "build_model",
]

#: ``ModelConfig.architecture`` -> class, in the order the architectures are listed to users.
MODEL_CLASSES: dict[str, type[TextSegModel]] = {
    cls.architecture: cls
    for cls in (DecoderFiLMSwinUNETR, EncoderFiLMSwinUNETR, UniversalModel, SwinUNETRBaseline, UNETRBaseline)
}
#: Every architecture ``build_model`` knows.
ARCHITECTURES: tuple[str, ...] = tuple(MODEL_CLASSES)
#: Architectures conditioned on text embeddings (``uses_text``).
TEXT_ARCHITECTURES: tuple[str, ...] = tuple(a for a, cls in MODEL_CLASSES.items() if cls.uses_text)
#: Architectures built on MONAI's ``SwinUNETR`` (input sides divisible by 32, feature_size divisible by 12).
SWIN_ARCHITECTURES: tuple[str, ...] = tuple(a for a, cls in MODEL_CLASSES.items() if cls.swin_backbone)
#: Architectures that accept ``mode="global"``.
GLOBAL_MODE_ARCHITECTURES: tuple[str, ...] = tuple(
    a for a, cls in MODEL_CLASSES.items() if "global" in cls.modes
)


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
