"""Property tests of the prompt parser (issue 12): separators and case never change a parse, ignorable words
never do, an unknown word never leaves it silently unchanged; huge and random prompts are fast and only ever
raise PromptError."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from TextGuidedSegLib.taxonomy import PromptError, get_taxonomy, parse_prompt
from TextGuidedSegLib.taxonomy.prompt import _corrector, explain_prompt
from TextGuidedSegLib.taxonomy.vocabulary import COMMAND_WORDS, CONTEXT_WORDS, normalize_word

TAXONOMY = get_taxonomy()
NAMES = ["liver", "right kidney", "Spleen", "both adrenal glands", "IVC", "hepatic parenchyma", "kidneys",
         "liver lesions", "renal cysts", "L kidney", "kidney, left", "gullet",
         "abdominal organs"]  # fmt: skip
SEPARATORS = [", ", "; ", " and ", " & ", " + ", " / ", " | ", "\n", " plus ", " or "]
# ignorable words that cannot join a neighbour into a name ("the" and "in" are links in findings)
IGNORABLE = sorted(w for w in COMMAND_WORDS | CONTEXT_WORDS if w.isalpha() and w not in {"in", "of", "with"})


def _parse(text: str, free: bool = False) -> list[str | None] | str:
    try:
        return [q.class_name or q.text for q in parse_prompt(text, TAXONOMY, allow_free_text=free)]
    except PromptError as err:
        return f"error: {type(err).__name__}"


@st.composite
def prompts(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5))
    separators = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(names) - 1, max_size=len(names) - 1))
    return names, separators


def _join(names: list[str], separators: list[str]) -> str:
    out = names[0]
    for separator, name in zip(separators, names[1:], strict=True):
        out += separator + name
    return out


@settings(max_examples=60, deadline=None)
@given(prompts(), st.data())
def test_separators_and_case_do_not_change_the_result(prompt, data):
    names, separators = prompt
    reference = _parse(_join(names, [", "] * len(separators)))
    assert isinstance(reference, list)
    shuffled = data.draw(st.permutations(separators)) if separators else []
    text = _join(names, list(shuffled))
    flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    cased = "".join(c.upper() if f else c.lower() for c, f in zip(text, flips, strict=True))
    assert _parse(text) == reference
    assert _parse(cased) == reference


@settings(max_examples=60, deadline=None)
@given(prompts(), st.sampled_from(IGNORABLE), st.booleans())
def test_an_ignorable_word_does_not_change_the_result(prompt, word, front):
    names, separators = prompt
    text = _join(names, separators)
    changed = f"{word} {text}" if front else f"{text}, {word}"
    assert _parse(changed) == _parse(text)


def _is_unknown(word: str) -> bool:
    corrector = _corrector(TAXONOMY)
    norm = normalize_word(word)
    return norm not in corrector.words and corrector.correct(norm) is None and corrector.correct(word) is None


@settings(max_examples=60, deadline=None)
@given(
    prompts(), st.text(alphabet="bcdfghjkmnpqvwxz", min_size=3, max_size=9).filter(_is_unknown), st.booleans()
)
def test_an_unknown_word_never_leaves_the_result_silently_unchanged(prompt, word, front):
    names, separators = prompt
    text = _join(names, separators)
    changed = f"{word} {text}" if front else f"{text} {word}"
    assert _parse(changed).startswith("error") if isinstance(_parse(changed), str) else False  # strict: error
    parse = explain_prompt(changed, TAXONOMY, allow_free_text=True)  # with a text encoder: free text, flagged
    assert parse.guessed and any(word in q.text for q in parse.queries if q.structure is None)


def _only_prompt_errors(text: str) -> float:
    start = time.perf_counter()
    for free in (False, True):
        try:
            parse_prompt(text, TAXONOMY, allow_free_text=free)
        except PromptError:
            pass
    return (time.perf_counter() - start) / 2


def test_a_10000_character_prompt_parses_in_under_a_second():
    text = (
        "liver and both kidneys except the left one; lesions in the liver, pancraes xyzzy R lung. " * 120
    )[:10_000]
    assert len(text) == 10_000
    assert _only_prompt_errors(text) < 1.0
    long_known = ", ".join(["liver", "spleen", "right kidney", "gullet"] * 600)[:10_000].rsplit(",", 1)[0]
    start = time.perf_counter()
    assert [q.class_name for q in parse_prompt(long_known)] == [
        "liver",
        "spleen",
        "right_kidney",
        "esophagus",
    ]
    assert time.perf_counter() - start < 1.0


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=0, max_size=400))
def test_random_unicode_only_ever_raises_prompt_error(text):
    _only_prompt_errors(text)  # any other exception fails the test


def test_random_unicode_of_10000_characters_is_fast():
    import random

    rng = random.Random(12)
    text = "".join(chr(rng.randrange(0x20, 0x30000)) for _ in range(10_000))
    text = text.encode("utf-8", "replace").decode("utf-8", "replace")
    assert _only_prompt_errors(text) < 1.0
