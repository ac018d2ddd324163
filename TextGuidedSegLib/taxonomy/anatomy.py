"""The anatomy vocabulary: every structure the library's models know, once, with its codes and names.

``TextGuidedSegLib/resources/anatomy.json`` (built by ``Testing/tools/build_anatomy.py`` from 3D Slicer's
General Anatomy terminology, TotalSegmentator's SNOMED mapping, the Universal Model's 32 classes, BTCV and the
VISTA3D label dictionary) holds two lists:

- ``structures``: a canonical ``class_name``, display name, laterality, ``synonyms`` (what users type),
  ``aliases`` (label names of published models: ``kidney_right``, ``Left Kideny``), ``parts`` and one Slicer
  terminology entry (codes and recommended colour);
- ``groups``: names for sets of structures no model segments as one ("vertebrae", "lung lobes"), with parts.

A taxonomy (the structures one model answers, in channel order) is a list of class names of this vocabulary
(:func:`vocabulary_taxonomy`); the prompt parser, completer, Slicer segments and sidecars all read the codes,
colours and names from here. ``parts`` let a prompt name a whole that a model only has in pieces: "lungs" on a
model with lobes answers the five lobes, "heart" the chambers and myocardium (:meth:`Vocabulary.expand`).

Example::

    resolve_structure_name("kidney_right")           # 'right_kidney'
    vocabulary_taxonomy("btcv", ["spleen", "right_kidney"]).names   # ['Spleen', 'Right Kidney']
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .structures import RESOURCES_DIR, Structure, Taxonomy, canonical_prompt
from .terminology import Terminology
from .vocabulary import normalize_phrase

__all__ = [
    "ANATOMY_RESOURCE",
    "AnatomyEntry",
    "Vocabulary",
    "get_vocabulary",
    "resolve_structure_name",
    "vocabulary_taxonomy",
]

#: The shipped vocabulary file.
ANATOMY_RESOURCE = RESOURCES_DIR / "anatomy.json"
_SIDE_PREFIXES = {"right_": "right", "left_": "left"}


@dataclass(frozen=True)
class AnatomyEntry:
    """One structure (with codes) or group (without) of the vocabulary.

    Attributes:
        class_name: canonical snake_case key.
        name: display name.
        synonyms: other names users type.
        aliases: label names of published models and data sets (read by :func:`resolve_structure_name`).
        laterality: ``"right"``, ``"left"`` or None (from the terminology's modifier).
        terminology: codes and colour; None for a group, which no model segments as one structure.
        parts: class names of the entries it consists of (lobes of a lung, the vertebrae of a region).
    """

    class_name: str
    name: str
    synonyms: tuple[str, ...]
    aliases: tuple[str, ...]
    laterality: str | None
    terminology: Terminology | None
    parts: tuple[str, ...]

    @property
    def is_group(self) -> bool:
        """True for a group (no codes): it names its parts only."""
        return self.terminology is None

    @property
    def side(self) -> str | None:
        """The side a side word selects: the laterality, else the class name's ``right_``/``left_`` prefix."""
        if self.laterality is not None:
            return self.laterality
        return next((s for p, s in _SIDE_PREFIXES.items() if self.class_name.startswith(p)), None)

    def phrases(self) -> tuple[str, ...]:
        """Every text that names this entry: display name, class name (as words), synonyms and aliases."""
        return (self.name, self.class_name.replace("_", " "), *self.synonyms, *self.aliases)


class Vocabulary:
    """The anatomy vocabulary: entries by class name, name lookup and expansion into parts.

    Args:
        entries: the structures and groups; class names unique, parts naming entries of the vocabulary, and no
            phrase (name, synonym, alias) naming two entries.
    """

    def __init__(self, entries: Sequence[AnatomyEntry]) -> None:
        self.entries: dict[str, AnatomyEntry] = {}
        for entry in entries:
            if entry.class_name in self.entries:
                raise ValueError(f"anatomy vocabulary: duplicate class_name {entry.class_name!r}")
            self.entries[entry.class_name] = entry
        self._by_phrase: dict[tuple[str, ...], str] = {}
        for entry in self.entries.values():
            for part in entry.parts:
                if part not in self.entries:
                    raise ValueError(f"anatomy vocabulary: {entry.class_name!r} has unknown part {part!r}")
            for text in entry.phrases():
                phrase = normalize_phrase(text)
                previous = self._by_phrase.setdefault(phrase, entry.class_name)
                if previous != entry.class_name:
                    raise ValueError(
                        f"anatomy vocabulary: {text!r} names both {previous!r} and {entry.class_name!r}"
                    )

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[AnatomyEntry]:
        return iter(self.entries.values())

    def __contains__(self, class_name: object) -> bool:
        return class_name in self.entries

    def __getitem__(self, class_name: str) -> AnatomyEntry:
        try:
            return self.entries[class_name]
        except KeyError:
            raise KeyError(self._unknown(class_name)) from None

    @property
    def structures(self) -> list[AnatomyEntry]:
        """The entries with codes (what a model can segment), in file order."""
        return [e for e in self.entries.values() if not e.is_group]

    def _unknown(self, text: str) -> str:
        known = [" ".join(p) for p in self._by_phrase]
        close = difflib.get_close_matches(" ".join(normalize_phrase(str(text))), known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"{text!r} is not a structure of the anatomy vocabulary{hint}"

    def resolve_name(self, name: str) -> str:
        """The class name a label name or phrase denotes (case-, plural- and separator-insensitive)."""
        phrase = normalize_phrase(name) if isinstance(name, str) else ()
        if not phrase or phrase not in self._by_phrase:
            raise KeyError(self._unknown(name))
        return self._by_phrase[phrase]

    def structure(self, class_name: str, label_id: int = 1, prompt: str | None = None) -> Structure:
        """The :class:`Structure` of a vocabulary entry with codes, at ``label_id`` (1-based channel)."""
        entry = self[class_name]
        if entry.is_group:
            raise ValueError(
                f"{class_name!r} is a group of structures ({', '.join(entry.parts)}), not one structure a "
                "model can output"
            )
        return Structure(
            label_id=label_id,
            class_name=entry.class_name,
            name=entry.name,
            prompt=prompt if prompt is not None else canonical_prompt(entry.name),
            synonyms=entry.synonyms,
            laterality=entry.laterality,
            terminology=entry.terminology,  # type: ignore[arg-type]
        )

    def expand(self, class_name: str, available: Container[str]) -> tuple[str, ...]:
        """What ``class_name`` means for a model answering ``available``: itself, else its parts, recursively.

        Returns the class names in ``available`` (possibly none), without repeats, in part order.
        """
        out: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            if name in available:
                out.append(name)
                return
            for part in self.entries[name].parts if name in self.entries else ():
                visit(part)

        visit(class_name)
        return tuple(dict.fromkeys(out))


def _entry(data: Mapping[str, Any], group: bool) -> AnatomyEntry:
    terminology = None if group else Terminology.from_dict(data["terminology"])
    laterality = None
    if terminology is not None and terminology.modifier is not None:
        laterality = {"24028007": "right", "7771000": "left"}.get(terminology.modifier.value)
    if not group and data.get("laterality") != laterality:
        raise ValueError(
            f"anatomy vocabulary: {data['class_name']!r} laterality {data.get('laterality')!r} does not "
            f"match its terminology modifier ({laterality!r})"
        )
    return AnatomyEntry(
        class_name=data["class_name"],
        name=data["name"],
        synonyms=tuple(data.get("synonyms", ())),
        aliases=tuple(data.get("aliases", ())),
        laterality=laterality,
        terminology=terminology,
        parts=tuple(data.get("parts", ())),
    )


@functools.cache
def get_vocabulary() -> Vocabulary:
    """The shipped anatomy vocabulary (``resources/anatomy.json``), loaded once."""
    data = json.loads(ANATOMY_RESOURCE.read_text(encoding="utf-8"))
    entries = [_entry(item, group=False) for item in data["structures"]]
    entries += [_entry(item, group=True) for item in data.get("groups", [])]
    return Vocabulary(entries)


def resolve_structure_name(name: str) -> str:
    """A model's label name (``"kidney_right"``, ``"Left Kideny"``, ``"IVC"``) -> the vocabulary class name.

    Raises:
        KeyError: the name is not in the vocabulary (the message suggests close names).
    """
    return get_vocabulary().resolve_name(name)


def vocabulary_taxonomy(
    name: str,
    class_names: Sequence[str],
    prompts: Mapping[str, str] | None = None,
    description: str = "",
) -> Taxonomy:
    """A taxonomy of vocabulary structures in the given (channel) order, ``label_id = position + 1``.

    Args:
        name: the taxonomy's name (e.g. the bundle's).
        class_names: vocabulary class names in channel order.
        prompts: text-encoder prompts that differ from the canonical one, by class name.
        description: free text.
    """
    vocabulary = get_vocabulary()
    prompts = dict(prompts or {})
    unknown = sorted(set(prompts) - set(class_names))
    if unknown:
        raise ValueError(f"prompts given for class names not in the taxonomy: {unknown}")
    structures = tuple(
        vocabulary.structure(c, label_id=i, prompt=prompts.get(c)) for i, c in enumerate(class_names, start=1)
    )
    return Taxonomy(name=name, structures=structures, description=description)
