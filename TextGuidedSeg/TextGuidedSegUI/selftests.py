"""In-Slicer tests of the GUI defects fixed in issue 11, one test per defect, mixed into the modules' tests.

``PanelDefectTests`` is mixed into ``TextGuidedSegTest`` (``TextGuidedSeg.py``), ``EffectDefectTests`` into
``TextGuidedSegEffectTest``. They need the Slicer application (Qt event loop, widgets, the Segment Editor);
the Qt-free rules they exercise are tested headless in ``Testing/test_slicer_gui_logic.py``.
"""

import time

import qt
import slicer

__all__ = ["EffectDefectTests", "PanelDefectTests", "pressEnter", "typeInto", "waitUntil"]


def typeInto(lineEdit, text: str) -> None:
    """Type ``text`` at the end of ``lineEdit`` as a user would (``insert`` emits ``textEdited``)."""
    lineEdit.setFocus()
    lineEdit.end(False)
    lineEdit.insert(text)
    slicer.app.processEvents()


def pressEnter(receiver) -> None:
    """Send an Enter key press and release to ``receiver`` (the completion popup or the line edit)."""
    for eventType in (qt.QEvent.KeyPress, qt.QEvent.KeyRelease):
        qt.QApplication.sendEvent(receiver, qt.QKeyEvent(eventType, qt.Qt.Key_Return, qt.Qt.NoModifier))
    slicer.app.processEvents()


def waitUntil(condition, seconds: float = 600.0) -> bool:
    """Process events until ``condition()`` is true or ``seconds`` passed; return ``condition()``."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        slicer.app.processEvents()
        time.sleep(0.05)
    return bool(condition())


def _checkEnterCompletes(test, completer, lineEdit, applyCalls: list) -> None:
    """Enter in the open popup completes "spl" to "Spleen" and does not apply; Enter again applies."""
    lineEdit.text = "liver and "
    typeInto(lineEdit, "spl")
    test.assertTrue(completer.popupOpen(), "typing a fragment should open the completion popup")
    popup = completer.completer.popup()
    popup.setCurrentIndex(completer.completer.completionModel().index(0, 0))
    pressEnter(popup)
    test.assertEqual(applyCalls, [], "Enter in the open completion popup must not apply")
    test.assertFalse(completer.popupOpen())
    test.assertEqual(lineEdit.text, "liver and Spleen")
    pressEnter(lineEdit)
    test.assertEqual(len(applyCalls), 1, "Enter with the popup closed applies")


class PanelDefectTests:
    """Mixin of ``TextGuidedSegTest``: the panel's defects (needs ``self.delayDisplay`` and asserts)."""

    def _panel(self):
        slicer.util.selectModule("TextGuidedSeg")
        return slicer.modules.textguidedseg.widgetRepresentation().self()

    def test_PanelEnterWithOpenCompleter(self) -> None:
        """Enter while the completion popup is open selects the completion and does not fire Apply."""
        self.delayDisplay("Panel: Enter in the completion popup")
        widget = self._panel()
        calls = []
        widget.onApplyButton = lambda: calls.append(widget.ui.promptLineEdit.text)
        try:
            widget.promptCompleter.setVocabulary(["Liver", "Spleen", "Right Kidney", "Left Kidney"])
            _checkEnterCompletes(self, widget.promptCompleter, widget.ui.promptLineEdit, calls)
            self.assertEqual(calls, ["liver and Spleen"])
        finally:
            del widget.onApplyButton  # back to the class's method

    def test_PanelParameterNodeAfterSceneClose(self) -> None:
        """After a scene close the singleton parameter node gets its ModuleName attribute back."""
        widget = self._panel()
        node = widget.logic.getParameterNode()
        slicer.mrmlScene.Clear()
        self.assertEqual(widget.logic.getParameterNode().GetID(), node.GetID())
        self.assertEqual(widget.logic.getParameterNode().GetAttribute("ModuleName"), "TextGuidedSeg")

    def test_PanelWriteResultsAfterSceneClose(self) -> None:
        """A job finishing after the scene closed writes nothing and reports it (no None dereference)."""
        from types import SimpleNamespace

        widget = self._panel()
        widget.setParameterNode(None)  # what onSceneStartClose leaves
        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        output = SimpleNamespace(job=SimpleNamespace(volume_node_id="vtkMRMLScalarVolumeNodeGone"))
        widget._writeResults(output)
        self.assertIn("scene was closed", widget.ui.statusLabel.text)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), before)
        widget.initializeParameterNode()

    def test_PanelSceneCloseCancelsJob(self) -> None:
        """Closing the scene during a job cancels it: no timer, no job, no segmentation node afterwards."""
        self.delayDisplay("Panel: close the scene during a job")
        widget = self._panel()
        from TextGuidedSegLogic.selftest import demo_bundle, phantom_volume_node

        bundleKey, _path = demo_bundle()
        volumeNode, _phantom = phantom_volume_node(seed=303)
        widget.ui.inputVolumeSelector.setCurrentNode(volumeNode)
        widget._parameterNode.bundle = bundleKey
        widget.ui.promptLineEdit.text = "liver"
        widget.ui.applyButton.click()
        self.assertIsNotNone(widget._worker, widget.ui.statusLabel.text)
        slicer.mrmlScene.Clear()
        self.assertTrue(waitUntil(lambda: widget._worker is None, 120), "the job was not cancelled")
        self.assertFalse(widget._pollTimer.isActive())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 0)

    def test_PanelTryItLoadsSampleData(self) -> None:
        """The "Try it" link loads the sample CT and its reference segmentation and selects the CT."""
        self.delayDisplay("Panel: Try it")
        widget = self._panel()
        widget.onTryIt("sample")
        volumeNode = widget._parameterNode.inputVolume
        self.assertIsNotNone(volumeNode)
        self.assertEqual(volumeNode.GetName(), "TextGuidedSegPhantomCT")
        segmentations = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
        self.assertEqual(len(segmentations), 1)
        names = {
            segmentations[0].GetSegmentation().GetNthSegment(i).GetName()
            for i in range(segmentations[0].GetSegmentation().GetNumberOfSegments())
        }
        self.assertTrue({"Liver", "Spleen", "Right Kidney", "Left Kidney"} <= names, names)


