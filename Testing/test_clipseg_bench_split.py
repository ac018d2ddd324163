"""clipseg-bench without validation volumes: a split by volume (2+) or by a contiguous block of slices (one
volume, with the flattery warning), refusal when too small, and reports without ``nan``.

Split tests slice procedural phantoms (64x64x24 at 5 mm: 24 axial slices); the end-to-end test runs the
README's one-volume example on the real CT in ``../shared/data/totalseg`` (skipped without it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

from TextGuidedSegLib.cli import main as cli_main
from TextGuidedSegLib.clipseg.bench import NO_VAL_SAMPLES, BenchReport, StrategyReport, markdown, write_report
from TextGuidedSegLib.clipseg.data import SliceCase, SliceConfig, build_slice_set, cases_from_lists
from TextGuidedSegLib.clipseg.split import (
    GAP_SLICES,
    SLICE_SPLIT_WARNING,
    SplitError,
    holdout_split,
    min_slices_for_split,
)
from TextGuidedSegLib.data.phantom import PhantomConfig, write_phantoms

STRUCTURES = ["liver", "spleen", "right_kidney", "left_kidney"]


@pytest.fixture(scope="module")
def phantom_cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[SliceCase], SliceConfig, Path]:
    folder = tmp_path_factory.mktemp("split_phantoms")
    config = PhantomConfig(shape=(64, 64, 24), spacing=(5.0, 5.0, 5.0))
    cases = cases_from_lists([write_phantoms(folder / "p", 3, config, seed=3, progress=False)])
    slicing = SliceConfig(structures=STRUCTURES, spacing=(5.0, 5.0, 5.0), image_size=32)
    return cases, slicing, folder / "slices"


def test_one_volume_holds_out_one_contiguous_block_with_a_gap(phantom_cases):
    cases, slicing, root = phantom_cases
    whole = build_slice_set(cases[:1], slicing, root, progress=False)
    total = whole.cases[0]["num_slices"]
    split = holdout_split(whole, 0.2, seed=0)
    assert split.kind == "slices" and split.warning == SLICE_SPLIT_WARNING
    assert "flatters Dice" in split.warning and "--val-volumes" in split.warning
    (val_case,) = split.val.cases
    z0, z1 = val_case["z_range"]
    assert (total, z1 - z0) == (24, 5)  # round(0.2 * 24), one block
    np.testing.assert_array_equal(split.val.images, whole.images[z0:z1])
    # training: every slice outside the block and its gaps, nothing else
    kept = [z for z in range(total) if z < z0 - GAP_SLICES or z >= z1 + GAP_SLICES]
    train_z = [z for c in split.train.cases for z in range(*c["z_range"])]
    assert train_z == kept and len(split.train.images) == len(kept)
    np.testing.assert_array_equal(split.train.images, whole.images[kept])
    # the samples of both parts are the parent's samples of their slices, with the same masks
    for part, slices in ((split.val, list(range(z0, z1))), (split.train, kept)):
        parent_rows = np.flatnonzero(np.isin(whole.samples[:, 0], slices))
        assert len(part) == parent_rows.size > 0
        np.testing.assert_array_equal(part.masks, whole.masks[parent_rows])
        np.testing.assert_array_equal(part.samples[:, 1:], whole.samples[parent_rows, 1:])
    # the 3D reference of the validation case is the held-out block of the volume's reference
    for structure in val_case["annotated"]:
        np.testing.assert_array_equal(
            split.val.reference_volume(0, structure), whole.reference_volume(0, structure)[z0:z1]
        )
    assert any(split.val.reference_volume(0, s).any() for s in val_case["annotated"])
    # seeded: the same seed gives the same block, and the seed moves it
    assert holdout_split(whole, 0.2, seed=0).val.cases[0]["z_range"] == [z0, z1]
    starts = {holdout_split(whole, 0.2, seed=s).val.cases[0]["z_range"][0] for s in range(8)}
    assert len(starts) > 1


def test_two_or_more_volumes_split_by_volume(phantom_cases):
    cases, slicing, root = phantom_cases
    whole = build_slice_set(cases, slicing, root, progress=False)
    split = holdout_split(whole, 0.2, seed=0)
    assert split.kind == "volumes" and split.warning == ""
    names = [c["name"] for c in whole.cases]
    val_names = [c["name"] for c in split.val.cases]
    train_names = [c["name"] for c in split.train.cases]
    assert len(val_names) == 1 and sorted(val_names + train_names) == sorted(names)  # round(0.2 * 3) = 1
    assert "z_range" in split.val.cases[0] and split.val.cases[0]["z_range"] == [0, 24]
    assert len(split.val) + len(split.train) == len(whole)


def test_too_few_slices_are_refused_with_what_is_needed(phantom_cases):
    cases, slicing, root = phantom_cases
    need = min_slices_for_split()
    assert need == 10
    short = SliceCase(cases[0].image, cases[0].label, cases[0].dataset, "short", k_range=(8, 8 + need - 1))
    small = build_slice_set([short], slicing, root, progress=False)
    with pytest.raises(SplitError) as error:
        holdout_split(small, 0.2, seed=0)
    message = str(error.value)
    assert f"the one volume short has {need - 1} slices" in message
    assert f"2 or more volumes (split by volume) or one volume of at least {need} slices" in message
    assert "--val-volumes" in message


def _strategy(val_dice: float, val_3d: float) -> StrategyReport:
    return StrategyReport(
        strategy="decoder",
        trainable=10,
        total=100,
        trainable_tensors=2,
        epochs=1,
        best_epoch=0,
        stopped_early=False,
        steps=3,
        train_dice=0.25,
        val_dice=val_dice,
        val_dice_3d=val_3d,
        dice_3d=[],
        wall_seconds=1.0,
        cache_seconds=0.0,
        step_seconds={"data": 0.1, "forward": 0.1, "backward": 0.1, "optimizer": 0.1, "step": 0.4},
        samples_per_s=10.0,
        peak_memory_mib=1.0,
        memory_kind="cpu_rss",
        cached=True,
    )


def test_a_report_without_validation_says_why_instead_of_nan(tmp_path):
    report = BenchReport([_strategy(math.nan, math.nan)], "cpu", {"val_samples": 0, "validation": "none"})
    report.notes = ["Validation: none."]
    text = markdown(report)
    assert "nan" not in text.lower()
    row = next(line for line in text.splitlines() if line.startswith("| decoder"))
    assert row.count(NO_VAL_SAMPLES) == 2 and "| 0.250 |" in row
    write_report(report, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())  # strict JSON: no NaN
    assert results["strategies"][0]["val_dice"] is None and results["notes"] == ["Validation: none."]
    assert (tmp_path / "dice_vs_time.png").stat().st_size > 1000


@pytest.mark.slow
def test_readme_one_volume_example_gives_numbers_and_the_warning(tmp_path, caplog):
    folder = shared_path("totalseg")
    out = tmp_path / "bench"
    volume = f"{folder / 'example_ct_sm.nii.gz'},{folder / 'example_seg.nii.gz'}"
    argv = ["--log-level", "WARNING", "clipseg-bench", "--tiny", "--volumes", volume, "--output", str(out)]
    argv += ["--strategies", "decoder,adapter", "--epochs", "2", "--max-steps-per-epoch", "2"]
    argv += ["--spacing", "3", "3", "3", "--device", "cpu", "--no-progress", "--override", "threads=1"]
    assert cli_main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    settings = results["settings"]
    assert settings["validation"] == "held out by slices" and settings["val_cases"] == 1
    # 30 slices at 3 mm: 6 held out, the gap on one side (block at an end) or both
    assert settings["val_samples"] > 0
    assert settings["train_slices"] in (30 - 6 - GAP_SLICES, 30 - 6 - 2 * GAP_SLICES)
    for row in results["strategies"]:
        assert 0.0 <= row["val_dice"] <= 1.0 and 0.0 <= row["val_dice_3d"] <= 1.0 and row["dice_3d"]
    text = (out / "report.md").read_text()
    assert "nan" not in text.lower() and "n/a" not in text
    assert f"**WARNING: {SLICE_SPLIT_WARNING}.**" in text
    assert "of example_ct_sm (6 of 30 slices, 20 %" in text
    assert (out / "dice_vs_time.png").stat().st_size > 1000
    assert any("flatters Dice" in r.message and r.levelname == "WARNING" for r in caplog.records)
