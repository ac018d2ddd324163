"""Segmentation models behind one call: ``model(image, text, class_indices) -> logits (B, Q, D, H, W)``.

- ``ModelConfig`` (hyper-parameters, JSON round-trip) and ``build_model(config)``; ``MODEL_CLASSES``, the
  registry, derived from the classes' own ``architecture`` / ``uses_text`` / ``modes`` attributes.
- ``BundleModel``: the protocol every bundle's model satisfies (ours, MONAI networks, CLIPSeg).
- ``film_v1`` (``DecoderFiLMSwinUNETR``) and ``film_v2`` (``EncoderFiLMSwinUNETR``): FiLM-conditioned MONAI
  SwinUNETR; ``universal`` (``UniversalModel``): the CLIP-Driven Universal Model head; ``swinunetr`` and
  ``unetr``: MONAI's text-free networks.
- ``FiLM`` / ``ResidualNormFiLM``: the conditioning blocks.
- ``load_pretrained_swinunetr``: MONAI SwinUNETR checkpoints into the shared backbone, with a report.
"""

from .base import TextSegModel, select_channels
from .baselines import SwinUNETRBaseline, UNETRBaseline
from .config import MODES, ModelConfig
from .factory import ARCHITECTURES, MODEL_CLASSES, build_model
from .film import FiLM, ResidualNormFiLM
from .film_swinunetr import DecoderFiLMSwinUNETR, EncoderFiLMSwinUNETR
from .pretrained import PretrainedLoadReport, load_pretrained_swinunetr
from .protocol import OUTPUT_KINDS, BundleModel
from .universal import UniversalModel

__all__ = [
    "ARCHITECTURES",
    "OUTPUT_KINDS",
    "BundleModel",
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
