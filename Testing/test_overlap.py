"""Overlapping structures (issue 14, item 1): a tumour inside its organ keeps both masks, end to end.

The model is an oracle: the Segmenter runs as always (prompt, model space, resampling back, thresholds,
outputs), but its model-space probabilities are the phantom's true masks resampled into model space, the
liver 0.9 where the liver (tumour included) is and the tumour 0.97 where the tumour is, so the exclusive
label map gives the tumour voxels to the tumour and the liver loses them; only each query's own mask keeps
both. What is tested is what happens to the probabilities, not what a network knows.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from TextGuidedSegLib.bundle import load_bundle
from TextGuidedSegLib.data.phantom import LABEL_IDS, LESION_LABEL_IDS, PhantomConfig, make_phantom
from TextGuidedSegLib.evaluation import dice_score, query_mask
from TextGuidedSegLib.inference import Segmenter
from TextGuidedSegLib.inference.geometry import to_model_space
from TextGuidedSegLib.io import Volume, save_masks
from TextGuidedSegLib.taxonomy import get_taxonomy, parse_prompt
from TextGuidedSegLib.taxonomy.overlap import describe_pairs, overlapping_pairs

# 32 x 32 x 16 cm at 4 mm (the phantom's default field of view); the bundle works at 5 mm.
PHANTOM = PhantomConfig(shape=(80, 80, 40), spacing=(4.0, 4.0, 4.0), seed=4, liver_tumor=True)
STRUCTURES = ("liver", "spleen", "liver_tumor")
LEVELS = {"liver": 0.9, "spleen": 0.9, "liver_tumor": 0.97}  # oracle probability inside each structure


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PHANTOM)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A random-weight film_v1 bundle for liver, spleen and liver tumour at 5 mm (the oracle replaces its
    network's output)."""
    from TextGuidedSegLib.bundle import BundleConfig, InferenceConfig, PreprocessConfig, save_bundle
    from TextGuidedSegLib.models import ModelConfig, build_model
    from TextGuidedSegLib.text import EmbeddingCache

    taxonomy = get_taxonomy().subset(list(STRUCTURES))
    model_config = ModelConfig(feature_size=12, text_dim=16)
    torch.manual_seed(0)
    cache = EmbeddingCache("random-test-vectors", model_config.text_dim)
    cache.add(taxonomy.prompts, torch.randn(len(taxonomy), model_config.text_dim))
    config = BundleConfig(
        name="tiny_overlap",
        model=model_config,
        taxonomy=taxonomy,
        preprocessing=PreprocessConfig(spacing=(5.0, 5.0, 5.0)),
        inference=InferenceConfig(roi_size=(64, 64, 64)),
    )
    path = tmp_path_factory.mktemp("bundle") / "tiny_overlap"
    return load_bundle(save_bundle(path, build_model(model_config), config, cache))


@pytest.fixture(scope="module")
def oracle_run(bundle, phantom):
    """``run(prompt)``: segment the tumour phantom for ``prompt`` with an oracle in place of the network
    (each prompt and options once per module)."""
    volume = Volume(phantom.image, phantom.affine)
    done = {}

    def run(prompt: str, **options):
        key = (prompt, tuple(sorted(options.items())))
        if key not in done:
            done[key] = segment(prompt, **options)
        return done[key]

    def segment(prompt: str, **options):
        segmenter = Segmenter(bundle, device="cpu", progress=False, **options)
        prepared = segmenter.prepare(volume)
        queries = segmenter.queries(prompt)

        def oracle(image, text, class_indices, step=None, *, features=None):
            maps = []
            for query in queries:
                truth = Volume(phantom.mask(query.class_name).astype(np.float32), phantom.affine)
                moved = to_model_space(truth, bundle.config.preprocessing.spacing)[0][prepared.crop]
                maps.append(torch.where(moved >= 0.5, LEVELS[query.class_name], 0.02).float())
            assert tuple(maps[0].shape) == tuple(image.shape[2:])
            return torch.stack(maps), None

        segmenter.predict_probabilities = oracle
        return segmenter.segment(volume, queries, prepared=prepared)

    return run


def test_overlapping_pairs_come_from_the_taxonomy_regions_and_parts() -> None:
    taxonomy = get_taxonomy()
    queries = parse_prompt(
        "liver, liver tumour, spleen, both kidneys, kidney cyst and pancreas tumor", taxonomy
    )
    names = [q.class_name for q in queries]
    pairs = {(names[i], names[j]) for i, j in overlapping_pairs(queries)}
    assert pairs == {
        ("liver", "liver_tumor"),
        ("right_kidney", "kidney_cyst"),
        ("left_kidney", "kidney_cyst"),
    }
    assert overlapping_pairs(parse_prompt("liver, spleen and both kidneys", taxonomy)) == []
    pancreas = parse_prompt("pancreas and pancreas tumour", taxonomy)
    assert describe_pairs(pancreas, overlapping_pairs(pancreas)) == "Pancreas / Pancreas Tumor"


