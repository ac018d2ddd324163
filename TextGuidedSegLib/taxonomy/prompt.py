"""Prompt parser: free text typed by a user -> the structure queries a model segments, one mask per query.

``parse_prompt("Segment liver and kidneys from abdominal CT")`` returns three queries: liver, right kidney,
left kidney; :func:`explain_prompt` also says what the parse read and whether it had to guess. The rules are
in :func:`parse_prompt`'s docstring and the README's "Prompts" section.
"""

from __future__ import annotations

import difflib
import functools
import logging
from dataclasses import dataclass, replace

from .anatomy import get_vocabulary, vocabulary_taxonomy
from .findings import FINDING_LINKS, FINDING_WORDS, finding_class_names, finding_classes, host_of
from .matching import Match, everything_at, match_at
from .spelling import SpellingCorrector
from .structures import Structure, Taxonomy, canonical_prompt, get_taxonomy
from .vocabulary import (
    CLAUSE_END_CHARS,
    EVERYTHING_PHRASES,
    EXCLUSION_PHRASES,
    LEADING_STRIP_WORDS,
    SEPARATOR_WORDS,
    SIDE_TAIL_WORDS,
    SIDE_WORDS,
    STOP_WORDS,
    UNGUESSABLE_SIDE_WORDS,
    PhraseIndex,
    Token,
    build_phrase_index,
    normalize_phrase,
    tokenize,
)

logger = logging.getLogger(__name__)
_MAX_LISTED = 10  # unknown words / suggestions named in one message
_EXCLUSION_STARTS = frozenset(phrase[0] for phrase in EXCLUSION_PHRASES)


class PromptError(ValueError):
    """A prompt that cannot be turned into structure queries (empty, ambiguous, or unrecognised)."""


