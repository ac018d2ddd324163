"""Headless tests of the Slicer module's logic on real MRML (Kitware's ``slicer-core`` build, no Slicer app).

One scene per test session, set up the way Slicer's application does it: a ``vtkMRMLScene`` with a
``vtkSlicerApplicationLogic``, the Colors, Volumes and Segmentations module logics registered on it, then
``slicer.mrmlScene`` and a ``slicer.modules`` namespace, so ``slicer.util``'s array helpers work. Volumes are
read with Slicer's own ``vtkMRMLVolumeArchetypeStorageNode`` (ITK), results are checked against the
``textguidedseg segment`` command run in-process on the same file and bundle, and against Slicer's General
Anatomy terminology file in ``../shared/data``.

The model is a small random-weight bundle (feature size 12, 8 mm, one 64^3 window per volume): what is tested
is where the voxels go, not what the model knows.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, shared_path

slicer = pytest.importorskip(
    "slicer",
    reason="slicer-core (Kitware's headless MRML build: pip install slicer-core) is not installed; "
    "the Slicer logic tests need it (never install it into Slicer's own Python)",
)
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip(
        "the installed 'slicer' package has no MRML classes (install slicer-core)", allow_module_level=True
    )

import vtk  # noqa: E402 - after the skip: vtk comes with slicer-core
import vtk.util.numpy_support  # noqa: E402

MODULE_DIR = REPO_ROOT / "TextGuidedSeg"
TERMINOLOGY_FILE = ("slicer_terminology", "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.term.json")
PROMPT = "liver, spleen and both kidneys"
STRUCTURES = ("liver", "spleen", "right_kidney", "left_kidney")
CT_FILES = {
    "totalseg": ("totalseg", "example_ct_sm.nii.gz"),  # RAS, 122 x 101 x 30, 3 mm
    "dcmqi": ("dcmqi_ct3slice", "ct.nii.gz"),  # LPS, 512 x 512 x 3, 0.81 mm
}


# -- the scene --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mrml():
    """The session's scene with the application logic and the module logics Slicer would register."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colors = slicer.vtkMRMLColorLogic()
    volumes = slicer.vtkSlicerVolumesLogic()
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    for name, logic in (("Colors", colors), ("Volumes", volumes), ("Segmentations", segmentations)):
        logic.SetMRMLScene(scene)  # Segmentations registers its conversion rules here
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
    colors.AddDefaultColorNodes()
    saved = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        volumes=types.SimpleNamespace(logic=lambda: volumes),
        segmentations=types.SimpleNamespace(logic=lambda: segmentations),
    )
    sys.path.insert(0, str(MODULE_DIR))
    # Python references to every logic live as long as the session (VTK would otherwise free them).
    yield types.SimpleNamespace(
        scene=scene, app_logic=app_logic, colors=colors, volumes=volumes, segmentations=segmentations
    )
    sys.path.remove(str(MODULE_DIR))
    for name, value in saved.items():
        if value is None:
            delattr(slicer, name)
        else:
            setattr(slicer, name, value)


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


@pytest.fixture
def scene(mrml):
    """The session scene; nodes a test adds are removed afterwards."""
    before = set(node_ids(mrml.scene))
    yield mrml.scene
    for node_id in reversed(node_ids(mrml.scene)):
        if node_id not in before:
            mrml.scene.RemoveNode(mrml.scene.GetNodeByID(node_id))


@pytest.fixture(scope="session")
def logic_module(mrml):
    import TextGuidedSegLogic

    return TextGuidedSegLogic


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A random-weight film_v1 bundle (feature size 12) for liver, spleen and both kidneys at 8 mm."""
    import torch

    from TextGuidedSegLib.bundle import BundleConfig, InferenceConfig, PreprocessConfig, save_bundle
    from TextGuidedSegLib.models import ModelConfig, build_model
    from TextGuidedSegLib.taxonomy import get_taxonomy
    from TextGuidedSegLib.text import EmbeddingCache

    taxonomy = get_taxonomy().subset(list(STRUCTURES))
    model_config = ModelConfig(feature_size=12, text_dim=16)
    torch.manual_seed(0)
    model = build_model(model_config)
    cache = EmbeddingCache("random-test-vectors", model_config.text_dim)
    cache.add(
        taxonomy.prompts,
        torch.randn(len(taxonomy), model_config.text_dim, generator=torch.Generator().manual_seed(0)),
    )
    config = BundleConfig(
        name="tiny_slicer",
        model=model_config,
        taxonomy=taxonomy,
        preprocessing=PreprocessConfig(spacing=(8.0, 8.0, 8.0)),
        inference=InferenceConfig(roi_size=(64, 64, 64)),
    )
    return save_bundle(tmp_path_factory.mktemp("bundle") / "tiny_slicer", model, config, cache)


def read_volume_node(scene, path: Path, name: str):
    """A scalar volume node read by Slicer's ITK-based storage node (as File > Add Data does)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def segment_mask(segmentation_node, segment_id, volume_node) -> np.ndarray:
    """A segment as an (I, J, K) boolean array on the volume's grid."""
    return (
        slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node).transpose(
            2, 1, 0
        )
        > 0
    )


def run_cli(ct: Path, bundle: Path, output: Path, *extra: str) -> tuple[np.ndarray, dict]:
    """``textguidedseg segment`` in-process; return its (I, J, K) label map and JSON sidecar."""
    import nibabel as nib

    from TextGuidedSegLib.cli import main

    argv = ["segment", str(ct), "--prompt", PROMPT, "--bundle", str(bundle), "-o", str(output)]
    assert main([*argv, "--device", "cpu", "--no-progress", *extra]) == 0
    labels = np.asarray(nib.load(str(output)).dataobj).astype(np.int64)
    sidecar = json.loads(output.with_name(output.name.replace(".nii.gz", ".json")).read_text())
    return labels, sidecar


