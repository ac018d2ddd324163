"""Every ``textguidedseg`` option that README.md and ``docs/*.md`` name exists where they use it, and the
README's table of ``segment`` options is the parser's: the same flags, the same defaults.

The parser is :func:`TextGuidedSegLib.cli.build_parser`, walked down its sub-commands the way argparse reads a
command line, so ``textguidedseg bundles pull NAME --file model.pt`` is checked against ``bundles pull``.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from TextGuidedSegLib.cli import build_parser
from TextGuidedSegLib.inference.options import SegmentationOptions

README = REPO_ROOT / "README.md"
DOCUMENTS = [README, *sorted((REPO_ROOT / "docs").glob("**/*.md"))]
#: An option word: ``--flip-tta``, ``-o`` (not ``-175`` or a ``--`` alone).
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
BUNDLES_VALUE = "the bundle's value"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices if actions else {}


def _mentions() -> list[tuple[str, str]]:
    """(where, text) of every ``textguidedseg ...`` command the documents name: each line of a fenced block
    (continuations joined) and each inline code span."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        fenced = re.findall(r"^\s*```[a-z]*\n(.*?)^\s*```", text, flags=re.M | re.S)
        for block in fenced:
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith("textguidedseg "):
                    found.append((document.name, line))
        prose = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.M | re.S)
        for span in re.findall(r"`([^`\n]+)`", prose):
            if span.startswith("textguidedseg "):
                found.append((document.name, span))
    return found


