"""Reading and writing volumes, model-space geometry, intensity windowing and mask post-processing.

Real data (``../shared/data``, see its README): the TotalSegmentator example CT (RAS, 3 mm) with its label
map, and the dcmqi 3-slice CT (LPS, 0.81 mm) as NIfTI and as a DICOM series, with drawn labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from TextGuidedSegLib.inference.geometry import to_model_space, to_original_space, window_intensity
from TextGuidedSegLib.inference.postprocess import body_mask, keep_largest_component, split_by_laterality
from TextGuidedSegLib.io import Volume, VolumeReadError, load_volume, save_label_map, save_volume
from TextGuidedSegLib.io import writers as writers_module
from TextGuidedSegLib.io.itk_geometry import array_affine_to_sitk, sitk_to_array_affine

logger = logging.getLogger(__name__)

# TotalSegmentator label ids (class_map_total_v2.json) and the dcmqi labels (labels.json).
TOTALSEG_LABELS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5}
DCMQI_LABELS = {"liver": 1, "thoracic_spine": 2, "heart": 3}


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    total = int(prediction.sum()) + int(reference.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def world_field(affine: np.ndarray, shape: tuple[int, ...], coefficients=(0.3, -0.2, 0.5)) -> np.ndarray:
    """A field linear in RAS world coordinates, ``(I, J, K)`` float32, sampled at the grid's voxel centres."""
    index = np.indices(shape).reshape(3, -1).astype(np.float64)
    world = affine[:3, :3] @ index + affine[:3, 3:]
    return (np.asarray(coefficients) @ world).reshape(shape).astype(np.float32)


def round_trip(
    labels: Volume, label_ids: dict[str, int], spacing=(1.5, 1.5, 1.5), shift_axis: int | None = None
) -> dict[str, float]:
    """One-hot masks -> model space -> original grid (both bilinear) -> threshold 0.5; Dice per structure.

    ``shift_axis`` resamples back onto the grid moved by one voxel along that axis (a deliberate error).
    """
    one_hot = {name: (labels.array == label).astype(np.float32) for name, label in label_ids.items()}
    channels = [to_model_space(Volume(mask, labels.affine), spacing=spacing) for mask in one_hot.values()]
    model_space = MetaTensor(torch.cat([c.as_tensor() for c in channels]), affine=channels[0].affine)
    target = labels
    if shift_axis is not None:
        shifted = labels.affine.copy()
        shifted[:3, 3] += labels.affine[:3, shift_axis]
        target = Volume(labels.array, shifted)
    back = to_original_space(model_space, target, mode="bilinear")
    assert back.shape == (len(one_hot), *labels.shape)
    assert back.dtype == np.float32
    pairs = zip(one_hot.items(), back, strict=True)
    return {name: dice(channel >= 0.5, mask > 0.5) for (name, mask), channel in pairs}


@pytest.fixture(scope="module")
def totalseg(shared_data: Path) -> tuple[Volume, Volume]:
    """The small TotalSegmentator CT and its label map."""
    folder = shared_data / "totalseg"
    return load_volume(folder / "example_ct_sm.nii.gz"), load_volume(folder / "example_seg.nii.gz")


@pytest.fixture(scope="module")
def dcmqi(shared_data: Path) -> tuple[Volume, Volume, Volume]:
    """The 3-slice CT as NIfTI, as a DICOM series, and its labels."""
    folder = shared_data / "dcmqi_ct3slice"
    return (
        load_volume(folder / "ct.nii.gz"),
        load_volume(folder / "ct_dicom"),
        load_volume(folder / "labels.nii.gz"),
    )


# ----------------------------------------------------------------------------------------------- reading


def test_load_totalseg_ct(totalseg):
    ct, _ = totalseg
    assert ct.shape == (122, 101, 30)
    assert ct.array.dtype == np.float32 and ct.affine.dtype == np.float64
    np.testing.assert_allclose(ct.spacing, (3.0, 3.0, 3.0), atol=1e-5)
    assert ct.orientation == ("R", "A", "S")
    assert (ct.array.min(), ct.array.max()) == (-1100.0, 1207.0)
    assert isinstance(ct.header, nib.Nifti1Header)
    assert ct.source.endswith("example_ct_sm.nii.gz")


