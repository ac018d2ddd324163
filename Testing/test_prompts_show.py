"""Show before running (issue 12): the CLI prints the parsed structures and ``--dry-run`` stops there; the
Slicer panel and effect get the reading (and whether to ask) from a Qt-free helper."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from TextGuidedSegLib.cli import main
from TextGuidedSegLib.registry import HOME_ENV
from TextGuidedSegLib.taxonomy import get_taxonomy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TextGuidedSeg"))
from TextGuidedSegLogic.prompts import read_prompt  # noqa: E402


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))


def test_dry_run_prints_the_structures_and_reads_no_ct(tmp_path: Path, make_bundle, caplog) -> None:
    ct = tmp_path / "not_a_ct.nii.gz"
    ct.write_bytes(b"not read by a dry run")
    out = tmp_path / "seg.nii.gz"
    args = ["segment", str(ct), "-p", "the spleeen; kidneys but not the left one", "-b", str(make_bundle())]
    with caplog.at_level(logging.INFO, logger="textguidedseg"):
        assert main([*args, "-o", str(out), "--dry-run", "--device", "cpu"]) == 0
    assert not out.exists()
    assert "Right Kidney" in caplog.text and "Left Kidney" in caplog.text  # kept, then excluded
    assert "excluded Left Kidney" in caplog.text
    assert "read 'spleeen' as 'spleen'" in caplog.text
    assert "the parse guessed" in caplog.text
    assert "prompt: Spleen" in caplog.text


def test_read_prompt_says_what_it_found_and_whether_it_guessed() -> None:
    taxonomy = get_taxonomy()
    exact = read_prompt("liver and both kidneys", taxonomy)
    assert exact.structures == ("Liver", "Right Kidney", "Left Kidney") and not exact.guessed
    assert exact.message == "Segments: Liver, Right Kidney, Left Kidney" and exact.error is None
    guessed = read_prompt("pancraes and kidneys but not the left one", taxonomy)
    assert guessed.structures == ("Pancreas", "Right Kidney") and guessed.guessed
    assert guessed.message.splitlines() == [
        "Segments: Pancreas, Right Kidney",
        "Excluded: Left Kidney",
        "Read 'pancraes' as 'pancreas'",
    ]
    free = read_prompt("liver with cirrhosis", taxonomy)
    assert free.guessed and free.structures == ("'liver with cirrhosis' (free text)",)
    refused = read_prompt("contralateral kidney", taxonomy)
    assert refused.structures == () and "side cannot be guessed" in refused.error
    assert read_prompt("liver", None) == read_prompt("  ", taxonomy)  # nothing to read
