"""Provenance: the sidecar alone reproduces a run, ``result.save`` writes what the CLI writes, and a bundle
not fit for real CT says so on a real CT (log, sidecar, ``volumes.md``, overlay title) and not on a phantom.

Random-weight bundles (``make_bundle``) at 6.5 mm keep runs to one 64^3 window; the caveat is checked with
the shipped demo bundle on a crop of the shared abdominal CT (the caveat does not depend on the crop).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import monai
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image

from TextGuidedSegLib import __version__
from TextGuidedSegLib.bundle import BundleConfig, BundleError, load_bundle
from TextGuidedSegLib.cli import main
from TextGuidedSegLib.data.phantom import PhantomConfig, make_phantom
from TextGuidedSegLib.demo import DEFAULT_DEMO_BUNDLE, run_demo
from TextGuidedSegLib.inference import SegmentationOptions, Segmenter
from TextGuidedSegLib.inference.provenance import SHORT_CAVEATS, fitness_warnings, is_phantom
from TextGuidedSegLib.io import Volume, load_volume

SPACING = 6.5
PROMPT = "liver and spleen"
#: Not the defaults: each changes the label map.
OPTIONS = SegmentationOptions(device="cpu", overlap=0.25, largest_component=True, threshold=0.4)


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small phantom saved by ``Phantom.save`` (carries the phantom marker) and the same voxels without."""
    folder = tmp_path_factory.mktemp("phantom")
    phantom = make_phantom(PhantomConfig(shape=(48, 48, 24), spacing=(SPACING,) * 3, seed=2))
    marked = folder / "phantom_ct.nii.gz"
    phantom.save(marked, folder / "phantom_truth.nii.gz")
    plain = folder / "plain_ct.nii.gz"
    nib.save(nib.Nifti1Image(phantom.image, phantom.affine), plain)
    return marked, plain