def test_dicom_and_nifti_give_same_volume(dcmqi, shared_data):
    nifti, dicom, _ = dcmqi
    # Both are LPS-ordered grids (i toward patient Left, j Posterior, k Superior), so no reorientation is
    # needed to compare them: the DICOM affine comes from SimpleITK's LPS geometry via the LPS -> RAS helper.
    assert nifti.orientation == ("L", "P", "S")
    assert dicom.orientation == ("L", "P", "S")
    assert nifti.shape == dicom.shape == (512, 512, 3)
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-3)
    np.testing.assert_array_equal(dicom.array, nifti.array)
    assert dicom.header is None
    # One file of the series stands for the whole series.
    single = load_volume(shared_data / "dcmqi_ct3slice" / "ct_dicom" / "02.dcm")
    np.testing.assert_array_equal(single.array, dicom.array)
    np.testing.assert_allclose(single.affine, dicom.affine)


def test_sitk_conversion_is_lps_to_ras_and_kji_to_ijk():
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # (I, J, K)
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0).copy())
    image.SetOrigin((10.0, 20.0, 30.0))  # LPS
    image.SetSpacing((0.5, 2.0, 3.0))
    back, affine = sitk_to_array_affine(image)
    np.testing.assert_array_equal(back, array)
    # Voxel (1, 2, 3) lies at LPS origin + (0.5, 4, 9) = (10.5, 24, 39), i.e. RAS (-10.5, -24, 39).
    np.testing.assert_allclose(affine @ [1, 2, 3, 1], [-10.5, -24.0, 39.0, 1.0])
    assert image.TransformIndexToPhysicalPoint((1, 2, 3)) == (10.5, 24.0, 39.0)
    again = array_affine_to_sitk(back, affine)
    assert again.GetOrigin() == image.GetOrigin() and again.GetSpacing() == image.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(image))


def _write_dicom_series(folder: Path, series_uid: str, description: str, slices: int) -> None:
    """Write a tiny synthetic axial DICOM series (4 x 5 pixels per slice, value = slice number)."""
    for k in range(slices):
        image = sitk.GetImageFromArray(np.full((1, 4, 5), k, dtype=np.int16))
        image.SetOrigin((0.0, 0.0, float(k)))
        tags = {
            "0020|000e": series_uid,
            "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0060": "CT",
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{description}_{k:02d}.dcm"))
        writer.Execute(image)


def test_folder_with_two_dicom_series_lists_them(tmp_path):
    _write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.11", "arterial", slices=2)
    _write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.12", "venous", slices=3)
    with pytest.raises(VolumeReadError) as error:
        load_volume(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "2 DICOM series" in message
    assert "1.2.826.0.1.3680043.2.1125.11 (arterial" in message
    assert "1.2.826.0.1.3680043.2.1125.12 (venous" in message
    venous = load_volume(tmp_path / "venous_01.dcm")
    assert venous.shape == (5, 4, 3)
    np.testing.assert_array_equal(venous.array[0, 0], [0, 1, 2])


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.nii.gz"
    with pytest.raises(VolumeReadError, match="no such file") as error:
        load_volume(path)
    assert str(path) in str(error.value)


def test_unsupported_extension_lists_supported(tmp_path):
    path = tmp_path / "volume.txt"
    path.write_text("not an image")
    with pytest.raises(VolumeReadError, match="unsupported file type .txt") as error:
        load_volume(path)
    assert str(path) in str(error.value)
    assert ".nii.gz" in str(error.value) and ".nrrd" in str(error.value) and "DICOM" in str(error.value)


def test_empty_folder(tmp_path):
    with pytest.raises(VolumeReadError, match="folder is empty") as error:
        load_volume(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeReadError, match="no DICOM series") as error:
        load_volume(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_4d_nifti_is_refused(tmp_path):
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), dtype=np.int16), np.eye(4)), path)
    with pytest.raises(VolumeReadError, match="expected a 3D volume, got 4D") as error:
        load_volume(path)
    assert str(path) in str(error.value)


