"""Prompt editing for the panel: completion of the structure being typed, and the checkable structure list.

The prompt field is the one source of truth. Completion replaces the fragment after the last separator;
ticking or unticking a structure in the list rewrites the prompt as the structures it names, in order;
the list's ticks follow the prompt as the library parses it ("both kidneys" ticks Right Kidney and Left
Kidney). No Qt here: the widget calls these functions from its slots.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from TextGuidedSegLib.taxonomy import StructureQuery, Taxonomy


@functools.cache
def _separator() -> re.Pattern[str]:
    """The library prompt parser's separators: characters such as , ; & and the words "and", "plus"."""
    from TextGuidedSegLib.taxonomy.vocabulary import SEPARATOR_CHARS, SEPARATOR_WORDS

    chars = re.escape("".join(sorted(SEPARATOR_CHARS)))
    words = "|".join(rf"\b{re.escape(word)}\b" for word in sorted(SEPARATOR_WORDS))
    return re.compile(rf"\s*(?:[{chars}]|{words})\s*", re.IGNORECASE)


def split_prompt_tail(text: str) -> tuple[str, str]:
    """Split ``text`` into (everything up to the last separator, the fragment being typed).

    Example: ``"liver, right kid"`` -> ``("liver, ", "right kid")``.
    """
    matches = list(_separator().finditer(text))
    if not matches:
        return "", text.lstrip()
    end = matches[-1].end()
    head = text[:end]
    # head ends with a separator: a separator word ("and") or a character ("," ";" ...), which gets a space
    if not head.endswith(" ") and not head.rstrip()[-1:].isalpha():
        head += " "
    return head, text[end:]


def complete_prompt(text: str, choice: str) -> str:
    """``text`` with its last fragment replaced by the chosen structure name."""
    head, _ = split_prompt_tail(text)
    return head + choice


def prompt_fragments(text: str) -> list[str]:
    """The non-empty fragments of a prompt between separators."""
    return [part.strip() for part in _separator().split(text) if part and part.strip()]


def structures_in_prompt(text: str, taxonomy: Taxonomy | None) -> list[str]:
    """Display names of the taxonomy structures a prompt names, in prompt order (no duplicates).

    Text the parser does not know is ignored here (it may be a free-text query); with no taxonomy, the
    fragments that equal a structure name are not known either, so nothing is ticked.
    """
    if taxonomy is None or not text.strip():
        return []
    queries = _parse(text, taxonomy) or []
    names = [q.structure.name for q in queries if q.structure is not None]
    return list(dict.fromkeys(names))


def toggle_structure(text: str, name: str, checked: bool, taxonomy: Taxonomy | None) -> str:
    """The prompt after ticking (``checked``) or unticking the structure ``name`` in the list.

    The prompt is rewritten as its structures' names (and any free text, as typed), comma-separated.
    """
    parts = _prompt_parts(text, taxonomy)
    folded = [p.casefold() for p in parts]
    if checked and name.casefold() not in folded:
        parts.append(name)
    if not checked:
        parts = [p for p in parts if p.casefold() != name.casefold()]
    return ", ".join(parts)


def _prompt_parts(text: str, taxonomy: Taxonomy | None) -> list[str]:
    """The prompt as a list of structure names and free-text fragments, in order."""
    queries = _parse(text, taxonomy) if taxonomy is not None else None
    if queries is None:
        return prompt_fragments(text)
    parts = [q.structure.name if q.structure is not None else q.text for q in queries]
    return list(dict.fromkeys(parts))


def _parse(text: str, taxonomy: Taxonomy) -> list[StructureQuery] | None:
    """The library parser's queries for ``text`` (free text allowed); None when it rejects the prompt."""
    from TextGuidedSegLib.taxonomy import PromptError, parse_prompt

    try:
        return parse_prompt(text, taxonomy, allow_free_text=True)
    except PromptError:
        return None