@pytest.fixture(scope="session")
def slicer_run(mrml, logic_module, tiny_bundle, tmp_path_factory):
    """Per CT file (once per session): the volume node, the input as read, the logic's outputs, the CLI's."""
    runs = {}

    def run(dataset: str):
        if dataset not in runs:
            ct = shared_path(*CT_FILES[dataset])
            scene = mrml.scene
            volume_node = read_volume_node(scene, ct, f"{dataset} CT")
            voxels_before = slicer.util.arrayFromVolume(volume_node).copy()
            geometry_before = ijk_to_ras(volume_node)
            logic = logic_module.TextGuidedSegLogic()
            outputs = logic.segment(volume_node, PROMPT, bundle=str(tiny_bundle))
            cli_labels, sidecar = run_cli(ct, tiny_bundle, tmp_path_factory.mktemp("cli") / "seg.nii.gz")
            runs[dataset] = types.SimpleNamespace(
                ct=ct,
                volume_node=volume_node,
                voxels_before=voxels_before,
                geometry_before=geometry_before,
                logic=logic,
                outputs=outputs,
                cli_labels=cli_labels,
                sidecar=sidecar,
            )
        return runs[dataset]

    return run


@pytest.fixture(scope="session")
def slicer_anatomy() -> dict:
    return json.loads(shared_path(*TERMINOLOGY_FILE).read_text(encoding="utf-8"))


DATASETS = pytest.mark.parametrize("dataset", sorted(CT_FILES))


# -- a run on real CTs ------------------------------------------------------------------------------------


@DATASETS
def test_segments_lie_on_the_volume_grid_and_equal_the_cli_label_map(slicer_run, dataset):
    run = slicer_run(dataset)
    outputs, volume_node = run.outputs, run.volume_node
    segmentation = outputs.segmentation_node.GetSegmentation()
    assert [segmentation.GetSegment(s).GetName() for s in outputs.segment_ids] == [
        "Liver", "Spleen", "Right Kidney", "Left Kidney"
    ]  # fmt: skip
    assert [s["name"] for s in run.sidecar["segments"]] == ["Liver", "Spleen", "Right Kidney", "Left Kidney"]
    shape = run.cli_labels.shape
    assert shape == tuple(reversed(slicer.util.arrayFromVolume(volume_node).shape))
    # the segmentation's reference geometry is the volume's: the labelmap needs no resampling
    geometry = outputs.segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    reference = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, reference)
    assert reference.GetDimensions() == shape
    matrix = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(
        [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], run.geometry_before, atol=1e-6
    )
    covered = np.zeros(shape, dtype=int)
    for label_id, segment_id in enumerate(outputs.segment_ids, start=1):
        mask = segment_mask(outputs.segmentation_node, segment_id, volume_node)
        np.testing.assert_array_equal(mask, run.cli_labels == label_id, err_msg=f"label {label_id}")
        covered += mask
    assert covered.max() <= 1  # segments do not overlap, as the label map
    assert 0 < (run.cli_labels > 0).sum()  # the random model did segment something


@DATASETS
def test_input_volume_voxels_and_geometry_are_unchanged(slicer_run, dataset):
    run = slicer_run(dataset)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(run.volume_node), run.voxels_before)
    np.testing.assert_array_equal(ijk_to_ras(run.volume_node), run.geometry_before)


@DATASETS
def test_names_codes_and_colours_match_slicer_general_anatomy(slicer_run, slicer_anatomy, dataset):
    run = slicer_run(dataset)
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    categories = {c["CodeValue"]: c for c in slicer_anatomy["SegmentationCodes"]["Category"]}
    segmentation = run.outputs.segmentation_node.GetSegmentation()
    for segment_id in run.outputs.segment_ids:
        segment = segmentation.GetSegment(segment_id)
        tag = vtk.reference("")
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag), segment.GetName()
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(str(tag), entry), str(tag)  # Slicer reads our string
        assert entry.GetTerminologyContextName() == slicer_anatomy["SegmentationCategoryTypeContextName"]
        category = categories[entry.GetCategoryObject().GetCodeValue()]
        assert entry.GetCategoryObject().GetCodeMeaning() == category["CodeMeaning"]
        assert (
            entry.GetCategoryObject().GetCodingSchemeDesignator()
            == category["CodingSchemeDesignator"]
            == "SCT"
        )
        slicer_type = next(
            t for t in category["Type"] if t["CodeValue"] == entry.GetTypeObject().GetCodeValue()
        )
        assert entry.GetTypeObject().GetCodeMeaning() == slicer_type["CodeMeaning"]
        described = slicer_type
        modifier = entry.GetTypeModifierObject()
        if modifier.GetCodeValue():
            described = next(m for m in slicer_type["Modifier"] if m["CodeValue"] == modifier.GetCodeValue())
            assert modifier.GetCodeMeaning() == described["CodeMeaning"]
        else:
            assert "Modifier" not in slicer_type
        assert segment.GetName().casefold() == described["3dSlicerLabel"].casefold()
        colour = [round(c * 255) for c in segment.GetColor()]
        sidecar = next(s for s in run.sidecar["segments"] if s["name"] == segment.GetName())
        assert colour == sidecar["color"], segment.GetName()  # the CLI's, PNG's and sidecar's colour
        if not modifier.GetCodeValue():  # the sides of a pair get distinct colours (taxonomy/colors.py)
            assert colour == described["recommendedDisplayRGBValue"], segment.GetName()


@DATASETS
def test_seg_nrrd_saves_and_reloads_intact(slicer_run, scene, tmp_path, dataset):
    run = slicer_run(dataset)
    original = run.outputs.segmentation_node
    path = tmp_path / "result.seg.nrrd"
    writer = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    writer.SetFileName(str(path))
    assert writer.WriteData(original) and path.is_file()
    reloaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(path))
    assert reader.ReadData(reloaded)
    before, after = original.GetSegmentation(), reloaded.GetSegmentation()
    assert after.GetNumberOfSegments() == before.GetNumberOfSegments() == 4
    tag = slicer.vtkSegment.GetTerminologyEntryTagName()
    for segment_id in run.outputs.segment_ids:
        old, new = before.GetSegment(segment_id), after.GetSegment(segment_id)
        assert new is not None, f"segment {segment_id} lost its ID"
        assert new.GetName() == old.GetName()
        np.testing.assert_allclose(new.GetColor(), old.GetColor(), atol=1e-6)
        old_tag, new_tag = vtk.reference(""), vtk.reference("")
        old.GetTag(tag, old_tag), new.GetTag(tag, new_tag)
        assert str(new_tag) == str(old_tag) != ""
        np.testing.assert_array_equal(
            segment_mask(reloaded, segment_id, run.volume_node),
            segment_mask(original, segment_id, run.volume_node),
        )


