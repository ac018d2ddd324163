"""Hostile inputs through every layer: the library API, the ``textguidedseg segment`` command and the headless
Slicer logic (``TextGuidedSegLogic.segment`` on real MRML, as in ``test_slicer_logic.py``).

Each case is an input (a CT phantom made implausible: an MR, shifted or wrapped intensities, NaN voxels,
degenerate geometry, ...) and what the user must see: a refusal (``ImplausibleInputError``, exit status 2, an
exception in Slicer) whose message matches, or a result whose warnings (sidecar JSON, ``result.warnings``, the
Slicer results table) match, with the label map on the input grid. When a case is refused nothing changes:
input and existing output files keep their hashes, the scene keeps its nodes. The model is a random-weight
film_v1 bundle at 16 mm with one 64 x 32 x 32 window: what is tested is the guard, not what the model knows.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO_ROOT

from TextGuidedSegLib.bundle import load_bundle
from TextGuidedSegLib.cli import main
from TextGuidedSegLib.data.phantom import PhantomConfig, make_phantom
from TextGuidedSegLib.inference import ImplausibleInputError, Segmenter, guard
from TextGuidedSegLib.io import Volume, load_volume

PROMPT = "liver and spleen"
SPACING = np.diag([6.0, 6.0, 6.0, 1.0])


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    """A CT phantom (I, J, K) int16 HU, downsampled to 64 x 64 x 32 so every case runs one window."""
    return make_phantom(PhantomConfig(seed=1)).image[::2, ::2, ::2].astype(np.float32)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    import torch

    from TextGuidedSegLib.bundle import BundleConfig, InferenceConfig, PreprocessConfig, save_bundle
    from TextGuidedSegLib.models import ModelConfig, build_model
    from TextGuidedSegLib.taxonomy import get_taxonomy
    from TextGuidedSegLib.text import EmbeddingCache

    taxonomy = get_taxonomy().subset(["liver", "spleen"])
    model_config = ModelConfig(feature_size=12, text_dim=16)
    torch.manual_seed(0)
    cache = EmbeddingCache("random-test-vectors", 16)
    cache.add(taxonomy.prompts, torch.randn(len(taxonomy), 16, generator=torch.Generator().manual_seed(0)))
    config = BundleConfig(
        name="tiny_hostile",
        model=model_config,
        taxonomy=taxonomy,
        preprocessing=PreprocessConfig(spacing=(16.0, 16.0, 16.0)),
        inference=InferenceConfig(roi_size=(64, 32, 32)),
    )
    return save_bundle(tmp_path_factory.mktemp("bundle") / "tiny", build_model(model_config), config, cache)


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return load_bundle(bundle_path)


# -- the cases --------------------------------------------------------------------------------------------


def _mr_like(a: np.ndarray) -> np.ndarray:
    """A T1-weighted-looking image from a CT: background near 0, fat bright, soft tissue mid, bone dark."""
    values = np.interp(a, [-1100, -900, -150, -50, 20, 80, 300, 1500], [5, 10, 900, 850, 400, 450, 200, 50])
    return np.clip(values + np.random.default_rng(0).normal(0, 5, a.shape), 0, None)


def _with(a: np.ndarray, where: tuple, value: float) -> np.ndarray:
    b = a.copy()
    b[where] = value
    return b


def _rotated(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    affine = np.eye(4)
    affine[:2, :2] = [[c, -s], [s, c]]
    return affine @ SPACING


@dataclass(frozen=True)
class Case:
    """An input (array and affine from the phantom) and what the user sees: ``refuse`` or ``warn`` (the
    message matching ``pattern``) or ``ok`` (no guard warning)."""

    name: str
    make: Callable[[np.ndarray], np.ndarray]
    outcome: str
    pattern: str = ""
    affine: np.ndarray | None = None
    force: bool = False
    dtype: str = "float32"  # how the CLI's file stores it
    slicer: bool = True


CASES = [
    Case("plain CT", lambda a: a, "ok"),
    Case("MR", _mr_like, "refuse", r"looks like an MR or another non-CT image"),
    Case("MR, forced", _mr_like, "warn", r"run with force although no air .* looks like an MR", force=True),
    Case("shifted +1024", lambda a: a + 1024, "refuse", r"shifted by \+1024.*rescale intercept applied"),
    Case(
        "shifted +1024 stored as uint16",
        lambda a: np.clip(a + 1024, 0, None),
        "refuse",
        r"shifted by \+1024",
        dtype="uint16",
    ),
    Case(
        "shifted +1024, forced", lambda a: a + 1024, "warn", r"run with force although .*shifted", force=True
    ),
    Case(
        "negative HU wrapped as uint16",
        lambda a: np.where(a < 0, a + 65536, a),
        "refuse",
        r"unsigned 16-bit numbers \(wrapped",
        dtype="uint16",
    ),
    Case("NaN slab outside the body", lambda a: _with(a, (slice(0, 2),), np.nan), "warn", r"NaN or infinite"),
    Case(
        "+Inf and -Inf voxels",
        lambda a: _with(_with(a, (0, 0), np.inf), (1, 1), -np.inf),
        "warn",
        r"read as -1024",
    ),
    Case(
        "NaN block in the body",
        lambda a: _with(a, (slice(20, 40), slice(20, 40), slice(8, 24)), np.nan),
        "refuse",
        r"% of the body's bounding box is NaN",
    ),
    Case("every voxel NaN", lambda a: np.full_like(a, np.nan), "refuse", r"no voxel is a finite number"),
    Case("constant volume", lambda a: np.zeros_like(a), "refuse", r"constant \(every voxel is 0\)"),
    Case("air only", lambda a: np.minimum(a, -1000) - np.abs(a % 7), "refuse", r"holds air only"),
    Case("slope x10", lambda a: a * 10, "refuse", r"median of the voxels above -500 HU"),
    Case("values up to 1e6", lambda a: _with(a, (slice(0, 4),), 1e6), "refuse", r"beyond any CT scale"),
    Case(
        "metal clipped at 32767",
        lambda a: _with(a, (slice(30, 34), slice(30, 34)), 32767),
        "warn",
        r"integer type's maximum",
        dtype="int16",
    ),
    Case(
        "-32768 padding outside the field of view",
        lambda a: _with(a, (slice(0, 3),), -32768),
        "ok",
        dtype="int16",
    ),
    Case("no air (cropped inside the body)", lambda a: np.maximum(a, -100), "warn", r"no air near -1000 HU"),
    Case(
        "0.7 x 0.7 x 40 mm voxels",
        lambda a: a,
        "warn",
        r"voxels are 0.7 x 0.7 x 40 mm",
        affine=np.diag([0.7, 0.7, 40.0, 1.0]),
    ),
    Case("30 degrees oblique", lambda a: a, "warn", r"30 degrees oblique", affine=_rotated(30)),
    Case("smaller than one window", lambda a: a[26:38, 26:38, 14:18], "warn", r"covers only 24 mm"),
    Case("one slice", lambda a: a[:, :, 16:17], "warn", r"covers only 6 mm"),
    Case(
        "non-invertible affine",
        lambda a: a,
        "refuse",
        r"affine is not invertible",
        affine=np.diag([3.0, 3.0, 0.0, 1.0]),
        slicer=False,  # a volume node has no singular geometry: Slicer keeps a spacing and directions
    ),
    Case(
        "collinear axes",
        lambda a: a,
        "refuse",
        r"affine is not invertible",
        affine=np.array([[3.0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0], [0, 0, 0, 1]]),
        slicer=False,
    ),
]


def _volume(case: Case, ct: np.ndarray, source: str = "") -> Volume:
    return Volume(case.make(ct), SPACING if case.affine is None else case.affine, source=source)


def _check_warnings(case: Case, warnings: list[str]) -> None:
    guard_warnings = [w for w in warnings if "bundle 'tiny_hostile'" not in w]
    if case.outcome == "ok":
        assert guard_warnings == []
    else:
        assert any(re.search(case.pattern, w) for w in guard_warnings), guard_warnings


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_library_api(case, ct, bundle):
    volume = _volume(case, ct, source=f"{case.name}.nii.gz")
    before = volume.array.copy()
    segmenter = Segmenter(bundle, device="cpu", progress=False, force=case.force)
    if case.outcome == "refuse":
        with pytest.raises(ImplausibleInputError, match=case.pattern) as error:
            segmenter.segment(volume, PROMPT)
        assert f"{case.name}.nii.gz" in str(error.value)
        assert ("--force" in str(error.value)) != error.value.hard
    else:
        result = segmenter.segment(volume, PROMPT)
        assert result.labels.shape == volume.shape
        assert np.isfinite(result.probabilities[0] if result.probabilities is not None else 0).all()
        _check_warnings(case, result.warnings)
        assert result.provenance["warnings"] == result.warnings
    np.testing.assert_array_equal(volume.array, before)  # the input is never modified


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_command_line(case, ct, bundle_path, tmp_path, capsys):
    volume = _volume(case, ct)
    data = np.nan_to_num(volume.array, nan=0) if case.dtype != "float32" else volume.array
    image = nib.Nifti1Image(data.astype(case.dtype), np.eye(4))
    image.set_sform(volume.affine, code=1)  # the sform alone: a singular affine has no qform
    image.set_qform(None, code=0)
    image.header.set_slope_inter(1.0, 0.0)
    source = tmp_path / "input" / "ct.nii.gz"
    source.parent.mkdir()
    nib.save(image, source)
    output = tmp_path / "out" / "seg.nii.gz"
    output.parent.mkdir()
    output.write_bytes(b"an earlier result")  # --overwrite must not touch it when the run is refused
    before = _hashes(tmp_path)
    argv = ["segment", str(source), "-p", PROMPT, "-b", str(bundle_path), "-o", str(output), "--overwrite"]
    status = main([*argv, "--device", "cpu", "--no-progress", *(["--force"] if case.force else [])])
    if case.outcome == "refuse":
        assert status == 2
        message = capsys.readouterr().err
        assert re.search(case.pattern, message), message
        assert str(source) in message
        assert _hashes(tmp_path) == before  # nothing written, nothing changed
    else:
        assert status == 0
        assert nib.load(output).shape == volume.shape
        sidecar = json.loads(output.with_name("seg.json").read_text())
        _check_warnings(case, sidecar["warnings"])
        assert hashlib.sha256(source.read_bytes()).hexdigest() == before[str(source)]


# -- the headless Slicer logic ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slicer_logic(bundle_path):
    """The logic on a real MRML scene (set up as in ``test_slicer_logic.py``'s ``mrml``)."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package has no MRML classes (install slicer-core)")
    import types

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = {
        "Colors": slicer.vtkMRMLColorLogic(),
        "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
    }
    for name, logic in logics.items():
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
    logics["Colors"].AddDefaultColorNodes()
    saved = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: logics["Segmentations"])
    )
    sys.path.insert(0, str(REPO_ROOT / "TextGuidedSeg"))
    from TextGuidedSegLogic import TextGuidedSegLogic
    from TextGuidedSegLogic.nodes import add_volume_node

    yield types.SimpleNamespace(
        scene=scene, logic=TextGuidedSegLogic(), add=add_volume_node, keep=(app_logic, logics)
    )
    sys.path.remove(str(REPO_ROOT / "TextGuidedSeg"))
    for name, value in saved.items():
        if value is None:
            delattr(slicer, name)
        else:
            setattr(slicer, name, value)


