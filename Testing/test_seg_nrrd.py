"""``.seg.nrrd`` output: a real 3D Slicer segmentation file (names, colours, terminology, layers, geometry).

Checked against three independent readers: ``slicerio.read_segmentation`` (the format's Python reader),
SimpleITK (the NRRD geometry) and, when ``slicer-core`` is installed, Slicer's own
``vtkMRMLSegmentationStorageNode``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_path

from TextGuidedSegLib.io import Volume, save_seg_nrrd
from TextGuidedSegLib.io.seg_nrrd import assign_layers
from TextGuidedSegLib.registry import HOME_ENV

pytest.importorskip("slicerio", reason="slicerio (pip install slicerio) writes .seg.nrrd")
import slicerio  # noqa: E402
import slicerio.segmentation  # noqa: E402

to_string = slicerio.segmentation.terminology_entry_to_string

PROMPT = "liver, spleen and both kidneys"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class Segment:
    """A minimal segment description (what ``SegmentInfo`` provides)."""

    def __init__(self, label_id: int, name: str, color: tuple[int, int, int], terminology: str | None):
        self.label_id, self.name, self.color, self.terminology = label_id, name, color, terminology


def oblique_volume(shape=(20, 16, 12)) -> Volume:
    """A volume with an LPS-like, rotated, anisotropic grid (so axis flips and swaps would show)."""
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.8, -0.9, 2.5])
    affine[:3, 3] = (12.5, -40.0, 7.25)
    return Volume(array=np.zeros(shape, np.float32), affine=affine, source="")


def test_overlapping_masks_go_to_layers_and_read_back(tmp_path: Path) -> None:
    volume = oblique_volume()
    liver = np.zeros(volume.shape, bool)
    liver[2:12, 3:10, 2:8] = True
    tumour = np.zeros(volume.shape, bool)
    tumour[5:8, 5:8, 4:6] = True  # inside the liver: overlaps
    spleen = np.zeros(volume.shape, bool)
    spleen[14:18, 2:6, 1:5] = True  # overlaps neither
    from TextGuidedSegLib.taxonomy import get_vocabulary

    vocabulary = get_vocabulary()
    segments = [
        Segment(1, "Liver", (221, 130, 101), vocabulary["liver"].terminology.slicer_entry()),
        Segment(2, "Liver Tumor", (255, 0, 0), vocabulary["liver_tumor"].terminology.slicer_entry()),
        Segment(3, "Spleen", (157, 108, 162), None),
    ]
    assert assign_layers([liver, tumour, spleen]) == [0, 1, 0]
    path = save_seg_nrrd(tmp_path / "masks.seg.nrrd", [liver, tumour, spleen], segments, volume)

    read = slicerio.read_segmentation(str(path))
    assert read["voxels"].shape == (2, *volume.shape)
    np.testing.assert_allclose(read["ijkToLPS"], LPS_FROM_RAS @ volume.affine, atol=1e-9)
    by_name = {s["name"]: s for s in read["segments"]}
    assert [s["name"] for s in read["segments"]] == ["Liver", "Liver Tumor", "Spleen"]
    for segment, mask in zip(segments, (liver, tumour, spleen), strict=True):
        entry = by_name[segment.name]
        got = read["voxels"][entry["layer"]] == entry["labelValue"]
        np.testing.assert_array_equal(got, mask)
        assert [round(c * 255) for c in entry["color"]] == list(segment.color)
        if segment.terminology:
            assert to_string(entry["terminology"]) == segment.terminology
        else:
            assert "terminology" not in entry
    tumour_entry = by_name["Liver Tumor"]["terminology"]
    assert tumour_entry["anatomicRegion"] == ["SCT", "10200004", "Liver"]  # the host organ survives
    header = path.read_bytes()[:4000].decode("latin-1")
    assert "kinds: list domain domain domain" in header and "space: left-posterior-superior" in header


def test_a_label_map_is_one_layer_and_rejects_bad_input(tmp_path: Path) -> None:
    volume = oblique_volume()
    labels = np.zeros(volume.shape, np.uint8)
    labels[1:5, 1:5, 1:5] = 1
    labels[6:9, 6:9, 6:9] = 2
    labels[10:12, 10:12, 8:10] = 7  # a label without a segment is not written (it would be unnamed)
    segments = [Segment(1, "A", (10, 20, 30), None), Segment(2, "B", (200, 100, 0), None)]
    read = slicerio.read_segmentation(str(save_seg_nrrd(tmp_path / "l.seg.nrrd", labels, segments, volume)))
    assert read["voxels"].shape == volume.shape
    np.testing.assert_array_equal(read["voxels"], np.where(labels == 7, 0, labels))
    assert [s["layer"] for s in read["segments"]] == [0, 0]
    with pytest.raises(ValueError, match=r"\.seg\.nrrd"):
        save_seg_nrrd(tmp_path / "l.nrrd", labels, segments, volume)
    with pytest.raises(ValueError, match="does not match the reference volume's shape"):
        save_seg_nrrd(tmp_path / "x.seg.nrrd", labels[:-1], segments, volume)
    with pytest.raises(ValueError, match="2 masks for 1 segments"):
        save_seg_nrrd(tmp_path / "x.seg.nrrd", [labels == 1, labels == 2], segments[:1], volume)
    with pytest.raises(ValueError, match="unique"):
        save_seg_nrrd(tmp_path / "x.seg.nrrd", labels, [segments[0], segments[0]], volume)
    from TextGuidedSegLib.io import save_label_map

    with pytest.raises(ValueError, match="save_seg_nrrd"):
        save_label_map(tmp_path / "plain.seg.nrrd", labels, volume)


_CLI_RUNS: dict[str, dict] = {}


@pytest.fixture
def cli_run(tmp_path_factory, make_bundle) -> dict:
    """``textguidedseg segment -o x.seg.nrrd`` and the same run to ``.nii.gz`` on the shared LPS CT, once
    (about 4 s: one 64^3 window per run)."""
    from TextGuidedSegLib.cli import main

    if "run" in _CLI_RUNS:
        return _CLI_RUNS["run"]
    ct = shared_path("dcmqi_ct3slice", "ct.nii.gz")
    bundle = make_bundle(spacing=8.0)  # one 64^3 window per run
    out = tmp_path_factory.mktemp("seg")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOME_ENV, str(out / "home"))
        for name, extra in (("seg.seg.nrrd", ["--probabilities"]), ("seg.nii.gz", [])):
            argv = ["segment", str(ct), "-p", PROMPT, "-b", str(bundle), "-o", str(out / name), *extra]
            assert main([*argv, "--device", "cpu", "--no-progress", "--threshold", "0.3"]) == 0
            if extra:
                runs["probability_maps"] = sorted(p.name for p in out.glob("seg_probability_*"))
    runs["seg_nrrd"] = out / "seg.seg.nrrd"
    runs["nifti"] = out / "seg.nii.gz"
    runs["sidecar"] = json.loads((out / "seg.json").read_text())  # both runs write seg.json: the same run
    runs["ct"] = ct
    _CLI_RUNS["run"] = runs
    return runs


def test_cli_seg_nrrd_round_trips_through_slicerio(cli_run) -> None:
    read = slicerio.read_segmentation(str(cli_run["seg_nrrd"]))
    reference = nib.load(cli_run["ct"])
    labels = np.asarray(nib.load(cli_run["nifti"]).dataobj).astype(np.int64)
    assert read["voxels"].shape == reference.shape
    np.testing.assert_allclose(read["ijkToLPS"], LPS_FROM_RAS @ reference.affine, atol=1e-4)
    segments = cli_run["sidecar"]["segments"]
    assert [s["name"] for s in read["segments"]] == ["Liver", "Spleen", "Right Kidney", "Left Kidney"]
    assert [s["name"] for s in segments] == [s["name"] for s in read["segments"]]
    for written, described in zip(read["segments"], segments, strict=True):
        assert [round(c * 255) for c in written["color"]] == described["color"]
        assert to_string(written["terminology"]) == described["terminology"]
        assert written["layer"] == 0 and written["labelValue"] == described["label_id"]
        mask = read["voxels"] == written["labelValue"]
        np.testing.assert_array_equal(mask, labels == described["label_id"])
        assert int(mask.sum()) == described["voxels"]
    kidneys = {s["name"]: s["terminology"] for s in read["segments"]}
    assert kidneys["Right Kidney"]["typeModifier"] == ["SCT", "24028007", "Right"]
    assert kidneys["Left Kidney"]["typeModifier"] == ["SCT", "7771000", "Left"]
    assert kidneys["Liver"]["type"] == ["SCT", "10200004", "Liver"]
    assert (labels > 0).any(), "the random model labelled nothing: the voxel checks would be empty"


def test_cli_seg_nrrd_has_the_input_geometry_in_itk(cli_run) -> None:
    """SimpleITK (an independent NRRD/NIfTI reader) sees the same grid in the input and the .seg.nrrd; the
    probability maps beside it are plain ``.nrrd`` volumes."""
    assert cli_run["probability_maps"] == [
        "seg_probability_01_liver.nrrd", "seg_probability_02_spleen.nrrd",
        "seg_probability_03_right_kidney.nrrd", "seg_probability_04_left_kidney.nrrd",
    ]  # fmt: skip
    written, reference = sitk.ReadImage(str(cli_run["seg_nrrd"])), sitk.ReadImage(str(cli_run["ct"]))
    assert written.GetSize() == reference.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-5)


# -- Slicer's own reader (headless slicer-core) -----------------------------------------------------------


@pytest.fixture(scope="module")
def slicer_scene():
    slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is not installed")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package has no MRML classes (install slicer-core)")
    scene = slicer.vtkMRMLScene()
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)  # registers the segmentation converter rules
    yield slicer, scene, segmentations
    scene.Clear(1)


def read_with_slicer(slicer_scene, path: Path):
    slicer, scene, _ = slicer_scene
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", path.name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


def slicer_mask(slicer, node, segment_id: str, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """A segment's binary labelmap as Slicer holds it, as an (I, J, K) array on the input grid."""
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    assert node.GetBinaryLabelmapRepresentation(segment_id, image)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    world = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(world, affine, atol=1e-4)  # Slicer works in RAS: the input's affine
    extent = image.GetExtent()
    out = np.zeros(shape, bool)
    if extent[1] < extent[0]:
        return out
    dims = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    values = values.transpose(2, 1, 0)
    out[extent[0] : extent[1] + 1, extent[2] : extent[3] + 1, extent[4] : extent[5] + 1] = values > 0
    return out


