"""Matching structure phrases in a tokenised prompt, with the side words clinicians write around them.

Sides before a phrase: "right", "R", "Rt", "left-sided", "both", "bilateral", "right and left", "left/right";
after it: "kidney left", "kidney, left", "kidney (left)", "ribs on the left side", "kidneys bilaterally".
"""

from __future__ import annotations

from dataclasses import dataclass

from .vocabulary import EVERYTHING_PHRASES, SIDE_JOINERS, SIDE_TAIL_WORDS, SIDE_WORDS, PhraseIndex, Token

#: Words allowed between a structure and a following side word ("ribs on the left").
_SIDE_FILLERS = frozenset({"on", "the"})


@dataclass(frozen=True)
class Match:
    """Structures named by ``tokens[start:end]``; empty ``class_names`` when the sides select none."""

    start: int
    end: int
    class_names: tuple[str, ...]


def _word(tokens: list[Token], at: int, words: object) -> bool:
    return at < len(tokens) and not tokens[at].is_separator and tokens[at].norm in words  # type: ignore[operator]


def side_prefix(tokens: list[Token], start: int) -> tuple[frozenset[str], int] | None:
    """Side words at ``start`` ("right", "both", "right and left", "left-sided"): ``(sides, end)`` or None."""
    if not _word(tokens, start, SIDE_WORDS):
        return None
    sides = set(SIDE_WORDS[tokens[start].norm])
    end = start + 1
    while end + 1 < len(tokens) and tokens[end].norm in SIDE_JOINERS and _word(tokens, end + 1, SIDE_WORDS):
        sides |= SIDE_WORDS[tokens[end + 1].norm]
        end += 2
    if _word(tokens, end, {"sided", "side"}):
        end += 1
    return frozenset(sides), end


def _side_suffix(tokens: list[Token], end: int) -> tuple[frozenset[str], int, int] | None:
    """Side words after a phrase, optionally after a comma or "on the": ``(sides, at, end)`` or None."""
    at = end
    if at < len(tokens) and tokens[at].norm == ",":
        at += 1
    while _word(tokens, at, _SIDE_FILLERS):
        at += 1
    prefix = side_prefix(tokens, at)
    if prefix is None:
        return None
    sides, stop = prefix
    if _word(tokens, stop, SIDE_TAIL_WORDS):
        stop += 1
    return sides, at, stop


def filter_sides(index: PhraseIndex, class_names: tuple[str, ...], sides: frozenset[str]) -> tuple[str, ...]:
    """The structures of ``class_names`` on one of ``sides``."""
    return tuple(c for c in class_names if index.laterality.get(c) in sides)


def _prefixed_match(index: PhraseIndex, tokens: list[Token], start: int) -> Match | None:
    """Side words followed by an unsided lateral phrase: "both adrenal glands", "right and left kidneys"."""
    prefix = side_prefix(tokens, start)
    if prefix is None:
        return None
    sides, phrase_start = prefix
    found = index.longest_at(tokens, phrase_start)
    if found is None or found[1] not in index.unsided:
        return None
    end, phrase = found
    return Match(start, end, filter_sides(index, index.phrases[phrase], sides))


def everything_at(tokens: list[Token], start: int) -> int | None:
    """End of an "everything" / "all structures" phrase at ``start``, or None."""
    for phrase in EVERYTHING_PHRASES:
        end = start + len(phrase)
        if end <= len(tokens) and all(_word(tokens, start + i, (w,)) for i, w in enumerate(phrase)):
            return end
    return None


def match_at(index: PhraseIndex, tokens: list[Token], start: int) -> Match | None:
    """Longest structure match starting at ``tokens[start]``, or None (possibly with no class names)."""
    candidates = []
    found = index.longest_at(tokens, start)
    if found is not None:
        end, phrase = found
        class_names = index.phrases[phrase]
        match: Match | None = Match(start, end, class_names)
        # Side words after an unsided phrase ("kidney left", "kidney, left") unless they start the next match
        suffix = _side_suffix(tokens, end) if phrase in index.unsided else None
        if (
            suffix is not None
            and index.longest_at(tokens, suffix[1]) is None
            and _prefixed_match(index, tokens, suffix[1]) is None
        ):
            match = Match(start, suffix[2], filter_sides(index, class_names, suffix[0]))
        candidates.append(match)
    prefixed = _prefixed_match(index, tokens, start)
    if prefixed is not None:
        candidates.append(prefixed)
    if not candidates:
        return None
    return max(candidates, key=lambda m: m.end)  # longest wins; ties keep the direct phrase