@pytest.mark.parametrize("case", [c for c in CASES if c.slicer], ids=[c.name for c in CASES if c.slicer])
def test_slicer_logic(case, ct, bundle_path, slicer_logic):
    from TextGuidedSegLib.inference import SegmentationOptions

    scene = slicer_logic.scene
    volume = _volume(case, ct)
    node = slicer_logic.add(volume.array, volume.affine, case.name)
    nodes_before = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    options = SegmentationOptions(device="cpu", force=case.force)
    try:
        if case.outcome == "refuse":
            with pytest.raises(ImplausibleInputError, match=case.pattern):
                slicer_logic.logic.segment(node, PROMPT, bundle=str(bundle_path), options=options)
            assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == nodes_before
        else:
            outputs = slicer_logic.logic.segment(node, PROMPT, bundle=str(bundle_path), options=options)
            table = outputs.table_node
            warnings = (table.GetAttribute("TextGuidedSeg.Warnings") or "").split("\n")
            _check_warnings(case, [w for w in warnings if w])
            if case.outcome == "warn":  # the guard's warning is in the table's caveat column too
                column = table.GetTable().GetColumnByName("Caveat") or table.GetTable().GetColumn(4)
                assert re.search(case.pattern, column.GetValue(0)), column.GetValue(0)
    finally:
        for i in reversed(range(scene.GetNumberOfNodes())):
            added = scene.GetNthNode(i)
            if added.GetID() not in nodes_before:
                scene.RemoveNode(added)
        scene.RemoveNode(node)