@DATASETS
def test_results_table_lists_volume_and_mean_hu(slicer_run, dataset):
    run = slicer_run(dataset)
    table = run.outputs.table_node.GetTable()
    voxels_ijk = slicer.util.arrayFromVolume(run.volume_node).transpose(2, 1, 0)
    voxel_ml = abs(np.linalg.det(run.geometry_before[:3, :3])) / 1000.0
    assert [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())] == [
        "Segment", "Volume (mL)", "Mean (HU)", "Voxels", "Caveat"
    ]  # fmt: skip
    assert table.GetNumberOfRows() == 4
    # a research bundle (tiny_slicer's default intended_use) on a real CT: the caveat on every row
    # (then the input guard's own warnings, e.g. thick slices or a thin volume, each in the caveat too)
    warning, *guard_warnings = run.sidecar["warnings"]
    assert "research model, not validated" in warning
    assert "research model, not validated" in run.outputs.table_node.GetAttribute("TextGuidedSeg.Warnings")
    for row in range(4):
        caveat = table.GetValue(row, 4).ToString()
        assert caveat.startswith("research model, not validated: check the result")
        for (
            guard_warning
        ) in guard_warnings:  # the same text, naming the Slicer volume where the CLI names the file
            assert guard_warning.split(": ", 1)[1] in caveat
    for row, label_id in zip(range(4), range(1, 5), strict=True):
        mask = run.cli_labels == label_id
        assert table.GetValue(row, 0).ToString() == run.sidecar["segments"][row]["name"]
        assert table.GetValue(row, 3).ToInt() == mask.sum()
        assert table.GetValue(row, 1).ToDouble() == pytest.approx(mask.sum() * voxel_ml, abs=1e-3)
        mean = table.GetValue(row, 2).ToDouble()
        if mask.any():
            assert mean == pytest.approx(voxels_ijk[mask].mean(), abs=0.05)
        else:
            assert math.isnan(mean)


# -- failing runs leave the scene as it was ---------------------------------------------------------------


def test_a_prompt_the_bundle_cannot_answer_changes_nothing(slicer_run, logic_module, tiny_bundle, scene):
    from TextGuidedSegLib.taxonomy import PromptError

    run = slicer_run("totalseg")
    before = node_ids(scene)
    with pytest.raises(PromptError, match="pancreas"):
        run.logic.segment(run.volume_node, "pancreas", bundle=str(tiny_bundle))
    with pytest.raises(ValueError, match="prompt is empty"):
        run.logic.segment(run.volume_node, "  ", bundle=str(tiny_bundle))
    assert node_ids(scene) == before


