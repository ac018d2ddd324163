"""One spelling per argument across ``textguidedseg``'s verbs: ``--output``, ``--device`` and one flag per
segmentation option, read back into one ``SegmentationOptions``; each verb's parser beside its handler."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from TextGuidedSegLib.cli import build_parser, main
from TextGuidedSegLib.cli.arguments import flag, options_from_args
from TextGuidedSegLib.inference.options import SegmentationOptions

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The least each verb needs to parse.
MINIMAL = {
    "segment": ["segment", "ct.nii.gz", "-p", "liver", "-o", "seg.nii.gz"],
    "evaluate": ["evaluate", "-b", "demo", "-l", "list.txt", "-o", "report"],
    "demo": ["demo"],
    "phantoms": ["phantoms", "-o", "phantoms"],
    "encode-prompts": ["encode-prompts", "-o", "cache"],
    "clipseg-bench": ["clipseg-bench"],
    "info": ["info", "demo"],
    "serve": ["serve"],
}
DEVICE_VERBS = ["segment", "evaluate", "demo", "encode-prompts", "clipseg-bench", "serve"]
OPTIONS_VERBS = ["segment", "evaluate", "demo"]
#: Verbs that write files, as (command, bundles verb).
WRITING_VERBS = [(verb, None) for verb in MINIMAL if verb not in ("info", "serve")] + [
    ("bundles", "import-monai")
]

#: A value other than the default for every SegmentationOptions field: (its words, the field's value).
NON_DEFAULT = {
    "device": (["--device", "cuda:1"], "cuda:1"),
    "precision": (["--precision", "bfloat16"], "bfloat16"),
    "overlap": (["--overlap", "0.25"], 0.25),
    "threshold": (["--threshold", "0.3"], 0.3),
    "sw_batch_size": (["--sw-batch-size", "3"], 3),
    "largest_component": (["--largest-component"], True),
    "split_laterality": (["--split-laterality"], True),
    "flip_tta": (["--flip-tta"], True),
    "probabilities": (["--probabilities"], True),
    "force": (["--force"], True),
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _all_parsers() -> dict[tuple[str, str | None], argparse.ArgumentParser]:
    """Every (command, bundles verb) parser of textguidedseg."""
    parsers = {}
    for command, parser in _subparsers(build_parser()).items():
        parsers[(command, None)] = parser
        if command == "bundles":
            parsers.update({(command, verb): sub for verb, sub in _subparsers(parser).items()})
    return parsers


def test_each_verb_is_parsed_and_handled_in_its_own_module() -> None:
    parser = build_parser()
    for command, argv in {**MINIMAL, "bundles": ["bundles", "list"]}.items():
        handler = parser.parse_args(argv).func
        assert handler.__module__ == f"TextGuidedSegLib.cli.{command.replace('-', '_')}", command
    assert set(_subparsers(parser)) == {*MINIMAL, "bundles"}


@pytest.mark.parametrize(("command", "verb"), WRITING_VERBS)
def test_every_writing_verb_says_output(command: str, verb: str | None) -> None:
    parser = _all_parsers()[(command, verb)]
    assert parser._option_string_actions["--output"] is parser._option_string_actions["-o"]
    assert parser._option_string_actions["--output"].dest == "output"


def test_no_verb_spells_output_another_way() -> None:
    spellings = {"--out", "--out-dir", "--outdir", "--output-dir", "--output-folder"}
    for key, parser in _all_parsers().items():
        assert not spellings & set(parser._option_string_actions), key


def test_flags_are_taken_only_as_spelt(capsys) -> None:
    """No abbreviations: clipseg-bench's old ``--out`` is refused, not read as ``--output``."""
    with pytest.raises(SystemExit) as exit_:
        main(["clipseg-bench", "--tiny", "--out", "bench"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --out bench" in capsys.readouterr().err
    assert build_parser().parse_args(["clipseg-bench", "--output", "bench"]).output == "bench"


def test_the_verbs_with_a_device_are_these() -> None:
    parsers = _all_parsers()
    having = sorted(
        command for (command, verb), p in parsers.items() if "--device" in p._option_string_actions
    )
    assert having == sorted(DEVICE_VERBS)


@pytest.mark.parametrize("command", DEVICE_VERBS)
def test_every_device_verb_accepts_the_same_devices(command: str) -> None:
    parser = build_parser()
    assert parser.parse_args(MINIMAL[command]).device == "auto"  # encode-prompts said cpu before
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"):
        assert parser.parse_args([*MINIMAL[command], "--device", device]).device == device


@pytest.mark.parametrize("command", DEVICE_VERBS)
@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_every_device_verb_rejects_a_bad_device_naming_the_argument(command, device, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*MINIMAL[command], "--device", device])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --device: device must be auto, cpu, cuda, cuda:N or mps, got {device!r}" in err
    with pytest.raises(ValueError, match=f"got {device!r}"):
        SegmentationOptions(device=device)  # the same rule as the options object


def test_every_option_field_has_a_test_value() -> None:
    """A new SegmentationOptions field fails here until it has a flag and a line in NON_DEFAULT."""
    assert list(NON_DEFAULT) == SegmentationOptions.names()
    for name, (_, value) in NON_DEFAULT.items():
        assert value != getattr(SegmentationOptions(), name), name


@pytest.mark.parametrize("command", OPTIONS_VERBS)
def test_each_option_flag_is_named_after_its_field(command: str) -> None:
    parser = _all_parsers()[(command, None)]
    for name in SegmentationOptions.names():
        assert flag(name) in parser._option_string_actions, f"{command} has no {flag(name)} for {name}"
        assert parser._option_string_actions[flag(name)].dest == name


@pytest.mark.parametrize("command", OPTIONS_VERBS)
def test_options_from_args_maps_each_flag_to_its_field(command: str) -> None:
    parser = build_parser()
    assert options_from_args(parser.parse_args(MINIMAL[command])) == SegmentationOptions()
    for name in SegmentationOptions.names():
        words, value = NON_DEFAULT[name]
        options = options_from_args(parser.parse_args([*MINIMAL[command], *words]))
        assert options == SegmentationOptions().replace(**{name: value}), name
    everything = [word for words, _ in NON_DEFAULT.values() for word in words]
    options = options_from_args(parser.parse_args([*MINIMAL[command], *everything]))
    assert options.to_dict() == {name: value for name, (_, value) in NON_DEFAULT.items()}


def test_option_defaults_are_shown_as_the_bundles() -> None:
    help_text = " ".join(_all_parsers()[("segment", None)].format_help().split())
    for name in ("overlap", "threshold", "sw-batch-size"):
        assert f"--{name}" in help_text
    assert help_text.count("(default: None, the bundle's value)") == 3


@pytest.mark.parametrize("command", OPTIONS_VERBS)
@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--overlap", "1.5"], "--overlap 1.5: overlap must be in [0, 1), got 1.5"),
        (["--threshold", "0"], "--threshold 0.0: threshold must be in (0, 1), got 0.0"),
        (["--sw-batch-size", "0"], "--sw-batch-size 0: sw_batch_size must be >= 1, got 0"),
    ],
)
def test_a_bad_option_exits_2_naming_its_flag_before_any_work(
    command, words, message, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*MINIMAL[command], *words]) == 2
    err = capsys.readouterr().err
    assert f"textguidedseg {command}: error: {message}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing loaded


