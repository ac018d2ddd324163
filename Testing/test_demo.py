"""The demo job and the overlay picture: files, volumes, Dice against the truth, radiological orientation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import StandInModel

from TextGuidedSegLib import demo
from TextGuidedSegLib.bundle import load_bundle
from TextGuidedSegLib.cli import main
from TextGuidedSegLib.data.phantom import LABEL_IDS, PhantomConfig, make_phantom
from TextGuidedSegLib.demo import demo_phantom_config, run_demo, truth_scores
from TextGuidedSegLib.inference import SegmentationOptions, SegmentInfo
from TextGuidedSegLib.taxonomy import get_taxonomy, parse_prompt
from TextGuidedSegLib.visualize import AXIAL_RECT, FIGURE_PX, render_panels, save_overlay

#: The demo at 6.5 mm: a 50 x 50 x 25 phantom, one 64^3 window.
SPACING = 6.5
LIVER_COLOR = get_taxonomy()["liver"].terminology.color


class IntensityStandIn(StandInModel, torch.nn.Module):
    """A stand-in model: every query's logits are a steep function of the windowed intensity (HU > 37.5)."""

    def forward(self, image, text=None, class_indices=None):
        return 40.0 * (image - 0.5).expand(-1, text.shape[1], -1, -1, -1)


def _table_rows(volumes_md: str) -> list[list[str]]:
    """The data rows of the Markdown table in volumes.md, as cells."""
    rows = [line for line in volumes_md.splitlines() if re.match(r"^\| \d+ \|", line)]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_run_demo_on_a_phantom_writes_every_file(tmp_path: Path, make_bundle) -> None:
    """The real pipeline with a tiny random-weight bundle (what ``make demo`` runs, smaller)."""
    result = run_demo(tmp_path / "demo", bundle=make_bundle(spacing=SPACING), device="cpu", progress=False)
    out = tmp_path / "demo"
    for name in (
        "phantom_ct.nii.gz",
        "phantom_truth.nii.gz",
        "segmentation.nii.gz",
        "segmentation.json",
        "overlay.png",
        "volumes.md",
    ):
        assert (out / name).is_file(), name
    ct, seg = nib.load(out / "phantom_ct.nii.gz"), nib.load(out / "segmentation.nii.gz")
    assert seg.shape == ct.shape == demo_phantom_config((SPACING,) * 3).shape
    np.testing.assert_allclose(seg.affine, ct.affine)
    sidecar = json.loads((out / "segmentation.json").read_text())
    assert [s["class_name"] for s in sidecar["segments"]] == [
        "liver",
        "spleen",
        "right_kidney",
        "left_kidney",
    ]
    assert sidecar["prompt"] == demo.DEFAULT_PROMPT and sidecar["label_map"] == "segmentation.nii.gz"

    # volumes: voxel counts of the written label map x voxel volume; truth from the phantom's own labels
    labels = np.asarray(seg.dataobj)
    truth = np.asarray(nib.load(out / "phantom_truth.nii.gz").dataobj)
    voxel_ml = SPACING**3 / 1000
    rows = _table_rows((out / "volumes.md").read_text())
    assert [r[1] for r in rows] == ["Liver", "Spleen", "Right Kidney", "Left Kidney"]
    for row, class_name in zip(rows, ["liver", "spleen", "right_kidney", "left_kidney"], strict=True):
        label_id = int(row[0])
        assert int(row[2]) == np.count_nonzero(labels == label_id)
        assert float(row[3]) == pytest.approx(np.count_nonzero(labels == label_id) * voxel_ml, abs=0.051)
        assert float(row[4]) == pytest.approx(
            np.count_nonzero(truth == LABEL_IDS[class_name]) * voxel_ml, abs=0.051
        )
        assert 0.0 <= float(row[5]) <= 1.0
    assert [round(d, 3) for d in result.dice] == [float(r[5]) for r in rows]
    assert result.table == [
        line for line in (out / "volumes.md").read_text().splitlines() if line.startswith("|")
    ]

    png = matplotlib.image.imread(out / "overlay.png")
    assert png.shape[:2] == (FIGURE_PX[1], FIGURE_PX[0])
    assert png[..., :3].std() > 0.05  # the CT is there, not a blank picture