def test_a_model_raising_changes_nothing(slicer_run, logic_module, tiny_bundle, scene):
    run = slicer_run("totalseg")
    logic = logic_module.TextGuidedSegLogic()
    bundle = logic.load_bundle(tiny_bundle)  # the logic's cached copy: its model is what runs

    def broken_forward(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    bundle.model.backbone.swinViT.forward = broken_forward  # the encoder: every path (cached or not) runs it
    before = node_ids(scene)
    with pytest.raises(RuntimeError, match="simulated"):
        logic.segment(run.volume_node, "liver", bundle=str(tiny_bundle))
    assert node_ids(scene) == before


def test_a_failure_while_writing_removes_new_nodes_and_restores_an_existing_segmentation(
    slicer_run, logic_module, scene, monkeypatch
):
    from TextGuidedSegLogic import logic as logic_file
    from TextGuidedSegLogic.segments import replace_labelmap

    run = slicer_run("totalseg")
    job = run.logic.prepare_inputs(run.volume_node, PROMPT, bundle=str(run.outputs.output.job.bundle))
    output = logic_module.InferenceOutput(
        job=job, result=run.outputs.output.result, bundle_name="x", mean_hu=run.outputs.output.mean_hu
    )

    def failing_on_second_segment(segmentation_node):
        write = replace_labelmap(segmentation_node)
        calls = []

        def modify(segment_id, labelmap):
            calls.append(segment_id)
            if len(calls) == 2:
                raise RuntimeError("disk full (simulated)")
            write(segment_id, labelmap)

        return modify

    monkeypatch.setattr(logic_file, "replace_labelmap", failing_on_second_segment)
    before = node_ids(scene)
    with pytest.raises(RuntimeError, match="simulated"):
        run.logic.write_results(output, run.volume_node)
    assert node_ids(scene) == before

    existing = run.outputs.segmentation_node
    segmentation = existing.GetSegmentation()
    masks_before = {s: segment_mask(existing, s, run.volume_node) for s in run.outputs.segment_ids}
    before = node_ids(scene)  # (reading masks leaves display nodes of slicer.util's temporary volumes)
    with pytest.raises(RuntimeError, match="simulated"):
        run.logic.write_results(output, run.volume_node, existing, replace_existing=True)
    assert node_ids(scene) == before
    assert list(segmentation.GetSegmentIDs()) == run.outputs.segment_ids
    for segment_id, mask in masks_before.items():
        np.testing.assert_array_equal(segment_mask(existing, segment_id, run.volume_node), mask)


def test_existing_segments_are_replaced_only_when_asked(slicer_run, logic_module, tiny_bundle, scene):
    run = slicer_run("totalseg")
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    target.SetReferenceImageGeometryParameterFromVolumeNode(run.volume_node)
    mine = target.GetSegmentation().AddEmptySegment("", "liver", [0.1, 0.2, 0.3])
    kept = target.GetSegmentation().AddEmptySegment("", "my tumour", [1.0, 0.0, 0.0])
    job = run.logic.prepare_inputs(run.volume_node, "liver and spleen", bundle=str(tiny_bundle))
    output = run.logic.run(job)
    assert output.reused_encoding  # the session run encoded this volume already
    assert run.logic.conflicting_segment_names(target, output) == ["Liver"]
    before = node_ids(scene)
    with pytest.raises(logic_module.SegmentNameConflict, match="Liver") as conflict:
        run.logic.write_results(output, run.volume_node, target)
    assert conflict.value.names == ["Liver"]
    assert node_ids(scene) == before and target.GetSegmentation().GetNumberOfSegments() == 2
    outputs = run.logic.write_results(output, run.volume_node, target, replace_existing=True)
    segmentation = target.GetSegmentation()
    assert outputs.segment_ids[0] == mine  # the same segment, overwritten
    assert list(segmentation.GetSegmentIDs())[:2] == [mine, kept]
    assert [segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs()] == [
        "Liver", "my tumour", "Spleen"
    ]  # fmt: skip
    np.testing.assert_array_equal(segment_mask(target, mine, run.volume_node), output.result.labels == 1)


# -- the encoded-volume cache, threads, optional outputs ----------------------------------------------------


def test_reprompting_reuses_the_encoded_volume_until_it_changes(mrml, logic_module, tiny_bundle, scene):
    from TextGuidedSegLogic.nodes import add_volume_node

    rng = np.random.default_rng(0)
    volume = add_volume_node(
        rng.normal(0, 100, (30, 24, 12)).astype(np.int16), np.diag([8, 8, 8, 1.0]), "small"
    )
    logic = logic_module.TextGuidedSegLogic()
    first = logic.run(logic.prepare_inputs(volume, "liver", bundle=str(tiny_bundle)))
    second = logic.run(logic.prepare_inputs(volume, "spleen", bundle=str(tiny_bundle)))
    assert (first.reused_encoding, second.reused_encoding, logic.encode_count) == (False, True, 1)
    slicer.util.arrayFromVolume(volume)[0, 0, 0] += 1  # the user edits the volume
    slicer.util.arrayFromVolumeModified(volume)
    third = logic.run(logic.prepare_inputs(volume, "spleen", bundle=str(tiny_bundle)))
    assert not third.reused_encoding and logic.encode_count == 2
    # a stale result is not written over a changed volume
    slicer.util.arrayFromVolume(volume)[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(volume)
    before = node_ids(scene)
    with pytest.raises(RuntimeError, match="changed while it was being segmented"):
        logic.write_results(third, volume)
    assert node_ids(scene) == before


@pytest.fixture(scope="session")
def server_logic(mrml, logic_module, tmp_path_factory):
    """A logic whose jobs run on its own local ``textguidedseg serve`` (started on the first job, stopped
    by ``cleanup``), as the panel's logic does."""
    from TextGuidedSegLogic import service

    log = tmp_path_factory.mktemp("server") / "server.log"
    local = service.LocalServer(device="cpu", max_cache_mb=256, log_path=log)
    logic = logic_module.TextGuidedSegLogic(service=service.InferenceService(local=local))
    yield logic
    logic.cleanup()
    assert not local.running


def poll_until_done(job, on_event=None, timeout: float = 300) -> list:
    """Poll ``job`` on this (the GUI) thread every 50 ms, as the panel's timer does, until its last event."""
    events = []
    deadline = time.monotonic() + timeout
    while (job.running or not events or events[-1].kind == "progress") and time.monotonic() < deadline:
        for event in job.poll():
            events.append(event)
            if on_event is not None:
                on_event(event)
        time.sleep(0.05)
    events += job.poll()
    return events


@pytest.mark.slow  # a server start and a job (about 40 s idle, minutes on a loaded machine)
def test_the_panel_path_runs_on_the_server_and_writes_the_cli_label_map(
    slicer_run, server_logic, tiny_bundle
):
    """``logic.submit`` -> a job on ``textguidedseg serve`` -> ``poll`` -> ``write_results`` on this thread:
    the segments equal the CLI's label map (and the in-process run's)."""
    run = slicer_run("totalseg")
    scene = slicer.mrmlScene
    before = set(node_ids(scene))
    try:
        job = server_logic.prepare_inputs(run.volume_node, PROMPT, bundle=str(tiny_bundle))
        main_thread = threading.get_ident()
        events = poll_until_done(server_logic.submit(job))
        assert [e.kind for e in events][-1] == "done", [(e.kind, e.error) for e in events]
        stages = [e.stage for e in events if e.kind == "progress"]
        assert stages[0] == "load" and "segment" in stages, stages
        output = events[-1].result
        assert not output.reused_encoding and output.mean_hu and len(output.mean_hu) == 4
        outputs = server_logic.write_results(output, run.volume_node)
        assert threading.get_ident() == main_thread
        segmentation = outputs.segmentation_node.GetSegmentation()
        names = [segmentation.GetSegment(s).GetName() for s in outputs.segment_ids]
        assert names == ["Liver", "Spleen", "Right Kidney", "Left Kidney"]
        for label_id, segment_id in enumerate(outputs.segment_ids, start=1):
            mask = segment_mask(outputs.segmentation_node, segment_id, run.volume_node)
            np.testing.assert_array_equal(mask, run.cli_labels == label_id, err_msg=f"label {label_id}")
        np.testing.assert_array_equal(output.result.labels, run.outputs.output.result.labels)
    finally:
        for node_id in reversed(node_ids(scene)):
            if node_id not in before:
                scene.RemoveNode(scene.GetNodeByID(node_id))


def test_use_server_points_the_panel_and_the_effect_at_one_server(mrml, logic_module):
    from TextGuidedSegLogic import service

    panel, effect = logic_module.TextGuidedSegLogic(), logic_module.TextGuidedSegLogic()
    try:
        panel.use_server("http://gpu-box.lab:8765", "0123456789abcdef0123")
        assert not effect.service.is_local  # the effect's logic shares the panel's service
        assert (effect.service.remote.url, effect.service.remote.token) == (
            "http://gpu-box.lab:8765", "0123456789abcdef0123"
        )  # fmt: skip
        with pytest.raises(ValueError, match="server URL must be http://HOST:PORT"):
            panel.use_server("gpu-box.lab:8765")
        panel.use_server(None)
        assert effect.service.is_local and not effect.service.local.running  # started on the next job only
    finally:
        service.set_default_service(None)


@pytest.mark.slow
def test_a_killed_server_fails_the_job_cleanly_and_the_next_job_restarts_it(
    mrml, logic_module, server_logic, tiny_bundle, scene
):
    from TextGuidedSegLogic.nodes import add_volume_node

    from TextGuidedSegLib.data.phantom import PhantomConfig, make_phantom
    from TextGuidedSegLib.inference import SegmentationOptions

    made = make_phantom(PhantomConfig(shape=(48, 48, 24)))
    # 18 mm voxels, overlap 0.9, flips, one window per pass: hundreds of windows, so the kill lands mid-run
    volume = add_volume_node(made.image.astype(np.int16), np.diag([18.0, 18, 18, 1]), "phantom to kill")
    slow = SegmentationOptions(overlap=0.9, flip_tta=True, sw_batch_size=1)
    local = server_logic.service.local
    local.ensure_started()
    first_pid = local.process.pid
    before = node_ids(scene)

    def kill_when_segmenting(event):
        if event.kind == "progress" and event.stage == "segment" and local.running:
            local.process.kill()

    job = server_logic.prepare_inputs(volume, "liver", bundle=str(tiny_bundle), options=slow)
    events = poll_until_done(server_logic.submit(job), kill_when_segmenting)
    assert events[-1].kind == "error", [(e.kind, e.error) for e in events]
    message = str(events[-1].error)
    assert "the inference server stopped during the job" in message and "nothing was written" in message
    assert "the next job starts a new one" in message
    assert node_ids(scene) == before  # nothing written, nothing half-made
    job = server_logic.prepare_inputs(volume, "liver", bundle=str(tiny_bundle))
    events = poll_until_done(server_logic.submit(job))
    assert events[-1].kind == "done", [(e.kind, e.error) for e in events]
    assert local.running and local.process.pid != first_pid
    expected = server_logic.run(job)  # in process, the same answer
    np.testing.assert_array_equal(events[-1].result.result.labels, expected.result.labels)
    outputs = server_logic.write_results(events[-1].result, volume)
    assert outputs.segmentation_node.GetSegmentation().GetNumberOfSegments() == 1


def test_cancelling_the_worker_changes_nothing(mrml, logic_module, tiny_bundle, scene):
    from TextGuidedSegLogic.nodes import add_volume_node

    from TextGuidedSegLib.data.phantom import PhantomConfig, make_phantom

    made = make_phantom(PhantomConfig(shape=(40, 40, 20), spacing=(8.0, 8.0, 8.0)))  # a CT the guard accepts
    volume = add_volume_node(made.image.astype(np.int16), made.affine, "to cancel")
    logic = logic_module.TextGuidedSegLogic()
    job = logic.prepare_inputs(volume, "liver", bundle=str(tiny_bundle))
    before = node_ids(scene)
    worker = logic_module.ServerJob(lambda progress, cancel: logic.run(job, progress, cancel))
    worker.cancel()  # before the first window: the run stops at once
    worker.start()
    worker.join(120)
    events = worker.poll()
    assert events[-1].kind == "cancelled", [(e.kind, e.error) for e in events]
    assert node_ids(scene) == before


def test_probability_and_uncertainty_volumes_share_the_input_geometry(mrml, logic_module, tiny_bundle, scene):
    from TextGuidedSegLogic.nodes import add_volume_node

    affine = np.array([[0, 0, 8, -20.0], [-8, 0, 0, 30], [0, 8, 0, 5], [0, 0, 0, 1]])  # oblique axes
    volume = add_volume_node(
        np.random.default_rng(1).normal(0, 80, (24, 20, 12)).astype(np.int16), affine, "oblique"
    )
    from TextGuidedSegLib.inference import SegmentationOptions

    logic = logic_module.TextGuidedSegLogic()
    options = SegmentationOptions(flip_tta=True, probabilities=True)
    outputs = logic.segment(
        volume, "left kidney", bundle=str(tiny_bundle), options=options, results_table=False
    )
    result = outputs.output.result
    assert outputs.table_node is None
    assert len(outputs.probability_nodes) == len(outputs.uncertainty_nodes) == 1
    written = [
        (outputs.probability_nodes[0], result.probabilities[0]),
        (outputs.uncertainty_nodes[0], result.uncertainty[0]),
    ]
    for node, expected in written:
        np.testing.assert_array_equal(ijk_to_ras(node), affine)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node).transpose(2, 1, 0), expected)
    assert "Left Kidney probability" in outputs.probability_nodes[0].GetName()
    assert (result.uncertainty[0] >= 0).all() and result.uncertainty[0].max() > 0


