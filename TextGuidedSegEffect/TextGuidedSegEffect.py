"""Hidden module registering the "Text prompt" Segment Editor effect at start-up (Slicer's template pattern).

The effect itself is ``TextGuidedSegEffectLib/SegmentEditorEffect.py``; it runs the TextGuidedSeg module's
Qt-free logic (``TextGuidedSegLogic``). :class:`TextGuidedSegEffectTest` drives it through a
``qMRMLSegmentEditorWidget`` on a phantom with the demo bundle.
"""

import logging
import os
import time

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

EFFECT_NAME = "Text prompt"


class TextGuidedSegEffect(ScriptedLoadableModule):
    """Registers the "Text prompt" effect in the Segment Editor."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Text prompt Segment Editor effect")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "TextGuidedSeg"]
        self.parent.contributors = ["TextGuidedSeg Developers (TextGuidedSeg Project)"]
        self.parent.hidden = True
        self.parent.helpText = _("This hidden module registers the Text prompt Segment Editor effect.")
        self.parent.acknowledgementText = _("Part of the TextGuidedSeg extension.")
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self) -> None:
        import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

        instance = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
        effectFilename = os.path.join(
            os.path.dirname(__file__), "TextGuidedSegEffectLib", "SegmentEditorEffect.py"
        )
        instance.setPythonSource(effectFilename.replace("\\", "/"))
        instance.self().register()


def _effectDefectTests():
    """The effect's GUI-defect tests (TextGuidedSegUI.selftests, importable once TextGuidedSeg is loaded)."""
    try:
        from TextGuidedSegUI.selftests import EffectDefectTests
    except ImportError:  # TextGuidedSeg's folder not on sys.path yet: the tests run only in Slicer
        return object
    return EffectDefectTests


class TextGuidedSegEffectTest(ScriptedLoadableModuleTest, _effectDefectTests()):
    """In-Slicer test of the effect: fill a segment from a prompt, masking, several structures, undo; and one
    test per GUI defect of issue 11 (``TextGuidedSegUI.selftests.EffectDefectTests``)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_TextPromptEffect()
        for name in (
            "test_EffectEnterWithOpenCompleter",
            "test_EffectWithoutSourceVolume",
            "test_EffectCleanupMidJob",
        ):
            self.setUp()
            getattr(self, name)()

    def _waitForEffect(self, effect) -> None:
        for _step in range(6000):  # up to 10 minutes on a slow CPU
            if effect.self()._worker is None:
                return
            slicer.app.processEvents()
            time.sleep(0.1)  # releases the GIL to the worker thread
        self.fail("the Text prompt effect did not finish")

    def test_TextPromptEffect(self) -> None:
        from TextGuidedSegLogic.selftest import MIN_DICE, demo_bundle, dice, phantom_volume_node, truth_mask

        bundleKey, bundlePath = demo_bundle()
        from TextGuidedSegLib.bundle import load_bundle

        spacing = load_bundle(bundlePath).config.preprocessing.spacing

        self.delayDisplay("Phantom, segmentation and Segment Editor")
        volumeNode, phantom = phantom_volume_node(seed=302, spacing=spacing)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        mySegment = segmentation.AddEmptySegment("", "my liver", [0.9, 0.5, 0.4])

        editorWidget = slicer.qMRMLSegmentEditorWidget()
        editorWidget.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorWidget.setMRMLSegmentEditorNode(editorNode)
        editorWidget.setSegmentationNode(segmentationNode)
        if hasattr(editorWidget, "setSourceVolumeNode"):
            editorWidget.setSourceVolumeNode(volumeNode)
        else:
            editorWidget.setMasterVolumeNode(volumeNode)
        editorWidget.show()
        editorNode.SetSelectedSegmentID(mySegment)

        def mask(segmentId):
            array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
            return array.transpose(2, 1, 0) > 0

        self.delayDisplay("One structure fills the selected segment")
        editorWidget.setActiveEffectByName(EFFECT_NAME)
        effect = editorWidget.activeEffect()
        self.assertIsNotNone(effect, f"the {EFFECT_NAME!r} effect is not registered")
        effect.setParameter("Bundle", bundleKey)
        effect.setParameter("Prompt", "liver")
        effect.self().onApply()
        self._waitForEffect(effect)
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(segmentation.GetSegment(mySegment).GetName(), "my liver")
        liver = mask(mySegment)
        self.assertGreaterEqual(dice(liver, truth_mask(phantom, "liver")), MIN_DICE["liver"])

        self.delayDisplay("Undo reverts the Apply")
        editorWidget.undo()
        self.assertFalse(mask(mySegment).any())
        editorWidget.redo()
        self.assertTrue((mask(mySegment) == liver).all())

        self.delayDisplay("The editable area limits what is written")
        # With ModificationModeSet and an editable-area mask, Slicer keeps the segment's voxels outside the
        # mask (vtkSlicerSegmentEditorLogic): undo the unmasked Apply first, so the segment starts empty.
        editorWidget.undo()
        self.assertFalse(mask(mySegment).any())
        from TextGuidedSegLogic.nodes import ijk_to_ras
        from TextGuidedSegLogic.selftest import patient_right_half

        box = segmentation.AddEmptySegment("", "editable box", [0.2, 0.2, 1.0])
        # the patient's right half, computed from the volume's IJK-to-RAS (the liver lies mostly there)
        right = patient_right_half(phantom.labels.shape, ijk_to_ras(volumeNode))
        boxMask = right.transpose(2, 1, 0).astype("uint8")  # (I, J, K) -> Slicer's (K, J, I) arrays
        slicer.util.updateSegmentBinaryLabelmapFromArray(boxMask, segmentationNode, box, volumeNode)
        editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
        editorNode.SetMaskSegmentID(box)
        editorNode.SetOverwriteMode(editorNode.OverwriteNone)
        editorNode.SetSelectedSegmentID(mySegment)
        effect.self().onApply()  # same prompt, same volume: the encoded volume is reused
        self._waitForEffect(effect)
        masked = mask(mySegment)
        allowed = right
        self.assertTrue(masked.any(), "nothing was written inside the editable area")
        self.assertFalse((masked & ~allowed).any(), "voxels written outside the editable area")
        self.assertTrue((masked == (liver & allowed)).all())
        self.assertEqual(effect.self().logic.encode_count, 1)  # the source volume was encoded once

        self.delayDisplay("Several structures create one coded segment each")
        editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        effect.setParameter("Prompt", "spleen and both kidneys")
        effect.self().onApply()
        self._waitForEffect(effect)
        names = [segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs()]
        self.assertEqual(names, ["my liver", "editable box", "Spleen", "Right Kidney", "Left Kidney"])
        created = list(segmentation.GetSegmentIDs())[2:]
        for segmentId, className in zip(created, ("spleen", "right_kidney", "left_kidney"), strict=True):
            score = dice(mask(segmentId), truth_mask(phantom, className))
            logging.info("Text prompt effect self-test: %s Dice %.3f", className, score)
            self.assertGreaterEqual(score, MIN_DICE[className], className)
            self.assertTrue(segmentation.GetSegment(segmentId).HasTag("TerminologyEntry"))
        self.delayDisplay("Text prompt effect test passed")
