"""Tests of the procedural abdominal CT phantom (TextGuidedSegLib.data.phantom).

World coordinates are RAS+ (nibabel's convention): the affine maps voxel (i, j, k) to (x, y, z) mm with +x
towards the patient's Right, +y Anterior and +z Superior. So a structure on the patient's right side has a
world centroid with x > 0, one on the left x < 0.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time

import nibabel as nib
import numpy as np
import pytest

from TextGuidedSegLib.data.phantom import (
    LABEL_IDS,
    LABEL_NAMES,
    TISSUES,
    Phantom,
    PhantomConfig,
    case_seed,
    make_phantom,
    write_phantoms,
)

# Plausible volumes (mL) of each structure inside the default 32 x 32 x 16 cm field of view (upper abdomen).
VOLUME_RANGES_ML = {
    "liver": (800, 2500),
    "spleen": (80, 400),
    "right_kidney": (80, 300),
    "left_kidney": (80, 300),
    "stomach": (50, 800),
    "pancreas": (20, 150),
    "gallbladder": (10, 120),
    "aorta": (20, 200),
    "inferior_vena_cava": (20, 200),
    "vertebra": (100, 600),
}
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def phantoms() -> dict[int, Phantom]:
    """Default-config phantoms for a few seeds, made once for the module."""
    return {seed: make_phantom(PhantomConfig(seed=seed)) for seed in SEEDS}


def world_centroid(phantom: Phantom, class_name: str) -> np.ndarray:
    """(3,) RAS mm centroid of a structure's voxels, through the phantom's affine."""
    ijk = np.argwhere(phantom.labels == LABEL_IDS[class_name]).mean(axis=0)
    return phantom.affine[:3, :3] @ ijk + phantom.affine[:3, 3]


def test_same_seed_same_phantom_and_different_seeds_differ(phantoms):
    again = make_phantom(PhantomConfig(seed=0))
    np.testing.assert_array_equal(again.image, phantoms[0].image)
    np.testing.assert_array_equal(again.labels, phantoms[0].labels)
    np.testing.assert_array_equal(again.affine, phantoms[0].affine)
    other = phantoms[1]
    assert not np.array_equal(other.labels, phantoms[0].labels)
    # different patients, not just different noise: the label maps disagree on a sizeable part of the body
    differ = (other.labels != phantoms[0].labels) & ((other.labels > 0) | (phantoms[0].labels > 0))
    assert differ.sum() > 0.2 * (phantoms[0].labels > 0).sum()


def test_arrays_grid_and_label_map(phantoms):
    phantom = phantoms[0]
    assert phantom.image.shape == phantom.labels.shape == (128, 128, 64)
    assert phantom.image.dtype == np.int16 and phantom.labels.dtype == np.uint8
    assert phantom.label_names == LABEL_NAMES
    assert set(LABEL_NAMES.values()) == set(LABEL_IDS) and len(LABEL_NAMES) == 10
    # one label per voxel: every id in the map is background or a named structure, and all are present
    assert set(np.unique(phantom.labels).tolist()) == {0, *LABEL_NAMES}
    np.testing.assert_allclose(np.diag(phantom.affine)[:3], (2.5, 2.5, 2.5))
    centre = phantom.affine @ np.array([*(np.array(phantom.image.shape) - 1) / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)  # the volume is centred on the world origin
    assert -1024 <= phantom.image.min() and phantom.image.max() <= 3071


@pytest.mark.parametrize("seed", SEEDS)
def test_structure_volumes_are_plausible(phantoms, seed):
    phantom = phantoms[seed]
    volumes = phantom.volumes_ml()
    counts = {name: int((phantom.labels == LABEL_IDS[name]).sum()) for name in LABEL_IDS}
    for name, (low, high) in VOLUME_RANGES_ML.items():
        assert volumes[name] == pytest.approx(counts[name] * 2.5**3 / 1000)
        assert low <= volumes[name] <= high, (
            f"seed {seed}: {name} {volumes[name]:.0f} mL not in [{low}, {high}]"
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_hu_of_structures_venous_phase(phantoms, seed):
    phantom = phantoms[seed]

    def mean_hu(name: str) -> float:
        return float(phantom.image[phantom.labels == LABEL_IDS[name]].mean())

    venous = {name: values[1] for name, values in TISSUES.items()}
    assert abs(mean_hu("liver") - venous["liver"]) < 30  # nominal 100 HU, portal-venous
    assert abs(mean_hu("spleen") - venous["spleen"]) < 30
    assert abs(mean_hu("aorta") - venous["aorta"]) < 45
    assert abs(mean_hu("inferior_vena_cava") - venous["inferior_vena_cava"]) < 40
    assert abs(mean_hu("gallbladder") - venous["gallbladder"]) < 30  # bile
    assert 90 < mean_hu("right_kidney") < 190 and 90 < mean_hu("left_kidney") < 190  # cortex 160, medulla 120
    assert mean_hu("vertebra") > 300  # cortical 700 / cancellous 250
    assert mean_hu("aorta") > mean_hu("inferior_vena_cava") > mean_hu("gallbladder")


def test_native_phase_liver_hu():
    phantom = make_phantom(PhantomConfig(seed=0, phase="native"))
    liver = float(phantom.image[phantom.labels == LABEL_IDS["liver"]].mean())
    aorta = float(phantom.image[phantom.labels == LABEL_IDS["aorta"]].mean())
    assert abs(liver - TISSUES["liver"][0]) < 30  # nominal 60 HU without contrast
    assert aorta < 90  # unenhanced blood, ~45 HU


@pytest.mark.parametrize("seed", SEEDS)
def test_anatomical_sides_and_layout_in_ras(phantoms, seed):
    """RAS+: x > 0 is the patient's right, y > 0 anterior, z > 0 superior."""
    phantom = phantoms[seed]
    c = {name: world_centroid(phantom, name) for name in LABEL_IDS}
    x, y = 0, 1
    assert c["liver"][x] > 20, "the liver lies on the patient's right (RAS x > 0)"
    assert c["spleen"][x] < -40, "the spleen lies on the patient's left (RAS x < 0)"
    assert c["right_kidney"][x] > 30 and c["left_kidney"][x] < -30
    assert c["stomach"][x] < 0 and c["gallbladder"][x] > 0
    assert c["inferior_vena_cava"][x] > 0 > c["aorta"][x], "IVC right of midline, aorta left of it"
    assert abs(c["vertebra"][x]) < 10, "the spine is on the midline"
    assert c["vertebra"][y] < c["aorta"][y] < c["pancreas"][y], "spine, then aorta, then pancreas, anteriorly"
    assert c["right_kidney"][y] < c["liver"][y] and c["left_kidney"][y] < c["stomach"][y]
    assert c["spleen"][y] < c["stomach"][y], "the spleen is posterior to the stomach"