def test_parameter_node_is_a_singleton(mrml, logic_module, scene):
    logic = logic_module.TextGuidedSegLogic()
    node = logic.getParameterNode()
    assert node.GetAttribute("ModuleName") == "TextGuidedSeg"
    assert logic_module.TextGuidedSegLogic().getParameterNode() is node


# -- the effect's write path: editor masking ----------------------------------------------------------------


def fake_result(labels: np.ndarray, names: list[str]):
    """A SegmentationResult for ``labels`` with the taxonomy's names, colours and terminology (no model)."""
    from TextGuidedSegLib.inference import SegmentationResult, SegmentInfo
    from TextGuidedSegLib.taxonomy import get_taxonomy

    taxonomy = get_taxonomy()
    infos = []
    for label_id, name in enumerate(names, start=1):
        structure = taxonomy[name]
        infos.append(
            SegmentInfo(
                label_id=label_id,
                name=structure.name,
                class_name=name,
                prompt=structure.prompt,
                text=structure.name,
                color=structure.terminology.color,
                terminology=structure.terminology.slicer_entry(),
                voxels=int((labels == label_id).sum()),
                volume_ml=0.0,
            )
        )
    return SegmentationResult(labels=labels, segments=infos, queries=[])


@pytest.fixture
def editor(mrml, scene):
    """A segmentation, its source volume and Slicer's C++ segment editor logic (Slicer >= 5.9) on them."""
    if not hasattr(slicer, "vtkSlicerSegmentEditorLogic"):
        pytest.skip("this slicer-core has no vtkSlicerSegmentEditorLogic (Slicer >= 5.9)")
    from TextGuidedSegLogic.nodes import add_volume_node

    affine = np.array([[-2.0, 0, 0, 10], [0, -2, 0, 20], [0, 0, 3, -5], [0, 0, 0, 1]])
    volume = add_volume_node(np.zeros((16, 12, 8), np.int16), affine, "source")
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "edited")
    segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    parameters = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    parameters.SetAndObserveSegmentationNode(segmentation_node)
    parameters.SetAndObserveSourceVolumeNode(volume)
    editor_logic = slicer.vtkSlicerSegmentEditorLogic()
    editor_logic.SetMRMLScene(scene)
    editor_logic.SetMRMLApplicationLogic(mrml.app_logic)
    editor_logic.SetSegmentEditorNode(parameters)
    editor_logic.SetSourceVolumeNode(volume)

    def modify(segment_id, labelmap):  # what scriptedEffect.modifySegmentByLabelmap(..., Set) does
        editor_logic.ModifySegmentByLabelmap(
            segmentation_node, segment_id, labelmap, editor_logic.ModificationModeSet, True, False
        )

    return types.SimpleNamespace(
        volume=volume,
        affine=affine,
        segmentation_node=segmentation_node,
        parameters=parameters,
        modify=modify,
    )


