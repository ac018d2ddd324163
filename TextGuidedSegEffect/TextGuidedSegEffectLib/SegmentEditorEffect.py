"""The "Text prompt" Segment Editor effect: fill segments from a text prompt with a TextGuidedSeg bundle.

One structure fills the selected segment (or a new one when none is selected); several structures create or
update one segment each, named, coloured and terminology-coded. Writes go through the editor's
``modifySegmentByLabelmap``, so the editable area and the overwrite setting apply, and each Apply can be
undone (``saveStateForUndo`` before writing). Inference runs in the module's inference server process
(``textguidedseg serve``, through the Qt-free logic); the encoded source volume is kept while the source
volume is unchanged, so re-prompting is quick.
"""

import logging
import os

import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

POLL_INTERVAL_MS = 50

_logic = None


def sharedLogic():
    """One logic for every Segment Editor (keeps the encoded source volume between Applies)."""
    global _logic
    if _logic is None:
        from TextGuidedSegLogic import TextGuidedSegLogic

        _logic = TextGuidedSegLogic()
    return _logic


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Fill segments from a text prompt."""

    def __init__(self, scriptedEffect) -> None:
        scriptedEffect.name = "Text prompt"  # the key of setActiveEffectByName("Text prompt")
        if hasattr(scriptedEffect, "title"):
            scriptedEffect.title = "Text prompt"
        scriptedEffect.perSegment = False  # several structures make several segments
        scriptedEffect.requireSegments = False  # an empty segmentation is fine: segments are created
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self._worker = None
        self._job = None
        self._choices = {}
        self._vocabularyBundle = None
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollWorker)

    @property
    def logic(self):
        """The logic shared by every Segment Editor (it keeps the encoded source volume)."""
        return sharedLogic()

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self) -> str:
        return (
            "<html>Segment structures named in a text prompt, e.g. <i>liver</i> or <i>spleen and both "
            "kidneys</i>.<p>One structure fills the selected segment (a new segment when none is selected); "
            "several structures create one segment each, with names, colours and terminology codes. The "
            "editable area and the overwrite setting of the masking section apply. Undo reverts an Apply."
            "<p>The first Apply may install Python packages and load the model; later prompts on the same "
            "source volume reuse its encoding.</html>"
        )

    # -- options --------------------------------------------------------------------------------------

    def setupOptionsFrame(self) -> None:
        from TextGuidedSegUI import PromptCompleter  # shared with the panel, beside TextGuidedSegLogic

        self.promptLineEdit = qt.QLineEdit()
        self.promptLineEdit.placeholderText = "e.g. liver, or spleen and both kidneys"
        self.promptLineEdit.toolTip = "Structures to segment, separated by commas or 'and'."
        self.scriptedEffect.addLabeledOptionsWidget("Prompt:", self.promptLineEdit)
        # Enter applies only when the completion popup is closed (TextGuidedSegUI.completer)
        self.promptCompleter = PromptCompleter(
            self.promptLineEdit, onAccept=lambda: self.onApply(), isRunning=lambda: self._worker is not None
        )
        self.promptLineEdit.connect("textChanged(QString)", self.updateMRMLFromGUI)

        self.bundleComboBox = qt.QComboBox()
        self.bundleComboBox.toolTip = (
            "Model bundle (the TextGuidedSeg module's registry and imported bundles)."
        )
        self.scriptedEffect.addLabeledOptionsWidget("Bundle:", self.bundleComboBox)
        self.bundleComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)

        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.toolTip = "Segment the prompt's structures into the segmentation."
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.enabled = False
        buttons = qt.QHBoxLayout()
        buttons.addWidget(self.applyButton)
        buttons.addWidget(self.cancelButton)
        self.scriptedEffect.addOptionsWidget(buttons)
        self.applyButton.connect("clicked()", self.onApply)
        self.cancelButton.connect("clicked()", self.onCancel)

        self.progressBar = qt.QProgressBar()
        self.progressBar.hide()
        self.scriptedEffect.addOptionsWidget(self.progressBar)
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self.populateBundles()

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor

    def setMRMLDefaults(self) -> None:
        from TextGuidedSegLogic import DEFAULT_BUNDLE

        self.scriptedEffect.setParameterDefault("Prompt", "")
        self.scriptedEffect.setParameterDefault("Bundle", DEFAULT_BUNDLE)

    def updateGUIFromMRML(self) -> None:
        prompt = (
            self.scriptedEffect.parameter("Prompt") if self.scriptedEffect.parameterDefined("Prompt") else ""
        )
        if self.promptLineEdit.text != prompt:
            wasBlocked = self.promptLineEdit.blockSignals(True)
            self.promptLineEdit.text = prompt
            self.promptLineEdit.blockSignals(wasBlocked)
        bundle = (
            self.scriptedEffect.parameter("Bundle") if self.scriptedEffect.parameterDefined("Bundle") else ""
        )
        index = self.bundleComboBox.findData(bundle)
        if index < 0 and bundle:
            self.bundleComboBox.addItem(bundle, bundle)
            index = self.bundleComboBox.count - 1
        wasBlocked = self.bundleComboBox.blockSignals(True)
        self.bundleComboBox.currentIndex = index
        self.bundleComboBox.blockSignals(wasBlocked)
        self._setVocabulary(bundle)
        self._updateButtons()

    def updateMRMLFromGUI(self, *args) -> None:
        self.scriptedEffect.setParameter("Prompt", self.promptLineEdit.text)
        if self.bundleComboBox.currentIndex >= 0:
            self.scriptedEffect.setParameter("Bundle", self.bundleComboBox.currentData)
        self._updateButtons()

    def _updateButtons(self) -> None:
        running = self._worker is not None
        self.applyButton.enabled = not running and bool(self.promptLineEdit.text.strip())
        self.cancelButton.enabled = running
        self.bundleComboBox.enabled = not running

    def populateBundles(self) -> None:
        wasBlocked = self.bundleComboBox.blockSignals(True)
        self.bundleComboBox.clear()
        self._choices = {}
        try:
            for choice in sharedLogic().bundle_choices():
                self._choices[choice.key] = choice
                self.bundleComboBox.addItem(choice.label, choice.key)
        except Exception:  # noqa: BLE001 - a broken registry must not break the editor
            logging.exception("Text prompt effect: cannot read the bundle registry")
        self.bundleComboBox.blockSignals(wasBlocked)
        self._vocabularyBundle = None  # vocabularies may have changed

    def _setVocabulary(self, bundle: str) -> None:
        """Completion over the bundle's structures, set only when the bundle changed (updateGUIFromMRML runs
        on every keystroke)."""
        if bundle == self._vocabularyBundle:
            return
        self._vocabularyBundle = bundle
        choice = self._choices.get(bundle)
        from TextGuidedSegLogic.prompts import completion_vocabulary

        vocabulary = choice.vocabulary if choice else self.logic.vocabulary(bundle)
        self.promptCompleter.setVocabulary(completion_vocabulary(vocabulary))

    # -- apply ----------------------------------------------------------------------------------------

    def onApply(self) -> None:
        """Submit the job to the inference server; the segments are written when it ends."""
        if self._worker is not None or not self.promptLineEdit.text.strip():
            return
        from TextGuidedSegUI import ensureDependencies

        if not ensureDependencies(self._showStatus):
            return
        from TextGuidedSegLogic.parameters import options_from_parameters

        parameterSetNode = self.scriptedEffect.parameterSetNode()
        sourceVolumeNode = self._sourceVolumeNode(parameterSetNode)
        sourceImage = self._sourceImage()
        if sourceVolumeNode is None or sourceImage is None:
            # sourceVolumeImageData() is None until a source volume is set (and while it has no voxels)
            self._showStatus("Select a source volume first (the Segment Editor's source volume is empty).")
            return
        from TextGuidedSegLogic.prompts import read_prompt, taxonomy_for_names

        choice = self._choices.get(self.scriptedEffect.parameter("Bundle"))
        taxonomy = taxonomy_for_names(choice.vocabulary if choice else [])
        reading = read_prompt(self.promptLineEdit.text, taxonomy)
        self._showStatus(reading.message)  # what the prompt is read as; ask first when the parse guessed
        if reading.guessed and not slicer.util.confirmOkCancelDisplay(
            reading.message + "\n\nRun with this reading of the prompt?",
            windowTitle="Text prompt: check the prompt",
        ):
            return
        logic = self.logic
        with slicer.util.tryWithErrorDisplay("Cannot start the segmentation.", waitCursor=True):
            # the panel's remembered device; every other option keeps its default (the bundle's values)
            remembered = {"device": str(qt.QSettings().value("TextGuidedSeg/device", "auto"))}
            self._job = logic.prepare_image_inputs(
                sourceImage,
                sourceVolumeNode,
                self.promptLineEdit.text,
                self.scriptedEffect.parameter("Bundle"),
                options_from_parameters(remembered),
            )
            job = self._job
            self._worker = logic.submit(job)  # runs in the inference server process
            self._pollTimer.start()
            self.progressBar.setRange(0, 0)
            self.progressBar.show()
            self._showStatus("Starting...")
            self._updateButtons()

    def cleanup(self) -> None:
        """Called by qMRMLSegmentEditorWidget before it deletes this effect: stop polling, cancel the job (its
        result is dropped) and disconnect the timer, so nothing outlives the C++ effect."""
        self._pollTimer.stop()
        self._pollTimer.disconnect("timeout()", self.onPollWorker)
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._job = None

    def onCancel(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._showStatus("Cancelling...")
            self.cancelButton.enabled = False

    def onPollWorker(self) -> None:
        if self._worker is None:
            self._pollTimer.stop()
            return
        for event in self._worker.poll():
            if event.kind == "progress":
                if event.total:
                    self.progressBar.setRange(0, int(event.total))
                    self.progressBar.value = min(int(event.done), int(event.total))
                else:
                    self.progressBar.setRange(0, 0)
                self._showStatus(f"{event.stage.capitalize()}...")
            elif event.kind in ("done", "cancelled", "error"):
                self._pollTimer.stop()
                self._worker = None
                self.progressBar.hide()
                self._updateButtons()
                if event.kind == "done":
                    self._write(event.result)
                elif event.kind == "cancelled":
                    self._showStatus("Cancelled: nothing was changed.")
                else:
                    self._showStatus(f"Failed: {event.error}")
                    slicer.util.errorDisplay(f"Text prompt failed: {event.error}", detailedText=event.details)

    def _write(self, output) -> None:
        """Write the result through the editor (masking applies), after an undo snapshot."""
        from TextGuidedSegLogic.nodes import oriented_image_fingerprint
        from TextGuidedSegLogic.segments import write_segments

        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode() if parameterSetNode is not None else None
        sourceVolumeNode = self._sourceVolumeNode(parameterSetNode) if parameterSetNode is not None else None
        sourceImage = self._sourceImage() if sourceVolumeNode is not None else None
        if (
            segmentationNode is None
            or sourceImage is None
            or oriented_image_fingerprint(sourceImage, sourceVolumeNode) != output.job.fingerprint
        ):
            self._showStatus("The source volume or segmentation changed while segmenting: apply again.")
            return
        modificationMode = slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet

        def modify(segmentId, labelmap) -> None:
            self.scriptedEffect.modifySegmentByLabelmap(
                segmentationNode, segmentId, labelmap, modificationMode
            )

        with slicer.util.tryWithErrorDisplay("Could not write the segments.", waitCursor=True):
            self.scriptedEffect.saveStateForUndo()
            segmentIds = write_segments(
                segmentationNode,
                output.result.labels,
                output.result.segments,
                output.job.volume.affine,
                modify,
                selected_segment_id=parameterSetNode.GetSelectedSegmentID() or None,
                extent_start=output.job.extent_start,
                masks=output.result.masks,
            )
            if len(segmentIds) == 1:
                parameterSetNode.SetSelectedSegmentID(segmentIds[0])
            summary = ", ".join(f"{s.name} {s.volume_ml:.1f} mL" for s in output.result.segments)
            reused = " (encoded volume reused)" if output.reused_encoding else ""
            self._showStatus(f"Done in {output.seconds:.1f} s{reused}: {summary}")

    # -- helpers --------------------------------------------------------------------------------------

    def _showStatus(self, text: str) -> None:
        self.statusLabel.text = text

    @staticmethod
    def _sourceVolumeNode(parameterSetNode):
        if hasattr(parameterSetNode, "GetSourceVolumeNode"):
            return parameterSetNode.GetSourceVolumeNode()
        return parameterSetNode.GetMasterVolumeNode()  # Slicer < 5.2

    def _sourceImage(self):
        """The source volume resampled to the segmentation's geometry (what the segments are written on)."""
        if hasattr(self.scriptedEffect, "sourceVolumeImageData"):
            return self.scriptedEffect.sourceVolumeImageData()
        return self.scriptedEffect.masterVolumeImageData()  # Slicer < 5.2