def test_anisotropic_spacing_gives_the_same_patient(phantoms):
    config = PhantomConfig(shape=(200, 200, 32), spacing=(1.6, 1.6, 5.0), seed=0)
    phantom = make_phantom(config)
    assert phantom.image.shape == (200, 200, 32)
    np.testing.assert_allclose(np.diag(phantom.affine)[:3], (1.6, 1.6, 5.0))
    np.testing.assert_allclose(np.abs(nib.affines.voxel_sizes(phantom.affine)), (1.6, 1.6, 5.0))
    assert nib.aff2axcodes(phantom.affine) == ("R", "A", "S")
    assert set(np.unique(phantom.labels).tolist()) == {0, *LABEL_NAMES}
    # the anatomy is defined in mm: the same seed on another grid is the same patient
    iso, aniso = phantoms[0].volumes_ml(), phantom.volumes_ml()
    for name in LABEL_IDS:
        assert aniso[name] == pytest.approx(iso[name], rel=0.1), name
        np.testing.assert_allclose(world_centroid(phantom, name), world_centroid(phantoms[0], name), atol=4.0)


def test_background_is_air_with_the_requested_noise(phantoms):
    image = phantoms[0].image
    corner = image[:12, :12, :].astype(np.float64)  # outside the body in every slice
    assert corner.mean() == pytest.approx(-1000, abs=2)
    assert corner.std() == pytest.approx(15, rel=0.2)
    quiet = make_phantom(PhantomConfig(seed=0, noise_hu=0))
    assert (quiet.image[:12, :12, :] == -1000).all()
    np.testing.assert_array_equal(quiet.labels, phantoms[0].labels)  # the noise does not move the anatomy
    no_bowel = make_phantom(PhantomConfig(seed=0, bowel=False))  # same patient, without the distractors
    np.testing.assert_array_equal(no_bowel.labels, phantoms[0].labels)
    assert (no_bowel.image < -900).sum() < (image < -900).sum()  # less bowel gas
    # fat inside the body is darker than soft tissue, brighter than air
    inside = phantoms[0].labels > 0
    assert -1000 < np.median(image[~inside & (image > -500)]) < 0 < np.median(image[inside])


def test_config_validation():
    with pytest.raises(ValueError, match="shape"):
        PhantomConfig(shape=(64, 64))
    with pytest.raises(ValueError, match="spacing"):
        PhantomConfig(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="noise_hu"):
        PhantomConfig(noise_hu=-1)
    with pytest.raises(ValueError, match="phase must be one of"):
        PhantomConfig(phase="arterial")
    config = PhantomConfig(shape=[96, 96, 48], spacing=[3, 3, 3], seed=5)
    assert config.shape == (96, 96, 48) and config.spacing == (3.0, 3.0, 3.0)
    assert PhantomConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown PhantomConfig keys"):
        PhantomConfig.from_dict({"shape": [8, 8, 8], "voxel": 1})


