"""``BundleModel``: what ``save_bundle``, ``load_bundle`` and the ``Segmenter`` rely on in a bundle's model.

Three kinds of model satisfy it: the library's ``TextSegModel`` subclasses (``models.factory``), MONAI
networks imported from the model zoo (``models.monai_network.MonaiNetworkModel``) and CLIPSeg run slice by
slice (``clipseg.volume.CLIPSegVolumeModel``). A new bundle format is a model class that satisfies it, a
module with ``model_config_from_dict(data)`` and ``load_bundle_model(folder, config, source)``, and one line
in ``bundle.EXTERNAL_ARCHITECTURES``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

__all__ = ["OUTPUT_KINDS", "BundleModel"]

#: What a model's logits channels mean (``BundleModel.output``):
#: ``"query"``: one map per text embedding, ``(B, Q, D, H, W)``;
#: ``"channels"``: one independent (sigmoid) map per taxonomy structure, ``class_indices`` picks some;
#: ``"classes"``: softmax over all channels, channel 0 the background (the ``Segmenter`` takes the argmax).
OUTPUT_KINDS: tuple[str, ...] = ("query", "channels", "classes")


@runtime_checkable
class BundleModel(Protocol):
    """A bundle's model: built from ``config`` alone, called on windows or the whole volume, saves itself.

    Attributes:
        architecture: the ``config.json`` ``model.architecture`` it serves (a class attribute).
        config: its ``model`` section (``ModelConfig``, ``MonaiNetworkConfig``, ``CLIPSegModelConfig``):
            ``architecture``, ``mode``, ``text_dim``, ``feature_size``, ``output`` and ``to_dict()``.
        uses_text: it reads ``text`` embeddings; False: the prompt only picks channels.
        output: one of :data:`OUTPUT_KINDS`.
        predicts_volume: True: the ``Segmenter`` calls it once on the whole model-space volume; False: it
            slides a window of ``inference.roi_size``.
    """

    architecture: ClassVar[str]
    config: Any
    predicts_volume: ClassVar[bool]

    @property
    def uses_text(self) -> bool:
        """True when ``text`` conditions the output."""
        ...

    @property
    def output(self) -> str:
        """One of :data:`OUTPUT_KINDS`."""
        ...

    def __call__(
        self, image: torch.Tensor, text: torch.Tensor | None = None, class_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``image (B, C, D, H, W)``, ``text (B, Q, E)`` or None -> logits ``(B, Q or K, D, H, W)``."""
        ...

    def save_bundle_weights(self, folder: Path) -> None:
        """Write its weight file(s) into a bundle ``folder`` (``save_bundle`` calls this; ``load_bundle``
        reads them back through the architecture's module)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The tensors it holds (``torch.nn.Module.state_dict``)."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """Its parameters (``torch.nn.Module.parameters``)."""
        ...

    def train(self, mode: bool = True) -> Any:
        """Training (True) or inference (False) mode (``torch.nn.Module.train``)."""
        ...

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """Move to a device or dtype (``torch.nn.Module.to``)."""
        ...
