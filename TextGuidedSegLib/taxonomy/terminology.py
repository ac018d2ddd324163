"""Coded terminology of a structure: the codes and colour Slicer stores in a segment's ``TerminologyEntry``.

A Slicer terminology entry names what a segment is with coded concepts (DICOM style: coding scheme designator,
code value, code meaning), usually SNOMED CT (scheme ``"SCT"``):

- category (``Anatomical Structure``, ``Morphologically Altered Structure``, ...),
- type within the category (``Liver``, ``Kidney``, ``Mass``),
- optional type modifier (laterality: ``Right``, ``Left``),
- optional anatomic region with its own modifier (where a lesion sits: a ``Mass`` in the ``Liver``),
- a recommended display colour.

Slicer serialises an entry as one string (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``)::

    contextName~catScheme^catValue^catMeaning~typeScheme^typeValue^typeMeaning~modScheme^modValue^modMeaning
    ~regionContextName~regionScheme^regionValue^regionMeaning~regModScheme^regModValue^regModMeaning

with ``^^`` for an absent code. :meth:`Terminology.slicer_entry` writes that string; the Slicer side of the
extension stores it on each segment and takes the segment's colour from :attr:`Terminology.color`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Context name of Slicer's built-in anatomy list (``SegmentationCategoryTypeModifier-SlicerGeneralAnatomy``).
SLICER_GENERAL_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
#: Context name of the entries this library adds (structures absent from Slicer's General Anatomy list).
#: Slicer resolves these codes only once a terminology file with this context name is loaded.
TEXTGUIDEDSEG_CONTEXT = "Segmentation category and type - TextGuidedSeg"
#: Context name of TotalSegmentator's terminology (SlicerTotalSegmentator's
#: ``SegmentationCategoryTypeModifier-TotalSegmentator.term.json``): codes of structures Slicer's list lacks.
TOTALSEGMENTATOR_CONTEXT = "Segmentation category and type - Total Segmentator"
#: Slicer's default anatomic-region context (``AnatomicRegionAndModifier-DICOM-Master``); Slicer writes it
#: even when the region is empty.
ANATOMIC_REGION_CONTEXT = "Anatomic codes - DICOM master list"

_CODE_KEYS = ("scheme", "value", "meaning")


@dataclass(frozen=True)
class Code:
    """One coded concept, as in a DICOM code sequence item.

    Args:
        scheme: coding scheme designator, e.g. ``"SCT"`` for SNOMED CT.
        value: code value, e.g. ``"10200004"``.
        meaning: code meaning, e.g. ``"Liver"``.

    Example::

        Code("SCT", "10200004", "Liver").slicer_str()  # 'SCT^10200004^Liver'
    """

    scheme: str
    value: str
    meaning: str

    def __post_init__(self) -> None:
        for key in _CODE_KEYS:
            field_value = getattr(self, key)
            if not isinstance(field_value, str) or not field_value.strip():
                raise ValueError(f"Code.{key} must be a non-empty string, got {field_value!r}")
            if "^" in field_value or "~" in field_value:
                raise ValueError(
                    f"Code.{key} {field_value!r} contains '^' or '~', "
                    "the separators of Slicer terminology strings"
                )

    def slicer_str(self) -> str:
        """Return ``scheme^value^meaning``, the form used inside a Slicer terminology entry string."""
        return f"{self.scheme}^{self.value}^{self.meaning}"

    def to_dict(self) -> dict[str, str]:
        """Return ``{"scheme", "value", "meaning"}`` for JSON storage."""
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Code:
        """Build a code from :meth:`to_dict` output; raises ``ValueError`` on missing or extra keys."""
        if not isinstance(data, dict) or set(data) != set(_CODE_KEYS):
            raise ValueError(
                f"a code must be a mapping with exactly the keys {list(_CODE_KEYS)}, got {data!r}"
            )
        return cls(scheme=data["scheme"], value=data["value"], meaning=data["meaning"])


def _optional_code_str(code: Code | None) -> str:
    return code.slicer_str() if code is not None else "^^"


def _optional_code_from(data: Any) -> Code | None:
    return None if data is None else Code.from_dict(data)


@dataclass(frozen=True)
class Terminology:
    """Slicer terminology entry of one structure: codes, recommended colour and context names.

    Args:
        category: segmentation category, e.g. ``SCT 123037004 Anatomical Structure``.
        type: segmentation type within the category, e.g. ``SCT 64033007 Kidney``.
        modifier: type modifier (laterality ``SCT 24028007 Right`` / ``SCT 7771000 Left``) or None.
        color: recommended display colour, RGB integers in [0, 255].
        region: anatomic region (the host structure of a lesion, e.g. ``SCT 10200004 Liver``) or None.
        region_modifier: modifier of the anatomic region (laterality) or None.
        context_name: terminology context the category/type come from (:data:`SLICER_GENERAL_ANATOMY_CONTEXT`
            for codes copied from Slicer's list, :data:`TEXTGUIDEDSEG_CONTEXT` for this library's additions).
        region_context_name: anatomic context name (Slicer's DICOM master list by default).

    Example::

        liver = Terminology(
            category=Code("SCT", "123037004", "Anatomical Structure"),
            type=Code("SCT", "10200004", "Liver"),
            modifier=None, color=(221, 130, 101), region=None, region_modifier=None,
            context_name=SLICER_GENERAL_ANATOMY_CONTEXT,
        )
        liver.slicer_entry()
    """

    category: Code
    type: Code
    modifier: Code | None
    color: tuple[int, int, int]
    region: Code | None
    region_modifier: Code | None
    context_name: str
    region_context_name: str = ANATOMIC_REGION_CONTEXT

    def __post_init__(self) -> None:
        color = tuple(self.color)
        if len(color) != 3 or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color
        ):
            raise ValueError(f"Terminology.color must be three integers in [0, 255], got {self.color!r}")
        object.__setattr__(self, "color", color)  # accept lists (from JSON), store a tuple
        for name in ("context_name", "region_context_name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or "~" in value:
                raise ValueError(f"Terminology.{name} must be a non-empty string without '~', got {value!r}")
        if self.region is None and self.region_modifier is not None:
            raise ValueError("Terminology.region_modifier is set but region is None")

    @property
    def from_slicer_general_anatomy(self) -> bool:
        """True when category and type come from Slicer's General Anatomy list (else our own addition)."""
        return self.context_name == SLICER_GENERAL_ANATOMY_CONTEXT

    def slicer_entry(self) -> str:
        """Return the terminology entry string Slicer stores in a segment's ``TerminologyEntry`` tag.

        Example (Liver)::

            Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure
            ~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^

        (one line; wrapped here for width).
        """
        return "~".join(
            (
                self.context_name,
                self.category.slicer_str(),
                self.type.slicer_str(),
                _optional_code_str(self.modifier),
                self.region_context_name,
                _optional_code_str(self.region),
                _optional_code_str(self.region_modifier),
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping; :meth:`from_dict` restores an equal object."""
        return {
            "context_name": self.context_name,
            "category": self.category.to_dict(),
            "type": self.type.to_dict(),
            "modifier": None if self.modifier is None else self.modifier.to_dict(),
            "region_context_name": self.region_context_name,
            "region": None if self.region is None else self.region.to_dict(),
            "region_modifier": None if self.region_modifier is None else self.region_modifier.to_dict(),
            "color": list(self.color),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Terminology:
        """Build a terminology from :meth:`to_dict` output; ``ValueError`` names missing/unknown keys."""
        required = {"context_name", "category", "type", "color"}
        optional = {"modifier", "region", "region_modifier", "region_context_name"}
        if not isinstance(data, dict):
            raise ValueError(f"a terminology must be a mapping, got {type(data).__name__}")
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - required - optional)
        if missing or unknown:
            raise ValueError(f"terminology keys: missing {missing}, unknown {unknown} (in {data!r})")
        return cls(
            category=Code.from_dict(data["category"]),
            type=Code.from_dict(data["type"]),
            modifier=_optional_code_from(data.get("modifier")),
            color=tuple(data["color"]),
            region=_optional_code_from(data.get("region")),
            region_modifier=_optional_code_from(data.get("region_modifier")),
            context_name=data["context_name"],
            region_context_name=data.get("region_context_name", ANATOMIC_REGION_CONTEXT),
        )