def set_labelmap(editor, segment_id: str, mask: np.ndarray) -> None:
    """Put an (I, J, K) mask into a segment directly (no editor masking)."""
    from TextGuidedSegLogic.nodes import oriented_labelmap

    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_labelmap(mask, editor.affine), editor.segmentation_node, segment_id
    )


def test_effect_write_honours_the_editable_area_and_fills_the_selected_segment(editor):
    from TextGuidedSegLogic.segments import write_segments

    segmentation = editor.segmentation_node.GetSegmentation()
    allowed = np.zeros((16, 12, 8), bool)
    allowed[4:12, 2:10, 1:7] = True
    area = segmentation.AddEmptySegment("", "editable area", [0, 0, 1])
    set_labelmap(editor, area, allowed)
    selected = segmentation.AddEmptySegment("", "my segment", [1, 1, 0])
    editor.parameters.SetSelectedSegmentID(selected)
    editor.parameters.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.parameters.SetMaskSegmentID(area)
    editor.parameters.SetOverwriteMode(editor.parameters.OverwriteNone)
    predicted = np.zeros((16, 12, 8), np.uint8)
    predicted[0:8, 0:12, 0:8] = 1  # half inside, half outside the editable area
    result = fake_result(predicted, ["liver"])
    ids = write_segments(
        editor.segmentation_node, predicted, result.segments, editor.affine, editor.modify, selected
    )
    assert ids == [selected]
    assert segmentation.GetSegment(selected).GetName() == "my segment"  # the user's segment keeps its name
    written = segment_mask(editor.segmentation_node, selected, editor.volume)
    np.testing.assert_array_equal(written, (predicted > 0) & allowed)
    assert written.sum() > 0 and (written & ~allowed).sum() == 0


@pytest.mark.parametrize("protect_others", [False, True], ids=["overwrite-all", "editable-outside-segments"])
def test_effect_write_of_several_structures_creates_coded_segments_and_follows_the_masking(
    editor, protect_others
):
    from TextGuidedSegLogic.segments import segment_terminology, write_segments

    segmentation = editor.segmentation_node.GetSegmentation()
    other = segmentation.AddEmptySegment("", "other", [0, 1, 0])
    occupied = np.zeros((16, 12, 8), bool)
    occupied[:, :6] = True
    set_labelmap(editor, other, occupied)
    parameters = editor.parameters
    if protect_others:
        parameters.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    else:
        parameters.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        parameters.SetOverwriteMode(parameters.OverwriteAllSegments)
    labels = np.zeros((16, 12, 8), np.uint8)
    labels[0:8] = 1
    labels[8:16] = 2
    result = fake_result(labels, ["liver", "spleen"])
    ids = write_segments(
        editor.segmentation_node, labels, result.segments, editor.affine, editor.modify, other
    )
    assert len(ids) == 2 and other not in ids  # several structures: one new segment each
    for segment_id, info in zip(ids, result.segments, strict=True):
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetName() == info.name
        assert segment_terminology(segment) == info.terminology
        np.testing.assert_allclose(segment.GetColor(), np.array(info.color) / 255)
        written = segment_mask(editor.segmentation_node, segment_id, editor.volume)
        expected = (labels == info.label_id) & ~occupied if protect_others else labels == info.label_id
        np.testing.assert_array_equal(written, expected)
    remaining = segment_mask(editor.segmentation_node, other, editor.volume)
    np.testing.assert_array_equal(remaining, occupied if protect_others else occupied & (labels == 0))


# -- Qt-free helpers of the panel ---------------------------------------------------------------------------


def test_prompt_completion_and_the_structure_list(mrml):
    from TextGuidedSegLogic.prompts import (
        complete_prompt,
        completion_candidates,
        split_prompt_tail,
        structures_in_prompt,
        toggle_structure,
    )

    from TextGuidedSegLib.taxonomy import get_taxonomy

    taxonomy = get_taxonomy().subset(list(STRUCTURES))
    assert split_prompt_tail("liver, right kid") == ("liver, ", "right kid")
    assert split_prompt_tail("liver and sp") == ("liver and ", "sp")
    assert complete_prompt("liver,sp", "Spleen") == "liver, Spleen"
    assert completion_candidates(taxonomy.names, "kid") == ["Right Kidney", "Left Kidney"]
    assert completion_candidates(taxonomy.names, "l")[:2] == ["Liver", "Left Kidney"]
    assert structures_in_prompt("segment the liver and both kidneys", taxonomy) == [
        "Liver", "Right Kidney", "Left Kidney"
    ]  # fmt: skip
    assert toggle_structure("liver and both kidneys", "Left Kidney", False, taxonomy) == "Liver, Right Kidney"
    assert toggle_structure("Liver", "Spleen", True, taxonomy) == "Liver, Spleen"
    assert toggle_structure("", "Spleen", True, None) == "Spleen"


