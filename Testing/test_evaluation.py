"""Evaluation: hand-computed Dice and surface Dice, the empty-reference policy, reports, and ``evaluate``."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from TextGuidedSegLib.bundle import load_bundle
from TextGuidedSegLib.cli import main
from TextGuidedSegLib.data.phantom import LABEL_IDS, PhantomConfig, write_phantoms
from TextGuidedSegLib.evaluation import (
    CSV_COLUMNS,
    CaseScore,
    dice_score,
    evaluate,
    read_metrics_csv,
    requested_queries,
    score_masks,
    summarize,
    surface_dice,
)
from TextGuidedSegLib.evaluation.report import summary_table, write_metrics_csv
from TextGuidedSegLib.inference import SegmentationResult, SegmentInfo
from TextGuidedSegLib.io import load_volume
from TextGuidedSegLib.taxonomy import get_taxonomy

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Small phantoms that fit one 64^3 window at the bundle's 6.5 mm: 48 x 48 x 24 voxels (31 x 31 x 16 cm).
PHANTOM_SPACING = 6.5
PHANTOM = PhantomConfig(shape=(48, 48, 24), spacing=(PHANTOM_SPACING,) * 3)
STRUCTURES = ("liver", "spleen", "right_kidney", "left_kidney")


def _cubes() -> tuple[np.ndarray, np.ndarray]:
    """Two 4x4x4 cubes in a 10^3 grid, the second shifted by one voxel along i."""
    a = np.zeros((10, 10, 10), dtype=bool)
    b = a.copy()
    a[2:6, 2:6, 2:6] = True
    b[3:7, 2:6, 2:6] = True
    return a, b


# -- metrics ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ([1, 1, 1, 0, 0], [0, 1, 1, 1, 0], 2 * 2 / (3 + 3)),  # 2 voxels overlap of 3 + 3
        ([1, 1, 1, 1, 0], [0, 1, 1, 0, 0], 2 * 2 / (4 + 2)),  # reference inside the prediction
        ([1, 0, 0, 0, 0], [0, 0, 0, 0, 1], 0.0),  # disjoint
        ([0, 1, 1, 0, 1], [0, 1, 1, 0, 1], 1.0),  # identical
    ],
    ids=["overlap-2-of-3+3", "nested", "disjoint", "identical"],
)
def test_dice_hand_computed(prediction, reference, expected) -> None:
    prediction = np.array(prediction, dtype=np.uint8).reshape(1, 1, -1)
    reference = np.array(reference, dtype=np.uint8).reshape(1, 1, -1)
    assert dice_score(prediction, reference) == pytest.approx(expected, abs=1e-6)


def test_dice_of_shifted_cubes() -> None:
    a, b = _cubes()
    assert dice_score(b, a) == pytest.approx(2 * 48 / (64 + 64))  # 3 of 4 slabs overlap


def test_surface_dice_hand_computed() -> None:
    """Edge voxels of a 4^3 cube: 64 - 2^3 = 56. Shifting by one voxel (2 mm along i) moves one face.

    With a 1 mm tolerance, the 16 voxels of the face that moved are 2 mm from the other boundary (fail);
    every other edge voxel is either on the other boundary or 1 mm from it (j, k spacing 1 mm). So
    NSD = (40 + 40) / (56 + 56) = 0.714. With a 2 mm tolerance, everything passes.
    """
    a, b = _cubes()
    spacing = (2.0, 1.0, 1.0)
    assert surface_dice(b, a, spacing, tolerance_mm=1.0) == pytest.approx(80 / 112, abs=1e-6)
    assert surface_dice(b, a, spacing, tolerance_mm=2.0) == pytest.approx(1.0)
    # the spacing is in mm: the same one-voxel shift at 0.5 mm voxels is within 1 mm
    assert surface_dice(b, a, (0.5, 0.5, 0.5), tolerance_mm=1.0) == pytest.approx(1.0)
    assert surface_dice(a, a, spacing, tolerance_mm=0.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("predicted", "referenced", "expected"),
    [(False, False, 1.0), (True, False, 0.0), (False, True, 0.0)],
    ids=["both-empty", "false-positive", "missed"],
)
def test_empty_mask_policy(predicted: bool, referenced: bool, expected: float) -> None:
    """Both empty -> 1 (a correct "not here"); only one empty -> 0; never NaN."""
    full = np.zeros((6, 6, 6), dtype=bool)
    full[2:4, 2:4, 2:4] = True
    prediction = full if predicted else np.zeros_like(full)
    reference = full if referenced else np.zeros_like(full)
    scores = score_masks(prediction, reference, (1.5, 1.5, 3.0), tolerance_mm=2.0)
    assert scores.dice == expected
    assert scores.nsd == expected
    assert scores.reference_voxels == (8 if referenced else 0)
    assert scores.predicted_voxels == (8 if predicted else 0)


def test_metric_input_errors() -> None:
    a, b = _cubes()
    with pytest.raises(ValueError, match="same grid"):
        dice_score(a, b[:5])
    with pytest.raises(ValueError, match="spacing"):
        surface_dice(a, b, (1.0, 1.0))
    with pytest.raises(ValueError, match="tolerance_mm"):
        surface_dice(a, b, (1.0, 1.0, 1.0), tolerance_mm=-1.0)


def test_requested_queries() -> None:
    taxonomy = get_taxonomy().subset(list(STRUCTURES))
    assert [q.class_name for q in requested_queries(taxonomy, None)] == list(STRUCTURES)
    assert [q.class_name for q in requested_queries(taxonomy, "both kidneys")] == [
        "right_kidney",
        "left_kidney",
    ]
    assert [q.class_name for q in requested_queries(taxonomy, ["spleen", "liver", "spleen"])] == [
        "spleen",
        "liver",
    ]
    with pytest.raises(ValueError, match="'pancreas' is not in the bundle's taxonomy"):
        requested_queries(taxonomy, ["pancreas"])


# -- report -----------------------------------------------------------------------------------------------


def test_summary_and_csv_round_trip(tmp_path: Path) -> None:
    scores = [
        CaseScore("c1", "phantom", "liver", 0.8, 0.9, 1500.0, 1400.0),
        CaseScore("c2", "phantom", "liver", 0.6, 0.7, 1600.0, 1000.0),
        CaseScore("c1", "phantom", "spleen", 1.0, 1.0, 0.0, 0.0),
    ]
    summary = summarize(scores)
    assert list(summary) == ["liver", "spleen"]
    assert summary["liver"].n == 2
    assert summary["liver"].dice_mean == pytest.approx(0.7)
    assert summary["liver"].dice_std == pytest.approx(0.1)  # population std of (0.8, 0.6)
    assert summary["liver"].nsd_mean == pytest.approx(0.8)
    table = summary_table(summary)
    assert "| liver | 2 | 0.700 ± 0.100 | 0.800 ± 0.100 |" in table
    assert table[-1] == "| **mean over structures** | 2 | 0.850 | 0.900 |"
    path = write_metrics_csv(tmp_path / "metrics.csv", scores)
    assert read_metrics_csv(path) == scores


# -- evaluate with an oracle (no network) -----------------------------------------------------------------


class TruthOracle:
    """A stand-in segmenter that answers each query with the phantom's own label map (optionally shifted)."""

    threshold = 0.5

    def __init__(self, shift: int = 0) -> None:
        self.shift = shift
        self.calls: list[list[str]] = []

    def segment(self, volume, prompt) -> SegmentationResult:
        truth = load_volume(Path(volume.source.replace("/images/", "/labels/"))).array.astype(np.uint8)
        labels = np.zeros(truth.shape, dtype=np.uint8)
        for index, query in enumerate(prompt):
            labels[truth == LABEL_IDS[query.class_name]] = index + 1
        labels = np.roll(labels, self.shift, axis=0)
        self.calls.append([q.class_name for q in prompt])
        segments = [
            SegmentInfo(i + 1, q.name, q.class_name, q.prompt, q.text, (0, 0, 0), None, 0, 0.0)
            for i, q in enumerate(prompt)
        ]
        return SegmentationResult(labels=labels, segments=segments, queries=list(prompt))


