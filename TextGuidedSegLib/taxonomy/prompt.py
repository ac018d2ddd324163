"""Prompt parser: free text typed by a user -> the structure queries a model segments, one mask per query.

``parse_prompt("Segment liver and kidneys from abdominal CT")`` returns three queries: liver, right kidney,
left kidney. See :func:`parse_prompt` for the rules.
"""

from __future__ import annotations

import difflib
import functools
import logging
from dataclasses import dataclass

from .anatomy import get_vocabulary
from .structures import Structure, Taxonomy, canonical_prompt, get_taxonomy
from .vocabulary import (
    LEADING_STRIP_WORDS,
    SEPARATOR_WORDS,
    SIDE_JOINERS,
    SIDE_WORDS,
    SINGLE_SIDE_WORDS,
    STOP_WORDS,
    PhraseIndex,
    Token,
    build_phrase_index,
    normalize_phrase,
    tokenize,
)

logger = logging.getLogger(__name__)

#: Words allowed between a structure and a following side word ("ribs on the left").
_SIDE_FILLERS = frozenset({"on", "the"})


class PromptError(ValueError):
    """A prompt that cannot be turned into structure queries (empty, or unrecognised in strict mode)."""


@dataclass(frozen=True)
class StructureQuery:
    """One thing to segment: a known structure, or a free-text phrase (``structure`` is None).

    Attributes:
        text: the words the user typed for this query (``"Kidneys"`` for both kidney queries).
        prompt: what the text encoder receives: the structure's canonical prompt, or the free-text phrase in
            the same template ("A computerized tomography of a hepatic cyst"), the form the models were
            trained on.
        structure: the taxonomy structure, or None for free text.
    """

    text: str
    prompt: str
    structure: Structure | None

    @property
    def name(self) -> str:
        """Display name: the structure's name, or the free text."""
        return self.structure.name if self.structure is not None else self.text

    @property
    def class_name(self) -> str | None:
        """The structure's class name, or None for free text."""
        return self.structure.class_name if self.structure is not None else None


@dataclass(frozen=True)
class _Match:
    start: int  # first token
    end: int  # one past the last token
    class_names: tuple[str, ...]


@functools.lru_cache(maxsize=16)
def _index(taxonomy: Taxonomy) -> PhraseIndex:
    return build_phrase_index(taxonomy)


def _side_prefix(tokens: list[Token], start: int) -> tuple[frozenset[str], int] | None:
    """Parse side words at ``start`` ("right", "both", "right and left", "left/right"): ``(sides, end)``."""
    if start >= len(tokens) or tokens[start].is_separator or tokens[start].norm not in SIDE_WORDS:
        return None
    sides = set(SIDE_WORDS[tokens[start].norm])
    end = start + 1
    while (
        end + 1 < len(tokens)
        and tokens[end].norm in SIDE_JOINERS
        and not tokens[end + 1].is_separator
        and tokens[end + 1].norm in SIDE_WORDS
    ):
        sides |= SIDE_WORDS[tokens[end + 1].norm]
        end += 2
    return frozenset(sides), end


def _side_suffix(tokens: list[Token], end: int) -> tuple[str, int, int] | None:
    """A single side word after a phrase, optionally as "on the left (side)": ``(side, at, end)`` or None."""
    at = end
    while at < len(tokens) and not tokens[at].is_separator and tokens[at].norm in _SIDE_FILLERS:
        at += 1
    if at >= len(tokens) or tokens[at].is_separator or tokens[at].norm not in SINGLE_SIDE_WORDS:
        return None
    stop = at + 1
    if stop < len(tokens) and not tokens[stop].is_separator and tokens[stop].norm == "side":
        stop += 1
    return tokens[at].norm, at, stop


def _filter_sides(index: PhraseIndex, class_names: tuple[str, ...], sides: frozenset[str]) -> tuple[str, ...]:
    return tuple(c for c in class_names if index.laterality[c] in sides)


def _prefixed_match(index: PhraseIndex, tokens: list[Token], start: int) -> _Match | None:
    """Side words followed by an unsided lateral phrase: "both adrenal glands", "right and left kidneys".

    When the sides select no structure of the taxonomy ("right kidney" in a taxonomy with only the left one),
    the match has no class names: the words are then unrecognised, not read as the other side.
    """
    prefix = _side_prefix(tokens, start)
    if prefix is None:
        return None
    sides, phrase_start = prefix
    found = index.longest_at(tokens, phrase_start)
    if found is None or found[1] not in index.unsided:
        return None
    end, phrase = found
    return _Match(start, end, _filter_sides(index, index.phrases[phrase], sides))


