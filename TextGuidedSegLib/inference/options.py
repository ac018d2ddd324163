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
from dataclasses import dataclass, field
from typing import Any

from TextGuidedSegLib.configs import check_keys, field_names

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
DEVICE_HELP = "auto (CUDA when present, else the CPU), cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class SegmentationOptions:
    """How to run a bundle on one volume; ``None`` takes the bundle's value.

    Each field's ``metadata["help"]`` describes it to front ends: the CLI makes one flag per field from it
    (``cli/arguments.py``), so a new option is a field here and its use in the ``Segmenter``.

    Attributes:
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N" or "mps".
        precision: "auto" (float16 autocast on CUDA, float32 elsewhere), "float32", "bfloat16" or "float16".
        overlap: sliding-window overlap in [0, 1); None: the bundle's.
        threshold: probability threshold in (0, 1); None: the bundle's.
        sw_batch_size: windows per forward pass, >= 1; None: the bundle's.
        largest_component: keep each structure's largest connected component.
        split_laterality: keep left/right structures on their side of the body midline.
        flip_tta: average over test-time flips and return one uncertainty map (their std) per structure.
        probabilities: also return one probability map per structure on the input grid.
    """

    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    precision: str = field(
        default="auto",
        metadata={
            "help": "network arithmetic: float32, bfloat16 autocast (CPU or CUDA), float16 autocast (CUDA "
            "only); auto: float16 on CUDA, float32 on the CPU",
            "choices": PRECISIONS,
        },
    )
    overlap: float | None = field(
        default=None, metadata={"help": "sliding-window overlap in [0, 1), 0 is fastest"}
    )
    threshold: float | None = field(default=None, metadata={"help": "probability threshold in (0, 1)"})
    sw_batch_size: int | None = field(default=None, metadata={"help": "windows per forward pass, >= 1"})
    largest_component: bool = field(
        default=False, metadata={"help": "keep each structure's largest component"}
    )
    split_laterality: bool = field(
        default=False, metadata={"help": "restrict left/right structures to their side of the body midline"}
    )
    flip_tta: bool = field(
        default=False,
        metadata={
            "help": "test-time flips (4 passes): average the probabilities and also return one uncertainty "
            "map (their standard deviation) per query"
        },
    )
    probabilities: bool = field(default=False, metadata={"help": "also return one probability map per query"})
    force: bool = field(
        default=False,
        metadata={
            "help": "run even when the input does not look like a CT in Hounsfield units (MR, shifted "
            "intensities, many NaN voxels) or may not fit in memory; the reasons are kept as warnings"
        },
    )

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
        for name in (f.name for f in dataclasses.fields(self) if isinstance(f.default, bool)):  # the switches
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> SegmentationOptions:
        """A validated copy with ``changes`` applied; unknown names raise ``ValueError`` listing the valid."""
        check_keys(changes, self.names(), what="SegmentationOptions")
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls) -> list[str]:
        """The option names, in declaration order."""
        return field_names(cls)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentationOptions:
        """Options from JSON-like data (a request body, a parameter node); unknown keys are refused."""
        if not isinstance(data, dict):
            raise ValueError(f"segmentation options must be an object, got {type(data).__name__}")
        return cls().replace(**data)

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready data (``from_dict`` reads it back)."""
        return dataclasses.asdict(self)
