"""Segmentation models behind one call: ``model(image, text, class_indices) -> logits (B, Q, D, H, W)``.

- ``ModelConfig`` (hyper-parameters, JSON round-trip) and ``build_model(config)``.
- ``film_v1`` (``DecoderFiLMSwinUNETR``) and ``film_v2`` (``EncoderFiLMSwinUNETR``): FiLM-conditioned MONAI
  SwinUNETR; ``universal`` (``UniversalModel``): the CLIP-Driven Universal Model head; ``swinunetr`` and
  ``unetr``: MONAI's text-free networks.
- ``FiLM`` / ``ResidualNormFiLM``: the conditioning blocks.
- ``load_pretrained_swinunetr``: MONAI SwinUNETR checkpoints into the shared backbone, with a report.
"""

from .base import TextSegModel, select_channels
from .baselines import SwinUNETRBaseline, UNETRBaseline
from .config import ARCHITECTURES, MODES, ModelConfig
from .factory import MODEL_CLASSES, build_model
from .film import FiLM, ResidualNormFiLM
from .film_swinunetr import DecoderFiLMSwinUNETR, EncoderFiLMSwinUNETR
from .pretrained import PretrainedLoadReport, load_pretrained_swinunetr
from .universal import UniversalModel

__all__ = [
    "ARCHITECTURES",
    "MODEL_CLASSES",
    "MODES",
    "DecoderFiLMSwinUNETR",
    "EncoderFiLMSwinUNETR",
    "FiLM",
    "ModelConfig",
    "PretrainedLoadReport",
    "ResidualNormFiLM",
    "SwinUNETRBaseline",
    "TextSegModel",
    "UNETRBaseline",
    "UniversalModel",
    "build_model",
    "load_pretrained_swinunetr",
    "select_channels",
]