@pytest.mark.parametrize("argv", [["--help"], ["segment", "--help"], ["clipseg-bench", "--help"]])
def test_help_imports_neither_torch_nor_monai(argv: list[str]) -> None:
    code = (
        "import sys, runpy; sys.argv = ['textguidedseg', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('TextGuidedSegLib.cli', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'monai', 'numpy') if m in sys.modules]; assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage: textguidedseg" in result.stdout


#: Commands that must answer before torch or MONAI are imported: (argv, exit status, what stderr/stdout
#: names). ``{tmp}`` is a fresh folder; ``{full}`` a folder holding a file.
QUICK_ANSWERS = {
    "bad suffix": (
        ["segment", "ct.nii.gz", "-p", "liver", "-o", "{tmp}/seg.png"],
        2,
        "-o/--output {tmp}/seg.png: the label map must end in one of .nii.gz",
    ),
    "missing input": (
        ["segment", "{tmp}/missing.nii.gz", "-p", "liver", "-o", "{tmp}/seg.nii.gz"],
        2,
        "input {tmp}/missing.nii.gz: no such file or folder",
    ),
    "existing output": (
        ["segment", "{full}/ct.nii.gz", "-p", "liver", "-o", "{full}/ct.nii.gz"],
        2,
        "-o/--output {full}/ct.nii.gz already exists; pass --overwrite",
    ),
    "bad option": (
        ["segment", "{full}/ct.nii.gz", "-p", "liver", "-o", "{tmp}/seg.nii.gz", "--overlap", "1.5"],
        2,
        "--overlap 1.5: overlap must be in [0, 1)",
    ),
    "unknown bundle": (
        ["segment", "{full}/ct.nii.gz", "-p", "liver", "-o", "{tmp}/seg.nii.gz", "-b", "no_such_bundle"],
        2,
        "bundle 'no_such_bundle' is no file or folder",
    ),
    "demo into a full folder": (["demo", "-o", "{full}"], 2, "-o/--output {full} is not empty"),
    "demo missing input": (["demo", "-o", "{tmp}/d", "-i", "{tmp}/ct.nrrd"], 2, "-i/--input {tmp}/ct.nrrd"),
    "evaluate missing list": (
        ["evaluate", "-b", "demo_phantom_film_v1", "-l", "{tmp}/list.txt", "-o", "{tmp}/r"],
        2,
        "-l/--list {tmp}/list.txt: no such file",
    ),
    "phantoms count": (["phantoms", "-o", "{tmp}/p", "-n", "0"], 2, "-n/--count must be >= 1, got 0"),
    "encode-prompts missing file": (
        ["encode-prompts", "-o", "{tmp}/c", "--prompts-file", "{tmp}/p.txt"],
        2,
        "--prompts-file {tmp}/p.txt: no such file",
    ),
    "clipseg-bench missing volume": (
        ["clipseg-bench", "-o", "{tmp}/b", "--volumes", "{tmp}/ct.nii.gz,{tmp}/seg.nii.gz"],
        2,
        "{tmp}/ct.nii.gz: no such file",
    ),
    "info": (["info", "demo_phantom_film_v1"], 0, "demo_phantom_film_v1 v0.1.0 (checksums verified)"),
    "info --json": (["info", "demo_phantom_film_v1", "--json"], 0, '"intended_use": "phantom"'),
}


@pytest.mark.parametrize("case", list(QUICK_ANSWERS))
def test_errors_and_info_answer_without_torch_or_monai(case: str, tmp_path: Path) -> None:
    """Each verb checks its arguments and paths before the model stack is imported (timing: bench_startup)."""
    argv, status, expected = QUICK_ANSWERS[case]
    full = tmp_path / "full"
    full.mkdir()
    (full / "ct.nii.gz").write_bytes(b"not read")
    fill = {"tmp": str(tmp_path / "work"), "full": str(full)}
    code = (
        "import sys; from TextGuidedSegLib.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "heavy = [m for m in ('torch', 'monai') if m in sys.modules]\n"
        "assert not heavy, f'{heavy} imported'\n"
        "sys.exit(status)"
    )
    words = [word.format(**fill) for word in argv]
    result = subprocess.run(
        [sys.executable, "-c", code, *words], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == status, result.stderr
    assert expected.format(**fill) in (result.stderr if status else result.stdout)
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # nothing written
