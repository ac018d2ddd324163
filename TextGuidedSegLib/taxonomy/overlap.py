"""Which queried structures may overlap: a lesion and its host organ, a whole and its parts.

Derived from the data, not from a list of names:

- **host**: a structure whose terminology has an anatomic region (``Mass`` in ``Liver``, ``Cyst`` in
  ``Kidney``, ``Blood vessel`` in ``Liver``) lies in every structure whose terminology *type* is that region
  (liver tumour in liver, kidney cyst in kidney, right kidney and left kidney), and in their parts (lung
  tumour in the lung lobes). Sides must agree: a right kidney cyst does not lie in the left kidney. A
  vocabulary entry without a region of its own (``right_kidney_cyst``) takes the region of the entry whose
  part it is (``kidney_cyst``).
- **parts**: a whole and any of its parts (``kidney`` and ``right_kidney``), from the anatomy vocabulary's
  ``parts``.
- **free text**: a free-text query naming a lesion ("hepatic cyst", "nodule") may lie in any other query.

Lesions of one host do not overlap each other (a kidney tumour and a kidney cyst are separate labels in
the data sets that annotate both).

Example::

    queries = parse_prompt("liver, liver tumour and spleen", get_taxonomy())
    overlapping_pairs(queries)       # [(0, 1)]: the liver tumour lies in the liver
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from .anatomy import get_vocabulary
from .prompt import StructureQuery
from .structures import Structure
from .terminology import Code

__all__ = ["describe_pairs", "may_overlap", "overlapping_pairs"]

# Words that make a free-text query a lesion (which may lie in any organ queried with it).
_LESION_WORDS = re.compile(
    r"\b(tumou?rs?|cysts?|lesions?|mass(es)?|nodules?|metastas[ie]s|cancers?|carcinomas?|neoplasms?|"
    r"hemorrhages?|haemorrhages?|infiltrates?|effusions?)\b",
    re.IGNORECASE,
)
_SIDE_CODES = {"24028007": "right", "7771000": "left"}


def _key(code: Code | None) -> tuple[str, str] | None:
    return None if code is None else (code.scheme, code.value)


@functools.cache
def _vocabulary_relations() -> tuple[dict[str, frozenset[str]], dict[str, str]]:
    """Per vocabulary entry: all its parts (transitively), and the entry whose part it is (first found)."""
    vocabulary = get_vocabulary()
    parts: dict[str, frozenset[str]] = {}

    def collect(name: str, seen: frozenset[str]) -> frozenset[str]:
        if name in parts:
            return parts[name]
        found: set[str] = set()
        for part in vocabulary[name].parts:
            if part not in seen:
                found |= {part} | collect(part, seen | {name})
        parts[name] = frozenset(found)
        return parts[name]

    parent: dict[str, str] = {}
    for entry in vocabulary:
        collect(entry.class_name, frozenset())
        for part in entry.parts:
            parent.setdefault(part, entry.class_name)
    return parts, parent


def _side(structure: Structure) -> str | None:
    """Right / left from the laterality, the region modifier, or the class name's prefix."""
    if structure.laterality is not None:
        return structure.laterality
    modifier = structure.terminology.region_modifier
    if modifier is not None and modifier.value in _SIDE_CODES:
        return _SIDE_CODES[modifier.value]
    return next((side for side in ("right", "left") if structure.class_name.startswith(f"{side}_")), None)


def _region(structure: Structure) -> tuple[str, str] | None:
    """The anatomic region the structure lies in: its own, else that of the vocabulary entry it is part of."""
    region = _key(structure.terminology.region)
    if region is not None:
        return region
    _, parent = _vocabulary_relations()
    vocabulary = get_vocabulary()
    name = structure.class_name
    while name in parent:
        name = parent[name]
        terminology = vocabulary[name].terminology
        if terminology is not None and terminology.region is not None:
            return _key(terminology.region)
    return None


def _type_of(class_name: str) -> tuple[str, str] | None:
    entry = get_vocabulary().entries.get(class_name)
    return None if entry is None or entry.terminology is None else _key(entry.terminology.type)


def _lies_in(inner: Structure, outer: Structure) -> bool:
    """True when ``inner`` lies in ``outer`` (its region is ``outer``'s type, or that of a whole ``outer`` is
    part of), sides agreeing."""
    region = _region(inner)
    if region is None or outer.terminology.region is not None:
        return False  # a lesion is not the host of another lesion
    sides = (_side(inner), _side(outer))
    if None not in sides and sides[0] != sides[1]:
        return False
    if _key(outer.terminology.type) == region:
        return True
    parts, _ = _vocabulary_relations()
    return any(
        _type_of(whole) == region and outer.class_name in members
        for whole, members in parts.items()
        if outer.class_name in members
    )


def may_overlap(first: StructureQuery, second: StructureQuery) -> bool:
    """True when the two queries' structures may share voxels (see the module docstring)."""
    a, b = first.structure, second.structure
    if a is None or b is None:
        free = [q for q in (first, second) if q.structure is None]
        return any(_LESION_WORDS.search(q.text or q.prompt) for q in free)
    if a.class_name == b.class_name:
        return False
    parts, _ = _vocabulary_relations()
    if b.class_name in parts.get(a.class_name, ()) or a.class_name in parts.get(b.class_name, ()):
        return True
    return _lies_in(a, b) or _lies_in(b, a)


def overlapping_pairs(queries: Sequence[StructureQuery]) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of the queries whose structures may overlap, in query order."""
    return [
        (i, j)
        for i in range(len(queries))
        for j in range(i + 1, len(queries))
        if may_overlap(queries[i], queries[j])
    ]


def describe_pairs(queries: Sequence[StructureQuery], pairs: Sequence[tuple[int, int]]) -> str:
    """``"Liver / Liver Tumor, Kidney / Right Kidney"``: the pairs by display name, for warnings."""
    return ", ".join(f"{queries[i].name} / {queries[j].name}" for i, j in pairs)