def test_trailing_singleton_dimension_is_3d(tmp_path):
    path = tmp_path / "one_frame.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), dtype=np.int16), np.eye(4)), path)
    assert load_volume(path).shape == (4, 5, 6)


def test_vector_nrrd_is_refused(tmp_path):
    path = tmp_path / "vectors.nrrd"
    vectors = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), dtype=np.float32), isVector=True)
    sitk.WriteImage(vectors, str(path))
    with pytest.raises(VolumeReadError, match="3 components") as error:
        load_volume(path)
    assert str(path) in str(error.value)


def test_corrupt_nifti_is_named(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(VolumeReadError, match="not a readable NIfTI") as error:
        load_volume(path)
    assert str(path) in str(error.value)


# ----------------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("name", ["labels.nii.gz", "labels.nii", "labels.nrrd"])
def test_label_map_round_trip_ras_nifti_reference(totalseg, tmp_path, name):
    _, seg = totalseg
    labels = seg.array.astype(np.int16)
    written = save_label_map(tmp_path / name, labels, seg)
    assert written == tmp_path / name
    reloaded = load_volume(written)
    assert reloaded.shape == seg.shape
    np.testing.assert_array_equal(reloaded.array, labels)
    np.testing.assert_allclose(reloaded.affine, seg.affine, atol=1e-5)
    if name.endswith((".nii", ".nii.gz")):
        image = nib.load(written)
        assert image.get_data_dtype() == np.uint8
        assert int(image.header["qform_code"]) == int(seg.header["qform_code"])  # 0 in this file
        assert int(image.header["sform_code"]) == int(seg.header["sform_code"])  # 2 in this file
    else:
        assert sitk.ReadImage(str(written)).GetPixelID() == sitk.sitkUInt8
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind


@pytest.mark.parametrize("name", ["labels.nii.gz", "labels.nrrd"])
def test_label_map_round_trip_lps_dicom_reference(dcmqi, tmp_path, name):
    _, dicom, labels = dcmqi
    values = labels.array.astype(np.uint16) * 300  # max 900: stored as uint16
    reloaded = load_volume(save_label_map(tmp_path / name, values, dicom))
    assert reloaded.orientation == ("L", "P", "S")
    np.testing.assert_array_equal(reloaded.array, values)
    np.testing.assert_allclose(reloaded.affine, dicom.affine, atol=1e-4)  # NIfTI stores the affine as float32
    if name.endswith(".nii.gz"):
        header = nib.load(tmp_path / name).header
        assert header.get_data_dtype() == np.uint16
        assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)


def test_save_volume_float_round_trip(totalseg, tmp_path):
    ct, _ = totalseg
    probabilities = np.linspace(0.0, 1.0, ct.array.size, dtype=np.float64).reshape(ct.shape)
    for name in ("probabilities.nii.gz", "probabilities.nrrd"):
        reloaded = load_volume(save_volume(tmp_path / name, probabilities, ct))
        np.testing.assert_array_equal(reloaded.array, probabilities.astype(np.float32))
        np.testing.assert_allclose(reloaded.affine, ct.affine, atol=1e-5)


def test_wrong_shape_names_both_shapes(totalseg, tmp_path):
    _, seg = totalseg
    with pytest.raises(ValueError, match=r"\(122, 101, 29\).*\(122, 101, 30\)"):
        save_label_map(tmp_path / "labels.nii.gz", np.zeros((122, 101, 29), dtype=np.uint8), seg)
    assert not any(tmp_path.iterdir())


def test_float_labels_and_bad_extension_are_refused(totalseg, tmp_path):
    _, seg = totalseg
    with pytest.raises(ValueError, match="integer label ids"):
        save_label_map(tmp_path / "labels.nii.gz", seg.array, seg)
    with pytest.raises(ValueError, match="unsupported file type .mha"):
        save_label_map(tmp_path / "labels.mha", seg.array.astype(np.uint8), seg)