def test_cli_seg_nrrd_loads_in_slicer_with_names_colours_codes_and_voxels(cli_run, slicer_scene) -> None:
    slicer = slicer_scene[0]
    import vtk

    node = read_with_slicer(slicer_scene, cli_run["seg_nrrd"])
    reference = nib.load(cli_run["ct"])
    labels = np.asarray(nib.load(cli_run["nifti"]).dataobj).astype(np.int64)
    segmentation = node.GetSegmentation()
    described = cli_run["sidecar"]["segments"]
    assert segmentation.GetNumberOfSegments() == len(described) == 4
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    for index, info in enumerate(described):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetName() == info["name"]
        assert [round(c * 255) for c in segment.GetColor()] == info["color"]
        tag = vtk.reference("")
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
        assert str(tag) == info["terminology"]
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(str(tag), entry)
        assert entry.GetTypeObject().GetCodeValue() in info["terminology"]
        mask = slicer_mask(slicer, node, segment_id, reference.shape, reference.affine)
        np.testing.assert_array_equal(mask, labels == info["label_id"], err_msg=info["name"])


def test_overlapping_layers_load_in_slicer(tmp_path: Path, slicer_scene) -> None:
    slicer = slicer_scene[0]
    volume = oblique_volume()
    first = np.zeros(volume.shape, bool)
    first[2:12, 3:10, 2:8] = True
    second = np.zeros(volume.shape, bool)
    second[5:15, 5:12, 4:10] = True
    segments = [Segment(1, "First", (200, 10, 10), None), Segment(2, "Second", (10, 10, 200), None)]
    path = save_seg_nrrd(tmp_path / "overlap.seg.nrrd", [first, second], segments, volume)
    node = read_with_slicer(slicer_scene, path)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    assert segmentation.GetNumberOfLayers() == 2
    for index, mask in enumerate((first, second)):
        segment_id = segmentation.GetNthSegmentID(index)
        assert segmentation.GetSegment(segment_id).GetName() == segments[index].name
        got = slicer_mask(slicer, node, segment_id, volume.shape, volume.affine)
        np.testing.assert_array_equal(got, mask)