@pytest.fixture(scope="module")
def phantom_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small phantoms and their list file (images/phantom_00N.nii.gz<TAB>labels/phantom_00N.nii.gz)."""
    return write_phantoms(tmp_path_factory.mktemp("phantoms"), n=2, config=PHANTOM, seed=5, progress=False)


def test_evaluate_with_the_truth_scores_one(tmp_path: Path, phantom_list: Path, make_bundle) -> None:
    bundle = load_bundle(make_bundle(spacing=PHANTOM_SPACING))
    oracle = TruthOracle()
    report = evaluate(bundle, phantom_list, tmp_path / "report", segmenter=oracle, progress=False)
    assert [(s.case, s.structure) for s in report.scores] == [
        (case, structure) for case in ("phantom_000", "phantom_001") for structure in STRUCTURES
    ]
    assert all(s.dice == 1.0 and s.nsd == 1.0 for s in report.scores)
    assert all(s.dataset == "phantom" for s in report.scores)
    assert report.mean_dice == 1.0
    assert oracle.calls == [list(STRUCTURES)] * 2
    voxel_ml = PHANTOM_SPACING**3 / 1000
    truth = np.asarray(nib.load(phantom_list.parent / "labels" / "phantom_000.nii.gz").dataobj)
    liver = next(s for s in report.scores if s.case == "phantom_000" and s.structure == "liver")
    assert liver.reference_ml == pytest.approx(np.count_nonzero(truth == LABEL_IDS["liver"]) * voxel_ml)
    assert liver.predicted_ml == pytest.approx(liver.reference_ml)


def test_evaluate_tolerance_in_mm(tmp_path: Path, phantom_list: Path, make_bundle) -> None:
    """Shift every prediction by one voxel (6.5 mm): NSD is 1 at a 6.5 mm tolerance, lower at 3 mm."""
    bundle = load_bundle(make_bundle(spacing=PHANTOM_SPACING))
    kwargs = {"segmenter": TruthOracle(shift=1), "structures": "liver", "progress": False}
    wide = evaluate(bundle, phantom_list, tmp_path / "wide", nsd_tolerance_mm=PHANTOM_SPACING, **kwargs)
    narrow = evaluate(bundle, phantom_list, tmp_path / "narrow", nsd_tolerance_mm=3.0, **kwargs)
    assert [s.structure for s in wide.scores] == ["liver", "liver"]
    truth = np.asarray(nib.load(phantom_list.parent / "labels" / "phantom_000.nii.gz").dataobj) == 1
    expected = 2 * np.logical_and(np.roll(truth, 1, axis=0), truth).sum() / (2 * truth.sum())
    assert wide.scores[0].dice == pytest.approx(expected, abs=1e-6)
    assert all(s.nsd == pytest.approx(1.0) for s in wide.scores)
    assert all(0.0 < s.nsd < 0.9 for s in narrow.scores)
    assert "NSD tolerance: 3 mm" in (tmp_path / "narrow" / "summary.md").read_text()


# -- evaluate end to end with a tiny random-weight bundle ------------------------------------------------


def test_evaluate_command_end_to_end(tmp_path: Path, phantom_list: Path, make_bundle, caplog) -> None:
    bundle = make_bundle(spacing=PHANTOM_SPACING)
    out = tmp_path / "report"
    args = ["evaluate", "-b", str(bundle), "-l", str(phantom_list), "-o", str(out), "--save-predictions"]
    assert main([*args, "--device", "cpu", "--no-progress", "--overlap", "0"]) == 0
    for name in ("metrics.csv", "summary.md", "dice_boxplot.png"):
        assert (out / name).is_file(), name
    assert (out / "dice_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "metrics.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["case"], r["structure"]) for r in rows] == [
        (case, structure) for case in ("phantom_000", "phantom_001") for structure in STRUCTURES
    ]
    voxel_ml = PHANTOM_SPACING**3 / 1000
    for case in ("phantom_000", "phantom_001"):
        predicted = np.asarray(nib.load(out / "predictions" / f"{case}.nii.gz").dataobj)
        truth = np.asarray(nib.load(phantom_list.parent / "labels" / f"{case}.nii.gz").dataobj)
        assert predicted.shape == truth.shape
        assert (out / "predictions" / f"{case}.json").is_file()
        for label_id, structure in enumerate(STRUCTURES, start=1):
            row = next(r for r in rows if r["case"] == case and r["structure"] == structure)
            assert 0.0 <= float(row["dice"]) <= 1.0
            assert 0.0 <= float(row["nsd"]) <= 1.0
            assert float(row["predicted_ml"]) == pytest.approx(
                np.count_nonzero(predicted == label_id) * voxel_ml, abs=1e-3
            )
            assert float(row["reference_ml"]) == pytest.approx(
                np.count_nonzero(truth == LABEL_IDS[structure]) * voxel_ml, abs=1e-3
            )
    summary = (out / "summary.md").read_text()
    for structure in STRUCTURES:
        assert f"| {structure} | 2 |" in summary


def test_evaluate_totalsegmentator_example(tmp_path: Path, shared_data: Path, make_bundle) -> None:
    """Real CT with TotalSegmentator's labels (dataset "totalseg"), absolute paths in the list file (~5 s)."""
    ct = shared_data / "totalseg" / "example_ct.nii.gz"
    seg = shared_data / "totalseg" / "example_seg_fast_force_split.nii.gz"
    list_file = tmp_path / "cases.txt"
    list_file.write_text(f"{ct}\t{seg}\n")
    bundle = load_bundle(make_bundle(spacing=6.0))  # 122 x 101 x 112 at 3 mm -> one 64^3 window
    report = evaluate(
        bundle, list_file, tmp_path / "report", dataset="totalseg", device="cpu", overlap=0.0, progress=False
    )
    assert [s.structure for s in report.scores] == list(STRUCTURES)
    assert all(s.case == "example_ct" and s.dataset == "totalseg" for s in report.scores)
    assert all(0.0 <= s.dice <= 1.0 and 0.0 <= s.nsd <= 1.0 for s in report.scores)
    raw = np.asarray(nib.load(seg).dataobj)
    voxel_ml = 27.0 / 1000  # 3 mm voxels
    by_name = {s.structure: s for s in report.scores}
    assert by_name["liver"].reference_ml == pytest.approx(np.count_nonzero(raw == 5) * voxel_ml)  # liver 5
    assert by_name["spleen"].reference_ml == pytest.approx(np.count_nonzero(raw == 1) * voxel_ml)  # spleen 1
    assert by_name["right_kidney"].reference_ml > 50 and by_name["left_kidney"].reference_ml > 50
    assert set(report.summary) == set(STRUCTURES)


