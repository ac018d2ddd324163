"""Tests for the dataset layer: list files, dataset folders and label transfer into the universal32 channels.

Label maps are small synthetic grids (12 x 8 x 6 voxels, 10 mm) with one block per raw value; the expected
channels are written out by hand from each dataset's documentation, independently of ``datasets.json``.
The TotalSegmentator tests use the real ``../shared/data/totalseg`` files and skip when they are absent.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from TextGuidedSegLib.data import label_transfer
from TextGuidedSegLib.data.datasets import (
    NUM_CHANNELS,
    RESOURCE,
    Case,
    DatasetListError,
    UnknownDatasetError,
    case_name,
    dataset_for_path,
    dataset_from_class_map,
    get_dataset,
    known_datasets,
    load_datasets,
    read_list_file,
    structure_name,
)
from TextGuidedSegLib.data.label_transfer import split_left_right, transfer_labels

SHAPE = (12, 8, 6)
#: RAS+ affine, 10 mm voxels: i points to the patient's Right, so large i = patient's right.
RAS = np.diag([10.0, 10.0, 10.0, 1.0])
#: Blobs of a paired structure: low i is the patient's left, high i the right (under RAS).
LEFT_BLOB = (slice(0, 2), slice(0, 3), slice(None))
RIGHT_BLOB = (slice(10, 12), slice(0, 3), slice(None))
#: The second pair (CT-ORG lungs) sits at the other end of j.
LEFT_BLOB_2 = (slice(0, 2), slice(5, 8), slice(None))
RIGHT_BLOB_2 = (slice(10, 12), slice(5, 8), slice(None))


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-per-value warnings afresh."""
    monkeypatch.setattr(label_transfer, "_warned", set())


def column(n: int) -> tuple[slice, slice, slice]:
    """The n-th block (0-based) of unpaired raw values: a 1 x 1 x 6 column in i = 2..9, clear of the blobs."""
    i, j = 2 + n % 8, n // 8
    return slice(i, i + 1), slice(j, j + 1), slice(None)