@pytest.mark.parametrize("name, target", [("labels.nii.gz", "nib"), ("labels.nrrd", "sitk")])
def test_failing_save_keeps_existing_file(totalseg, tmp_path, monkeypatch, name, target):
    _, seg = totalseg
    path = tmp_path / name
    save_label_map(path, seg.array.astype(np.uint8), seg)
    before = path.read_bytes()

    def write_half_then_fail(_image, file_name, *args, **kwargs):
        Path(file_name).write_bytes(b"half a file")
        raise OSError("disk full")

    if target == "nib":
        monkeypatch.setattr(writers_module.nib, "save", write_half_then_fail)
    else:
        monkeypatch.setattr(writers_module.sitk, "WriteImage", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_label_map(path, np.zeros(seg.shape, dtype=np.uint8), seg)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [name]


# ----------------------------------------------------------------------------------------------- geometry


def test_to_model_space_ras(totalseg):
    ct, _ = totalseg
    image = to_model_space(ct)
    assert isinstance(image, MetaTensor)
    assert image.dtype == torch.float32
    assert tuple(image.shape) == (1, 243, 201, 59)  # 121 * 3 mm / 1.5 mm + 1 voxel centres per axis...
    np.testing.assert_allclose(image.affine.numpy()[:3, :3], np.diag([1.5, 1.5, 1.5]), atol=1e-6)
    np.testing.assert_allclose(image.affine.numpy()[:3, 3], ct.affine[:3, 3], atol=1e-4)
    # HU kept: on the nested grid every second model voxel is an original voxel.
    np.testing.assert_allclose(image[0, ::2, ::2, ::2].numpy(), ct.array, atol=1e-3)


def test_linear_world_field_is_exact_both_ways_and_a_one_voxel_shift_is_detected(dcmqi):
    """A field linear in world mm equals its formula at every voxel centre, in model and original space."""
    nifti, _, _ = dcmqi
    grid = Volume(world_field(nifti.affine, nifti.shape), nifti.affine)  # LPS, 0.81 mm, 3 slices
    image = to_model_space(grid, spacing=(1.5, 1.5, 1.5))
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    expected = world_field(image.affine.numpy(), tuple(image.shape[1:]))
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-3)

    back = to_original_space(image, grid)[0]
    assert back.shape == grid.shape
    inside = np.s_[1:-1, 1:-1, :2]  # the third 1 mm slice lies 0.5 mm beyond the last 1.5 mm model slice
    error = np.abs(back - grid.array)[inside]
    assert error.max() < 1e-3, error.max()
    # Beyond the model grid the border value is used: the third slice is off by 0.5 mm * 0.5 (z coefficient).
    third = np.abs(back - grid.array)[1:-1, 1:-1, 2]
    np.testing.assert_allclose(third, 0.25, atol=1e-3)

    # The same data on a grid whose origin moved by one voxel along i: the result must move with it.
    shifted_affine = nifti.affine.copy()
    shifted_affine[:3, 3] += nifti.affine[:3, 0]
    shifted = to_original_space(image, Volume(grid.array, shifted_affine))[0]
    np.testing.assert_allclose(shifted[inside], grid.array[2:, 1:-1, :2], atol=1e-3)  # new i = old i + 1
    shift_error = np.abs(shifted - grid.array)[inside]
    assert shift_error.min() > 0.2  # 0.3 * 0.81 mm everywhere: a half-voxel or one-voxel slip cannot hide


def test_smooth_field_survives_forward_and_back(totalseg):
    ct, _ = totalseg
    i, j, k = np.meshgrid(*(np.arange(n) for n in ct.shape), indexing="ij")
    field = np.sin(i / 9.0) * np.cos(j / 7.0) + 0.5 * np.sin(k / 5.0)
    for spacing in ((1.5, 1.5, 1.5), (1.7, 1.3, 2.2)):
        image = to_model_space(Volume(field, ct.affine), spacing=spacing)
        back = to_original_space(image, ct)
        assert back.shape == (1, *ct.shape)
        error = np.abs(back[0] - field)
        logger.info("smooth field at %s mm: max error %.4f, mean %.5f", spacing, error.max(), error.mean())
        assert error.max() < 0.05 and error.mean() < 0.01