@dataclass(frozen=True)
class StructureQuery:
    """One thing to segment: a known structure, or a free-text phrase (``structure`` is None).

    Attributes:
        text: the words the user typed for this query (``"Kidneys"`` for both kidney queries).
        prompt: what the text encoder receives: the structure's canonical prompt, or the free-text phrase in
            the same template ("A computerized tomography of a hepatic cyst").
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
class PromptParse:
    """What a prompt was read as: the queries, and everything the parser inferred on the way.

    Attributes:
        text: the prompt.
        queries: the structure queries, in the order named, without repeats.
        excluded: display names of structures an exclusion removed ("but not the left one").
        corrections: ``(typed, read as)`` for each misspelt word read as a known word.
        free_text: phrases sent to the text encoder as free text (not structures of the model).
        notes: one line per inference a user should see ("'lesions in the liver' read as Liver Tumor").
    """

    text: str
    queries: tuple[StructureQuery, ...]
    excluded: tuple[str, ...] = ()
    corrections: tuple[tuple[str, str], ...] = ()
    free_text: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def guessed(self) -> bool:
        """True when the parse corrected a spelling or fell back to free text: ask before running."""
        return bool(self.corrections or self.free_text)


@dataclass
class _Fragment:
    tokens: list[int]
    excluding: bool
    new_clause: bool = False  # after ``.``, ``;`` or a newline


@functools.lru_cache(maxsize=16)
def _index(taxonomy: Taxonomy) -> PhraseIndex:
    return build_phrase_index(taxonomy)


@functools.cache
def _anatomy_index() -> PhraseIndex:
    """Phrases of every structure of the anatomy vocabulary: what a user may name that a model lacks."""
    vocabulary = get_vocabulary()
    return build_phrase_index(vocabulary_taxonomy("anatomy", [e.class_name for e in vocabulary.structures]))


@functools.lru_cache(maxsize=16)
def _corrector(taxonomy: Taxonomy) -> SpellingCorrector:
    words = {w for index in (_index(taxonomy), _anatomy_index()) for p in index.phrases for w in p}
    return SpellingCorrector(words | set(FINDING_WORDS))


@functools.cache
def _known_words() -> frozenset[str]:
    """Words that are never spelling-corrected: ignorable, side, exclusion, finding and separator words."""
    words = set(STOP_WORDS) | set(SIDE_WORDS) | SIDE_TAIL_WORDS | SEPARATOR_WORDS | set(FINDING_WORDS)
    words |= UNGUESSABLE_SIDE_WORDS | {w for p in EXCLUSION_PHRASES + EVERYTHING_PHRASES for w in p}
    return frozenset(words)


def _quote(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _exclusion_at(tokens: list[Token], start: int) -> int | None:
    """End of an exclusion phrase ("but not", "except for", "other than") at ``start``, or None."""
    if tokens[start].is_separator or tokens[start].norm not in _EXCLUSION_STARTS:
        return None
    for phrase in EXCLUSION_PHRASES:
        end = start + len(phrase)
        if end <= len(tokens) and all(
            not tokens[start + i].is_separator and tokens[start + i].norm == w for i, w in enumerate(phrase)
        ):
            if phrase == ("but",) and end < len(tokens) and tokens[end].norm in {"also", "and"}:
                continue
            return end
    return None


def _check_sides(text: str, tokens: list[Token]) -> None:
    for token in tokens:
        if token.norm in UNGUESSABLE_SIDE_WORDS:
            raise PromptError(
                f"{text[token.start : token.end]!r} in the prompt {_quote(text)}: the side cannot be guessed "
                "from the prompt alone; name it, e.g. 'right kidney' or 'left kidney'"
            )


def _correct(tokens: list[Token], taxonomy: Taxonomy, text: str) -> tuple[list[Token], list[tuple[str, str]]]:
    corrector, known = _corrector(taxonomy), _known_words()
    corrections = []
    out = list(tokens)
    for i, token in enumerate(tokens):
        if token.is_separator or token.norm in known or token.norm in corrector.words:
            continue
        typed = text[token.start : token.end]
        fixed = corrector.correct(token.norm) or corrector.correct(typed.casefold())
        if fixed is not None:
            out[i] = replace(token, norm=fixed)
            corrections.append((typed, fixed))
    return out, corrections


def _fragments(tokens: list[Token], consumed: list[bool]) -> tuple[list[_Fragment], list[bool]]:
    """Separator-delimited fragments, each inside or outside an exclusion; and which tokens are markers."""
    fragments = [_Fragment([], False)]
    marker = [False] * len(tokens)
    excluding = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        end = None if consumed[i] or token.is_separator else _exclusion_at(tokens, i)
        if end is not None:
            marker[i:end] = [True] * (end - i)
            excluding = True
            fragments.append(_Fragment([], True))
            i = end
            continue
        if not consumed[i] and (token.is_separator or token.norm in SEPARATOR_WORDS):
            clause_end = token.is_separator and token.norm in CLAUSE_END_CHARS
            excluding = excluding and not clause_end
            fragments.append(
                _Fragment([], excluding, clause_end or fragments[-1].new_clause and not fragments[-1].tokens)
            )
        elif not token.is_separator:
            fragments[-1].tokens.append(i)
        i += 1
    return [f for f in fragments if f.tokens], marker


def _free_text(text: str, tokens: list[Token], fragment: list[int]) -> str:
    """The fragment as typed, without leading command words and trailing command/context words."""
    words = list(fragment)
    while len(words) > 1 and tokens[words[0]].norm in LEADING_STRIP_WORDS:
        words.pop(0)
    while len(words) > 1 and tokens[words[-1]].norm in STOP_WORDS:
        words.pop()
    return text[tokens[words[0]].start : tokens[words[-1]].end]


def _suggestions(taxonomy: Taxonomy, words: list[str]) -> list[str]:
    """Structure phrases of the model close to the unknown words (edit distance, then synonym lists)."""
    known = [" ".join(p) for p in _index(taxonomy).phrases]
    close: list[str] = []
    for word in list(dict.fromkeys(words))[:_MAX_LISTED]:
        for hit in difflib.get_close_matches(" ".join(normalize_phrase(word)), known, n=3, cutoff=0.75):
            if hit not in close:
                close.append(hit)
    return close[:5]


class _Parser:
    """One parse: tokens, matches and the fragments' reading."""

    def __init__(self, text: str, taxonomy: Taxonomy, allow_free_text: bool) -> None:
        self.text, self.taxonomy, self.allow_free_text = text, taxonomy, allow_free_text
        self.index, self.anatomy = _index(taxonomy), _anatomy_index()
        tokens = tokenize(text)
        _check_sides(text, tokens)
        # "Lt. kidney": an abbreviation's full stop is not a separator
        tokens = [
            t
            for i, t in enumerate(tokens)
            if not (t.norm == "." and i and tokens[i - 1].norm in SIDE_WORDS and tokens[i - 1].end == t.start)
        ]
        self.tokens, self.corrections = _correct(tokens, taxonomy, text)
        self.matches: dict[int, tuple[Match, bool]] = {}  # start -> (match, the model has it)
        self.consumed = [False] * len(self.tokens)
        self._match_all()
        self.notes: list[str] = []
        self.problems: list[str] = []  # why each unrecognised phrase is not usable
        self.unknown_words: list[str] = []

    def typed(self, start: int, end: int) -> str:
        return self.text[self.tokens[start].start : self.tokens[end - 1].end]

    def _match_all(self) -> None:
        position, tokens = 0, self.tokens
        while position < len(tokens):
            if tokens[position].is_separator or _exclusion_at(tokens, position) is not None:
                position += 1
                continue
            everything = everything_at(tokens, position)
            if everything is not None:
                found = (Match(position, everything, tuple(s.class_name for s in self.taxonomy)), True)
            else:
                model = match_at(self.index, tokens, position)
                known = match_at(self.anatomy, tokens, position)
                if model is not None and model.class_names and (known is None or model.end >= known.end):
                    found = (model, True)
                elif known is not None and known.class_names:
                    found = (known, False)
                else:
                    position += 1
                    continue
            match = found[0]
            self.matches[match.start] = found
            self.consumed[match.start : match.end] = [True] * (match.end - match.start)
            position = match.end

    def _names(self, class_names: tuple[str, ...]) -> str:
        return ", ".join(self.taxonomy[c].name for c in class_names)

    def _side_word_ok(self, i: int) -> bool:
        """A side tail word ("sided", "one") right after a side word is ignorable."""
        return self.tokens[i].norm in SIDE_TAIL_WORDS and i > 0 and self.tokens[i - 1].norm in SIDE_WORDS

    def read(self, fragment: _Fragment, finding_kind: str | None) -> tuple[list[tuple], str | None]:
        """The items of one fragment: ``("classes", typed, names)``, ``("free", phrase, None, why)`` or
        ``("sides", sides)``; and the finding kind carried to the next fragment ("lesions in the liver and
        spleen": the spleen's are findings too)."""
        tokens, ids = self.tokens, fragment.tokens
        matches = [self.matches[i][0] for i in ids if i in self.matches]
        absent = [i for i in ids if i in self.matches and not self.matches[i][1]]
        findings = [i for i in ids if not self.consumed[i] and tokens[i].norm in FINDING_WORDS]
        sides = [i for i in ids if not self.consumed[i] and tokens[i].norm in SIDE_WORDS]
        leftover = [
            i
            for i in ids
            if not self.consumed[i]
            and tokens[i].norm not in STOP_WORDS
            and i not in findings
            and i not in sides
            and not self._side_word_ok(i)
        ]
        if findings:  # "renal masses bilaterally": both sides of an unsided finding add nothing
            sides = [i for i in sides if len(SIDE_WORDS[tokens[i].norm]) == 1]
        if fragment.excluding and sides and not (matches or findings or leftover):
            return [("sides", frozenset(s for i in sides for s in SIDE_WORDS[tokens[i].norm]))], None
        if not (matches or findings or leftover or sides):
            return [], None
        if finding_kind is not None and matches and not (findings or leftover or sides):
            return [self._finding(m, finding_kind, self.typed(m.start, m.end)) for m in matches], finding_kind
        items: list[tuple] = []
        carry = None
        if len(findings) == 1 and not (matches or leftover or sides):
            kind = FINDING_WORDS[tokens[findings[0]].norm]
            every = tuple(s.class_name for s in self.taxonomy if s.class_name in finding_class_names(kind))
            if every:
                typed = self.typed(findings[0], findings[0] + 1)
                self.notes.append(f"{typed!r} read as every finding class: {self._names(every)}")
                return [("classes", typed, every)], None
        if len(findings) == 1 and matches and not leftover and not sides:
            host, carry = self._host(findings[0], matches)
            if host is not None:
                start, end = min(findings[0], host.start), max(findings[0] + 1, host.end)
                kind = FINDING_WORDS[tokens[findings[0]].norm]
                items.append(self._finding(host, kind, self.typed(start, end)))
                matches = [m for m in matches if m is not host]
                absent = [i for i in absent if i != host.start]
                findings = []
        if leftover or findings or sides or absent:
            self.unknown_words += [self.typed(i, i + 1) for i in leftover]
            if leftover or sides:
                words = ", ".join(repr(self.typed(i, i + 1)) for i in (leftover + sides)[:_MAX_LISTED])
                why = f"Unrecognised words: {words}"
            elif findings:
                why = f"{self.typed(findings[0], findings[0] + 1)!r} names no structure"
            else:
                names = ", ".join(repr(self.typed(i, self.matches[i][0].end)) for i in absent)
                why = (
                    f"{names} {'is a structure' if len(absent) == 1 else 'are structures'} it cannot segment"
                )
            return [("free", _free_text(self.text, tokens, ids), None, why)], None
        items += [("classes", self.typed(m.start, m.end), m.class_names) for m in matches]
        return items, carry

    def _host(self, finding: int, matches: list[Match]) -> tuple[Match | None, str | None]:
        """The match a finding word belongs to: the next one across link words ("lesions in the liver"), else
        the one just before ("liver lesions"); and the finding kind to carry over (first form only)."""
        kind = FINDING_WORDS[self.tokens[finding].norm]
        for m in matches:
            if m.start > finding and all(
                self.tokens[i].norm in FINDING_LINKS for i in range(finding + 1, m.start)
            ):
                return m, kind
        for m in matches:
            if m.end <= finding and all(self.tokens[i].norm in STOP_WORDS for i in range(m.end, finding)):
                return m, None
        return None, None

    def _finding(self, match: Match, kind: str, typed: str) -> tuple:
        """A finding of the structures ``match`` names: its class in the model, else free text / an error."""
        phrase = tuple(
            t.norm
            for t in self.tokens[match.start : match.end]
            if t.norm not in SIDE_WORDS and t.norm not in SIDE_TAIL_WORDS
        )
        named = self.anatomy.phrases.get(phrase, match.class_names)
        host = host_of(named)
        sides = {self.anatomy.laterality.get(c) for c in match.class_names} | {
            self.index.laterality.get(c) for c in match.class_names
        }
        side = next(iter(sides)) if len(sides) == 1 and host is not None and host[1] is None else None
        targets = () if host is None else finding_classes(host[0], host[1] or side, kind, self.taxonomy)
        if targets:
            self.notes.append(f"{typed!r} read as a finding, not the organ: {self._names(targets)}")
            return ("classes", typed, targets)
        vocabulary = get_vocabulary()
        organ = ", ".join(dict.fromkeys(vocabulary[c].name for c in match.class_names if c in vocabulary))
        return (
            "free",
            typed,
            None,
            f"{typed!r} is a finding of {organ or 'a structure'}, not the organ, and this "
            "model has no class for it",
        )