def test_sides_and_parts_from_the_anatomy_vocabulary() -> None:
    from TextGuidedSegLib.taxonomy import StructureQuery, vocabulary_taxonomy

    names = [
        "kidney",
        "right_kidney",
        "left_kidney",
        "right_kidney_cyst",
        "lung_tumor",
        "right_lung_upper_lobe",
    ]
    taxonomy = vocabulary_taxonomy("test", names)
    queries = [StructureQuery(text=s.name, prompt=s.prompt, structure=s) for s in taxonomy]
    pairs = {(names[i], names[j]) for i, j in overlapping_pairs(queries)}
    assert ("kidney", "right_kidney") in pairs  # a whole and its part
    assert ("right_kidney", "right_kidney_cyst") in pairs  # region inherited from kidney_cyst
    assert ("left_kidney", "right_kidney_cyst") not in pairs  # sides disagree
    assert ("lung_tumor", "right_lung_upper_lobe") in pairs  # the host's parts
    assert ("right_kidney", "left_kidney") not in pairs


def test_tumour_phantom_is_the_same_patient_with_a_tumour_inside_the_liver(phantom) -> None:
    plain = make_phantom(PhantomConfig(shape=PHANTOM.shape, spacing=PHANTOM.spacing, seed=PHANTOM.seed))
    tumour = phantom.labels == LESION_LABEL_IDS["liver_tumor"]
    assert 30 < tumour.sum() < 2000  # radius 10-18 mm at 4 mm: ~65-380 voxels
    assert np.all(plain.labels[tumour] == LABEL_IDS["liver"])  # wholly inside the liver
    np.testing.assert_array_equal(phantom.labels[~tumour], plain.labels[~tumour])
    np.testing.assert_array_equal(phantom.mask("liver"), plain.labels == LABEL_IDS["liver"])
    from scipy import ndimage

    near = ndimage.binary_dilation(tumour, iterations=3)
    np.testing.assert_array_equal(phantom.image[~near], plain.image[~near])
    assert phantom.image[tumour].mean() < plain.image[tumour].mean() - 25  # hypodense
    assert phantom.label_names[LESION_LABEL_IDS["liver_tumor"]] == "liver_tumor"


def test_liver_and_liver_tumour_keep_both_masks_and_both_dice_values(oracle_run, phantom) -> None:
    result = oracle_run("liver and liver tumour")
    liver, tumour = phantom.mask("liver"), phantom.mask("liver_tumor")
    assert result.masks is not None and result.masks.shape == (2, *phantom.labels.shape)
    assert result.masks.dtype == np.bool_
    dice_liver = dice_score(result.masks[0], liver)
    dice_tumour = dice_score(result.masks[1], tumour)
    assert dice_liver > 0.95 and dice_tumour > 0.8, (dice_liver, dice_tumour)
    # the overlap belongs to both: the tumour's voxels are liver voxels too
    both = result.masks[0] & result.masks[1]
    assert dice_score(both, tumour) > 0.8
    # the label map stays exclusive: the tumour wins its voxels there, so the liver's label lacks them
    assert dice_score(result.labels == 1, liver & ~tumour) > 0.95
    assert np.all(result.masks[1][result.labels == 2])
    assert dice_score(result.labels == 1, liver) < dice_liver
    # evaluation scores each query's own mask
    assert dice_score(query_mask(result, 0), liver) == pytest.approx(dice_liver)
    assert [s.voxels for s in result.segments] == [int(m.sum()) for m in result.masks]
    assert any("Liver / Liver Tumor" in w for w in result.warnings)
    assert result.provenance["overlapping_segments"] == [[1, 2]]


def test_structures_that_cannot_overlap_keep_the_exclusive_label_map(oracle_run, phantom, tmp_path) -> None:
    result = oracle_run("liver and spleen")
    assert result.masks is None
    assert not any("may overlap" in w for w in result.warnings), result.warnings
    files = result.save(tmp_path / "seg.nii.gz")
    image = nib.load(files.label_map)
    assert image.shape == phantom.labels.shape and image.get_data_dtype() == np.uint8
    assert json.loads(files.sidecar.read_text())["layout"] == "labels"
    assert dice_score(query_mask(result, 1), phantom.mask("spleen")) > 0.9


def test_overlapping_results_are_written_as_one_mask_per_structure(oracle_run, tmp_path) -> None:
    result = oracle_run("liver, liver tumour and spleen", largest_component=True)
    assert result.masks is not None
    files = result.save(tmp_path / "seg.nii.gz")
    image = nib.load(files.label_map)
    np.testing.assert_allclose(image.affine, result.volume.affine, atol=1e-5)
    stack = np.asarray(image.dataobj)
    assert stack.shape == (*result.labels.shape, 3) and stack.dtype == np.uint8
    np.testing.assert_array_equal(np.moveaxis(stack, -1, 0), result.masks)
    sidecar = json.loads(files.sidecar.read_text())
    assert sidecar["layout"] == "masks" and sidecar["overlapping_segments"] == [[1, 2]]
    assert [s["voxels"] for s in sidecar["segments"]] == [int(m.sum()) for m in result.masks]

    import SimpleITK as sitk

    nrrd = result.save(tmp_path / "seg.nrrd").label_map
    vector = sitk.ReadImage(str(nrrd))
    assert vector.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vector).transpose(3, 2, 1, 0), result.masks)