# -- inputs only a file can carry, and memory ------------------------------------------------------------


def test_a_dicom_series_whose_modality_is_mr_is_refused_even_with_ct_values(
    ct, bundle, bundle_path, tmp_path, capsys
):
    import SimpleITK as sitk

    folder = tmp_path / "mr_dicom"
    folder.mkdir()
    image = sitk.GetImageFromArray(ct.transpose(2, 1, 0).astype(np.int16))
    image.SetSpacing((3.0, 3.0, 3.0))
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in {
            "0008|0060": "MR",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1",
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{3.0 * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }.items():
            slice_.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()  # keep the series UID set above
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(slice_)
    volume = load_volume(folder)
    assert volume.modality == "MR"
    with pytest.raises(ImplausibleInputError, match=r"its DICOM Modality is MR, not CT"):
        Segmenter(bundle, device="cpu", progress=False).segment(volume, PROMPT)
    argv = ["segment", str(folder), "-p", PROMPT, "-b", str(bundle_path), "-o", str(tmp_path / "seg.nii.gz")]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 2
    assert "its DICOM Modality is MR, not CT" in capsys.readouterr().err
    assert not (tmp_path / "seg.nii.gz").exists()


def test_a_volume_too_large_for_memory_is_refused_with_the_estimate(ct, bundle, monkeypatch):
    # 64 x 64 x 32 voxels of 12 x 12 x 24 mm cover 768 mm each way: 48^3 voxels at the bundle's 16 mm (x
    # padded to the 64-voxel window), two float32 output channels plus 16 bytes of image copies each, the
    # input's 5 bytes a voxel, 1 GiB fixed
    volume = Volume(ct, np.diag([12.0, 12.0, 24.0, 1.0]), source="wide.nii.gz")
    expected = 64 * 48 * 48 * (16 + 4 * 2) + 5 * ct.size + guard.MEMORY_OVERHEAD
    assert guard.estimate_memory(volume, (16.0,) * 3, (64, 32, 32), channels=2) == expected
    assert guard.estimate_memory(volume, (16.0,) * 3, (64, 32, 32), channels=2, passes=4) > 3 * expected // 4
    monkeypatch.setattr(guard, "available_memory", lambda device="cpu": 1 << 20)
    with pytest.raises(
        ImplausibleInputError, match=r"wide.nii.gz: segmenting it would need about 1\.0 GiB on cpu"
    ):
        Segmenter(bundle, device="cpu", progress=False).segment(volume, PROMPT)
    forced = Segmenter(bundle, device="cpu", progress=False, force=True).segment(volume, PROMPT)
    assert any("would need about 1.0 GiB" in w and "0.0 GiB are free" in w for w in forced.warnings)
    assert forced.labels.shape == volume.shape


def test_thick_slices_warn_against_the_models_own_spacing(ct):
    """0.7 x 0.7 x 5 mm voxels warn against a 1.5 mm model (the published ones), not against a 3 mm one."""
    volume = Volume(ct, np.diag([0.7, 0.7, 5.0, 1.0]), source="thick.nii.gz")
    fine = guard.check_volume(volume, model_spacing=(1.5,) * 3, roi_size=(96,) * 3)
    assert any(
        "voxels are 0.7 x 0.7 x 5 mm, the model works at 1.5 x 1.5 x 1.5 mm" in w for w in fine.warnings
    )
    coarse = guard.check_volume(volume, model_spacing=(3.0,) * 3, roi_size=(96,) * 3)
    assert not any("voxels are" in w for w in coarse.warnings)
    assert fine.volume is volume  # nothing to replace: the input itself is used
