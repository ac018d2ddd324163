"""Every command block of the README (and of ``docs/``) still works as written.

Each shell command of a ``bash``/``sh`` block is checked one of two ways:

- **run**: executed in a smoke mode, in a temporary folder where the README's placeholder files exist as tiny
  real inputs (``ct.nii.gz`` is the shared 30-slice CT, ``my_bundle/`` a tiny random bundle, ...) and the
  bundle cache is empty: the built-in demo bundle is all there is;
- **parsed**: where a command needs a GPU, data sets, the network or hours, its arguments are checked against
  the parser that will read them (``textguidedseg``'s own, the trainers' config loader and global-batch check,
  the Makefile's targets, ``bash -n`` for scripts) and the repository paths it names must exist.

``python`` blocks are compiled. A command nobody taught this test to check fails it, so a new README command
cannot slip through unchecked. The closing assertion prints how many blocks and commands ran and parsed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT, shared_path

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("**/*.md"))]
SHELLS = {"bash", "sh", "shell", "console"}
#: textguidedseg verbs whose commands need a download (or a model no test can have): argument check only.
NEEDS_NETWORK = {("bundles", "pull"), ("encode-prompts",)}
#: Tools documented for the user's own machine (a Slicer build, a SLURM cluster, pip): paths checked only.
EXTERNAL_TOOLS = {"cmake", "Slicer", "pip", "source", "ctest", "huggingface-cli", "sbatch"}


@dataclass
class Block:
    document: Path
    line: int
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.document.name}:{self.line} ({self.language})"


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (fences may be indented, as inside list items)."""
    blocks, current, start, language = [], None, 0, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if current is None:
                current, start, language = [], number, stripped[3:].strip() or "text"
                indent = len(line) - len(line.lstrip())
            else:
                blocks.append(Block(path, start, language, "\n".join(current)))
                current = None
        elif current is not None:
            current.append(line[indent:] if line[:indent].isspace() else line)
    return blocks


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, split as the shell does,
    ``NAME=value`` lines applied to the ``$NAME`` of later lines (a relative path to the repository's)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    variables: dict[str, str] = {}
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 1 and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S+", words[0]):
            name, value = words[0].split("=", 1)
            variables[name] = str((REPO_ROOT / value).resolve()) if (REPO_ROOT / value).exists() else value
            continue
        if words:
            commands.append([re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], w) for w in words])
    return commands


ALL_BLOCKS = [b for d in DOCUMENTS for b in code_blocks(d)]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.language in SHELLS]


def test_the_documents_have_command_blocks():
    assert len(SHELL_BLOCKS) >= 8, [str(b) for b in ALL_BLOCKS]
    assert all(b.language in SHELLS | {"python", "text"} for b in ALL_BLOCKS), [
        str(b) for b in ALL_BLOCKS if b.language not in SHELLS | {"python", "text"}
    ]


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.language == "python"], ids=str)
def test_python_blocks_compile(block):
    compile(block.text, str(block), "exec")


# -- the workspace of placeholders ---------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, make_bundle) -> Path:
    """A folder where the README's placeholder names exist as tiny real files."""
    root = tmp_path / "readme"
    root.mkdir()
    ct = shared_path("totalseg", "example_ct_sm.nii.gz")
    labels = shared_path("totalseg", "example_seg.nii.gz")
    for name in ("ct.nii.gz", "my_ct.nii.gz"):
        (root / name).symlink_to(ct)
    (root / "labels.nii.gz").symlink_to(labels)
    shutil.copytree(make_bundle(name="readme_tiny", spacing=6.0), root / "my_bundle")
    # test.txt: one labelled case of the TotalSegmentator example (the dataset is the path's first folder)
    (root / "totalseg").symlink_to(ct.parent)
    (root / "test.txt").write_text(f"totalseg/{ct.name}\ttotalseg/{labels.name}\n", encoding="utf-8")
    return root


# -- the checks -------------------------------------------------------------------------------------------


def _repo_paths_exist(words: list[str]) -> None:
    """Every word that names a repository path (Training/..., TextGuidedSeg...) must exist."""
    for word in words:
        for part in word.split("="):
            if re.match(r"^(Training|Testing|TextGuidedSeg\w*|docs)(/|$)", part):
                assert (REPO_ROOT / part).exists(), f"{part} does not exist"


