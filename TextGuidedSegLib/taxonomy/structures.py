"""Structures and taxonomies: the ordered structures a model knows, loaded from a shipped JSON resource.

A taxonomy's order is the model's channel order: structure ``i`` (0-based channel) has ``label_id = i + 1``.
The default taxonomy, ``universal32``, holds the 32 classes of the CLIP-Driven Universal Model (Liu et al.,
ICCV 2023) in that model's order; it lives in ``TextGuidedSegLib/resources/universal32.json`` (names,
synonyms, prompts and Slicer terminology codes are data, not code).

Universal Model names: that model's class list spells "Arota" and "Celiac Truck"; the resource uses the
correct spellings (``"aorta"``, ``"celiac trunk"``) in names and prompts. Where our display name differs from
the Universal Model's name (``Postcava`` -> ``Inferior Vena Cava``), the prompt keeps the Universal Model's
name and that name is also a synonym.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .terminology import Terminology
from .vocabulary import build_phrase_index

logger = logging.getLogger(__name__)

#: Version of the taxonomy JSON layout written by :meth:`Taxonomy.to_dict`.
TAXONOMY_FORMAT_VERSION = 1
#: Template of the canonical prompts (the Universal Model's, "A computerized tomography of a [CLS]").
PROMPT_TEMPLATE = "A computerized tomography of a {name}"
#: Name of the taxonomy :func:`get_taxonomy` loads by default.
DEFAULT_TAXONOMY = "universal32"

_CLASS_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
_TAXONOMY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_LATERALITIES = (None, "right", "left")
_LATERALITY_CODES = {"right": "24028007", "left": "7771000"}  # SNOMED CT Right / Left (qualifier values)
_STRUCTURE_KEYS = ("label_id", "class_name", "name", "prompt", "synonyms", "laterality", "terminology")
# Documentation keys a taxonomy file may carry; read and ignored.
_TAXONOMY_DOC_KEYS = frozenset({"notes", "contexts"})
# Shipped data files (pyproject: package-data ``resources/*.json``). Located from this file rather than with
# importlib.resources, which fails when an editable install exposes the package as a namespace package.
RESOURCES_DIR = Path(__file__).resolve().parent.parent / "resources"


def canonical_prompt(name: str) -> str:
    """Return the canonical prompt of a name: ``"A computerized tomography of a <name lower-cased>"``."""
    return PROMPT_TEMPLATE.format(name=name.lower())


@dataclass(frozen=True)
class Structure:
    """One anatomical structure (or lesion class) of a taxonomy.

    Args:
        label_id: value of the structure in a label map of the taxonomy (1-based taxonomy position).
        class_name: canonical snake_case key, e.g. ``"right_kidney"``; stable across releases.
        name: display name, e.g. ``"Right Kidney"``.
        prompt: canonical text-encoder prompt, e.g. ``"A computerized tomography of a right kidney"``.
        synonyms: other names users type (``"IVC"``, ``"oesophagus"``); matched case-insensitively.
        laterality: ``"right"``, ``"left"`` or None.
        terminology: Slicer terminology entry (codes and recommended colour).
    """

    label_id: int
    class_name: str
    name: str
    prompt: str
    synonyms: tuple[str, ...]
    laterality: str | None
    terminology: Terminology

    def __post_init__(self) -> None:
        if not isinstance(self.label_id, int) or isinstance(self.label_id, bool) or self.label_id < 1:
            raise ValueError(f"label_id must be an integer >= 1, got {self.label_id!r}")
        if not isinstance(self.class_name, str) or not _CLASS_NAME_RE.match(self.class_name):
            raise ValueError(
                f"class_name must be snake_case ([a-z0-9_], e.g. 'right_kidney'), got {self.class_name!r}"
            )
        for key in ("name", "prompt"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{self.class_name}: {key} must be a non-empty string, got {value!r}")
        synonyms = tuple(self.synonyms)
        if not all(isinstance(s, str) and s.strip() for s in synonyms):
            raise ValueError(f"{self.class_name}: synonyms must be non-empty strings, got {synonyms!r}")
        object.__setattr__(self, "synonyms", synonyms)  # accept lists (from JSON), store a tuple
        if self.laterality not in _LATERALITIES:
            raise ValueError(
                f"{self.class_name}: laterality must be 'right', 'left' or None, got {self.laterality!r}"
            )
        if not isinstance(self.terminology, Terminology):
            raise ValueError(
                f"{self.class_name}: terminology must be a Terminology, got {type(self.terminology)}"
            )
        modifier = self.terminology.modifier
        if self.laterality is not None and (
            modifier is None or modifier.value != _LATERALITY_CODES[self.laterality]
        ):
            raise ValueError(
                f"{self.class_name}: laterality {self.laterality!r} needs the terminology modifier "
                f"SCT {_LATERALITY_CODES[self.laterality]}, got {modifier!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping; :meth:`from_dict` restores an equal object."""
        return {
            "label_id": self.label_id,
            "class_name": self.class_name,
            "name": self.name,
            "prompt": self.prompt,
            "synonyms": list(self.synonyms),
            "laterality": self.laterality,
            "terminology": self.terminology.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Structure:
        """Build a structure from :meth:`to_dict` output; ``ValueError`` names missing/unknown keys."""
        if not isinstance(data, dict):
            raise ValueError(f"a structure must be a mapping, got {type(data).__name__}")
        missing = [k for k in _STRUCTURE_KEYS if k not in data]
        unknown = sorted(set(data) - set(_STRUCTURE_KEYS))
        if missing or unknown:
            raise ValueError(
                f"structure {data.get('class_name', '?')!r}: missing keys {missing}, unknown keys {unknown}"
            )
        return cls(
            label_id=data["label_id"],
            class_name=data["class_name"],
            name=data["name"],
            prompt=data["prompt"],
            synonyms=tuple(data["synonyms"]),
            laterality=data["laterality"],
            terminology=Terminology.from_dict(data["terminology"]),
        )


@dataclass(frozen=True)
class Taxonomy:
    """An ordered set of structures: structure ``i`` is output channel ``i`` and has ``label_id = i + 1``.

    Args:
        name: taxonomy name, e.g. ``"universal32"``.
        structures: the structures in channel order; label ids must be 1..n in that order, class names unique,
            and no name or synonym may name two different sets of structures.
        description: free text shown to users (optional).

    Example::

        taxonomy = get_taxonomy()
        taxonomy["liver"].label_id          # 6
        taxonomy.index("liver")             # 5 (channel)
        small = taxonomy.subset(["liver", "spleen"])   # liver = 1, spleen = 2
    """

    name: str
    structures: tuple[Structure, ...]
    description: str = ""
    _by_class_name: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"taxonomy name must be a non-empty string, got {self.name!r}")
        structures = tuple(self.structures)
        if not structures:
            raise ValueError(f"taxonomy {self.name!r} has no structures")
        object.__setattr__(self, "structures", structures)
        by_class_name: dict[str, int] = {}
        for position, structure in enumerate(structures):
            if not isinstance(structure, Structure):
                raise ValueError(f"taxonomy {self.name!r}: item {position} is not a Structure: {structure!r}")
            if structure.label_id != position + 1:
                raise ValueError(
                    f"taxonomy {self.name!r}: {structure.class_name!r} at position {position + 1} has "
                    f"label_id {structure.label_id}; label ids must be 1..n in taxonomy order "
                    "(use subset() to renumber)"
                )
            if structure.class_name in by_class_name:
                raise ValueError(f"taxonomy {self.name!r}: duplicate class_name {structure.class_name!r}")
            by_class_name[structure.class_name] = position
        object.__setattr__(self, "_by_class_name", by_class_name)
        build_phrase_index(self)  # raises ValueError on ambiguous synonyms

    # -- sequence-like access -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.structures)

    def __iter__(self) -> Iterator[Structure]:
        return iter(self.structures)

    def __contains__(self, class_name: object) -> bool:
        return class_name in self._by_class_name

    def __getitem__(self, class_name: str) -> Structure:
        """Return the structure with this ``class_name``; ``KeyError`` suggests close matches."""
        return self.structures[self.index(class_name)]

    def index(self, class_name: str) -> int:
        """Return the 0-based channel of ``class_name``; ``KeyError`` suggests close matches."""
        try:
            return self._by_class_name[class_name]
        except (KeyError, TypeError):
            raise KeyError(self._unknown_message(class_name)) from None

    def by_label_id(self, label_id: int) -> Structure:
        """Return the structure whose ``label_id`` is ``label_id`` (1..n)."""
        if isinstance(label_id, bool) or not isinstance(label_id, int) or not 1 <= label_id <= len(self):
            raise KeyError(f"label_id {label_id!r} is not in taxonomy {self.name!r} (valid: 1..{len(self)})")
        return self.structures[label_id - 1]

    def _unknown_message(self, class_name: object) -> str:
        close = difflib.get_close_matches(str(class_name), self.class_names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"unknown class_name {class_name!r} in taxonomy {self.name!r}{hint} "
            f"(class names: {', '.join(self.class_names)})"
        )

    # -- views ----------------------------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """Class names in channel order."""
        return [s.class_name for s in self.structures]

    @property
    def names(self) -> list[str]:
        """Display names in channel order."""
        return [s.name for s in self.structures]

    @property
    def prompts(self) -> list[str]:
        """Canonical text-encoder prompts in channel order."""
        return [s.prompt for s in self.structures]

    def subset(self, class_names: Iterable[str], name: str | None = None) -> Taxonomy:
        """Return a taxonomy of the given structures, in the given order, with label ids renumbered 1..n.

        Bundles trained on some of the structures store such a subset; everything but ``label_id`` is kept.

        Args:
            class_names: class names to keep, in the new channel order; no repeats.
            name: name of the new taxonomy (default ``"<this name>-subset"``).

        Raises:
            KeyError: an unknown class name (with close matches).
            ValueError: empty selection or a repeated class name.
        """
        if isinstance(class_names, str):
            raise TypeError("subset() takes a list of class names, not one string")
        selected = list(class_names)
        if not selected:
            raise ValueError("subset() needs at least one class name")
        repeated = sorted({c for c in selected if selected.count(c) > 1})
        if repeated:
            raise ValueError(f"subset(): class names given more than once: {repeated}")
        structures = tuple(
            dataclasses.replace(self[class_name], label_id=new_id)
            for new_id, class_name in enumerate(selected, start=1)
        )
        return Taxonomy(
            name=name or f"{self.name}-subset", structures=structures, description=self.description
        )

    # -- storage --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping for bundle configs; :meth:`from_dict` restores an equal object."""
        return {
            "format_version": TAXONOMY_FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "structures": [_structure_item(s) for s in self.structures],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Taxonomy:
        """Build a taxonomy from :meth:`to_dict` output (or a taxonomy resource file).

        Raises:
            ValueError: a missing key, a newer ``format_version``, or an invalid structure.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a taxonomy must be a mapping, got {type(data).__name__}")
        version = data.get("format_version", TAXONOMY_FORMAT_VERSION)
        if not isinstance(version, int) or version > TAXONOMY_FORMAT_VERSION:
            raise ValueError(
                f"taxonomy format_version {version!r} is newer than this library reads "
                f"({TAXONOMY_FORMAT_VERSION}); update TextGuidedSegLib"
            )
        missing = [k for k in ("name", "structures") if k not in data]
        if missing:
            raise ValueError(f"taxonomy mapping lacks keys {missing}")
        unknown = sorted(
            set(data) - {"format_version", "name", "description", "structures"} - _TAXONOMY_DOC_KEYS
        )
        if unknown:
            logger.warning("taxonomy %r: ignoring unknown keys %s", data["name"], unknown)
        if not isinstance(data["structures"], list):
            raise ValueError("taxonomy 'structures' must be a list")
        return cls(
            name=data["name"],
            structures=tuple(
                _structure_from_item(item, label_id)
                for label_id, item in enumerate(data["structures"], start=1)
            ),
            description=data.get("description", ""),
        )


def _structure_item(structure: Structure) -> str | dict[str, Any]:
    """A structure as stored in a taxonomy: its class name when the anatomy vocabulary holds it unchanged
    (``{"class_name", "prompt"}`` when only the prompt differs), else its full record."""
    from .anatomy import get_vocabulary

    vocabulary = get_vocabulary()
    if structure.class_name in vocabulary and not vocabulary[structure.class_name].is_group:
        known = vocabulary.structure(structure.class_name, structure.label_id)
        if dataclasses.replace(known, prompt=structure.prompt) == structure:
            if structure.prompt == known.prompt:
                return structure.class_name
            return {"class_name": structure.class_name, "prompt": structure.prompt}
    return structure.to_dict()


def _structure_from_item(item: Any, label_id: int) -> Structure:
    """Read one taxonomy item: a vocabulary class name, ``{"class_name", "prompt"}``, or a full record."""
    from .anatomy import get_vocabulary

    if isinstance(item, dict) and set(item) <= {"class_name", "prompt"} and "class_name" in item:
        prompt = item.get("prompt")
        item = item["class_name"]
    elif isinstance(item, str):
        prompt = None
    else:
        return Structure.from_dict(item)
    try:
        return get_vocabulary().structure(item, label_id=label_id, prompt=prompt)
    except KeyError as err:
        raise ValueError(err.args[0]) from None


def available_taxonomies() -> list[str]:
    """Names of the taxonomies shipped in ``TextGuidedSegLib/resources`` (JSON files with ``structures``)."""
    names = []
    for entry in sorted(RESOURCES_DIR.glob("*.json")):
        try:
            data = json.loads(entry.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("structures"), list):
            names.append(entry.stem)
    return sorted(names)


def get_taxonomy(name: str = DEFAULT_TAXONOMY) -> Taxonomy:
    """Load a shipped taxonomy by name (cached: repeated calls return the same object).

    Args:
        name: resource name without ``.json``, e.g. ``"universal32"``.

    Raises:
        ValueError: no such taxonomy (the message lists the available ones), or an invalid resource.
    """
    if not isinstance(name, str) or not _TAXONOMY_NAME_RE.match(name):
        raise ValueError(f"invalid taxonomy name {name!r}; available: {available_taxonomies()}")
    return _load_taxonomy(name)


@functools.cache
def _load_taxonomy(name: str) -> Taxonomy:
    resource = RESOURCES_DIR / f"{name}.json"
    if not resource.is_file():
        raise ValueError(f"unknown taxonomy {name!r}; available: {available_taxonomies()}")
    taxonomy = Taxonomy.from_dict(json.loads(resource.read_text(encoding="utf-8")))
    if taxonomy.name != name:
        raise ValueError(f"taxonomy resource {name}.json declares the name {taxonomy.name!r}")
    logger.debug("loaded taxonomy %r (%d structures)", name, len(taxonomy))
    return taxonomy
