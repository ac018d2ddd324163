"""The Slicer terminology context of the structures Slicer's General Anatomy list lacks.

Segments carry their terminology entry string in any case (codes are in the segment, and saved with it). The
library codes a few structures itself (the inferior vena cava, the femoral heads, ...) under the context
``"Segmentation category and type - TextGuidedSeg"``; Slicer's terminology selector shows them once a
terminology file of that context is loaded. :func:`terminology_context` builds that file from the library's
taxonomy (the one source of the codes); the module loads it at start-up.
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
SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#"


def _code(code: Any) -> dict[str, str]:
    return {"CodeMeaning": code.meaning, "CodingSchemeDesignator": code.scheme, "CodeValue": code.value}


def terminology_context(taxonomy: Taxonomy | None = None) -> dict[str, Any]:
    """The ``.term.json`` content (Slicer's segment-context schema) of the library's own terminology entries.

    Args:
        taxonomy: structures to take the entries from (default: the library's full taxonomy).
    """
    from TextGuidedSegLib.taxonomy import TEXTGUIDEDSEG_CONTEXT, get_taxonomy

    taxonomy = taxonomy if taxonomy is not None else get_taxonomy()
    categories: dict[str, dict[str, Any]] = {}
    for structure in taxonomy:
        term = structure.terminology
        if term.context_name != TEXTGUIDEDSEG_CONTEXT:
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
        if term.modifier is not None:
            entry.setdefault("Modifier", []).append(
                {
                    **_code(term.modifier),
                    "recommendedDisplayRGBValue": list(term.color),
                    "3dSlicerLabel": structure.name.lower(),
                }
            )
    return {
        "SegmentationCategoryTypeContextName": TEXTGUIDEDSEG_CONTEXT,
        "@schema": SCHEMA,
        "SegmentationCodes": {"Category": list(categories.values())},
    }


def write_terminology_context(folder: str | Path, taxonomy: Taxonomy | None = None) -> Path:
    """Write :func:`terminology_context` to ``folder`` (atomically) and return the file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TERMINOLOGY_FILE
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".term-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(terminology_context(taxonomy), stream, indent=2)
    os.replace(temporary, path)
    return path