def test_key_round_trip_totalseg_organs(totalseg):
    """One-hot liver, spleen, kidneys -> 1.5 mm model space -> original grid: Dice >= 0.95 each."""
    _, seg = totalseg
    scores = round_trip(seg, TOTALSEG_LABELS)
    logger.info("TotalSegmentator round-trip Dice at 1.5 mm: %s", scores)
    print("TotalSegmentator round-trip Dice at 1.5 mm:", {k: round(v, 4) for k, v in scores.items()})
    assert all(score >= 0.95 for score in scores.values()), scores
    # Negative control: the same check on a grid one voxel off (along any axis) must fail the 0.95 bar.
    for axis in range(3):
        shifted = round_trip(seg, TOTALSEG_LABELS, shift_axis=axis)
        logger.info("one voxel off along axis %d: %s", axis, shifted)
        assert min(shifted.values()) < 0.95, (axis, shifted)


def test_round_trip_non_nested_spacing(totalseg):
    """The 1.5 mm grid nests in the 3 mm one; an unaligned anisotropic spacing must also round-trip."""
    _, seg = totalseg
    scores = round_trip(seg, TOTALSEG_LABELS, spacing=(1.7, 1.3, 2.2))
    print(
        "TotalSegmentator round-trip Dice at (1.7, 1.3, 2.2) mm:", {k: round(v, 4) for k, v in scores.items()}
    )
    assert all(score >= 0.95 for score in scores.values()), scores


def test_three_slice_lps_round_trip(dcmqi):
    nifti, _, labels = dcmqi
    image = to_model_space(nifti)
    assert tuple(image.shape) == (1, 277, 277, 2)
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    back = to_original_space(image, nifti)
    assert back.shape == (1, 512, 512, 3)
    scores = round_trip(labels, DCMQI_LABELS)
    print("dcmqi 3-slice round-trip Dice at 1.5 mm:", {k: round(v, 4) for k, v in scores.items()})
    assert scores["liver"] >= 0.98 and scores["thoracic_spine"] >= 0.9 and scores["heart"] >= 0.9, scores


def test_nearest_mode_keeps_label_values(dcmqi):
    _, _, labels = dcmqi
    image = to_model_space(labels, mode="nearest")
    assert set(np.unique(image.numpy())) <= {0.0, 1.0, 2.0, 3.0}
    back = to_original_space(image, labels, mode="nearest")[0]
    assert set(np.unique(back)) <= {0.0, 1.0, 2.0, 3.0}
    assert dice(back == 1, labels.array == 1) > 0.95


def test_to_original_space_affine_sources(totalseg):
    ct, _ = totalseg
    image = to_model_space(ct)
    plain = image.as_tensor()
    from_meta = to_original_space(image, ct)
    np.testing.assert_array_equal(to_original_space(plain, ct, affine=image.affine.numpy()), from_meta)
    np.testing.assert_array_equal(to_original_space(image, ct, affine=image.affine), from_meta)
    with pytest.raises(ValueError, match="pass its model-space affine"):
        to_original_space(plain, ct)
    with pytest.raises(ValueError, match="differs from the MetaTensor's affine"):
        to_original_space(image, ct, affine=np.eye(4))
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        to_original_space(image[0], ct)
    with pytest.raises(ValueError, match="mode must be one of"):
        to_model_space(ct, mode="cubic")


def test_window_intensity_hand_computed():
    hu = torch.tensor([-175.0, 250.0, 37.5, -1000.0, 3000.0])
    np.testing.assert_allclose(window_intensity(hu).numpy(), [0.0, 1.0, 0.5, 0.0, 1.0], atol=1e-6)
    wide = window_intensity(hu, (-1000.0, 1000.0)).numpy()
    np.testing.assert_allclose(wide, [0.4125, 0.625, 0.51875, 0.0, 1.0], atol=1e-6)
    image = MetaTensor(hu.reshape(1, 5, 1, 1), affine=torch.eye(4))
    windowed = window_intensity(image)
    assert isinstance(windowed, MetaTensor) and windowed.dtype == torch.float32
    with pytest.raises(ValueError, match="high > low"):
        window_intensity(hu, (250.0, -175.0))