def explain_prompt(
    text: str, taxonomy: Taxonomy | None = None, *, allow_free_text: bool = True
) -> PromptParse:
    """Parse a prompt like :func:`parse_prompt` and say what was inferred (corrections, findings, free text).

    Raises:
        PromptError: as :func:`parse_prompt`.
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a string, got {type(text).__name__}")
    if not text.strip():
        raise PromptError(
            f"empty prompt {text!r}: name the structures to segment, e.g. 'liver and both kidneys'"
        )
    taxonomy = taxonomy if taxonomy is not None else get_taxonomy()
    parser = _Parser(text, taxonomy, allow_free_text)
    fragments, _ = _fragments(parser.tokens, parser.consumed)

    included: list[tuple] = []
    excluded: set[str] = set()
    excluded_sides: set[str] = set()
    carry: str | None = None
    for fragment in fragments:
        carry = None if fragment.excluding or fragment.new_clause else carry
        items, carry = parser.read(fragment, carry)
        for item in items:
            if not fragment.excluding:
                included.append(item)
            elif item[0] == "classes":
                excluded.update(item[2])
            elif item[0] == "sides":
                excluded_sides.update(item[1])
            else:
                raise PromptError(
                    f"cannot exclude {item[1]!r} in the prompt {_quote(text)}: {item[3]}; an exclusion must "
                    "name "
                    f"structures this model knows: {_vocabulary_summary(taxonomy)}"
                )

    free = [item for item in included if item[0] == "free"]
    if free and not allow_free_text:
        raise PromptError(_unrecognised_message(text, taxonomy, free, parser.unknown_words))

    queries: list[StructureQuery] = []
    seen: set[str] = set()
    removed: list[str] = []
    removed_classes: set[str] = set()
    for item in included:
        if item[0] == "free":
            key, query = "\0" + item[1].casefold(), StructureQuery(item[1], canonical_prompt(item[1]), None)
            logger.info("prompt %r: %r is free text (%s)", text[:200], item[1], item[3])
            if key not in seen:
                seen.add(key)
                queries.append(query)
            continue
        for class_name in item[2]:
            structure = parser.taxonomy[class_name]
            if class_name in excluded or structure.laterality in excluded_sides:
                removed.append(structure.name)
                removed_classes.add(class_name)
                continue
            if class_name not in seen:
                seen.add(class_name)
                queries.append(StructureQuery(text=item[1], prompt=structure.prompt, structure=structure))
    notes = list(parser.notes)
    unused = sorted(excluded - removed_classes, key=taxonomy.index)
    if unused:
        notes.append(
            f"excluded {', '.join(taxonomy[c].name for c in unused)}, which the prompt did not include"
        )
    if not queries:
        what = " after its exclusions" if removed else ""
        raise PromptError(
            f"the prompt {_quote(text)} names no structure to segment{what}. This model knows: "
            f"{_vocabulary_summary(taxonomy)}."
        )
    for typed, fixed in parser.corrections:
        notes.append(f"read {typed!r} as {fixed!r}")
    return PromptParse(
        text=text,
        queries=tuple(queries),
        excluded=tuple(dict.fromkeys(removed)),
        corrections=tuple(parser.corrections),
        free_text=tuple(q.text for q in queries if q.structure is None),
        notes=tuple(notes),
    )


def _vocabulary_summary(taxonomy: Taxonomy) -> str:
    """The structures' display names, as a user types them: "Liver, Spleen, Right Kidney"."""
    return ", ".join(s.name for s in taxonomy)


