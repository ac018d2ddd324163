"""Words and phrases: tokenising prompts and indexing the phrases that name a taxonomy's structures.

Both sides of a match go through the same normalisation (:func:`normalize_word`): case-folded, and a plural
``-s`` / ``-ies`` reduced to the singular, so ``"Kidneys"`` and ``"kidney"`` meet, as do ``"adrenals"`` and
``"adrenal"``. The rule is crude on purpose (``"pancreas"`` is kept: words ending in ``-ss``, ``-us``,
``-is``, ``-as`` are never stripped); since synonyms go through it too, a stem that is not a word is harmless.

The phrase index maps each normalised phrase to the structures it names:

- a structure's display name, ``class_name`` (underscores read as spaces) and synonyms name that structure;
- a lateral structure's phrases with the side word removed (``"right kidney"`` -> ``"kidney"``) name all
  structures that share the unsided phrase, in taxonomy order (``"kidney"`` -> right kidney, left kidney).

Building the index fails with ``ValueError`` when one phrase would name two different sets of structures.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .structures import Taxonomy

#: Side words and the lateralities they select. ``both``/``bilateral`` select every side present.
SIDE_WORDS: dict[str, frozenset[str]] = {
    "right": frozenset({"right"}),
    "rt": frozenset({"right"}),
    "left": frozenset({"left"}),
    "lt": frozenset({"left"}),
    "r": frozenset({"right"}),
    "l": frozenset({"left"}),
    "both": frozenset({"right", "left"}),
    "bilateral": frozenset({"right", "left"}),
    "bilaterally": frozenset({"right", "left"}),
}
#: Words allowed right after a side word and read with it: "right-sided kidney", "the left one", "left side".
SIDE_TAIL_WORDS = frozenset({"sided", "side", "one"})
#: Side words that cannot be read without context: a prompt using them is refused (PromptError).
UNGUESSABLE_SIDE_WORDS = frozenset({"contralateral", "ipsilateral", "homolateral", "opposite"})
#: Side words that name exactly one side (allowed after a structure: ``"kidney left"``, ``kidney_left``).
SINGLE_SIDE_WORDS = frozenset(word for word, sides in SIDE_WORDS.items() if len(sides) == 1)

#: Characters that separate queries in a prompt (besides the words in :data:`SEPARATOR_WORDS`).
SEPARATOR_CHARS = frozenset(",;&+/|\n.:")
#: Words that separate queries unless they are part of a structure's name ("portal vein and splenic vein").
SEPARATOR_WORDS = frozenset({"and", "plus", "or"})
#: Characters allowed between two side words in ``"right and left kidney"``, ``"left/right kidney"``.
SIDE_JOINERS = frozenset({"and", "&", "/"})

#: Words that ask for a segmentation or fill a sentence; dropped anywhere, and stripped from the start of a
#: free-text query ("segment the hepatic cyst" -> "hepatic cyst").
COMMAND_WORDS = frozenset(
    """
    segment segmentation segmentations segmenting show display visualise visualize find locate outline contour
    contours delineate delineation label labels mark highlight extract get give draw make create produce run
    mask masks please pls kindly can could would will you me i we us want need like to do also then just only
    the a an this that these those my our your its their all every each of for from in on at within inside
    with using via by into out as well
    localise localize identify isolate generate compute calculate measure measurement measurements quantify
    quantification assess assessment evaluate evaluation volumetry volumetric planning dosimetry request
    requested kindly thanks thank following include including incl sure now them it is are be
    """.split()
)
#: Words that describe the image rather than a structure; dropped anywhere, and stripped from the end of a
#: free-text query ("hepatic cyst in the abdominal CT" -> "hepatic cyst"). Kept at the start of one, so
#: "abdominal fat" stays "abdominal fat".
CONTEXT_WORDS = frozenset(
    """
    abdominal abdomen abdomino pelvic pelvis thoracic thorax chest torso body ct cect ncct cta scan scans
    image images volume volumes study studies series exam examination computed computerized computerised
    tomography tomographic contrast enhanced axial slice slices patient patients case cases dataset here there
    region regions area areas structure structures organ organs anatomy
    mdct ctscan portal venous phase arterial delayed noncontrast unenhanced native
    """.split()
)
#: Words that start an exclusion ("kidneys but not the left one", "abdominal organs except the liver"): what
#: follows, to the end of the prompt or the next ``.``, ``;`` or newline, is removed from the result.
EXCLUSION_PHRASES: tuple[tuple[str, ...], ...] = (
    ("but", "not"),
    ("except", "for"),
    ("other", "than"),
    ("apart", "from"),
    ("aside", "from"),
    ("with", "the", "exception", "of"),
    ("except",),
    ("excepting",),
    ("excluding",),
    ("exclude",),
    ("without",),
    ("not",),
    ("no",),
    ("but",),
    ("minus",),
    ("sparing",),
)
#: Phrases that name every structure of the model ("everything except the liver").
EVERYTHING_PHRASES: tuple[tuple[str, ...], ...] = (
    ("everything",),
    ("all", "structure"),
    ("all", "class"),
    ("all", "label"),
    ("every", "structure"),
    ("all", "available", "structure"),
)
#: Separator characters that end an exclusion's scope.
CLAUSE_END_CHARS = frozenset(";.\n")

_TOKEN_RE = re.compile(r"[^\W_]+|[,;&+/|\n.:]", re.UNICODE)
_NO_STRIP_SUFFIXES = ("ss", "us", "is", "as")


def normalize_word(word: str) -> str:
    """Return the matching form of one word: case-folded, with a plural ``-s``/``-ies`` reduced.

    Examples: ``"Kidneys"`` -> ``"kidney"``, ``"arteries"`` -> ``"artery"``, ``"pancreas"`` -> ``"pancreas"``.
    """
    word = word.casefold()
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(_NO_STRIP_SUFFIXES):
        return word[:-1]
    return word


#: The ignorable words: command and context words, in matching form. A word that is neither one of these, nor
#: part of a structure name or synonym, nor a side, exclusion or finding word makes a prompt ambiguous.
STOP_WORDS = frozenset(normalize_word(w) for w in COMMAND_WORDS | CONTEXT_WORDS)
LEADING_STRIP_WORDS = frozenset(normalize_word(w) for w in COMMAND_WORDS)


@dataclass(frozen=True)
class Token:
    """One token of a prompt.

    Attributes:
        norm: the matching form (:func:`normalize_word` of a word; the character itself for a separator).
        start: offset of the token's first character in the prompt.
        end: offset one past its last character.
        is_separator: True for a separator character (``, ; & + / | . :`` or newline).
    """

    norm: str
    start: int
    end: int
    is_separator: bool


def tokenize(text: str) -> list[Token]:
    """Split a prompt into word and separator tokens; other characters (space, ``-``, ``_``, ...) split words.

    Underscores split words so that class names (``right_kidney``) and TotalSegmentator-style names
    (``kidney_right``) read as phrases. Newlines are separators.
    """
    tokens = []
    for match in _TOKEN_RE.finditer(text):
        raw = match.group(0)
        is_sep = raw in SEPARATOR_CHARS
        tokens.append(Token(raw if is_sep else normalize_word(raw), match.start(), match.end(), is_sep))
    return tokens


def normalize_phrase(text: str) -> tuple[str, ...]:
    """Return the normalised words of a name or synonym (separators dropped), e.g. ``("right", "kidney")``."""
    return tuple(tok.norm for tok in tokenize(text) if not tok.is_separator)


@dataclass(frozen=True)
class PhraseIndex:
    """Normalised phrase -> structures it names, for one taxonomy.

    Attributes:
        phrases: normalised phrase -> class names it names (taxonomy order).
        unsided: the phrases that are a lateral structure's phrase with its side word removed.
        laterality: class name -> laterality (``"right"``, ``"left"`` or None).
        max_len: number of words of the longest phrase.
    """

    phrases: dict[tuple[str, ...], tuple[str, ...]]
    unsided: frozenset[tuple[str, ...]]
    laterality: dict[str, str | None]
    max_len: int

    def longest_at(self, tokens: list[Token], start: int) -> tuple[int, tuple[str, ...]] | None:
        """Longest phrase starting at ``tokens[start]`` (words only): ``(end, phrase)`` or None."""
        stop = start
        while stop < len(tokens) and stop - start < self.max_len and not tokens[stop].is_separator:
            stop += 1
        for end in range(stop, start, -1):
            phrase = tuple(tok.norm for tok in tokens[start:end])
            if phrase in self.phrases:
                return end, phrase
        return None


def _phrases_of(class_name: str, name: str, synonyms: Iterable[str]) -> list[str]:
    return [name, class_name.replace("_", " "), *synonyms]


def build_phrase_index(taxonomy: Taxonomy) -> PhraseIndex:
    """Index every phrase that names a structure of ``taxonomy``.

    Raises:
        ValueError: a name or synonym is empty after normalisation, or one phrase names two different sets of
            structures (e.g. a synonym shared by two structures, or an unsided synonym such as ``"kidney"``
            given to ``right_kidney`` only).
    """
    explicit: dict[tuple[str, ...], str] = {}
    origin: dict[tuple[str, ...], str] = {}
    for structure in taxonomy.structures:
        for text in _phrases_of(structure.class_name, structure.name, structure.synonyms):
            phrase = normalize_phrase(text)
            if not phrase:
                raise ValueError(f"{structure.class_name}: name or synonym {text!r} has no words")
            previous = explicit.get(phrase)
            if previous is not None and previous != structure.class_name:
                raise ValueError(
                    f"ambiguous synonym: {text!r} names both {previous!r} (as {origin[phrase]!r}) "
                    f"and {structure.class_name!r} in taxonomy {taxonomy.name!r}"
                )
            explicit[phrase] = structure.class_name
            origin.setdefault(phrase, text)

    unsided: dict[tuple[str, ...], list[str]] = {}
    for structure in taxonomy.structures:
        if structure.laterality is None:
            continue
        for text in _phrases_of(structure.class_name, structure.name, structure.synonyms):
            phrase = normalize_phrase(text)
            side_positions = [
                i for i, word in enumerate(phrase) if SIDE_WORDS.get(word) == {structure.laterality}
            ]
            if len(side_positions) != 1 or len(phrase) < 2:
                continue
            stripped = phrase[: side_positions[0]] + phrase[side_positions[0] + 1 :]
            members = unsided.setdefault(stripped, [])
            if structure.class_name not in members:
                members.append(structure.class_name)

    phrases: dict[tuple[str, ...], tuple[str, ...]] = {p: (c,) for p, c in explicit.items()}
    order = {s.class_name: i for i, s in enumerate(taxonomy.structures)}
    for phrase, members in unsided.items():
        if phrase in explicit and _is_whole_of(explicit[phrase], members):
            continue  # a model with the whole and its sides: "adrenal gland" names the whole
        if phrase in explicit:
            raise ValueError(
                f"ambiguous synonym: {origin[phrase]!r} names {explicit[phrase]!r} only, "
                "but without a side it "
                f"also names {sorted(members, key=order.__getitem__)} in taxonomy {taxonomy.name!r}; "
                "give lateral structures sided synonyms only"
            )
        phrases[phrase] = tuple(sorted(members, key=order.__getitem__))

    sides = {s.class_name: s.laterality or _prefix_side(s.class_name) for s in taxonomy.structures}
    sideable = set(unsided)
    for phrase, targets in _vocabulary_phrases(taxonomy, order).items():
        if phrase not in phrases:
            phrases[phrase] = targets
            if len(targets) > 1 and any(sides[c] is not None for c in targets):
                sideable.add(phrase)

    return PhraseIndex(
        phrases=phrases,
        unsided=frozenset(sideable),
        laterality=sides,
        max_len=max((len(p) for p in phrases), default=0),
    )


def _is_whole_of(class_name: str, members: Iterable[str]) -> bool:
    """True when the anatomy vocabulary lists every one of ``members`` as a part of ``class_name``."""
    from .anatomy import get_vocabulary  # anatomy imports this module

    vocabulary = get_vocabulary()
    return class_name in vocabulary and set(members) <= set(vocabulary[class_name].parts)


def _prefix_side(class_name: str) -> str | None:
    """``"right"``/``"left"`` for a class name starting with that side (``left_atrium``), else None."""
    side = class_name.split("_", 1)[0]
    return side if side in ("right", "left") else None


def _vocabulary_phrases(taxonomy: Taxonomy, order: dict[str, int]) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Phrases of the anatomy vocabulary -> the taxonomy's structures they mean (wholes expand to parts)."""
    from .anatomy import get_vocabulary  # anatomy imports this module

    vocabulary = get_vocabulary()
    out: dict[tuple[str, ...], tuple[str, ...]] = {}
    for entry in vocabulary:
        targets = vocabulary.expand(entry.class_name, order)
        if not targets:
            continue
        targets = tuple(sorted(targets, key=order.__getitem__))
        for text in entry.phrases():
            out.setdefault(normalize_phrase(text), targets)
    out.pop((), None)
    return out