# ---------------------------------------------------------------------------------------- post-processing


def test_keep_largest_component_synthetic():
    mask = np.zeros((10, 10, 10), dtype=np.uint8)
    mask[0:2, 0:2, 0:2] = 1  # 8 voxels
    mask[5:8, 5:8, 5:8] = 1  # 27 voxels
    kept = keep_largest_component(mask)
    assert kept.dtype == np.uint8 and int(kept.sum()) == 27 and kept[6, 6, 6] == 1 and kept[0, 0, 0] == 0
    # Two 8-voxel cubes touching at one corner are one component with 26-connectivity, two with 6.
    corner = np.zeros((6, 6, 6), dtype=bool)
    corner[0:2, 0:2, 0:2] = True
    corner[2:4, 2:4, 2:4] = True
    corner[5, 5, 5] = True
    assert keep_largest_component(corner).sum() == 16
    assert keep_largest_component(corner, connectivity=1).sum() == 8
    assert not keep_largest_component(np.zeros((3, 3, 3), dtype=bool)).any()


@pytest.mark.parametrize("x_sign", [1.0, -1.0], ids=["RAS-grid", "LPS-grid"])
def test_split_by_laterality_synthetic(x_sign):
    # 10 voxels along i at 2 mm; with x_sign = -1 the i axis points to the patient's Left (LPS-like grid).
    affine = np.diag([2.0 * x_sign, 2.0, 2.0, 1.0])
    mask = np.ones((10, 3, 3), dtype=np.uint8)
    right = split_by_laterality(mask, "right", affine)
    left = split_by_laterality(mask, "left", affine)
    right_i = np.unique(np.nonzero(right)[0])
    # Plane through the grid centre (i = 4.5): RAS x >= plane is the patient's Right.
    expected_right = np.arange(5, 10) if x_sign > 0 else np.arange(0, 5)
    np.testing.assert_array_equal(right_i, expected_right)
    np.testing.assert_array_equal(right + left, mask)  # the two sides partition the mask
    # A body off-centre (i = 0..3, centroid 1.5) moves the plane.
    body = np.zeros_like(mask, dtype=bool)
    body[0:4] = True
    right_i = np.unique(np.nonzero(split_by_laterality(mask, "right", affine, body))[0])
    np.testing.assert_array_equal(right_i, np.arange(2, 10) if x_sign > 0 else np.arange(0, 2))
    with pytest.raises(ValueError, match="patient's side"):
        split_by_laterality(mask, "dexter", affine)


def test_body_mask_and_kidney_laterality_on_real_ct(totalseg):
    ct, seg = totalseg
    body = body_mask(ct)
    assert body.dtype == bool and body.shape == ct.shape
    assert not body[0, 0, :].any() and not body[-1, -1, :].any()  # air in the corners
    labelled = seg.array > 0
    assert body[labelled].mean() > 0.99  # every structure, lungs included (holes filled), lies in the body
    kidneys = np.isin(seg.array, [TOTALSEG_LABELS["kidney_right"], TOTALSEG_LABELS["kidney_left"]])
    right = split_by_laterality(kidneys, "right", ct.affine, body)
    left = split_by_laterality(kidneys, "left", ct.affine, body)
    right_dice = dice(right, seg.array == TOTALSEG_LABELS["kidney_right"])
    left_dice = dice(left, seg.array == TOTALSEG_LABELS["kidney_left"])
    print(f"kidney laterality Dice: right {right_dice:.4f}, left {left_dice:.4f}")
    assert right_dice >= 0.95 and left_dice >= 0.95
    # The liver lies on the patient's right: it stays whole on the right and vanishes on the left.
    liver = seg.array == TOTALSEG_LABELS["liver"]
    assert split_by_laterality(liver, "right", ct.affine, body).sum() > 0.9 * liver.sum()
    assert split_by_laterality(liver, "left", ct.affine, body).sum() < 0.1 * liver.sum()
