"""MONAI networks as bundle models: the ``monai`` external architecture (MONAI model-zoo bundles, imported by
``TextGuidedSegLib.importers.monai_bundle``).

A ``monai`` bundle's ``config.json`` names a network class of ``monai.networks.nets`` (from
:data:`MONAI_NETWORKS`) and its keyword arguments, as the MONAI bundle's ``network_def`` did, plus how its
output is read:

- ``activation: "softmax"``: one channel per class, channel 0 the background; the ``Segmenter`` takes the
  argmax over all channels and keeps the requested labels (``output == "classes"``). ``invert`` says whether
  the bundle's own pipeline inverted the label map (``"labels"``, nearest) or the probabilities
  (``"probabilities"``, bilinear, then argmax) onto the input grid.
- ``activation: "sigmoid"``: one independent channel per structure (``output == "channels"``).

Weights are the network's own state dict (MONAI's key names) in ``model.safetensors``, checked key by key and
shape by shape when loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from TextGuidedSegLib.bundle import CONFIG_FILE, BundleError
from TextGuidedSegLib.configs import dataclass_from_dict, to_jsonable
from TextGuidedSegLib.models.weights import WEIGHTS_FILE, is_derived_buffer, state_dict_mismatch

__all__ = [
    "MONAI_ARCHITECTURE",
    "MONAI_NETWORKS",
    "MonaiNetworkConfig",
    "MonaiNetworkModel",
    "build_network",
    "check_state_dict",
    "load_bundle_model",
    "model_config_from_dict",
]

logger = logging.getLogger(__name__)

MONAI_ARCHITECTURE = "monai"
#: Classes of ``monai.networks.nets`` a bundle may name (looked up by this exact name, arguments as data).
MONAI_NETWORKS = ("SegResNet", "SwinUNETR", "UNet", "BasicUNet", "UNETR", "DynUNet", "AttentionUnet")
ACTIVATIONS = ("softmax", "sigmoid")
INVERSIONS = ("labels", "probabilities")


@dataclass
class MonaiNetworkConfig:
    """The ``model`` section of a ``monai`` bundle's ``config.json``.

    Args:
        architecture: always ``"monai"``.
        network: class name in ``monai.networks.nets`` (one of :data:`MONAI_NETWORKS`).
        kwargs: its keyword arguments (JSON values), including ``out_channels``.
        activation: ``"softmax"`` (classes, channel 0 background) or ``"sigmoid"`` (a channel per structure).
        invert: what goes back onto the input grid: ``"labels"`` (argmax in model space, nearest) or
            ``"probabilities"`` (bilinear, then argmax); softmax models only.
        source: where it came from (MONAI bundle name and version), informative.
    """

    architecture: str = MONAI_ARCHITECTURE
    network: str = "SegResNet"
    kwargs: dict[str, Any] = field(default_factory=dict)
    activation: str = "softmax"
    invert: str = "labels"
    source: str = ""

    #: A fixed set of structures (an empty prompt asks for all of them), no text.
    mode = "global"
    uses_text = False
    text_dim = 1

    def __post_init__(self) -> None:
        if self.architecture != MONAI_ARCHITECTURE:
            raise ValueError(f"MonaiNetworkConfig.architecture must be 'monai', got {self.architecture!r}")
        if self.network not in MONAI_NETWORKS:
            raise ValueError(
                f"model.network {self.network!r} is not supported; supported: {list(MONAI_NETWORKS)}"
            )
        if not isinstance(self.kwargs, dict):
            raise ValueError(f"model.kwargs must be an object, got {self.kwargs!r}")
        out = self.kwargs.get("out_channels")
        if isinstance(out, bool) or not isinstance(out, int) or out < 1:
            raise ValueError(f"model.kwargs.out_channels must be a positive integer, got {out!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.invert not in INVERSIONS:
            raise ValueError(f"model.invert must be one of {INVERSIONS}, got {self.invert!r}")
        self.kwargs = json.loads(json.dumps(self.kwargs))  # JSON values only (tuples -> lists)

    @property
    def output(self) -> str:
        """``"classes"`` (softmax: argmax over all channels) or ``"channels"`` (sigmoid: one each)."""
        return "classes" if self.activation == "softmax" else "channels"

    @property
    def num_classes(self) -> int:
        """Output channels ``C`` (softmax: background included)."""
        return int(self.kwargs["out_channels"])

    @property
    def feature_size(self) -> int:
        """The network's first width (``feature_size``, ``init_filters`` or ``channels[0]``)."""
        for key in ("feature_size", "init_filters"):
            if isinstance(self.kwargs.get(key), int):
                return int(self.kwargs[key])
        channels = self.kwargs.get("channels") or self.kwargs.get("features") or [0]
        return int(channels[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return to_jsonable(self)


def model_config_from_dict(data: dict[str, Any]) -> MonaiNetworkConfig:
    """``config.json``'s ``model`` section -> :class:`MonaiNetworkConfig`; unknown keys raise naming them."""
    return dataclass_from_dict(MonaiNetworkConfig, data, where=CONFIG_FILE, what="model", error=BundleError)


def build_network(config: MonaiNetworkConfig) -> nn.Module:
    """``monai.networks.nets.<config.network>(**config.kwargs)``; a rejected argument raises ValueError."""
    from monai.networks import nets

    cls = getattr(nets, config.network)
    try:
        return cls(**config.kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ValueError(
            f"cannot build MONAI {config.network} from model.kwargs {config.kwargs}: {err}"
        ) from err


def check_state_dict(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise BundleError naming the first missing, unexpected or mis-shaped key of ``state``.

    Buffers the network derives from its config (``relative_position_index``) may be absent from ``state``.
    """
    problem = state_dict_mismatch(expected, state)
    if problem is not None:
        raise BundleError(f"{what} do not match the network: {problem}")


class MonaiNetworkModel(nn.Module):
    """A MONAI network behind the library's model call (a ``models.BundleModel``).

    Args:
        config: the network and how its output is read.

    Attributes:
        net: the MONAI network (its state dict is the bundle's weights, MONAI's key names).
        predicts_volume: False: the ``Segmenter`` slides its window over the volume.
    """

    architecture = MONAI_ARCHITECTURE
    uses_text = False
    predicts_volume = False

    def __init__(self, config: MonaiNetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.net = build_network(config)

    @property
    def output(self) -> str:
        """``"classes"`` (softmax) or ``"channels"`` (sigmoid)."""
        return self.config.output

    def forward(
        self, image: torch.Tensor, text: torch.Tensor | None = None, class_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of a window.

        Args:
            image: ``(B, 1, X, Y, Z)`` float32 after the bundle's intensity steps.
            text: ignored.
            class_indices: ``(B, Q)`` channels to keep (sigmoid models); None keeps all ``C``.

        Returns:
            ``(B, C, X, Y, Z)`` logits, or ``(B, Q, X, Y, Z)`` with ``class_indices``.
        """
        logits = self.net(image)
        if class_indices is None:
            return logits
        batch = torch.arange(logits.shape[0], device=logits.device)[:, None]
        return logits[batch, class_indices.to(logits.device)]

    def save_bundle_weights(self, folder: Path) -> None:
        """Write the network's state dict as ``model.safetensors`` (``save_bundle`` calls this)."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(
            state, str(Path(folder) / WEIGHTS_FILE), metadata={"format": "pt", "network": self.config.network}
        )

    def load_network_state(self, state: Mapping[str, torch.Tensor], what: str) -> None:
        """Check ``state`` key by key against the network, then load it (derived buffers: the built ones)."""
        expected = self.net.state_dict()
        check_state_dict(expected, state, what)
        merged = {k: v for k, v in expected.items() if is_derived_buffer(k)}
        merged.update(state)
        self.net.load_state_dict(merged, strict=True)


def load_bundle_model(folder: Path, config: MonaiNetworkConfig, source: Path) -> MonaiNetworkModel:
    """Build a bundle's :class:`MonaiNetworkModel`, load ``model.safetensors`` (``load_bundle`` calls this).

    Raises:
        BundleError: no weights, unreadable weights, or weights that do not match the network.
    """
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise BundleError(f"{source}: no {WEIGHTS_FILE}")
    try:
        model = MonaiNetworkModel(config)
    except ValueError as err:
        raise BundleError(f"{source}: {err}") from err
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError
        raise BundleError(f"{source}/{WEIGHTS_FILE}: cannot read weights ({err})") from err
    model.load_network_state(state, f"{source}/{WEIGHTS_FILE}")
    return model