# -- errors -----------------------------------------------------------------------------------------------


def test_evaluate_errors_name_the_argument(tmp_path: Path, phantom_list: Path, make_bundle, capsys) -> None:
    bundle = str(make_bundle(spacing=PHANTOM_SPACING))
    unlabelled = tmp_path / "unlabelled.txt"
    unlabelled.write_text("images/phantom_000.nii.gz\n")
    cases = [
        (["-l", str(tmp_path / "missing.txt")], "--list"),
        (["-l", str(phantom_list), "--dataset", "nope"], "unknown dataset 'nope'"),
        (["-l", str(phantom_list), "--structures", "aorta"], "structures 'aorta'"),
        (["-l", str(unlabelled), "--data-root", str(phantom_list.parent)], "no label on"),
        (["-l", str(phantom_list), "--nsd-tolerance", "-1"], "--nsd-tolerance"),
    ]
    for extra, message in cases:
        code = main(["evaluate", "-b", bundle, "-o", str(tmp_path / "out"), *extra])
        err = capsys.readouterr().err
        assert code == 2, extra
        assert message in err, (extra, err)
        assert "Traceback" not in err


def test_training_script_runs_the_same_command() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "Training" / "evaluate.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "--list" in completed.stdout and "--save-predictions" in completed.stdout