def _unrecognised_message(text: str, taxonomy: Taxonomy, free: list[tuple], unknown: list[str]) -> str:
    phrases = list(dict.fromkeys(item[1] for item in free))
    named = " and ".join(repr(p) for p in phrases[:_MAX_LISTED])
    if len(phrases) > _MAX_LISTED:
        named += f" and {len(phrases) - _MAX_LISTED} more"
    problems = "; ".join(dict.fromkeys(item[3] for item in free[:_MAX_LISTED] if item[3]))
    close = _suggestions(taxonomy, unknown or phrases)
    if any("finding" in (item[3] or "") for item in free):
        close += [s.name for s in taxonomy if s.class_name in finding_class_names()][:5]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"could not recognise {named} in the prompt {_quote(text)}: "
        f"{'it is not a structure' if len(phrases) == 1 else 'they are not structures'} this model knows, "
        "and "
        f"free text cannot be used here (only a bundle with a text encoder can encode it). {problems}."
        f"{hint} It knows: {_vocabulary_summary(taxonomy)}."
    )


def parse_prompt(
    text: str, taxonomy: Taxonomy | None = None, *, allow_free_text: bool = True
) -> list[StructureQuery]:
    """Turn a user's prompt into structure queries, in the order the user named them, without repeats.

    Rules (the README's "Prompts" section has examples):

    - Matching is case-, plural- and separator-insensitive; names, synonyms (anatomical, lay, British and
      American), class names and groups ("abdominal organs", "all vertebrae") of ``taxonomy`` and the anatomy
      vocabulary are recognised; the longest match wins. A word of 6+ letters one edit from exactly one known
      word is read as that word (reported in :attr:`PromptParse.corrections`).
    - Sides: "right", "R", "Rt", "right-sided", "both", "bilateral", "(left)", "kidney, left", "left and
      right"; a lateral structure without a side means both. "contralateral" / "ipsilateral" cannot be
      guessed: :class:`PromptError`.
    - Exclusion: "but not", "except", "excluding", "without", "other than", ... remove what follows (to the
      end of the prompt or the next ``.``, ``;`` or newline) from the result; "but not the left one" removes a
      side.
    - Findings: a finding word (tumour, lesion, mass, cyst, nodule, metastasis, ...) with a structure names
      the model's finding class of it ("lesions in the liver" -> liver tumour), never the structure itself.
    - Queries are separated by ``,`` ``;`` ``&`` ``+`` ``/`` ``|`` ``.`` ``:``, newlines and "and", "plus",
      "or" (unless part of a name). Only the explicit ignorable words (:data:`~.vocabulary.STOP_WORDS`) are
      dropped.
    - A fragment with any other word, a finding the model has no class for, or a structure the model lacks is
      a free-text query when ``allow_free_text`` (a bundle with a text encoder), else :class:`PromptError`
      naming the unrecognised words, close structures ("did you mean") and what the model knows.

    Raises:
        PromptError: empty prompt; nothing to segment; an unguessable side; or unrecognised text (see above).

    Example::

        [q.class_name for q in parse_prompt("Segment liver and kidneys from abdominal CT")]
        # ['liver', 'right_kidney', 'left_kidney']
    """
    return list(explain_prompt(text, taxonomy, allow_free_text=allow_free_text).queries)


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