def _match_at(index: PhraseIndex, tokens: list[Token], start: int) -> _Match | None:
    """Longest structure match starting at ``tokens[start]``, or None."""
    candidates = []
    found = index.longest_at(tokens, start)
    if found is not None:
        end, phrase = found
        class_names = index.phrases[phrase]
        match = _Match(start, end, class_names)
        # A side word after an unsided phrase ("kidney left", kidney_left, "ribs on the left side"), unless it
        # starts the next match.
        suffix = _side_suffix(tokens, end) if phrase in index.unsided else None
        if (
            suffix is not None
            and index.longest_at(tokens, suffix[1]) is None
            and _prefixed_match(index, tokens, suffix[1]) is None
        ):
            selected = _filter_sides(index, class_names, SIDE_WORDS[suffix[0]])
            match = _Match(start, suffix[2], selected) if selected else None
        if match is not None:
            candidates.append(match)
    prefixed = _prefixed_match(index, tokens, start)
    if prefixed is not None:
        candidates.append(prefixed)
    if not candidates:
        return None
    return max(candidates, key=lambda m: m.end)  # longest wins; ties keep the direct phrase


def _fragments(tokens: list[Token], consumed: list[bool]) -> list[list[int]]:
    """Token indices of each separator-delimited fragment (separators inside a match do not split)."""
    fragments: list[list[int]] = [[]]
    for i, token in enumerate(tokens):
        if not consumed[i] and (token.is_separator or token.norm in SEPARATOR_WORDS):
            fragments.append([])
        elif not token.is_separator:
            fragments[-1].append(i)
    return [f for f in fragments if f]


def _free_text(text: str, tokens: list[Token], fragment: list[int]) -> str:
    """The fragment as typed, without leading command words and trailing command/context words."""
    words = list(fragment)
    while words and tokens[words[0]].norm in LEADING_STRIP_WORDS:
        words.pop(0)
    while words and tokens[words[-1]].norm in STOP_WORDS:
        words.pop()
    return text[tokens[words[0]].start : tokens[words[-1]].end]


def _vocabulary_summary(taxonomy: Taxonomy) -> str:
    """The structures' display names, as a user types them: "Liver, Spleen, Right Kidney"."""
    return ", ".join(s.name for s in taxonomy)


def _suggestions(index: PhraseIndex, unknown: list[str]) -> str:
    known = [" ".join(p) for p in index.phrases]
    close: list[str] = []
    for fragment in unknown:
        for word_or_phrase in [fragment, *fragment.split()]:
            for hit in difflib.get_close_matches(
                " ".join(normalize_phrase(word_or_phrase)), known, n=3, cutoff=0.75
            ):
                if hit not in close:
                    close.append(hit)
    return f" Did you mean {', '.join(repr(c) for c in close[:5])}?" if close else ""