def completion_candidates(vocabulary: Sequence[str], fragment: str) -> list[str]:
    """Vocabulary entries matching a typed fragment: prefix matches first, then other substring matches."""
    wanted = fragment.strip().casefold()
    if not wanted:
        return list(vocabulary)
    prefix = [v for v in vocabulary if v.casefold().startswith(wanted)]
    inside = [v for v in vocabulary if wanted in v.casefold() and v not in prefix]
    return prefix + inside


def taxonomy_for_names(names: Sequence[str]) -> Taxonomy | None:
    """A taxonomy of the anatomy vocabulary's structures with these display names (a bundle's vocabulary), for
    parsing prompts before the bundle is loaded; None when a name is not a structure of the vocabulary."""
    if not names:
        return None
    from TextGuidedSegLib.taxonomy import get_vocabulary, vocabulary_taxonomy

    vocabulary = get_vocabulary()
    try:
        class_names = [vocabulary.resolve_name(name) for name in names]
        return vocabulary_taxonomy("bundle", class_names)
    except (KeyError, ValueError):
        return None


def completion_vocabulary(names: Sequence[str]) -> list[str]:
    """What the prompt completer offers for a bundle: its structure names, then every other phrase that means
    some of them (synonyms, "kidneys", wholes and groups such as "Ribs" or "Lumbar Vertebrae")."""
    taxonomy = taxonomy_for_names(names)
    if taxonomy is None:
        return list(names)
    from TextGuidedSegLib.taxonomy import structure_vocabulary

    seen = {name.casefold() for name in names}
    return list(names) + [v for v in structure_vocabulary(taxonomy) if v.casefold() not in seen]


def filter_structure_names(names: Sequence[str], text: str) -> list[bool]:
    """For the searchable structure list: whether each name matches the search ``text`` (every word, any
    order, case-insensitive; an empty search shows all)."""
    words = text.casefold().split()
    return [all(word in name.casefold() for word in words) for name in names]


@dataclass(frozen=True)
class PromptReading:
    """What the panel and effect show before running: the structures a prompt is read as, and whether the
    parse guessed (a spelling correction or free text), in which case they ask before running.

    Attributes:
        structures: display names (and free-text phrases, quoted) in prompt order.
        message: one line per structure, exclusion and inference, for a label or a confirmation dialog.
        guessed: True when the user should confirm before running.
        error: the parser's message when the prompt cannot be used (then ``structures`` is empty).
    """

    structures: tuple[str, ...]
    message: str
    guessed: bool
    error: str | None = None


def read_prompt(text: str, taxonomy: Taxonomy | None, allow_free_text: bool = True) -> PromptReading:
    """How the library reads ``text`` for a bundle's taxonomy (no Qt): structures, notes, whether it guessed.

    Example: ``read_prompt("pancraes and kidneys but not the left one", t)`` -> structures ``("Pancreas",
    "Right Kidney")``, guessed True (``'pancraes'`` was read as ``'pancreas'``).
    """
    if taxonomy is None or not text.strip():
        return PromptReading((), "", False, None)
    from TextGuidedSegLib.taxonomy import PromptError
    from TextGuidedSegLib.taxonomy.prompt import explain_prompt

    try:
        parse = explain_prompt(text, taxonomy, allow_free_text=allow_free_text)
    except PromptError as err:
        return PromptReading((), str(err), False, str(err))
    names = tuple(q.name if q.structure is not None else f"'{q.text}' (free text)" for q in parse.queries)
    lines = [f"Segments: {', '.join(names)}"]
    if parse.excluded:
        lines.append(f"Excluded: {', '.join(parse.excluded)}")
    lines += [note[0].upper() + note[1:] for note in parse.notes]
    if parse.free_text:
        lines.append(f"Not structures of this model, sent as free text: {', '.join(parse.free_text)}")
    return PromptReading(names, "\n".join(lines), parse.guessed)