def _words(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return [w.strip("[]") for w in words]


def _parser_for(words: list[str]) -> tuple[list[argparse.ArgumentParser], list[str]]:
    """The chain of parsers a command line goes through (root, verb, sub-verb) and the verb words."""
    chain, verbs = [build_parser()], []
    for previous, word in zip(words, words[1:], strict=False):
        choices = _subparsers(chain[-1])
        if word in choices:
            chain.append(choices[word])
            verbs.append(word)
        elif choices and not word.startswith("-") and not previous.startswith("-"):  # not an option's value
            where = " ".join(["textguidedseg", *verbs])
            raise AssertionError(f"{shlex.join(words)}: {word!r} is not a verb of {where}")
    return chain, verbs


MENTIONS = _mentions()


def test_the_documents_name_options():
    flags = [f for _, text in MENTIONS for f in FLAG.findall(text)]
    assert len(MENTIONS) >= 15 and len(flags) >= 20, MENTIONS


@pytest.mark.parametrize(("where", "command"), MENTIONS, ids=[f"{w}: {c[:60]}" for w, c in MENTIONS])
def test_every_named_option_exists_on_its_verb(where, command):
    words = _words(command)
    chain, verbs = _parser_for(words)
    # an option is read by the parser whose words it follows: the root's before the verb, the verb's after
    position, known = 0, set(chain[0]._option_string_actions)
    for word in words[1:]:
        if position < len(verbs) and word == verbs[position]:
            position += 1
            known = set(chain[position]._option_string_actions)
            continue
        for option in FLAG.findall(word.split("=")[0]):
            verb = " ".join(["textguidedseg", *verbs[:position]])
            assert option in known, (
                f"{where}: `{command}` names {option}, which `{verb} --help` does not list "
                f"(it has {', '.join(sorted(known))})"
            )


def _all_options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of a parser and of every sub-command under it."""
    options = set(parser._option_string_actions)
    for sub in _subparsers(parser).values():
        options |= _all_options(sub)
    return options


def test_every_option_named_alone_exists_somewhere():
    """A flag the README names in prose (`--accept-license`, `--flip-tta`) is an option of some verb. (docs/
    also name the trainers' and benchmarks' options, which test_readme_commands.py checks.)"""
    options = _all_options(build_parser())
    assert {"--accept-license", "--flip-tta", "--file"} <= options
    for document in [README]:
        prose = re.sub(r"^\s*```.*?^\s*```", "", document.read_text(encoding="utf-8"), flags=re.M | re.S)
        for span in re.findall(r"`(--[a-z][\w-]*)[^`]*`", prose):
            assert span in options, f"{document.name} names {span}, which no textguidedseg verb has"


def _readme_table(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table under ``heading`` in README.md."""
    text = README.read_text(encoding="utf-8")
    assert heading in text, f"README.md has no section {heading!r}"
    rows = []
    for line in text.split(heading, 1)[1].splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not re.match(r"^\|[\s|:-]+\|$", line):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows and not line.startswith("|"):
            break
    assert rows and rows[0][:2] == ["option", "default"], rows[:1]
    return rows[1:]


def _segment_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    root = build_parser()
    return root, _subparsers(root)["segment"]


def test_readme_segment_options_equal_the_parsers():
    _, segment = _segment_parser()
    documented = {f for row in _readme_table("### `segment` options") for f in FLAG.findall(row[0])}
    parsed = set(segment._option_string_actions) - {"-h", "--help"}
    assert documented == parsed, (
        f"README only: {sorted(documented - parsed)}; `segment --help` only: {sorted(parsed - documented)}"
    )


def _expected_default(action: argparse.Action, root: argparse.ArgumentParser) -> str | None:
    """What the README's default column must say for ``action`` (None: free text, checked separately)."""
    if action.required:
        return "required"
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    default = action.default
    if default is argparse.SUPPRESS:  # --log-level after the verb: the root's value applies
        default = root._option_string_actions[action.option_strings[0]].default
    if default is None:
        return BUNDLES_VALUE if action.dest in SegmentationOptions.names() else None
    return f"`{default}`"


def test_readme_segment_defaults_match_help():
    root, segment = _segment_parser()
    formatter = segment._get_formatter()
    for row in _readme_table("### `segment` options"):
        option = FLAG.findall(row[0])[0]
        action = segment._option_string_actions[option]
        expected = _expected_default(action, root)
        help_text = formatter._expand_help(action) if action.help else ""
        if expected is None:  # --bundle: the default is a rule; README and --help must both name the demo
            assert "demo" in row[1] and "demo" in help_text, (row, help_text)
            continue
        assert row[1] == expected, f"README says {option} defaults to {row[1]!r}; --help: {expected!r}"
        if expected == BUNDLES_VALUE:
            assert BUNDLES_VALUE in help_text, help_text
        elif expected.startswith("`"):
            assert f"(default: {expected.strip('`')})" in help_text, help_text


def test_segmentation_options_are_the_same_on_segment_evaluate_and_demo():
    verbs = _subparsers(build_parser())
    flags = {"--" + name.replace("_", "-") for name in SegmentationOptions.names()}
    for verb in ("segment", "evaluate", "demo"):
        missing = flags - set(verbs[verb]._option_string_actions)
        assert not missing, f"`{verb}` lacks {sorted(missing)}, which the README says every such verb takes"


def test_no_document_states_a_numeric_default_for_bundle_options():
    pattern = re.compile(r"--(overlap|threshold|sw-batch-size)[^.\n|]{0,40}default[^.\n|]{0,10}\d")
    for document in DOCUMENTS:
        hits = pattern.findall(document.read_text(encoding="utf-8"))
        assert not hits, f"{document.name} gives a numeric default for --{hits[0]}: it is {BUNDLES_VALUE}"


def test_log_level_works_after_the_verb():
    root = build_parser()
    argv = ["segment", "ct.nii.gz", "-p", "liver", "-o", "seg.nii.gz"]
    assert root.parse_args(argv).log_level == "INFO"
    assert root.parse_args([*argv, "--log-level", "DEBUG"]).log_level == "DEBUG"
    assert root.parse_args(["--log-level", "ERROR", *argv]).log_level == "ERROR"
    assert root.parse_args(["bundles", "list", "--log-level", "WARNING"]).log_level == "WARNING"


def test_a_misspelt_option_is_caught():
    """The check above can fail: a README naming a flag the parser lacks is reported."""
    words = _words("textguidedseg segment ct.nii.gz --prompt liver --overlapp 0.2 -o x.nii.gz")
    chain, verbs = _parser_for(words)
    assert verbs == ["segment"]
    assert "--overlapp" not in chain[-1]._option_string_actions
    assert "--overlap" in chain[-1]._option_string_actions


def test_documents_exist():
    assert all(Path(d).is_file() for d in DOCUMENTS) and len(DOCUMENTS) >= 5
