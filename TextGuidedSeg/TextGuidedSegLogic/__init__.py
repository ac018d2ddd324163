"""Qt-free logic of the TextGuidedSeg Slicer module: MRML nodes and numpy in, TextGuidedSegLib out.

Used by the module panel (``TextGuidedSeg.py``), the "Text prompt" Segment Editor effect and the headless
tests (``Testing/test_slicer_logic.py``, which run it on Kitware's ``slicer-core`` MRML build). Importing this
package imports ``slicer``, ``vtk`` and numpy only; the library and its model stack (torch, MONAI) are
imported on first use, after the panel has checked the dependencies.

- :mod:`.logic`: :class:`TextGuidedSegLogic` (prepare inputs / run / write results, bundle choices).
- :mod:`.parameters`: the panel's parameter node <-> the library's ``SegmentationOptions`` (one mapping).
- :mod:`.nodes`: volume nodes and oriented images <-> ``(I, J, K)`` arrays (the one axis-order conversion).
- :mod:`.segments`: writing results into segments (names, colours, terminology, labelmaps).
- :mod:`.service`: inference out of Slicer's process: the ``textguidedseg serve`` client, the local
  server process, and the job object the GUI polls.
- :mod:`.dependencies`: required packages and their ``>=`` floors.
- :mod:`.prompts`: prompt completion and the checkable structure list.
- :mod:`.selftest`: phantom volume nodes and Dice, for the in-Slicer self-tests.
"""

from .library import ensure_library_importable

ensure_library_importable()

from .logic import (  # noqa: E402 - the library path must be set first
    DEFAULT_BUNDLE,
    MODULE_NAME,
    BundleChoice,
    InferenceJob,
    InferenceOutput,
    SegmentationOutputs,
    SegmentNameConflict,
    TextGuidedSegLogic,
)
from .service import InferenceService, ServerJob, WorkerEvent  # noqa: E402

__all__ = [
    "DEFAULT_BUNDLE",
    "MODULE_NAME",
    "BundleChoice",
    "InferenceJob",
    "InferenceOutput",
    "SegmentNameConflict",
    "SegmentationOutputs",
    "InferenceService",
    "ServerJob",
    "TextGuidedSegLogic",
    "WorkerEvent",
    "ensure_library_importable",
]