def test_write_phantoms_files_reload_identically(tmp_path):
    config = PhantomConfig(shape=(64, 64, 32), spacing=(5.0, 5.0, 5.0))
    list_path = write_phantoms(tmp_path / "set", n=2, config=config, seed=7, progress=False)
    assert list_path == tmp_path / "set" / "phantom.txt"
    lines = list_path.read_text().splitlines()
    assert lines == [
        "images/phantom_000.nii.gz\tlabels/phantom_000.nii.gz",
        "images/phantom_001.nii.gz\tlabels/phantom_001.nii.gz",
    ]
    assert all(
        re.fullmatch(r"images/phantom_\d{3}\.nii\.gz\tlabels/phantom_\d{3}\.nii\.gz", line) for line in lines
    )
    assert json.loads((tmp_path / "set" / "labels.json").read_text()) == {
        str(k): v for k, v in LABEL_NAMES.items()
    }
    manifest = json.loads((tmp_path / "set" / "phantoms.json").read_text())
    assert manifest["case_seeds"] == [case_seed(7, 0), case_seed(7, 1)]

    for index, line in enumerate(lines):
        image_rel, label_rel = line.split("\t")
        expected = make_phantom(dataclasses.replace(config, seed=case_seed(7, index)))
        image = nib.load(tmp_path / "set" / image_rel)
        labels = nib.load(tmp_path / "set" / label_rel)
        assert image.get_data_dtype() == np.int16 and labels.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asanyarray(image.dataobj), expected.image)
        np.testing.assert_array_equal(np.asanyarray(labels.dataobj), expected.labels)
        np.testing.assert_allclose(image.affine, expected.affine, atol=1e-5)
        np.testing.assert_allclose(labels.affine, expected.affine, atol=1e-5)
        assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1

    # the set is reproducible, and its first cases do not depend on its size
    first = nib.load(tmp_path / "set" / "images" / "phantom_000.nii.gz").get_fdata()
    write_phantoms(tmp_path / "one", n=1, config=config, seed=7, list_name="train.txt", progress=False)
    np.testing.assert_array_equal(
        nib.load(tmp_path / "one" / "images" / "phantom_000.nii.gz").get_fdata(), first
    )
    assert (tmp_path / "one" / "train.txt").read_text().count("\n") == 1
    with pytest.raises(ValueError, match="n must be a positive"):
        write_phantoms(tmp_path / "none", n=0, config=config)


def test_one_phantom_is_fast():
    make_phantom(PhantomConfig(seed=11))  # warm-up: imports, allocator
    start = time.perf_counter()
    make_phantom(PhantomConfig(seed=12))
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"one 128x128x64 phantom took {elapsed:.2f} s (typically ~0.5 s on one core)"


def test_render_slices_to_png(phantoms, tmp_path):
    """Visual check: one axial and one coronal slice with the labels outlined (needs matplotlib)."""
    plt = pytest.importorskip("matplotlib.pyplot", reason="matplotlib is not installed")
    phantom = phantoms[0]
    k = phantom.image.shape[2] // 2
    j = int(round((-40 - phantom.affine[1, 3]) / phantom.affine[1, 1]))  # coronal plane through the kidneys
    figure, axes = plt.subplots(1, 2, figsize=(8, 4))
    # radiological display: patient's right (+x, high i) on the viewer's left, anterior / superior up
    for axis, image, labels in (
        (axes[0], phantom.image[::-1, :, k].T, phantom.labels[::-1, :, k].T),
        (axes[1], phantom.image[::-1, j, :].T, phantom.labels[::-1, j, :].T),
    ):
        axis.imshow(image, cmap="gray", vmin=-160, vmax=240, origin="lower")
        axis.contour(labels, levels=np.arange(0.5, 11), linewidths=0.5, origin="lower")
        axis.set_axis_off()
    path = tmp_path / "phantom_slices.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    assert path.stat().st_size > 1000


def test_phantoms_command_writes_the_same_set_as_the_library(tmp_path) -> None:
    from TextGuidedSegLib.cli import main

    args = [
        "phantoms",
        "-o",
        str(tmp_path / "cli"),
        "-n",
        "2",
        "--seed",
        "7",
        "--shape",
        "48",
        "48",
        "24",
        "--spacing",
        "5",
        "5",
        "5",
        "--no-progress",
    ]
    assert main(args) == 0
    config = PhantomConfig(shape=(48, 48, 24), spacing=(5.0, 5.0, 5.0))
    write_phantoms(tmp_path / "lib", 2, config, seed=7, progress=False)
    lines = (tmp_path / "cli" / "phantom.txt").read_text().splitlines()
    assert lines == (tmp_path / "lib" / "phantom.txt").read_text().splitlines()
    for line in lines:
        for relative in line.split("\t"):
            cli = nib.load(tmp_path / "cli" / relative)
            lib = nib.load(tmp_path / "lib" / relative)
            np.testing.assert_array_equal(np.asarray(cli.dataobj), np.asarray(lib.dataobj))
    assert main(["phantoms", "-o", str(tmp_path / "bad"), "-n", "0"]) == 2