def test_the_structure_list_and_completer_grow_to_a_large_bundle_vocabulary(mrml):
    from TextGuidedSegLogic.prompts import (
        completion_vocabulary,
        filter_structure_names,
        structures_in_prompt,
        taxonomy_for_names,
    )

    from TextGuidedSegLib.registry import BundleStore

    entry = BundleStore().entry("wholebody_ct_highres")
    names = list(entry.vocabulary)
    assert len(names) == 104
    taxonomy = taxonomy_for_names(names)
    assert taxonomy is not None and taxonomy.names == names
    offered = completion_vocabulary(names)
    assert offered[:104] == names
    for phrase in ("Ribs", "Lumbar Vertebrae", "Heart", "Lungs", "IVC", "kidney"):
        assert phrase.casefold() in {o.casefold() for o in offered}, phrase
    assert structures_in_prompt("ribs on the left", taxonomy) == [f"Left Rib {i}" for i in range(1, 13)]
    shown = [n for n, keep in zip(names, filter_structure_names(names, "rib LEFT"), strict=True) if keep]
    assert shown == [f"Left Rib {i}" for i in range(1, 13)]
    assert all(filter_structure_names(names, "  "))
    assert taxonomy_for_names(["Liver", "Not A Structure"]) is None


def test_bundle_choices_show_licence_size_and_acceptance(mrml, logic_module, tmp_path, monkeypatch):
    from TextGuidedSegLib.registry import BundleStore

    monkeypatch.setenv("TEXTGUIDEDSEG_HOME", str(tmp_path))
    logic = logic_module.TextGuidedSegLogic(store=BundleStore())
    choices = {c.key.split("==")[0]: c for c in logic.bundle_choices()}
    wholebody = choices["wholebody_ct_highres"]
    assert not wholebody.available and not wholebody.needs_license_acceptance
    assert wholebody.license == "Apache-2.0" and "104 structures" in wholebody.label
    gated = [c for c in choices.values() if c.needs_license_acceptance]
    assert gated, "the registry offers a licence-gated (non-commercial) bundle"
    assert "must be accepted" in gated[0].label
    logic.accept_license(gated[0].key.split("==")[0])
    again = {c.key: c for c in logic.bundle_choices()}
    assert not again[gated[0].key].needs_license_acceptance


def test_dependency_check_reports_missing_and_old_packages(mrml):
    from TextGuidedSegLogic.dependencies import (
        REQUIREMENTS,
        TORCH,
        missing_requirements,
        pip_arguments,
        satisfies,
    )

    assert satisfies("2.13.0+cpu", "2.4") and satisfies("1.5", "1.5.0") and not satisfies("1.4.9", "1.5")
    installed = {"torch": "2.3.1", "monai": "1.5.2", "scipy": "1.14.0rc1"}

    def version_of(name):
        import importlib.metadata

        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    missing = missing_requirements((TORCH, *REQUIREMENTS), version_of)
    names = [m.requirement.distribution for m in missing]
    assert "monai" not in names and "scipy" not in names and names[0] == "torch"
    assert missing[0].describe().startswith("torch>=2.4 (installed: 2.3.1)")
    assert pip_arguments(missing)[0] == "einops>=0.7" and not any(
        a.startswith("torch") for a in pip_arguments(missing)
    )
    # the floors are the library's own (pyproject.toml)
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    for requirement in (TORCH, *REQUIREMENTS):
        assert f'"{requirement.specifier}' in pyproject.replace("PyYAML", "pyyaml"), requirement.specifier


def test_self_tests_find_the_demo_bundle_or_say_what_is_missing(mrml, monkeypatch):
    import unittest

    import TextGuidedSegLogic.dependencies as dependencies
    from TextGuidedSegLogic.selftest import INSTALL_HINT, demo_bundle

    missing = dependencies.MissingRequirement(dependencies.TORCH, None)
    monkeypatch.setattr(dependencies, "missing_requirements", lambda: [missing])
    with pytest.raises(AssertionError, match="torch>=2.4 \\(not installed\\)") as error:
        demo_bundle()
    assert INSTALL_HINT in str(error.value)
    monkeypatch.setattr(dependencies, "missing_requirements", lambda: [])
    try:
        key, path = demo_bundle()
    except unittest.SkipTest as skip:  # a build without the demo bundle: the self-tests skip
        assert "demo_phantom_film_v1" in str(skip)
    else:
        assert key.startswith("demo_phantom_film_v1") and path.exists()


def test_oriented_images_convert_with_their_extent(mrml, logic_module):
    """The effect's path: an aligned source image whose extent does not start at 0, and labelmaps back."""
    from TextGuidedSegLogic.nodes import (
        matrix_to_numpy,
        numpy_to_matrix,
        oriented_labelmap,
    )

    image_to_world = np.array([[0, -2.0, 0, 5], [1.5, 0, 0, -7], [0, 0, 3, 11], [0, 0, 0, 1]])
    image = slicer.vtkOrientedImageData()
    image.SetExtent(2, 9, 3, 7, 1, 4)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    voxels = np.arange(8 * 5 * 4, dtype=np.int16).reshape(4, 5, 8)  # (K, J, I)
    vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = voxels.ravel()
    image.SetImageToWorldMatrix(numpy_to_matrix(image_to_world))
    job = logic_module.TextGuidedSegLogic().prepare_image_inputs(image, None, "liver")
    assert job.volume.shape == (8, 5, 4) and job.extent_start == (2, 3, 1)
    np.testing.assert_array_equal(job.volume.array, voxels.transpose(2, 1, 0))
    # array index (0, 0, 0) is image index (2, 3, 1)
    np.testing.assert_allclose(job.volume.affine @ [0, 0, 0, 1], image_to_world @ [2, 3, 1, 1])
    mask = job.volume.array > 100
    labelmap = oriented_labelmap(mask, job.volume.affine, job.extent_start)
    assert labelmap.GetExtent() == image.GetExtent()
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(matrix_to_numpy(matrix), image_to_world)
    scalars = vtk.util.numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(4, 5, 8)
    np.testing.assert_array_equal(scalars, (voxels > 100).astype(np.uint8))