def test_overlapping_segments_go_to_separate_seg_nrrd_layers(oracle_run, tmp_path) -> None:
    slicerio = pytest.importorskip("slicerio", reason="slicerio is needed to read .seg.nrrd files")
    result = oracle_run("liver and liver tumour")
    path = result.save(tmp_path / "seg.seg.nrrd").label_map
    segmentation = slicerio.read_segmentation(str(path))
    voxels = segmentation["voxels"]
    assert voxels.ndim == 4 and voxels.shape[0] == 2  # two layers: the liver and the tumour share voxels
    assert [s["name"] for s in segmentation["segments"]] == ["Liver", "Liver Tumor"]
    for q, segment in enumerate(segmentation["segments"]):  # slicerio reads (layer, I, J, K)
        np.testing.assert_array_equal(voxels[segment["layer"]] == segment["labelValue"], result.masks[q])


def test_save_masks_refuses_what_is_not_a_stack_of_masks(tmp_path) -> None:
    reference = Volume(np.zeros((4, 5, 6)), np.eye(4))
    with pytest.raises(ValueError, match=r"masks must be \(Q, I, J, K\)"):
        save_masks(tmp_path / "m.nii.gz", np.zeros((4, 5, 6), bool), reference)
    with pytest.raises(ValueError, match="does not match the reference volume's shape"):
        save_masks(tmp_path / "m.nii.gz", np.zeros((2, 4, 5, 7), bool), reference)
    with pytest.raises(ValueError, match="only 0 and 1"):
        save_masks(tmp_path / "m.nii.gz", np.full((2, 4, 5, 6), 2, np.uint8), reference)
    assert not (tmp_path / "m.nii.gz").exists()


# -- Slicer: overlapping segments on headless MRML (slicer-core) ---------------------------------------------


@pytest.fixture(scope="module")
def mrml_scene():
    """A scene with the Segmentations module logic registered, as Slicer's application sets it up."""
    import sys
    import types

    from conftest import REPO_ROOT

    slicer = pytest.importorskip("slicer", reason="slicer-core (headless MRML) is not installed")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package has no MRML classes (install slicer-core)")
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    segmentations.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Segmentations", segmentations)
    saved = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(logic=lambda: segmentations))
    sys.path.insert(0, str(REPO_ROOT / "TextGuidedSeg"))
    yield scene, app_logic, segmentations
    sys.path.remove(str(REPO_ROOT / "TextGuidedSeg"))
    for name, value in saved.items():
        if value is None:
            delattr(slicer, name)
        else:
            setattr(slicer, name, value)


def _segment_infos(labels: np.ndarray, names: list[str]):
    from TextGuidedSegLib.inference import SegmentInfo

    taxonomy = get_taxonomy()
    return [
        SegmentInfo(
            label_id=label_id,
            name=taxonomy[name].name,
            class_name=name,
            prompt=taxonomy[name].prompt,
            text=name,
            color=taxonomy[name].terminology.color,
            terminology=taxonomy[name].terminology.slicer_entry(),
            voxels=0,
            volume_ml=0.0,
        )
        for label_id, name in enumerate(names, start=1)
    ]


@pytest.mark.parametrize("with_masks", [True, False])
def test_slicer_segments_overlap_when_given_each_query_mask(mrml_scene, with_masks) -> None:
    import slicer
    from TextGuidedSegLogic.nodes import add_volume_node
    from TextGuidedSegLogic.segments import replace_labelmap, write_segments

    scene = mrml_scene[0]
    affine = np.array([[-2.0, 0, 0, 10], [0, -2, 0, 20], [0, 0, 3, -5], [0, 0, 0, 1]])
    volume = add_volume_node(np.zeros((16, 12, 8), np.int16), affine, "ct")
    masks = np.zeros((2, 16, 12, 8), bool)
    masks[0, 2:12, 2:10, 1:7] = True  # the liver
    masks[1, 5:8, 4:7, 3:5] = True  # its tumour, inside it
    labels = np.zeros((16, 12, 8), np.uint8)
    labels[masks[0]] = 1
    labels[masks[1]] = 2  # the exclusive label map: the tumour's voxels are not liver there
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    ids = write_segments(
        node,
        labels,
        _segment_infos(labels, ["liver", "liver_tumor"]),
        affine,
        replace_labelmap(node),
        masks=masks if with_masks else None,
    )
    written = [
        slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume).transpose(2, 1, 0) > 0
        for segment_id in ids
    ]
    segmentation = node.GetSegmentation()
    if with_masks:  # each segment its own mask; Slicer put the tumour in a layer of its own
        np.testing.assert_array_equal(written[0], masks[0])
        np.testing.assert_array_equal(written[1], masks[1])
        assert (written[0] & written[1]).sum() == masks[1].sum()
        assert segmentation.GetNumberOfLayers() == 2
    else:  # the label map alone: the liver loses the tumour's voxels
        np.testing.assert_array_equal(written[0], masks[0] & ~masks[1])
        assert not (written[0] & written[1]).any()
    scene.RemoveNode(node)
    scene.RemoveNode(volume)