def parse_prompt(
    text: str, taxonomy: Taxonomy | None = None, *, allow_free_text: bool = True
) -> list[StructureQuery]:
    """Turn a user's prompt into structure queries, in the order the user named them, without repeats.

    Rules:

    - Matching is case-insensitive and plural-insensitive ("LIVER", "Kidneys", "adrenals", "femoral heads").
      Names, synonyms and class names of ``taxonomy`` are recognised; the longest match wins ("liver tumor"
      is the liver tumour, not the liver).
    - A lateral structure named without a side means both sides ("kidney", "kidneys", "both adrenal glands"
      -> right and left, in taxonomy order); side words select ("left lung", "right and left kidneys",
      "kidney_left").
    - Queries are separated by ``,`` ``;`` ``&`` ``+`` ``/`` ``|`` ``.`` ``:``, newlines and the words "and"
      and "plus" (unless part of a name, as in "portal vein and splenic vein").
    - Command and context words are ignored ("segment", "show", "please", "the", "from", "in", "abdominal",
      "CT", "scan", ...).
    - A fragment between separators that names a known structure yields its structures; any other content
      words in that fragment are ignored and logged at WARNING ("liver with cirrhosis" -> liver; "cirrhosis"
      ignored).
    - A fragment that names no known structure becomes one free-text query (``structure`` None), its leading
      command words and trailing command/context words stripped ("segment the hepatic cyst near the hilum" ->
      "hepatic cyst near the hilum"), when ``allow_free_text`` is True; otherwise :class:`PromptError`.

    Args:
        text: the prompt as typed.
        taxonomy: structures to recognise (default: :func:`get_taxonomy`, the 32 Universal Model classes).
        allow_free_text: keep unrecognised fragments as free-text queries (True) or reject them (False).

    Returns:
        Structure queries; for a structure, ``prompt`` is its canonical prompt.

    Raises:
        PromptError: empty prompt; a prompt naming nothing to segment; or, with ``allow_free_text=False``,
            fragments that name no known structure (the message quotes them and lists the known structures).

    Example::

        [q.class_name for q in parse_prompt("Segment liver and kidneys from abdominal CT")]
        # ['liver', 'right_kidney', 'left_kidney']
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a string, got {type(text).__name__}")
    if not text.strip():
        raise PromptError(
            f"empty prompt {text!r}: name the structures to segment, e.g. 'liver and both kidneys'"
        )
    taxonomy = taxonomy if taxonomy is not None else get_taxonomy()
    index = _index(taxonomy)
    tokens = tokenize(text)

    consumed = [False] * len(tokens)
    matches: list[_Match] = []
    position = 0
    while position < len(tokens):
        match = None if tokens[position].is_separator else _match_at(index, tokens, position)
        if match is None:
            position += 1
            continue
        if match.class_names:  # an empty match blocks its words from matching the other side
            matches.append(match)
            consumed[match.start : match.end] = [True] * (match.end - match.start)
        position = match.end

    queries: list[StructureQuery] = []
    seen: set[str] = set()
    unrecognised: list[str] = []

    def add(key: str, query: StructureQuery) -> None:
        if key not in seen:
            seen.add(key)
            queries.append(query)

    for fragment in _fragments(tokens, consumed):
        members = set(fragment)
        fragment_matches = [m for m in matches if m.start in members]
        leftover = [i for i in fragment if not consumed[i] and tokens[i].norm not in STOP_WORDS]
        if fragment_matches:
            if leftover:
                logger.warning(
                    "prompt %r: ignoring %s (no known structure; kept %s)",
                    text,
                    ", ".join(repr(text[tokens[i].start : tokens[i].end]) for i in leftover),
                    ", ".join(c for m in fragment_matches for c in m.class_names),
                )
            for match in fragment_matches:
                typed = text[tokens[match.start].start : tokens[match.end - 1].end]
                for class_name in match.class_names:
                    structure = taxonomy[class_name]
                    add(class_name, StructureQuery(text=typed, prompt=structure.prompt, structure=structure))
        elif leftover:
            phrase = _free_text(text, tokens, fragment)
            unrecognised.append(phrase)
            if allow_free_text:
                logger.info("prompt %r: %r names no known structure; querying it as free text", text, phrase)
                query = StructureQuery(text=phrase, prompt=canonical_prompt(phrase), structure=None)
                add("\0" + phrase.casefold(), query)

    if unrecognised and not allow_free_text:
        named = " and ".join(repr(u) for u in unrecognised)
        raise PromptError(
            f"could not recognise {named} in the prompt {text!r}: "
            f"{'it is not a structure' if len(unrecognised) == 1 else 'they are not structures'} this model "
            "knows, and free text cannot be used here (only a bundle with a text encoder can encode it)."
            f"{_suggestions(index, unrecognised)} It knows: {_vocabulary_summary(taxonomy)}."
        )
    if not queries:
        raise PromptError(
            f"the prompt {text!r} names no structure to segment. This model knows: "
            f"{_vocabulary_summary(taxonomy)}."
        )
    return queries


def structure_vocabulary(taxonomy: Taxonomy | None = None) -> list[str]:
    """All names a user can type, for UI completion: display names, synonyms and unsided lateral names.

    Returns each phrase once (case-insensitively), in taxonomy order, e.g. ``["Spleen", "Right Kidney",
    "kidney", ...]``; every entry parses to at least one structure with :func:`parse_prompt`.
    """
    taxonomy = taxonomy if taxonomy is not None else get_taxonomy()
    index = _index(taxonomy)
    vocabulary: list[str] = []
    seen: set[str] = set()

    def add(phrase: str) -> None:
        if phrase.casefold() not in seen:
            seen.add(phrase.casefold())
            vocabulary.append(phrase)

    unsided = sorted(index.unsided, key=lambda p: taxonomy.index(index.phrases[p][0]))
    for structure in taxonomy:
        add(structure.name)
        for synonym in structure.synonyms:
            add(synonym)
        for phrase in unsided:
            if index.phrases[phrase][0] == structure.class_name:
                add(" ".join(phrase))
    # wholes and groups of the anatomy vocabulary that mean some of this taxonomy's structures ("Ribs")
    for entry in get_vocabulary():
        if entry.class_name not in taxonomy and normalize_phrase(entry.name) in index.phrases:
            add(entry.name)
    return vocabulary
