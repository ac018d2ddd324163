"""Misspellings: a word of 6+ letters one edit away from exactly one known word is read as that word.

An edit is one insertion, deletion, substitution or swap of two adjacent letters (Damerau-Levenshtein
distance 1): ``"pancraes"`` -> ``"pancreas"``, ``"kidnesy"`` -> ``"kidney"``. Shorter words are never
corrected (``"lver"`` is not read as ``"liver"``: too many short words are one edit from each other), and a
word one edit from two known words is not corrected either. Lookup is by single-deletion neighbourhoods
(symmetric delete), so a correction costs a few dictionary look-ups however large the vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Shortest word (in characters) that is corrected.
MIN_CORRECTED_LENGTH = 6


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


def within_one_edit(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by at most one insertion, deletion, substitution or adjacent swap."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diff) == 1:
            return True
        return (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


class SpellingCorrector:
    """Corrects words against a fixed set of known words (the words of the structure names and findings).

    Args:
        words: the known words, in their matching form (:func:`~.vocabulary.normalize_word`).
    """

    def __init__(self, words: Iterable[str]) -> None:
        self.words = frozenset(words)
        self._by_deletion: dict[str, set[str]] = {}
        for word in self.words:
            if len(word) < MIN_CORRECTED_LENGTH - 1:
                continue
            for key in (word, *_deletions(word)):
                self._by_deletion.setdefault(key, set()).add(word)
        self._cache: dict[str, str | None] = {}

    def candidates(self, word: str) -> set[str]:
        """Known words within one edit of ``word`` (``word`` itself excluded)."""
        found: set[str] = set()
        for key in (word, *_deletions(word)):
            found |= self._by_deletion.get(key, set())
        return {w for w in found if w != word and within_one_edit(word, w)}

    def correct(self, word: str) -> str | None:
        """The known word ``word`` is a misspelling of, or None (known, too short, unknown or ambiguous)."""
        if word in self._cache:
            return self._cache[word]
        result = None
        if len(word) >= MIN_CORRECTED_LENGTH and word not in self.words and word.isalpha():
            found = self.candidates(word)
            result = next(iter(found)) if len(found) == 1 else None
        if len(self._cache) < 100_000:
            self._cache[word] = result
        return result