@pytest.mark.parametrize("context", ["TextGuidedSeg", "Total Segmentator"])
def test_terminology_context_makes_our_codes_known_to_slicer(mrml, tmp_path, context):
    """Structures Slicer's General Anatomy list lacks resolve once the module's context file is loaded."""
    from TextGuidedSegLogic.terminology import write_terminology_context

    from TextGuidedSegLib.taxonomy import get_vocabulary

    context_name = f"Segmentation category and type - {context}"
    path = write_terminology_context(tmp_path, context_name=context_name)
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminologies.LoadTerminologyFromFile(str(path)) == context_name
    vocabulary = get_vocabulary()
    ours = [vocabulary.structure(e.class_name) for e in vocabulary.structures]
    ours = [s for s in ours if s.terminology.context_name == context_name]
    assert len(ours) >= (5 if context == "TextGuidedSeg" else 100)
    shown = 0
    for structure in ours:
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(structure.terminology.slicer_entry(), entry)
        assert terminologies.UpdateEntryFromLoadedTerminologies(entry, [context_name], [])
        coded = entry.GetTypeModifierObject() if structure.terminology.modifier else entry.GetTypeObject()
        assert coded.GetCodeValue() == (structure.terminology.modifier or structure.terminology.type).value
        # codes shared by several structures (TotalSegmentator's "Vertebra" for each region) show the first
        if coded.GetSlicerLabel() == structure.name.lower():
            assert tuple(coded.GetRecommendedDisplayRGBValue()) == structure.terminology.color, structure.name
            shown += 1
    assert shown >= 0.9 * len(ours), (shown, len(ours))


def test_importing_the_logic_imports_no_model_stack(mrml):
    """Module start-up stays light: the package and the registry import neither torch nor MONAI."""
    import subprocess

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import TextGuidedSegLogic, TextGuidedSegLib.registry; "
        "heavy = sorted({'torch', 'monai', 'transformers', 'nibabel'} & set(sys.modules)); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(MODULE_DIR)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- a published model's layout: an imported MONAI wholeBody bundle -----------------------------------------


@pytest.mark.slow
def test_an_imported_wholebody_bundle_segments_the_shared_ct_with_coded_segments(
    mrml, logic_module, scene, tmp_path
):
    """MONAI's wholeBody_ct_segmentation (3 mm, random weights in its own layout) imported and run from the
    panel's logic: 104 structures on offer; the requested ones written with their vocabulary codes, voxel
    for voxel the library's label map."""
    import shutil

    import torch
    from monai.networks.nets import SegResNet

    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.importers.monai_bundle import import_monai_bundle
    from TextGuidedSegLib.inference import Segmenter
    from TextGuidedSegLib.io import load_volume
    from TextGuidedSegLib.taxonomy import get_vocabulary

    source = tmp_path / "wholeBody_ct_segmentation"
    zoo = shared_path("monai_model_zoo", "wholeBody_ct_segmentation")
    shutil.copytree(zoo / "configs", source / "configs")
    (source / "models").mkdir()
    torch.manual_seed(0)
    network = SegResNet(  # the network_def of its inference.json
        spatial_dims=3, in_channels=1, out_channels=105, init_filters=32,
        blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], dropout_prob=0.2,
    )  # fmt: skip
    with torch.no_grad():  # let the requested channels (spleen 1, kidneys 2-3, liver 5, aorta 7) compete
        final = network.conv_final[-1].conv
        final.weight.mul_(20.0)
        final.bias.fill_(-50.0)
        final.bias[[1, 2, 3, 5, 7]] = 0.0
    torch.save(network.state_dict(), source / "models" / "model_lowres.pt")
    bundle = import_monai_bundle(source, source / "models" / "model_lowres.pt", tmp_path / "wholebody_lowres")

    ct = shared_path("totalseg", "example_ct.nii.gz")  # 122 x 101 x 112, 3 mm
    volume_node = read_volume_node(scene, ct, "CT")
    logic = logic_module.TextGuidedSegLogic()
    assert len(logic.vocabulary(str(bundle))) == 104
    prompt = "liver, spleen, both kidneys and the aorta"
    outputs = logic.segment(volume_node, prompt, bundle=str(bundle))
    segmentation = outputs.segmentation_node.GetSegmentation()
    names = [segmentation.GetSegment(s).GetName() for s in outputs.segment_ids]
    assert names == ["Liver", "Spleen", "Right Kidney", "Left Kidney", "Aorta"]
    vocabulary = get_vocabulary()
    expected = Segmenter(load_bundle(bundle), device="cpu", progress=False).segment(load_volume(ct), prompt)
    present = 0
    for label_id, (segment_id, class_name) in enumerate(
        zip(outputs.segment_ids, ["liver", "spleen", "right_kidney", "left_kidney", "aorta"], strict=True),
        start=1,
    ):
        segment = segmentation.GetSegment(segment_id)
        tag = vtk.reference("")
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
        terminology = vocabulary[class_name].terminology
        assert str(tag) == terminology.slicer_entry(), class_name
        assert [round(c * 255) for c in segment.GetColor()] == list(terminology.color), class_name
        mask = segment_mask(outputs.segmentation_node, segment_id, volume_node)
        np.testing.assert_array_equal(mask, expected.labels == label_id, err_msg=class_name)
        present += bool(mask.any())
    assert present >= 2, "the random model answered too few of the requested structures to compare"
