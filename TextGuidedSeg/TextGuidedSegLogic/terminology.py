"""The Slicer terminology contexts of the structures Slicer's General Anatomy list lacks.

Segments carry their terminology entry string in any case (codes are in the segment, and saved with it). The
anatomy vocabulary codes structures absent from Slicer's list with TotalSegmentator's codes (context
``"Segmentation category and type - Total Segmentator"``, the one SlicerTotalSegmentator loads) or, where
neither list has them (the femoral heads, the celiac trunk, ...), with the library's own codes (context
``"Segmentation category and type - TextGuidedSeg"``). Slicer's terminology selector shows them once a
terminology file of that context is loaded. :func:`terminology_context` builds such a file from the library's
vocabulary (the one source of the codes); the module loads ours at start-up, and the TotalSegmentator one
when no other extension has loaded that context already.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from TextGuidedSegLib.taxonomy import Taxonomy

TERMINOLOGY_FILE = "SegmentationCategoryTypeModifier-TextGuidedSeg.term.json"
#: The TotalSegmentator context written from the vocabulary (loaded only when no extension loaded it).
TOTALSEGMENTATOR_FILE = "SegmentationCategoryTypeModifier-TotalSegmentator-TextGuidedSeg.term.json"
SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#"


def _code(code: Any) -> dict[str, str]:
    return {"CodeMeaning": code.meaning, "CodingSchemeDesignator": code.scheme, "CodeValue": code.value}


def terminology_context(context_name: str | None = None, taxonomy: Taxonomy | None = None) -> dict[str, Any]:
    """The ``.term.json`` content (Slicer's segment-context schema) of one context's entries.

    Args:
        context_name: the context (default: the library's own, ``TEXTGUIDEDSEG_CONTEXT``).
        taxonomy: structures to take the entries from (default: every structure of the anatomy vocabulary).
    """
    from TextGuidedSegLib.taxonomy import TEXTGUIDEDSEG_CONTEXT, get_vocabulary

    context_name = context_name or TEXTGUIDEDSEG_CONTEXT
    if taxonomy is None:
        vocabulary = get_vocabulary()
        structures = [vocabulary.structure(e.class_name) for e in vocabulary.structures]
    else:
        structures = list(taxonomy)
    categories: dict[str, dict[str, Any]] = {}
    for structure in structures:
        term = structure.terminology
        if term.context_name != context_name:
            continue
        category = categories.setdefault(
            term.category.value, {**_code(term.category), "showAnatomy": True, "Type": []}
        )
        entry = next((t for t in category["Type"] if t["CodeValue"] == term.type.value), None)
        if entry is None:
            entry = {**_code(term.type), "recommendedDisplayRGBValue": list(term.color)}
            if term.modifier is None:
                entry["3dSlicerLabel"] = structure.name.lower()
            category["Type"].append(entry)
        if term.modifier is not None and not any(
            m["CodeValue"] == term.modifier.value for m in entry.get("Modifier", [])
        ):
            entry.setdefault("Modifier", []).append(
                {
                    **_code(term.modifier),
                    "recommendedDisplayRGBValue": list(term.color),
                    "3dSlicerLabel": structure.name.lower(),
                }
            )
    return {
        "SegmentationCategoryTypeContextName": context_name,
        "@schema": SCHEMA,
        "SegmentationCodes": {"Category": list(categories.values())},
    }


def write_terminology_context(
    folder: str | Path, taxonomy: Taxonomy | None = None, context_name: str | None = None
) -> Path:
    """Write :func:`terminology_context` to ``folder`` (atomically) and return the file's path."""
    from TextGuidedSegLib.taxonomy import TEXTGUIDEDSEG_CONTEXT, TOTALSEGMENTATOR_CONTEXT

    context_name = context_name or TEXTGUIDEDSEG_CONTEXT
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = TERMINOLOGY_FILE if context_name != TOTALSEGMENTATOR_CONTEXT else TOTALSEGMENTATOR_FILE
    path = folder / name
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".term-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(terminology_context(context_name, taxonomy), stream, indent=2)
    os.replace(temporary, path)
    return path
