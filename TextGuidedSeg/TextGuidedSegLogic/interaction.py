"""Qt-free decisions behind the panel's and the effect's keyboard and lifecycle handling (tested headless).

The Qt wiring (``TextGuidedSegUI.completer``, ``TextGuidedSeg.py``, the effect) asks these functions and
does what they say, so the rules are tested without a Qt event loop; the wiring itself is tested in Slicer.
"""

from __future__ import annotations


def enter_applies(completion_popup_open: bool, prompt: str, running: bool) -> bool:
    """Whether Enter in the prompt line edit starts a segmentation.

    Qt delivers Enter to the line edit (``returnPressed``) while the completion popup is still open, before
    the completer takes the highlighted completion. Enter with the popup open only completes; Enter
    with it closed applies a non-empty prompt when no job runs.
    """
    return not completion_popup_open and bool(prompt.strip()) and not running


def can_write_results(parameter_node_present: bool, volume_node_present: bool) -> str | None:
    """Why a finished job cannot be written into the scene (None when it can).

    The scene may have been closed while the job ran: the parameter node and the input volume are gone.
    """
    if not parameter_node_present:
        return "the scene was closed while segmenting: nothing was written"
    if not volume_node_present:
        return "the input volume was removed while segmenting: nothing was written"
    return None
