"""How to segment: one options object from every front end (CLI, Slicer, server) to the ``Segmenter``.

Each option has one name in every layer: the dataclass field, the CLI flag (``flip_tta`` is ``--flip-tta``),
the Slicer parameter node and the server's request body. ``None`` means "the bundle's own value"
(``BundleConfig.inference``). Options are validated once, here.

Examples::

    >>> options = SegmentationOptions(device="cpu", overlap=0.25)
    >>> options.overlap, options.threshold
    (0.25, None)
    >>> SegmentationOptions.from_dict({"device": "cpu", "flip_tta": True}).flip_tta
    True
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class SegmentationOptions:
    """How to run a bundle on one volume; ``None`` takes the bundle's value.

    Attributes:
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N" or "mps".
        precision: "auto" (float16 autocast on CUDA, float32 elsewhere), "float32", "bfloat16" or "float16".
        overlap: sliding-window overlap in [0, 1); None: the bundle's.
        threshold: probability threshold in (0, 1); None: the bundle's.
        sw_batch_size: windows per forward pass, >= 1; None: the bundle's.
        largest_component: keep each structure's largest connected component.
        split_laterality: keep left/right structures on their side of the body midline.
        flip_tta: average over test-time flips; with ``probabilities`` also gives an uncertainty map (std).
        probabilities: also return one probability map per structure on the input grid.
    """

    device: str = "auto"
    precision: str = "auto"
    overlap: float | None = None
    threshold: float | None = None
    sw_batch_size: int | None = None
    largest_component: bool = False
    split_laterality: bool = False
    flip_tta: bool = False
    probabilities: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.sw_batch_size is not None and (
            isinstance(self.sw_batch_size, bool) or int(self.sw_batch_size) != self.sw_batch_size
        ):
            raise ValueError(f"sw_batch_size must be an integer, got {self.sw_batch_size!r}")
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {self.sw_batch_size}")
        for name in ("largest_component", "split_laterality", "flip_tta", "probabilities"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> SegmentationOptions:
        """A validated copy with ``changes`` applied; unknown names raise ``ValueError`` listing the valid."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown segmentation option(s) {unknown}; valid: {self.names()}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls) -> list[str]:
        """The option names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentationOptions:
        """Options from JSON-like data (a request body, a parameter node); unknown keys are refused."""
        if not isinstance(data, dict):
            raise ValueError(f"segmentation options must be an object, got {type(data).__name__}")
        return cls().replace(**data)

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready data (``from_dict`` reads it back)."""
        return dataclasses.asdict(self)
