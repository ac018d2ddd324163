"""Headless tests of the Qt-free rules behind the Slicer GUI fixes of issue 11 (on slicer-core's MRML).

Enter with an open completion popup, writing results after a scene close, the parameter node's ModuleName
after a scene reset, the dependency installer's constraints and restart decision, the sample data manifest
and the masking self-test's "patient's right half". The Qt wiring is tested in Slicer
(``TextGuidedSegUI/selftests.py``).
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

slicer = pytest.importorskip(
    "slicer", reason="slicer-core (Kitware's headless MRML build: pip install slicer-core) is not installed"
)
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip(
        "the installed 'slicer' package has no MRML classes (install slicer-core)", allow_module_level=True
    )

MODULE_DIR = REPO_ROOT / "TextGuidedSeg"
SAMPLE_FOLDER = MODULE_DIR / "Resources" / "SampleData"


@pytest.fixture(scope="module", autouse=True)
def module_path():
    sys.path.insert(0, str(MODULE_DIR))
    yield
    sys.path.remove(str(MODULE_DIR))


# -- Enter and scene close --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("popup", "prompt", "running", "applies"),
    [
        (True, "liver and spl", False, False),  # Enter picks the completion
        (False, "liver and spleen", False, True),
        (False, "   ", False, False),
        (False, "liver", True, False),  # a job runs already
        (True, "", False, False),
    ],
)
def test_enter_applies_only_with_the_popup_closed(popup, prompt, running, applies):
    from TextGuidedSegLogic.interaction import enter_applies

    assert enter_applies(popup, prompt, running) is applies


def test_results_are_not_written_after_the_scene_closed():
    from TextGuidedSegLogic.interaction import can_write_results

    assert can_write_results(True, True) is None
    assert can_write_results(False, True) == "the scene was closed while segmenting: nothing was written"
    assert (
        can_write_results(True, False) == "the input volume was removed while segmenting: nothing was written"
    )


def test_parameter_node_gets_module_name_back_after_scene_reset(monkeypatch):
    from TextGuidedSegLogic.logic import MODULE_NAME, TextGuidedSegLogic

    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    logic = TextGuidedSegLogic()
    node = logic.getParameterNode()
    node.SetParameter("prompt", "liver")
    assert node.GetAttribute("ModuleName") == MODULE_NAME
    scene.Clear(0)  # what File > Close Scene does: singletons stay, reset to their defaults
    kept = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
    assert kept is not None and kept.GetAttribute("ModuleName") is None  # the defect's precondition
    again = logic.getParameterNode()
    assert again.GetID() == node.GetID()
    assert again.GetAttribute("ModuleName") == MODULE_NAME
    assert scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 1


# -- dependency installer ---------------------------------------------------------------------------------


def test_constraints_pin_everything_installed_except_what_is_installed_now():
    from TextGuidedSegLogic.dependencies import constraints_text

    installed = {"numpy": "1.26.4", "SimpleITK": "2.4.0", "torch": "2.5.1+cu121", "MONAI": "1.3.0"}
    text = constraints_text(installed, upgrading=["monai", "einops"])
    assert text == "numpy==1.26.4\nsimpleitk==2.4.0\ntorch==2.5.1+cu121\n"


def test_constraints_from_this_python_pin_numpy_at_its_version():
    import importlib.metadata

    from TextGuidedSegLogic.dependencies import constraints_text, installed_versions

    lines = constraints_text(installed_versions(), upgrading=["monai"]).splitlines()
    assert f"numpy=={importlib.metadata.version('numpy')}" in lines
    assert not any(line.startswith("monai==") for line in lines)
    assert all(line.count("==") == 1 for line in lines)


def test_pip_arguments_carry_the_constraints_file_and_never_torch():
    from TextGuidedSegLogic.dependencies import REQUIREMENTS, TORCH, MissingRequirement, pip_install_arguments

    monai = next(r for r in REQUIREMENTS if r.distribution == "monai")
    missing = [MissingRequirement(TORCH, None), MissingRequirement(monai, "1.3.0")]
    assert pip_install_arguments(missing, "/tmp/c.txt") == ["monai>=1.5", "-c", "/tmp/c.txt"]
    assert pip_install_arguments([MissingRequirement(TORCH, None)], "/tmp/c.txt") == []


def test_restart_is_needed_only_for_changed_packages_that_were_imported():
    from TextGuidedSegLogic.dependencies import packages_needing_restart

    before = {"torch": "2.4.0", "numpy": "1.26.4", "monai": "1.3.0"}
    after = {"torch": "2.5.1", "numpy": "1.26.4", "monai": "1.5.0", "einops": "0.8.0"}
    modules = {"torch": {"torch"}, "numpy": {"numpy"}, "monai": {"monai"}, "einops": {"einops"}}
    imported = ["torch", "torch.nn", "numpy", "einops"]  # monai was never imported; einops is new
    assert packages_needing_restart(before, after, imported, modules) == [
        "einops (none) -> 0.8.0",
        "torch 2.4.0 -> 2.5.1",
    ]
    assert packages_needing_restart(before, before, imported, modules) == []
    assert packages_needing_restart(before, after, ["numpy"], modules) == []


def test_distribution_modules_maps_this_python():
    from TextGuidedSegLogic.dependencies import distribution_modules

    modules = distribution_modules()
    assert "numpy" in modules["numpy"] and "yaml" in modules["pyyaml"]


# -- sample data ------------------------------------------------------------------------------------------


def test_sample_data_registration_arguments():
    from TextGuidedSegLogic.sampledata import CATEGORY, sample_data_sources, sha256_file

    (source,) = sample_data_sources(SAMPLE_FOLDER)
    assert source["category"] == CATEGORY == "TextGuidedSeg"
    assert source["fileNames"] == ["TextGuidedSegPhantomCT.nrrd", "TextGuidedSegPhantomCT.seg.nrrd"]
    assert source["loadFileTypes"] == ["VolumeFile", "SegmentationFile"]
    for uri, name, checksum in zip(source["uris"], source["fileNames"], source["checksums"], strict=True):
        assert uri.startswith("file:///") and uri.endswith("/" + name)
        assert checksum == f"SHA256:{sha256_file(SAMPLE_FOLDER / name)}"
    assert source["thumbnailFileName"].endswith("TextGuidedSegPhantomCT.png")


def test_sample_data_missing_file_is_named(tmp_path):
    from TextGuidedSegLogic.sampledata import sample_data_sources

    shutil.copy(SAMPLE_FOLDER / "SampleData.json", tmp_path / "SampleData.json")
    with pytest.raises(ValueError, match=r"sample data file .*TextGuidedSegPhantomCT\.nrrd is missing"):
        sample_data_sources(tmp_path)
    (tmp_path / "SampleData.json").write_text(json.dumps({"sources": [{"sampleName": "x", "files": []}]}))
    with pytest.raises(ValueError, match=r"sources\[0\] has no 'thumbnail'"):
        sample_data_sources(tmp_path)


@pytest.mark.slow
def test_sample_data_files_hold_the_phantom():
    """The shipped CT and segmentation are the phantom the tool makes (read back with SimpleITK/slicerio)."""
    import SimpleITK as sitk
    import slicerio

    sys.path.insert(0, str(REPO_ROOT / "Testing" / "tools"))
    try:
        import make_sample_data
    finally:
        sys.path.remove(str(REPO_ROOT / "Testing" / "tools"))
    phantom = make_sample_data.make_phantom()
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_FOLDER / "TextGuidedSegPhantomCT.nrrd")))
    assert np.array_equal(ct.transpose(2, 1, 0), phantom.image)
    segmentation = slicerio.read_segmentation(str(SAMPLE_FOLDER / "TextGuidedSegPhantomCT.seg.nrrd"))
    names = [segment["name"] for segment in segmentation["segments"]]
    assert {"Liver", "Spleen", "Right Kidney", "Left Kidney"} <= set(names)
    liver = next(s for s in segmentation["segments"] if s["name"] == "Liver")
    voxels = (
        segmentation["voxels"] if segmentation["voxels"].ndim == 3 else segmentation["voxels"][liver["layer"]]
    )
    assert np.array_equal(voxels == liver["labelValue"], phantom.labels == 1)


# -- masking self-test geometry ---------------------------------------------------------------------------


def test_patient_right_half_holds_the_right_kidney():
    from TextGuidedSegLogic.selftest import patient_right_half, truth_mask

    from TextGuidedSegLib.data.phantom import PhantomConfig, make_phantom

    phantom = make_phantom(PhantomConfig(shape=(48, 48, 24), spacing=(6.5, 6.5, 6.5), seed=3))
    right = patient_right_half(phantom.labels.shape, phantom.affine)
    kidney_right, kidney_left = truth_mask(phantom, "right_kidney"), truth_mask(phantom, "left_kidney")
    assert kidney_right[right].sum() > 0.9 * kidney_right.sum()
    assert kidney_left[~right].sum() > 0.9 * kidney_left.sum()
    assert right[:24].sum() == 0 and right[24:].all()  # diagonal RAS affine: the high-I half
    # an affine with x flipped (as LPS-ordered arrays have) puts the right half at low I
    flipped = phantom.affine.copy()
    flipped[0, :] *= -1
    assert np.array_equal(patient_right_half(phantom.labels.shape, flipped), ~right)
