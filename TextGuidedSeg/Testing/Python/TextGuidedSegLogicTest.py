"""In-Slicer test of the module logic with the application's own file I/O.

``slicer.util.loadVolume``, ``saveNode`` and ``loadSegmentation`` need the Slicer application, so the headless
tests (``Testing/test_slicer_logic.py`` on slicer-core) use storage nodes instead; this test closes that gap:
a phantom CT written to NIfTI, loaded as Slicer loads files, segmented with the demo bundle, the segmentation
saved as .seg.nrrd and loaded back.
"""

import logging
import tempfile
import unittest
from pathlib import Path

import numpy as np
import slicer


class TextGuidedSegLogicTest(unittest.TestCase):
    """Load -> segment -> save -> reload, inside Slicer."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def test_LoadSegmentSaveReload(self) -> None:
        from TextGuidedSegLogic.dependencies import missing_requirements

        missing = [m.describe() for m in missing_requirements()]
        self.assertEqual(
            missing, [], "install the Python packages first: open the module and press Apply once"
        )
        from TextGuidedSegLogic import DEFAULT_BUNDLE, TextGuidedSegLogic
        from TextGuidedSegLogic.selftest import MIN_DICE, dice, truth_mask

        from TextGuidedSegLib.bundle import load_bundle
        from TextGuidedSegLib.data.phantom import make_phantom
        from TextGuidedSegLib.demo import demo_phantom_config
        from TextGuidedSegLib.registry import BundleStore

        store = BundleStore()
        bundlePath = store.path(store.entry(DEFAULT_BUNDLE))
        if bundlePath is None:
            self.skipTest("the demo bundle is not installed with this build")
        spacing = load_bundle(bundlePath).config.preprocessing.spacing
        phantom = make_phantom(demo_phantom_config(spacing, seed=303))
        with tempfile.TemporaryDirectory() as folder:
            ctPath = Path(folder) / "phantom_ct.nii.gz"
            phantom.save(ctPath, Path(folder) / "phantom_truth.nii.gz")
            volumeNode = slicer.util.loadVolume(str(ctPath))
            outputs = TextGuidedSegLogic().segment(
                volumeNode, "liver, spleen and both kidneys", bundle=str(bundlePath)
            )
            segmentationNode = outputs.segmentation_node
            masks = {}
            for segmentId, info in zip(outputs.segment_ids, outputs.output.result.segments, strict=True):
                array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
                masks[segmentId] = array.transpose(2, 1, 0) > 0
                score = dice(masks[segmentId], truth_mask(phantom, info.class_name))
                logging.info("TextGuidedSeg logic test: %s Dice %.3f", info.name, score)
                self.assertGreaterEqual(score, MIN_DICE[info.class_name], info.name)

            segPath = str(Path(folder) / "phantom.seg.nrrd")
            self.assertTrue(slicer.util.saveNode(segmentationNode, segPath))
            reloaded = slicer.util.loadSegmentation(segPath)
            before, after = segmentationNode.GetSegmentation(), reloaded.GetSegmentation()
            self.assertEqual(after.GetNumberOfSegments(), 4)
            for segmentId, mask in masks.items():
                old, new = before.GetSegment(segmentId), after.GetSegment(segmentId)
                self.assertEqual(new.GetName(), old.GetName())
                self.assertEqual(new.GetTerminology(), old.GetTerminology())
                array = slicer.util.arrayFromSegmentBinaryLabelmap(reloaded, segmentId, volumeNode)
                self.assertTrue(np.array_equal(array.transpose(2, 1, 0) > 0, mask))