def _check_textguidedseg(words: list[str], workspace: Path, monkeypatch) -> str:
    from TextGuidedSegLib.cli import build_parser, main

    parser = build_parser()
    argv = [_in_repository(word) for word in words[1:]]  # the README's commands run from the checkout
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        raise AssertionError(f"the parser rejects {shlex.join(words)} (exit {exit_.code})") from None
    verb = (args.command, getattr(args, "verb", None))
    if verb in NEEDS_NETWORK or verb[:1] in NEEDS_NETWORK:
        if verb == ("bundles", "pull"):
            from TextGuidedSegLib.registry import BundleStore

            BundleStore().entry(args.name)  # the README names a real registry entry
        return "parsed"
    if args.command == "serve":
        return "parsed"  # a service that runs until stopped (Testing/test_server.py runs it)
    if args.command == "clipseg-bench" and not args.tiny:
        return "parsed"  # the real CLIPSeg weights (CIDAS/clipseg-rd64-refined) come from the hub
    if verb == ("bundles", "import-monai"):
        return "parsed"  # no published weights here (Testing/test_cli_bundles.py runs it on random ones)
    if _missing_inputs(args, workspace):
        return "parsed"  # the user's data set or trained bundle (FLARE22 lists, runs/...): arguments only
    monkeypatch.chdir(workspace)
    if "--no-progress" in _options(parser, args) and "--no-progress" not in argv:
        argv.append("--no-progress")
    status = main(argv)
    assert status == 0, f"{shlex.join(words)} exited {status}"
    return "ran"


def _in_repository(word: str) -> str:
    """A word naming a repository path (``Training/configs/x.yaml``) as an absolute path."""
    if re.match(r"^(Training|TextGuidedSeg\w*|Testing)/", word) and (REPO_ROOT / word).exists():
        return str(REPO_ROOT / word)
    return word


def _parse_only(words: list[str]) -> str:
    """The arguments of a ``textguidedseg`` command, checked against its parser."""
    from TextGuidedSegLib.cli import build_parser

    try:
        build_parser().parse_args([_in_repository(word) for word in words[1:]])
    except SystemExit as exit_:
        raise AssertionError(f"the parser rejects {shlex.join(words)} (exit {exit_.code})") from None
    return "parsed"


def _missing_inputs(args: argparse.Namespace, workspace: Path) -> list[str]:
    """Inputs a command names that are neither in the workspace nor the repository nor a shipped bundle."""
    from TextGuidedSegLib.registry import BundleStore

    names = []
    for key in ("input", "list", "train_list", "val_list", "volumes", "val_volumes", "config"):
        value = getattr(args, key, None)
        for item in value if isinstance(value, list) else [value] if value else []:
            names += str(item).split(",")[:2]
    missing = [n for n in names if not (workspace / n).exists() and not (REPO_ROOT / n).exists()]
    bundle = getattr(args, "bundle", None)
    if bundle and not (workspace / bundle).exists():
        if "/" in bundle or bundle.endswith(".zip"):
            missing.append(bundle)  # the user's own trained bundle
        elif not BundleStore().entry(bundle).is_builtin:  # a registry name must exist
            missing.append(bundle)  # ... and is not downloadable here
    return missing


def _options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """The option strings of the (sub)command ``args`` came from."""
    for word in (args.command, getattr(args, "verb", None)):
        if word is None:
            break
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return set(parser._option_string_actions)