def test_demo_overlay_shows_the_segments_in_their_colours(tmp_path: Path, make_bundle) -> None:
    """With a stand-in model that segments soft tissue, the overlay carries the liver's outline colour."""
    bundle = load_bundle(make_bundle(spacing=SPACING))
    bundle.model = IntensityStandIn(bundle.model.config)
    result = run_demo(tmp_path, bundle=bundle, prompt="liver", device="cpu", progress=False)
    assert result.segments[0].voxels > 0
    png = (matplotlib.image.imread(result.overlay)[..., :3] * 255).round().astype(int)
    assert np.count_nonzero(np.abs(png - LIVER_COLOR).max(axis=-1) <= 2) > 200


def test_truth_scores_of_the_truth_are_one() -> None:
    phantom = make_phantom(PhantomConfig(shape=(40, 40, 20), spacing=(8.0, 8.0, 8.0), seed=1))
    queries = parse_prompt("spleen, liver and esophagus", get_taxonomy())
    labels = np.zeros_like(phantom.labels)
    labels[phantom.labels == LABEL_IDS["spleen"]] = 1
    labels[phantom.labels == LABEL_IDS["liver"]] = 2
    dice, truth_ml = truth_scores(labels, queries, phantom.labels, phantom.affine)
    assert dice == [1.0, 1.0, None]  # the phantom has no oesophagus
    assert truth_ml[0] == pytest.approx(np.count_nonzero(phantom.labels == LABEL_IDS["spleen"]) * 0.512)
    labels[labels == 1] = 0  # the spleen missed entirely
    assert truth_scores(labels, queries, phantom.labels, phantom.affine)[0][:2] == [0.0, 1.0]


def test_demo_phantom_covers_the_field_of_view() -> None:
    config = demo_phantom_config((3.0, 3.0, 3.0), seed=4)
    assert config.shape == (107, 107, 54) and config.seed == 4
    assert demo_phantom_config((2.5, 2.5, 2.5)).shape == PhantomConfig().shape