class EffectDefectTests:
    """Mixin of ``TextGuidedSegEffectTest``: the effect's defects (``_editor()`` gives a fresh editor)."""

    def _editor(self, withSource: bool = True):
        from TextGuidedSegLogic.selftest import phantom_volume_node

        volumeNode, _phantom = phantom_volume_node(seed=304)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        editorWidget = slicer.qMRMLSegmentEditorWidget()
        editorWidget.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorWidget.setMRMLSegmentEditorNode(editorNode)
        editorWidget.setSegmentationNode(segmentationNode)
        if withSource:
            editorWidget.setSourceVolumeNode(volumeNode)
        editorWidget.show()
        editorWidget.setActiveEffectByName("Text prompt")
        effect = editorWidget.activeEffect()
        self.assertIsNotNone(effect, "the Text prompt effect is not registered")
        return editorWidget, effect, segmentationNode

    def test_EffectEnterWithOpenCompleter(self) -> None:
        """Enter while the effect's completion popup is open completes and does not apply."""
        self.delayDisplay("Effect: Enter in the completion popup")
        editorWidget, effect, _segmentation = self._editor()
        calls = []
        effectSelf = effect.self()
        effectSelf.onApply = lambda: calls.append(effectSelf.promptLineEdit.text)
        effectSelf.promptCompleter.setVocabulary(["Liver", "Spleen", "Right Kidney", "Left Kidney"])
        _checkEnterCompletes(self, effectSelf.promptCompleter, effectSelf.promptLineEdit, calls)
        del effectSelf.onApply
        editorWidget.setActiveEffect(None)

    def test_EffectWithoutSourceVolume(self) -> None:
        """Apply without a source volume says so and starts nothing (sourceVolumeImageData() is None)."""
        editorWidget, effect, _segmentation = self._editor(withSource=False)
        effect.setParameter("Prompt", "liver")
        effect.self().onApply()
        self.assertIsNone(effect.self()._worker)
        self.assertIn("source volume", effect.self().statusLabel.text)
        editorWidget.setActiveEffect(None)

    def test_EffectCleanupMidJob(self) -> None:
        """Destroying the editor during a job: cleanup() stops the timer and cancels the job; nothing is
        written into the segmentation afterwards."""
        self.delayDisplay("Effect: editor destroyed during a job")
        from TextGuidedSegLogic.selftest import demo_bundle

        bundleKey, _path = demo_bundle()
        editorWidget, effect, segmentationNode = self._editor()
        effect.setParameter("Bundle", bundleKey)
        effect.setParameter("Prompt", "liver")
        effectSelf = effect.self()
        effectSelf.onApply()
        job = effectSelf._worker
        self.assertIsNotNone(job, effectSelf.statusLabel.text)
        effectSelf.cleanup()  # what ~qMRMLSegmentEditorWidget calls on each effect before deleting it
        self.assertFalse(effectSelf._pollTimer.isActive())
        self.assertIsNone(effectSelf._worker)
        self.assertTrue(waitUntil(lambda: not job.running, 120), "the cancelled job kept running")
        editorWidget.deleteLater()
        slicer.app.processEvents()
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 0)