def _check_python(words: list[str]) -> str:
    script = words[1] if words[1] != "-m" else None
    assert script is not None and (REPO_ROOT / script).is_file(), f"{shlex.join(words)}: no such script"
    name = Path(script).name
    if name in ("train.py", "train_clipseg.py"):
        return _check_training(script, words[2:], world_size=1)
    if name in ("export_bundle.py", "evaluate.py"):
        result = subprocess.run(
            ["python", script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        options = set(re.findall(r"--[a-z][a-z0-9_-]*", result.stdout))
        for word in words[2:]:
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"{script} has no option {word}"
        return "parsed"
    raise AssertionError(f"no check for {shlex.join(words)}")


def _check_training(script: str, argv: list[str], world_size: int) -> str:
    from TextGuidedSegLib.training.arguments import parse_train_arguments

    arguments = parse_train_arguments(argv)
    assert arguments.config is not None or arguments.resume is not None, shlex.join(argv)
    if arguments.config is None:  # --resume CHECKPOINT: the checkpoint holds the config
        return "parsed"
    config_path = REPO_ROOT / arguments.config
    if Path(script).name == "train.py":
        from TextGuidedSegLib.training.config import batch_plan, load_config

        config = load_config(config_path, arguments.overrides)  # unknown keys and wrong types raise
        batch_plan(config, world_size)  # the global batch splits over this many processes
    else:
        from TextGuidedSegLib.clipseg.train import load_clipseg_config, rank_batch_size

        rank_batch_size(load_clipseg_config(config_path, arguments.overrides), world_size)
    return "parsed"


def _check_torchrun(words: list[str]) -> str:
    nproc = next(int(w.split("=")[1]) for w in words if w.startswith("--nproc_per_node="))
    script_at = next(i for i, w in enumerate(words) if w.endswith(".py"))
    return _check_training(words[script_at], words[script_at + 1 :], world_size=nproc)


def _check_external(words: list[str]) -> str:
    _repo_paths_exist(words)
    if words[0] == "sbatch":
        script = next(w for w in words if w.endswith(".sbatch"))
        assert subprocess.run(["bash", "-n", str(REPO_ROOT / script)]).returncode == 0
        config = next(w for w in words if w.endswith(".yaml"))
        nodes = next((int(w.split("=")[1]) for w in words if w.startswith("--nodes=")), 1)
        gpus = int(re.search(r"--gpus-per-node=(\d+)", (REPO_ROOT / script).read_text()).group(1))
        return _check_training("Training/train.py", ["--config", config], world_size=nodes * gpus)
    return "parsed"


def _check_make(words: list[str]) -> str:
    targets = re.findall(r"^([a-z][a-z-]*):", (REPO_ROOT / "Makefile").read_text(), re.M)
    for target in words[1:]:
        if "=" not in target:
            assert target in targets, f"make {target}: no such target in the Makefile"
    return "parsed"  # make test runs this very test; make demo is what `textguidedseg demo` runs


@pytest.mark.slow
def test_every_readme_command_runs_or_parses(workspace, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TEXTGUIDEDSEG_HOME", str(tmp_path / "home"))  # an empty cache: the demo bundle only
    outcomes: Counter = Counter()
    blocks: Counter = Counter()
    for block in SHELL_BLOCKS:
        kinds = set()
        commands = shell_commands(block.text)
        # a training recipe (data, hours of training, then its checkpoint): every command's arguments only
        recipe = any(w[0] == "python" and w[1].endswith(("train.py", "train_clipseg.py")) for w in commands)
        for words in commands:
            try:
                if words[0] == "textguidedseg" and recipe:
                    kind = _parse_only(words)
                elif words[0] == "textguidedseg":
                    kind = _check_textguidedseg(words, workspace, monkeypatch)
                elif words[0] in ("python", "python3"):
                    kind = _check_python(words)
                elif words[0] == "torchrun":
                    kind = _check_torchrun(words)
                elif words[0] == "make":
                    kind = _check_make(words)
                elif words[0] in EXTERNAL_TOOLS:
                    kind = _check_external(words)
                else:
                    raise AssertionError("no check for this command: teach test_readme_commands.py one")
            except Exception as err:
                raise AssertionError(f"{block}: {shlex.join(words)}: {err}") from err
            outcomes[kind] += 1
            kinds.add(kind)
        blocks["ran" if "ran" in kinds else "parsed"] += 1
    with capsys.disabled():
        print(
            f"\nREADME commands: {sum(blocks.values())} blocks ({blocks['ran']} with commands run, "
            f"{blocks['parsed']} parsed only); {outcomes['ran']} commands run, {outcomes['parsed']} parsed"
        )
    assert outcomes["ran"] >= 5