def test_missing_default_bundle_says_how_to_get_one(tmp_path: Path, monkeypatch, capsys) -> None:
    missing = tmp_path / "resources" / "demo_bundle"
    monkeypatch.setattr(demo, "DEFAULT_DEMO_BUNDLE", missing)
    with pytest.raises(FileNotFoundError, match="Training/train.py") as error:
        run_demo(tmp_path / "out", bundle=missing)
    assert "--bundle" in str(error.value) and str(missing) in str(error.value)
    assert main(["demo", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "demo bundle" in err and "export_bundle.py" in err and "Traceback" not in err


def test_demo_command_passes_its_options(tmp_path: Path, monkeypatch, capsys) -> None:
    """The CLI wiring, with run_demo replaced by a recorder."""
    calls = {}

    def fake_run_demo(output_dir, **kwargs):
        calls.update(kwargs, output_dir=output_dir)
        segment = SegmentInfo(1, "Liver", "liver", "p", "liver", LIVER_COLOR, None, 10, 0.27)
        return demo.DemoResult(
            output_dir=Path(output_dir),
            input=Path("ct.nii.gz"),
            truth=None,
            segmentation=Path("s.nii.gz"),
            sidecar=Path("s.json"),
            overlay=Path("o.png"),
            volumes=Path("v.md"),
            segments=[segment],
            table=demo.volume_table([segment]),
            seconds=1.0,
        )

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    bundle = tmp_path / "b.zip"
    bundle.touch()  # --bundle is resolved (a path, registry or installed name) before the demo runs
    monkeypatch.chdir(tmp_path)
    Path("ct.nii.gz").touch()  # --input and -o are checked before the demo runs
    args = ["demo", "-o", str(tmp_path / "out"), "--input", "ct.nii.gz", "-p", "liver", "-b", str(bundle)]
    args += ["--seed", "3", "--precision", "bfloat16"]
    assert main([*args, "--device", "cpu", "--overlap", "0.25", "--no-progress"]) == 0
    assert calls == {
        "output_dir": str(tmp_path / "out"),
        "bundle": bundle,
        "input": "ct.nii.gz",
        "prompt": "liver",
        "seed": 3,
        "options": SegmentationOptions(device="cpu", overlap=0.25, precision="bfloat16"),
        "progress": False,
        "overwrite": False,
    }
    assert "| 1 | Liver | 10 | 0.3 |" in capsys.readouterr().out


# -- the overlay picture ----------------------------------------------------------------------------------


def _right_anterior_superior_box() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 40 x 30 x 20 RAS volume (2 x 2 x 4 mm) with a box on the patient's right, anterior, superior."""
    image = np.full((40, 30, 20), 40.0, dtype=np.float32)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[28:36, 18:26, 12:18] = 1  # large x = Right, large y = Anterior, large z = Superior
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    return image, labels, affine


SEGMENT = SegmentInfo(1, "Liver", "liver", "p", "liver", LIVER_COLOR, None, 0, 0.0)


def _colour_pixels(rgb: np.ndarray, color) -> tuple[np.ndarray, np.ndarray]:
    return np.nonzero(np.abs(rgb.astype(int) - np.asarray(color)).max(axis=-1) <= 2)


def test_panels_are_radiological() -> None:
    image, labels, affine = _right_anterior_superior_box()
    panels = render_panels(image, labels, affine, [SEGMENT])
    height, width = panels.axial.shape[:2]
    assert height * 80 == pytest.approx(width * 60, rel=0.02)  # 80 mm x 60 mm field in square pixels
    rows, cols = _colour_pixels(panels.axial, LIVER_COLOR)
    assert len(rows) > 0
    assert cols.max() < width / 2  # patient's right on the image's left
    assert rows.max() < height / 2  # anterior up
    rows, cols = _colour_pixels(panels.coronal, LIVER_COLOR)
    assert cols.max() < width / 2 and rows.max() < panels.coronal.shape[0] / 2  # superior up
    # outlines only: the box's inside keeps the CT's grey
    centre_row, centre_col = int(rows.mean()), int(cols.mean())
    assert tuple(panels.coronal[centre_row, centre_col]) != tuple(LIVER_COLOR)


def test_panels_do_not_depend_on_the_voxel_order() -> None:
    """The same patient stored LPS (i to the Left, j Posterior) gives the same pictures as stored RAS."""
    image, labels, affine = _right_anterior_superior_box()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [(image.shape[0] - 1), (image.shape[1] - 1)]  # voxel (i, j, k) -> (I-1-i, J-1-j, k)
    lps_affine = affine @ flip
    ras = render_panels(image, labels, affine, [SEGMENT])
    lps = render_panels(image[::-1, ::-1], labels[::-1, ::-1], lps_affine, [SEGMENT])
    np.testing.assert_array_equal(ras.axial, lps.axial)
    np.testing.assert_array_equal(ras.coronal, lps.coronal)


def test_overlay_png_has_the_structure_on_the_left_of_the_axial_panel(tmp_path: Path) -> None:
    image, labels, affine = _right_anterior_superior_box()
    path = save_overlay(tmp_path / "overlay.png", image, labels, affine, [SEGMENT], title="test")
    png = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int)
    assert png.shape[:2] == (FIGURE_PX[1], FIGURE_PX[0])
    left, bottom, width, height = AXIAL_RECT
    x0, x1 = int(left * FIGURE_PX[0]), int((left + width) * FIGURE_PX[0])
    y0, y1 = int((1 - bottom - height) * FIGURE_PX[1]), int((1 - bottom) * FIGURE_PX[1])
    rows, cols = _colour_pixels(png[y0:y1, x0:x1], LIVER_COLOR)
    assert len(cols) > 20
    assert cols.max() < (x1 - x0) / 2  # patient's right: the left half of the axial panel
    assert rows.max() < (y1 - y0) / 2  # anterior: the upper half