def block_map(values: list[int]) -> tuple[np.ndarray, dict[int, tuple[slice, slice, slice]]]:
    """A (12, 8, 6) label map with raw value ``values[n]`` in :func:`column` ``n``."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    where = {}
    for n, value in enumerate(values):
        where[value] = column(n)
        labels[where[value]] = value
    return labels, where


def expected_target(
    where: dict[int, tuple[slice, slice, slice]], channels: dict[int, set[int]]
) -> np.ndarray:
    """The (32, 12, 8, 6) target for blocks ``where[v]`` that should reach label ids ``channels[v]``."""
    target = np.zeros((NUM_CHANNELS, *SHAPE), dtype=np.uint8)
    for value, ids in channels.items():
        for label_id in ids:
            target[(label_id - 1, *where[value])] = 1
    return target


def lps_flip(labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same physical label map on a grid whose i and j axes run the other way (LPS-like storage)."""
    flip = np.array(
        [[-1, 0, 0, labels.shape[0] - 1], [0, -1, 0, labels.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float
    )
    return labels[::-1, ::-1, :].copy(), affine @ flip


# Raw value -> label ids, written from each dataset's own label list (see datasets.json notes).
UNPAIRED = {
    "btcv": (
        {v: {v} for v in range(1, 15)},
        set(range(1, 15)),
    ),
    "tcia_pancreas": (
        {1: {1}, 2: set(), 3: {3}, 4: {4}, 5: {5}, 6: {6}, 7: {7}, 8: set(), 9: set(), 10: set(), 11: {11}}
        | {12: set(), 13: set(), 14: {14}},
        {1, 3, 4, 5, 6, 7, 11, 14},
    ),
    "chaos": ({1: {6}}, {6}),
    "lits": ({1: {6}, 2: {27, 6}}, {6, 27}),  # tumour also counts as liver
    "amos": (
        {1: {1}, 2: {2}, 3: {3}, 4: {4}, 5: {5}, 6: {6}, 7: {7}, 8: {8}, 9: {9}, 10: {11}, 11: {12}, 12: {13}}
        | {13: {14}, 14: {21}, 15: set()},  # 15 prostate/uterus is dropped
        {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 21},
    ),
    "msd_task03": ({1: {6}, 2: {27, 6}}, {6, 27}),
    "msd_task06": ({1: {30}}, {30}),  # lungs not annotated: no host voxels
    "msd_task07": ({1: {11}, 2: {28, 11}}, {11, 28}),
    "msd_task08": ({1: {15}, 2: {29}}, {15, 29}),  # tumour is in the liver, not the vessels
    "msd_task09": ({1: {1}}, {1}),
    "msd_task10": ({1: {31}}, {31}),  # colon not annotated: no host voxels
    "flare22": (
        {
            1: {6},
            2: {2},
            3: {1},
            4: {11},
            5: {8},
            6: {9},
            7: {12},
            8: {13},
            9: {4},
            10: {5},
            11: {7},
            12: {14},
        }
        | {13: {3}},
        {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14},
    ),
}


@pytest.mark.parametrize("dataset", sorted(UNPAIRED))
def test_transfer_unpaired_datasets(dataset: str) -> None:
    channels, template = UNPAIRED[dataset]
    labels, where = block_map(sorted(channels))
    result = transfer_labels(labels, dataset)
    assert result.target.shape == (NUM_CHANNELS, *SHAPE) and result.target.dtype == np.uint8
    np.testing.assert_array_equal(result.target, expected_target(where, channels))
    assert result.annotated == tuple(sorted(template))
    assert get_dataset(dataset).channels_of(sorted(channels)) == tuple(sorted(template))
    assert result.dataset == dataset and result.unknown_values == ()


def test_btcv_duodenum_is_annotated_only_where_present() -> None:
    labels, _ = block_map(list(range(1, 14)))
    assert transfer_labels(labels, "btcv").annotated == tuple(range(1, 14))
    assert get_dataset("btcv").annotated == tuple(range(1, 14))
    labels[column(20)] = 14
    assert transfer_labels(labels, "btcv").annotated == tuple(range(1, 15))


# (dataset, unpaired raw value -> label ids, pairs as (raw value, right id, left id, blob set), template)
PAIRED = {
    "word": (
        {1: {6}, 2: {1}, 3: {3}, 4: {2}, 5: {7}, 6: {4}, 7: {5}, 8: {11}, 9: {14}, 10: {18}, 11: {19}}
        | {13: {20}, 14: {21}, 15: {23}, 16: {24}},
        [(12, 12, 13, 1)],  # 12 adrenal: both glands
        {1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 18, 19, 20, 21, 23, 24},
    ),
    "abdomenct1k": ({1: {6}, 3: {1}, 4: {11}}, [(2, 2, 3, 1)], {1, 2, 3, 6, 11}),
    "abdomenct12organ": (
        {1: {6}, 3: {1}, 4: {11}, 5: {8}, 6: {9}, 7: {7}, 8: {4}, 9: {5}, 10: {12}, 11: {13}, 12: {25}},
        [(2, 2, 3, 1)],
        {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 25},
    ),
    "ctorg": (
        {1: {6}, 2: {21}, 5: set(), 6: set()},  # 5 bone, 6 brain: outside the taxonomy
        [(4, 2, 3, 1), (3, 16, 17, 2)],  # kidneys, lungs
        {2, 3, 6, 16, 17, 21},
    ),
}


def paired_map(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Label map and expected target (under the RAS affine) of a dataset in ``PAIRED``."""
    channels, pairs, _ = PAIRED[dataset]
    labels, where = block_map(sorted(channels))
    expected = expected_target(where, channels)
    for raw, right_id, left_id, blobs in pairs:
        right_blob, left_blob = (RIGHT_BLOB, LEFT_BLOB) if blobs == 1 else (RIGHT_BLOB_2, LEFT_BLOB_2)
        labels[right_blob] = raw
        labels[left_blob] = raw
        expected[(right_id - 1, *right_blob)] = 1
        expected[(left_id - 1, *left_blob)] = 1
    return labels, expected


@pytest.mark.parametrize("dataset", sorted(PAIRED))
def test_transfer_paired_datasets_split_by_side(dataset: str) -> None:
    labels, expected = paired_map(dataset)
    result = transfer_labels(labels, dataset, RAS)
    np.testing.assert_array_equal(result.target, expected)
    assert result.annotated == tuple(sorted(PAIRED[dataset][2]))
    assert get_dataset(dataset).annotated == result.annotated

    # the same patient stored with i and j reversed (LPS-like): the same physical side, the same kidney
    flipped, flipped_affine = lps_flip(labels, RAS)
    assert nib.aff2axcodes(flipped_affine) == ("L", "P", "S")
    result_flipped = transfer_labels(flipped, dataset, flipped_affine)
    np.testing.assert_array_equal(result_flipped.target[:, ::-1, ::-1, :], expected)

    # axes permuted (world x along j): still the same sides
    swapped = np.ascontiguousarray(labels.transpose(1, 0, 2))
    swapped_affine = RAS[:, [1, 0, 2, 3]]
    result_swapped = transfer_labels(swapped, dataset, swapped_affine)
    np.testing.assert_array_equal(result_swapped.target, expected.transpose(0, 2, 1, 3))


def test_kits_tumour_and_cyst_join_the_kidney_of_their_side() -> None:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[RIGHT_BLOB] = 1
    labels[LEFT_BLOB] = 1
    tumour = (slice(10, 12), slice(3, 5), slice(None))  # touches the right kidney
    cyst = (slice(0, 2), slice(3, 5), slice(None))  # touches the left kidney
    labels[tumour] = 2
    labels[cyst] = 3
    expected = np.zeros((NUM_CHANNELS, *SHAPE), dtype=np.uint8)
    for region in (RIGHT_BLOB, tumour):
        expected[(1, *region)] = 1  # right_kidney = 2
    for region in (LEFT_BLOB, cyst):
        expected[(2, *region)] = 1  # left_kidney = 3
    expected[(25, *tumour)] = 1  # kidney_tumor = 26
    expected[(31, *cyst)] = 1  # kidney_cyst = 32
    for affine_labels, affine, unflip in (
        (labels, RAS, lambda t: t),
        (*lps_flip(labels, RAS), lambda t: t[:, ::-1, ::-1, :]),
    ):
        result = transfer_labels(affine_labels, "kits", affine)
        np.testing.assert_array_equal(unflip(result.target), expected)
        assert result.annotated == (2, 3, 26, 32)


def test_phantom_mapping_follows_the_phantom_label_ids() -> None:
    phantom = pytest.importorskip("TextGuidedSegLib.data.phantom")
    spec = get_dataset("phantom")
    names = [structure_name(label_id) for label_id in range(1, NUM_CHANNELS + 1)]
    for class_name, raw in phantom.LABEL_IDS.items():
        expected = (names.index(class_name) + 1,) if class_name in names else ()
        assert spec.table[raw] == expected, class_name
    assert spec.num_classes == max(phantom.LABEL_IDS.values())
    assert dataset_for_path("images/phantom_000.nii.gz") == "phantom"


def test_tumour_hosted_by_sides_labelled_apart(tmp_path: Path) -> None:
    """Right and left kidney labelled apart plus an unsided tumour: the tumour joins the side it lies on."""
    shipped = json.loads(RESOURCE.read_text())
    shipped["datasets"] = {"sided": {"folders": ["sided"], "labels": [2, 3, 26]}}
    mapping = tmp_path / "datasets.json"
    mapping.write_text(json.dumps(shipped))
    spec = load_datasets(mapping)["sided"]
    assert spec.annotated == (2, 3, 26)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[RIGHT_BLOB] = 1
    labels[LEFT_BLOB] = 2
    tumour = (slice(0, 2), slice(3, 4), slice(None))  # on the left kidney
    labels[tumour] = 3
    for grid, affine, unflip in (
        (labels, RAS, lambda a: a),
        (*lps_flip(labels, RAS), lambda a: a[::-1, ::-1]),
    ):
        result = transfer_labels(grid, spec, affine)
        np.testing.assert_array_equal(unflip(result.mask(3)), np.isin(labels, [2, 3]).astype(np.uint8))
        np.testing.assert_array_equal(unflip(result.mask(2)), (labels == 1).astype(np.uint8))
        np.testing.assert_array_equal(unflip(result.mask(26)), (labels == 3).astype(np.uint8))


def test_mapping_file_errors(tmp_path: Path) -> None:
    shipped = json.loads(RESOURCE.read_text())
    mapping = tmp_path / "datasets.json"
    for entry, message in (
        ({"labels": [6, "spleen_pair"]}, "unknown pair 'spleen_pair'"),
        ({"labels": [6, 40]}, "label id 40 outside 0..32"),
        ({"labels": [6], "optional": [2]}, "optional raw values \\[2\\] have no mapping"),
        ({"classes": {"liver": 6}}, "classes without a class_ids entry: liver"),
    ):
        shipped["datasets"] = {"bad": {"folders": ["bad"], **entry}}
        mapping.write_text(json.dumps(shipped))
        with pytest.raises(ValueError, match=f"dataset 'bad'.*{message}"):
            load_datasets(mapping)


def test_split_single_kidney_uses_the_grid_centre() -> None:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[RIGHT_BLOB] = True
    right, left = split_left_right(mask, RAS)
    assert np.array_equal(right, mask) and not left.any()
    flipped, flipped_affine = lps_flip(mask, RAS)
    right, left = split_left_right(flipped, flipped_affine)
    assert np.array_equal(right, flipped) and not left.any()


def test_split_keeps_close_fragments_on_one_side() -> None:
    """Two fragments at the same x (one kidney cut in two) are not taken as the two sides."""
    mask = np.zeros(SHAPE, dtype=bool)
    mask[9:12, 0:2, :] = True
    mask[9:12, 5:7, :] = True
    right, left = split_left_right(mask, RAS)
    assert np.array_equal(right, mask) and not left.any()


def test_split_cuts_a_component_across_the_midline() -> None:
    """A horseshoe-like bar across the grid is cut at the midline (grid centre x = 55 mm)."""
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:, 0:2, :] = True
    right, left = split_left_right(mask, RAS)
    assert np.array_equal(np.unique(np.nonzero(right)[0]), np.arange(6, 12))
    assert np.array_equal(np.unique(np.nonzero(left)[0]), np.arange(0, 6))
    assert not (right & left).any() and np.array_equal(right | left, mask)


def test_real_kidneys_split_like_totalsegmentator(shared_data: Path) -> None:
    """Merge TotalSegmentator's two kidneys into one class (AbdomenCT-1K style): the split recovers them."""
    image = nib.load(shared_data / "totalseg" / "example_seg.nii.gz")
    raw = np.asarray(image.dataobj)
    merged = np.zeros(raw.shape, dtype=np.uint8)
    merged[raw == 5] = 1  # liver
    merged[(raw == 2) | (raw == 3)] = 2  # kidney, both sides
    merged[raw == 1] = 3  # spleen
    merged[raw == 7] = 4  # pancreas
    result = transfer_labels(merged, "abdomenct1k", image.affine)
    np.testing.assert_array_equal(result.mask(2), (raw == 2).astype(np.uint8))  # kidney_right
    np.testing.assert_array_equal(result.mask(3), (raw == 3).astype(np.uint8))  # kidney_left
    np.testing.assert_array_equal(result.mask(6), (raw == 5).astype(np.uint8))


def test_totalseg_class_ids_match_the_real_class_map(shared_data: Path) -> None:
    class_map = json.loads((shared_data / "totalseg" / "class_map_total_v2.json").read_text())
    spec = get_dataset("totalseg")
    assert spec.num_classes == len(class_map) == 117
    for raw, targets in spec.table.items():
        assert class_map[str(raw)] is not None and targets, f"raw {raw} ({class_map[str(raw)]})"
    names = {class_map[str(raw)] for raw in spec.table}
    assert {
        "liver",
        "spleen",
        "kidney_left",
        "kidney_right",
        "small_bowel",
        "lung_middle_lobe_right",
    } <= names
    assert spec.table == dataset_from_class_map(class_map).table
    assert "femur_left" in class_map.values() and "femur_left" not in names  # whole femur, not the head


def test_totalseg_mapping_on_real_labels(shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = nib.load(shared_data / "totalseg" / "example_seg.nii.gz")
    raw = np.asarray(image.dataobj)
    with caplog.at_level(logging.WARNING, logger="TextGuidedSegLib.data.label_transfer"):
        result = transfer_labels(raw, "totalseg", image.affine)
    assert not caplog.records  # vertebrae, ribs, muscles: outside the taxonomy, dropped quietly
    assert result.unknown_values == ()
    for label_id, raw_ids in {
        6: [5],  # liver
        1: [1],  # spleen
        2: [2, 24],  # right kidney (+ its cysts)
        3: [3, 23],  # left kidney
        16: [12, 13, 14],  # right lung lobes
        17: [10, 11],  # left lung lobes
        19: [18],  # small bowel -> intestine
        8: [52],
        9: [63],
        10: [64],
    }.items():
        np.testing.assert_array_equal(
            result.mask(label_id), np.isin(raw, raw_ids).astype(np.uint8), err_msg=structure_name(label_id)
        )
    assert (raw == 5).sum() > 1000 and (raw == 2).sum() > 1000  # the masks compared are real
    assert result.annotated == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 21, 22, 32)


def test_totalseg_cysts_keep_their_named_side() -> None:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[column(0)] = 23  # kidney_cyst_left, deliberately on no particular side
    labels[column(1)] = 24  # kidney_cyst_right
    labels[column(2)] = 75  # femur_left: outside the taxonomy
    result = transfer_labels(labels, "totalseg")
    np.testing.assert_array_equal(result.mask(32), np.isin(labels, [23, 24]).astype(np.uint8))
    np.testing.assert_array_equal(result.mask(3), (labels == 23).astype(np.uint8))
    np.testing.assert_array_equal(result.mask(2), (labels == 24).astype(np.uint8))
    assert int(result.target.sum()) == 4 * SHAPE[2]


def test_unknown_raw_value_is_warned_once_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    labels, where = block_map([1, 6, 15])
    with caplog.at_level(logging.WARNING, logger="TextGuidedSegLib.data.label_transfer"):
        first = transfer_labels(labels, "btcv")
        second = transfer_labels(labels, "btcv")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "btcv" in warnings[0].getMessage() and "15" in warnings[0].getMessage()
    assert first.unknown_values == second.unknown_values == (15,)
    assert not first.target[(slice(None), *where[15])].any()
    np.testing.assert_array_equal(first.target, expected_target(where, {1: {1}, 6: {6}}))


def test_known_but_unmapped_values_are_dropped_quietly(caplog: pytest.LogCaptureFixture) -> None:
    labels, _ = paired_map("ctorg")
    labels[column(30)] = 5  # bone
    with caplog.at_level(logging.WARNING):
        result = transfer_labels(labels, "ctorg", RAS)
    assert not caplog.records and result.unknown_values == ()


@pytest.mark.parametrize("dataset", known_datasets())
def test_channels_outside_the_template_stay_empty(dataset: str) -> None:
    spec = get_dataset(dataset)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, spec.max_raw_value + 1, size=SHAPE).astype(np.int16)
    result = transfer_labels(labels, dataset, RAS)
    outside = [c for c in range(1, NUM_CHANNELS + 1) if c not in result.annotated]
    assert not result.target[[c - 1 for c in outside]].any()
    assert set(np.unique(result.target)) <= {0, 1}
    for label_id in result.annotated:  # every annotated channel is reached by some raw value
        assert label_id in spec.channels_of(list(spec.table))


def test_transfer_input_checks() -> None:
    labels, _ = block_map([1, 2])
    with pytest.raises(UnknownDatasetError, match="known datasets: btcv, tcia_pancreas"):
        transfer_labels(labels, "synapse")
    with pytest.raises(ValueError, match="affine"):
        transfer_labels(labels, "kits")
    with pytest.raises(ValueError, match="3D"):
        transfer_labels(labels[0], "lits")
    with pytest.raises(ValueError, match="negative"):
        transfer_labels(labels.astype(np.int16) - 1, "lits")
    with pytest.raises(ValueError, match="non-integer"):
        transfer_labels(labels + 0.5, "lits")
    as_float = transfer_labels(labels.astype(np.float64), "lits")  # nibabel's get_fdata() output
    np.testing.assert_array_equal(as_float.target, transfer_labels(labels, "lits").target)


# ----------------------------------------------------------------------------------------------- list files


def touch(root: Path, *relative: str) -> None:
    for name in relative:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_dataset_for_path() -> None:
    assert dataset_for_path("01_Multi-Atlas_Labeling/img/img0001.nii.gz") == "btcv"
    assert dataset_for_path("10_Decathlon/Task03_Liver/imagesTr/liver_0.nii.gz") == "msd_task03"
    assert dataset_for_path("10_Decathlon/Task10_Colon/imagesTr/colon_001.nii.gz") == "msd_task10"
    assert dataset_for_path("MICCAI_FLARE22_Train/images/FLARE22_Tr_0001_0000.nii.gz") == "flare22"
    assert dataset_for_path("12_CT-ORG/volume-0.nii.gz") == "ctorg"
    assert dataset_for_path("elsewhere/x.nii.gz", default="totalseg") == "totalseg"
    with pytest.raises(UnknownDatasetError, match=r"'10_Decathlon'.*known folders: 01_Multi-Atlas_Labeling"):
        dataset_for_path("10_Decathlon/Task01_BrainTumour/imagesTr/BRATS_001.nii.gz")
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'nope'"):
        dataset_for_path("elsewhere/x.nii.gz", default="nope")


def test_case_name() -> None:
    assert case_name("a/img0001.nii.gz") == "img0001"
    assert case_name("a/case.seg.nrrd") == "case"
    assert case_name("a/liver_0.nii") == "liver_0"
    assert case_name("a/b.mha") == "b"


def test_read_list_file_tolerates_formatting(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "01_Multi-Atlas_Labeling/img/img0001.nii.gz",
        "01_Multi-Atlas_Labeling/label/label0001.nii.gz",
        "10_Decathlon/Task03_Liver/imagesTr/liver_0.nii.gz",
        "10_Decathlon/Task03_Liver/labelsTr/liver_0.nii.gz",
        "05_KiTS/img/case_00001.nii.gz",
        "05_KiTS/label/case_00001.nii.gz",
        "09_AMOS/imagesTs/amos_0003.nii.gz",
    )
    text = (
        "# training cases\r\n"
        "\r\n"
        "01_Multi-Atlas_Labeling/img/img0001.nii.gz\t01_Multi-Atlas_Labeling/label/label0001.nii.gz  \t \r\n"
        "   \t  \r\n"
        "10_Decathlon/Task03_Liver/imagesTr/liver_0.nii.gz\t\t10_Decathlon/Task03_Liver/labelsTr/liver_0.nii.gz"
        "  # two tabs, trailing comment\n"
        "05_KiTS/img/case_00001.nii.gz\t05_KiTS/label/case_00001.nii.gz\n"
        "09_AMOS/imagesTs/amos_0003.nii.gz\r\n"
        "    # indented comment"
    )
    list_file = tmp_path / "train.txt"
    list_file.write_bytes(text.encode())
    cases = read_list_file(list_file)
    assert [(c.dataset, c.line, c.name) for c in cases] == [
        ("btcv", 3, "img0001"),
        ("msd_task03", 5, "liver_0"),
        ("kits", 6, "case_00001"),
        ("amos", 7, "amos_0003"),
    ]
    assert cases[0] == Case(
        image=tmp_path / "01_Multi-Atlas_Labeling/img/img0001.nii.gz",
        label=tmp_path / "01_Multi-Atlas_Labeling/label/label0001.nii.gz",
        dataset="btcv",
        line=3,
        name="img0001",
    )
    assert cases[3].label is None  # image-only line: a test case


def test_read_list_file_data_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root, "03_CHAOS/img/1.nii.gz", "03_CHAOS/label/1.nii.gz")
    list_file = tmp_path / "lists" / "chaos.txt"
    list_file.parent.mkdir()
    list_file.write_text("03_CHAOS/img/1.nii.gz\t03_CHAOS/label/1.nii.gz\n")
    (case,) = read_list_file(list_file, data_root=root)
    assert case.image == root / "03_CHAOS/img/1.nii.gz" and case.dataset == "chaos"
    with pytest.raises(DatasetListError, match="missing image"):
        read_list_file(list_file)  # relative to the list's folder: nothing there
    assert read_list_file(list_file, check_files=False)[0].image == list_file.parent / "03_CHAOS/img/1.nii.gz"


def test_read_list_file_reports_every_missing_file(tmp_path: Path) -> None:
    touch(tmp_path, "04_LiTS/img/volume-0.nii.gz", "04_LiTS/label/segmentation-1.nii.gz")
    list_file = tmp_path / "lits.txt"
    list_file.write_text(
        "04_LiTS/img/volume-0.nii.gz\t04_LiTS/label/segmentation-0.nii.gz\n"
        "# comment\n"
        "04_LiTS/img/volume-1.nii.gz\t04_LiTS/label/segmentation-1.nii.gz\n"
        "04_LiTS/img/volume-2.nii.gz\t04_LiTS/label/segmentation-2.nii.gz\n"
    )
    with pytest.raises(DatasetListError) as caught:
        read_list_file(list_file)
    assert caught.value.problems == [
        f"{list_file}:1: missing label {tmp_path / '04_LiTS/label/segmentation-0.nii.gz'}",
        f"{list_file}:3: missing image {tmp_path / '04_LiTS/img/volume-1.nii.gz'}",
        f"{list_file}:4: missing image {tmp_path / '04_LiTS/img/volume-2.nii.gz'}",
        f"{list_file}:4: missing label {tmp_path / '04_LiTS/label/segmentation-2.nii.gz'}",
    ]
    assert str(caught.value).startswith(f"4 problem(s) in list file {list_file}:")
    assert isinstance(caught.value, ValueError)


def test_read_list_file_lists_twenty_problems_then_a_count(tmp_path: Path) -> None:
    list_file = tmp_path / "many.txt"
    list_file.write_text("".join(f"03_CHAOS/img/{n}.nii.gz\n" for n in range(25)))
    with pytest.raises(DatasetListError) as caught:
        read_list_file(list_file)
    message = str(caught.value)
    assert len(caught.value.problems) == 25
    assert f"{list_file}:20: missing image" in message and f"{list_file}:21:" not in message
    assert message.endswith("... and 5 more")


def test_read_list_file_malformed_lines(tmp_path: Path) -> None:
    list_file = tmp_path / "bad.txt"
    list_file.write_text(
        "03_CHAOS/img/1.nii.gz\t03_CHAOS/label/1.nii.gz\textra.nii.gz\n"
        "03_CHAOS/img/2.nii.gz 03_CHAOS/label/2.nii.gz\n"
        "03_CHAOS/img/3.nii.gz    03_CHAOS/label/3.nii.gz\n"
        "Synapse/img/4.nii.gz\tSynapse/label/4.nii.gz\n"
        "03_CHAOS/img/5.nii.gz\t03_CHAOS/label/5.nii.gz\n"
    )
    with pytest.raises(DatasetListError) as caught:
        read_list_file(list_file, check_files=False)
    problems = caught.value.problems
    assert len(problems) == 4
    assert problems[0].startswith(f"{list_file}:1: 3 tab-separated fields")
    assert problems[1].startswith(f"{list_file}:2: whitespace inside a path") and "tab" in problems[1]
    assert problems[2].startswith(f"{list_file}:3: whitespace inside a path")
    assert problems[3].startswith(f"{list_file}:4: unknown dataset folder 'Synapse'")
    assert "03_CHAOS" in problems[3] and "10_Decathlon/Task03_*" in problems[3]


def test_read_list_file_default_dataset_and_empty(tmp_path: Path) -> None:
    list_file = tmp_path / "other.txt"
    list_file.write_text("Synapse/img/4.nii.gz\tSynapse/label/4.nii.gz\n")
    (case,) = read_list_file(list_file, check_files=False, default_dataset="btcv")
    assert case.dataset == "btcv"
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(DatasetListError, match="no cases"):
        read_list_file(empty)