@pytest.fixture(scope="module")
def real_ct_crop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The central 50 x 50 x 30 voxels (150 x 150 x 90 mm) of the shared abdominal CT, a real CT."""
    image = nib.load(shared_path("totalseg", "example_ct_sm.nii.gz"))
    crop = image.slicer[36:86, 25:75, :]
    path = tmp_path_factory.mktemp("real") / "abdomen_crop.nii.gz"
    nib.save(crop, path)
    return path


@pytest.mark.slow
def test_the_sidecar_alone_reproduces_a_run(tmp_path: Path, make_bundle, phantom_files) -> None:
    _marked, ct = phantom_files
    bundle = load_bundle(make_bundle(spacing=SPACING))
    result = Segmenter(bundle, OPTIONS, progress=False).segment(load_volume(ct), PROMPT)
    files = result.save(tmp_path / "seg.nii.gz")
    sidecar = json.loads(files.sidecar.read_text())

    assert sidecar["format_version"] == 2 and sidecar["label_map"] == "seg.nii.gz"
    assert sidecar["options"] == OPTIONS.to_dict()
    assert sidecar["settings"] == {
        "overlap": 0.25,
        "threshold": 0.4,
        "sw_batch_size": 1,
        "roi_size": [64, 64, 64],
        "blend_mode": "gaussian",
        "padding_mode": "constant",
    }
    assert sidecar["runtime"] == {
        "device": "cpu",
        "precision": "float32",
        "textguidedseg": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": sidecar["runtime"]["python"],
    }
    assert sidecar["input"] == {
        "path": str(ct),
        "shape": [48, 48, 24],
        "spacing": [SPACING] * 3,
        "phantom": False,
    }
    assert [q["class_name"] for q in sidecar["queries"]] == ["liver", "spleen"]
    assert len(sidecar["bundle"]["sha256"]) == 64 and sidecar["bundle"]["intended_use"] == "research"

    # only the sidecar: options, bundle (checked against its sha256), input and prompt
    again_bundle = load_bundle(sidecar["bundle"]["source"])
    assert again_bundle.sha256 == sidecar["bundle"]["sha256"]
    options = SegmentationOptions.from_dict(sidecar["options"])
    again = Segmenter(again_bundle, options, progress=False).segment(
        load_volume(sidecar["input"]["path"]), sidecar["prompt"]
    )
    written = np.asarray(nib.load(files.label_map).dataobj)
    np.testing.assert_array_equal(again.labels, written)
    assert np.count_nonzero(written) > 0
    # the options matter: the bundle's defaults give another label map
    default = Segmenter(again_bundle, device="cpu", progress=False).segment(load_volume(ct), PROMPT)
    assert not np.array_equal(default.labels, written)


@pytest.mark.slow
def test_result_save_writes_what_the_cli_writes(tmp_path: Path, make_bundle, phantom_files) -> None:
    _marked, ct = phantom_files
    path = make_bundle(spacing=SPACING)
    flags = ["--overlap", "0.25", "--threshold", "0.4", "--largest-component", "--probabilities"]
    cli = tmp_path / "cli" / "seg.nii.gz"
    argv = ["segment", str(ct), "-p", PROMPT, "-b", str(path), "-o", str(cli), "--device", "cpu"]
    assert main([*argv, "--no-progress", *flags]) == 0
    options = OPTIONS.replace(probabilities=True)
    result = Segmenter(load_bundle(path), options, progress=False).segment(load_volume(ct), PROMPT)
    files = result.save(tmp_path / "api" / "seg.nii.gz")

    cli_names = sorted(p.name for p in cli.parent.iterdir())
    assert cli_names == sorted(p.name for p in files.label_map.parent.iterdir())
    assert len(cli_names) == 4  # label map, sidecar, two probability maps
    for name in cli_names:
        if name.endswith(".json"):
            assert json.loads((cli.parent / name).read_text()) == json.loads(files.sidecar.read_text())
        else:
            np.testing.assert_array_equal(
                np.asarray(nib.load(cli.parent / name).dataobj),
                np.asarray(nib.load(files.label_map.parent / name).dataobj),
            )


def test_a_result_without_its_volume_cannot_be_saved(tmp_path: Path, make_bundle, phantom_files) -> None:
    bundle = load_bundle(make_bundle(spacing=SPACING))
    result = Segmenter(bundle, device="cpu", progress=False).segment(load_volume(phantom_files[0]), "liver")
    result.volume = None
    with pytest.raises(ValueError, match="holds no input volume"):
        result.save(tmp_path / "seg.nii.gz")


# -- what a bundle is fit for ------------------------------------------------------------------------------


def test_phantoms_carry_their_marker(phantom_files) -> None:
    marked, plain = phantom_files
    assert is_phantom(load_volume(marked)) and not is_phantom(load_volume(plain))
    assert not is_phantom(Volume(np.zeros((2, 2, 2)), np.eye(4)))  # built in memory: counts as real


@pytest.mark.parametrize("use", ["phantom", "synthetic", "research", "published"])
def test_fitness_warnings_by_intended_use(use: str, phantom_files) -> None:
    marked, plain = phantom_files
    warnings = fitness_warnings("b", use, load_volume(plain))
    assert fitness_warnings("b", use, load_volume(marked)) == []
    assert len(warnings) == (0 if use == "published" else 1)
    if use == "phantom":
        assert "trained on procedural phantoms only" in warnings[0] and str(plain) in warnings[0]
    if use == "research":
        assert "research model, not validated" in warnings[0]


def test_intended_use_is_validated_and_old_bundles_are_migrated(make_bundle, caplog) -> None:
    path = make_bundle()
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == 2 and config["intended_use"] == "research"
    with pytest.raises(BundleError, match="intended_use must be one of phantom, synthetic"):
        BundleConfig.from_dict({**config, "intended_use": "clinical"})
    old = {k: v for k, v in config.items() if k != "intended_use"}
    with caplog.at_level(logging.WARNING, logger="TextGuidedSegLib.bundle"):
        assert BundleConfig.from_dict({**old, "format_version": 1}).intended_use == "research"
        described = {**old, "format_version": 1, "description": "film_v1 trained on phantom.txt"}
        assert BundleConfig.from_dict(described).intended_use == "phantom"
    assert "bundle format 1 is older than the current 2" in caplog.text
    assert load_bundle(DEFAULT_DEMO_BUNDLE).config.intended_use == "phantom"


def test_the_demo_bundle_on_a_real_ct_says_so_everywhere(tmp_path: Path, real_ct_crop, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="TextGuidedSegLib.inference.segmenter"):
        result = run_demo(tmp_path, input=real_ct_crop, device="cpu", overlap=0.0, progress=False)
    (warning,) = result.warnings
    assert "trained on procedural phantoms only" in warning and "not a segmentation" in warning
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [warning]
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["warnings"] == [warning] and sidecar["bundle"]["intended_use"] == "phantom"
    assert sidecar["input"]["phantom"] is False
    volumes = result.volumes.read_text()
    assert f"> **Warning:** {warning}" in volumes
    assert "trained on procedural CT phantoms only" in volumes  # the bundle line says what it is fit for
    title = Image.open(result.overlay).text["Title"]
    assert title.startswith(SHORT_CAVEATS["phantom"]) and "demo_phantom_film_v1" in title


@pytest.mark.slow
def test_the_demo_bundle_on_a_phantom_has_no_caveat(tmp_path: Path, phantom_files, caplog) -> None:
    marked, _plain = phantom_files
    bundle = load_bundle(DEFAULT_DEMO_BUNDLE)
    with caplog.at_level(logging.WARNING, logger="TextGuidedSegLib.inference.segmenter"):
        result = run_demo(tmp_path, bundle=bundle, input=marked, device="cpu", overlap=0.0, progress=False)
    assert result.warnings == [] and caplog.records == []
    assert json.loads(result.sidecar.read_text())["warnings"] == []
    assert "Warning" not in result.volumes.read_text()
    assert "NOT VALID" not in Image.open(result.overlay).text["Title"]
