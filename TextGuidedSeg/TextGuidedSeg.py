"""TextGuidedSeg: segment a CT in 3D Slicer from a text prompt ("liver and both kidneys").

The four Slicer roles:

- :class:`TextGuidedSeg`: module metadata; at start-up it loads the terminology context of the structures
  that Slicer's General Anatomy list lacks.
- :class:`TextGuidedSegWidget`: the panel. It only wires the user interface: the work is done by
  :class:`TextGuidedSegLogic` (``TextGuidedSegLogic/``, Qt-free, usable from the Python console) in an
  inference server process (``textguidedseg serve``); MRML is written on the main thread when the job ends.
- :class:`TextGuidedSegLogic`: imported from the ``TextGuidedSegLogic`` package.
- :class:`TextGuidedSegTest`: in-Slicer self-test on a phantom with the demo bundle (Dice per structure).

Nothing heavy is imported at start-up: PyTorch, MONAI and the library's models are imported on the first
Apply, after the dependency check.
"""

import logging
import os
import time
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from TextGuidedSegLogic import (
    DEFAULT_BUNDLE,
    TextGuidedSegLogic,
)
from TextGuidedSegLogic.parameters import option_parameter_names, option_parameters, options_from_parameters
from TextGuidedSegUI import PromptCompleter, ensureDependencies
from TextGuidedSegUI.selftests import PanelDefectTests

__all__ = [
    "TextGuidedSeg",
    "TextGuidedSegLogic",
    "TextGuidedSegTest",
    "TextGuidedSegWidget",
]

SETTINGS_GROUP = "TextGuidedSeg"
#: Settings kept between Slicer sessions (QSettings) as well as in the scene's parameter node.
#: The bundle and every segmentation option (the library's ``SegmentationOptions`` names, see
#: ``TextGuidedSegLogic.parameters``).
PERSISTENT_PARAMETERS = ("bundle", *option_parameter_names())
DEVICES = (("auto", "Auto"), ("cpu", "CPU"), ("cuda", "CUDA (GPU)"))
POLL_INTERVAL_MS = 50
STAGE_TEXT = {
    "download": "Downloading the model bundle",
    "load": "Loading the model bundle",
    "prepare": "Resampling the volume to the model's grid",
    "segment": "Segmenting",
}


#
# TextGuidedSeg
#


class TextGuidedSeg(ScriptedLoadableModule):
    """Module metadata (ScriptedLoadableModule: Slicer's Base/Python/slicer/ScriptedLoadableModule.py)."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Text-Guided Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["TextGuidedSeg Developers (TextGuidedSeg Project)"]
        self.parent.helpText = _(
            "Segment a CT from a text prompt such as <i>liver, spleen and both kidneys</i>. Each structure "
            "becomes a segment with its name, SNOMED CT terminology code and recommended colour. The same "
            "models are available in the Segment Editor as the <b>Text prompt</b> effect. See the "
            '<a href="https://github.com/TextGuidedSeg/SlicerTextGuidedSeg">documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Models: CLIP-conditioned SwinUNETR (MONAI) with FiLM text conditioning. The default structure "
            "list follows the CLIP-Driven Universal Model (Liu et al., ICCV 2023)."
        )
        slicer.app.connect("startupCompleted()", loadTerminologyContext)
        slicer.app.connect("startupCompleted()", registerSampleData)


def loadTerminologyContext() -> None:
    """Load the terminology contexts of the structures Slicer's General Anatomy list lacks: ours (the femoral
    heads, ...) and TotalSegmentator's (the IVC, ribs, vertebrae, ...) unless SlicerTotalSegmentator did."""
    try:
        from TextGuidedSegLogic.terminology import write_terminology_context

        from TextGuidedSegLib.taxonomy import TOTALSEGMENTATOR_CONTEXT

        folder = os.path.join(slicer.app.cachePath, "TextGuidedSeg")
        terminologies = slicer.modules.terminologies.logic()
        loaded = vtk.vtkStringArray()
        terminologies.GetLoadedTerminologyNames(loaded)
        names = {loaded.GetValue(i) for i in range(loaded.GetNumberOfValues())}
        terminologies.LoadTerminologyFromFile(str(write_terminology_context(folder)))
        if TOTALSEGMENTATOR_CONTEXT not in names:
            path = write_terminology_context(folder, context_name=TOTALSEGMENTATOR_CONTEXT)
            terminologies.LoadTerminologyFromFile(str(path))
    except Exception:  # noqa: BLE001 - a missing context only affects the terminology selector's display
        logging.exception("TextGuidedSeg: could not load its terminology context")


def registerSampleData() -> None:
    """Register the sample phantom CT with the Sample Data module (category "TextGuidedSeg")."""
    try:
        from TextGuidedSegUI.sampledata import registerSampleData as register

        register()
    except Exception:  # noqa: BLE001 - missing sample data must not break the module
        logging.exception("TextGuidedSeg: could not register its sample data")


#
# Parameter node
#


@parameterNodeWrapper
class TextGuidedSegParameterNode(option_parameters()):
    """The panel's state, saved with the scene.

    inputVolume: the CT to segment.
    prompt: the structures to segment, as typed.
    bundle: bundle folder or .zip, or registry ``name==version``.
    outputSegmentation: the segmentation to write into; None creates one.

    Inherited: one member per ``SegmentationOptions`` field, same name and default (``device``, ``flip_tta``,
    ``probabilities``, ...); an option whose None is "the bundle's value" also has a ``<name>_from_bundle``
    flag (``TextGuidedSegLogic.parameters``). Re-declared here: the numbers the panel shows, with their range.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    prompt: str = ""
    bundle: str = DEFAULT_BUNDLE
    overlap: Annotated[float, WithinRange(0.0, 0.95)] = 0.5
    threshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5
    sw_batch_size: Annotated[int, WithinRange(1, 256)] = 1
    outputSegmentation: vtkMRMLSegmentationNode


#
# TextGuidedSegWidget
#


class TextGuidedSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel (see ScriptedLoadableModuleWidget in Slicer's slicer/ScriptedLoadableModule.py)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: TextGuidedSegLogic | None = None
        self._parameterNode: TextGuidedSegParameterNode | None = None
        self._parameterNodeGuiTag = None
        self._worker = None  # the ServerJob of the running job (logic.submit)
        self._job = None
        self._updatingStructureList = False
        self._vocabulary: list[str] = []
        self._vocabularyBundle: str | None = None
        self._bundleChoices: dict = {}
        self._taxonomy = None
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollWorker)

    # -- set-up ------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Build the panel from the .ui file and connect it (called once, when the module is first shown)."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TextGuidedSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TextGuidedSegLogic()

        # Enter applies only when the completion popup is closed (TextGuidedSegUI.completer)
        self.promptCompleter = PromptCompleter(
            self.ui.promptLineEdit,
            onAccept=lambda: self.onApplyButton(),
            isRunning=lambda: self._worker is not None,
        )
        self.ui.promptLineEdit.connect("textChanged(QString)", self.onPromptChanged)
        self.ui.structureListWidget.connect("itemChanged(QListWidgetItem*)", self.onStructureToggled)
        self.ui.tryItLabel.connect("linkActivated(QString)", self.onTryIt)
        self.ui.structureSearchLineEdit.connect("textChanged(QString)", self.onStructureSearchChanged)

        for key, label in DEVICES:
            self.ui.deviceComboBox.addItem(_(label), key)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.deviceInfoLabel.text = self._deviceInfo()
        self.ui.bundleComboBox.connect("currentIndexChanged(int)", self.onBundleChanged)

        browseMenu = qt.QMenu(self.ui.browseBundleButton)
        browseMenu.addAction(_("Bundle folder...")).connect("triggered()", self.onImportBundleFolder)
        browseMenu.addAction(_("Bundle .zip file...")).connect("triggered()", self.onImportBundleZip)
        self.ui.browseBundleButton.setMenu(browseMenu)
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearCache)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.outputSegmentationSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.ui.segmentationShow3DButton.setSegmentationNode
        )
        self.ui.progressBar.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.populateBundles()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes: stop the job and drop observers."""
        self._pollTimer.stop()
        if self._worker is not None:
            self._worker.cancel()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user leaves this module: stop mirroring the parameter node."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode
            )

    def onSceneStartClose(self, caller, event) -> None:
        """The scene is about to close: cancel a running job (nothing will be written) and forget the
        parameter node."""
        if self._worker is not None:
            self._worker.cancel()
            self.ui.statusLabel.text = _("Cancelling: the scene is closing...")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """The scene closed: make a new parameter node if the module is shown."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ----------------------------------------------------------------------------------

    def initializeParameterNode(self) -> None:
        """Make sure the parameter node exists, holds the remembered settings and an input volume."""
        parameterNode = self.logic.getParameterNode()
        fresh = not parameterNode.GetParameterNames()
        self.setParameterNode(TextGuidedSegParameterNode(parameterNode))
        if fresh:
            self._restoreSettings()
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode: TextGuidedSegParameterNode | None) -> None:
        """Mirror ``inputParameterNode`` in the GUI (``connectGui`` for the simple widgets)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode
            )
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        """The widgets ``connectGui`` does not handle (bundle and device selectors) and the buttons."""
        if self._parameterNode is None:
            return
        bundleIndex = self.ui.bundleComboBox.findData(self._parameterNode.bundle)
        if bundleIndex < 0 and self._parameterNode.bundle:
            self.ui.bundleComboBox.addItem(self._parameterNode.bundle, self._parameterNode.bundle)
            bundleIndex = self.ui.bundleComboBox.count - 1
        wasBlocked = self.ui.bundleComboBox.blockSignals(True)
        self.ui.bundleComboBox.currentIndex = bundleIndex
        self.ui.bundleComboBox.blockSignals(wasBlocked)
        if self._parameterNode.bundle != self._vocabularyBundle:
            self._setVocabulary(self._parameterNode.bundle)
        wasBlocked = self.ui.deviceComboBox.blockSignals(True)
        self.ui.deviceComboBox.currentIndex = max(
            0, self.ui.deviceComboBox.findData(self._parameterNode.device)
        )
        self.ui.deviceComboBox.blockSignals(wasBlocked)
        volume = self._parameterNode.inputVolume
        if volume:
            self.ui.outputSegmentationSelector.baseName = f"{volume.GetName()} segmentation"
        self._updateButtons()

    def _updateButtons(self) -> None:
        running = self._worker is not None
        ready = bool(
            self._parameterNode and self._parameterNode.inputVolume and self._parameterNode.prompt.strip()
        )
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = (
            _("Segment the prompt's structures") if ready else _("Select an input volume and type a prompt")
        )
        self.ui.cancelButton.enabled = running
        for widget in (self.ui.bundleComboBox, self.ui.browseBundleButton, self.ui.clearCacheButton):
            widget.enabled = not running

    def _restoreSettings(self) -> None:
        """Apply the settings remembered from earlier Slicer sessions to a new parameter node."""
        settings = qt.QSettings()
        for name in PERSISTENT_PARAMETERS:
            key = f"{SETTINGS_GROUP}/{name}"
            if not settings.contains(key):
                continue
            current = getattr(self._parameterNode, name)
            value = settings.value(key)
            try:
                if isinstance(current, bool):
                    value = str(value).lower() == "true"
                else:
                    value = type(current)(value)
                setattr(self._parameterNode, name, value)
            except (TypeError, ValueError) as err:
                logging.warning("TextGuidedSeg: ignoring the remembered setting %s=%r (%s)", name, value, err)

    def _saveSettings(self) -> None:
        settings = qt.QSettings()
        for name in PERSISTENT_PARAMETERS:
            settings.setValue(f"{SETTINGS_GROUP}/{name}", getattr(self._parameterNode, name))

    # -- bundles and devices -----------------------------------------------------------------------------

    def populateBundles(self) -> None:
        """Fill the bundle selector from the registry and the bundle cache."""
        wasBlocked = self.ui.bundleComboBox.blockSignals(True)
        self.ui.bundleComboBox.clear()
        try:
            choices = self.logic.bundle_choices()
        except Exception as err:  # noqa: BLE001 - a broken registry must not break the panel
            logging.exception("TextGuidedSeg: cannot read the bundle registry")
            self.ui.statusLabel.text = _("Cannot read the bundle registry: {error}").format(error=err)
            choices = []
        self._bundleChoices = {choice.key: choice for choice in choices}
        self._vocabularyBundle = None  # descriptions and vocabularies may have changed
        for index, choice in enumerate(choices):
            self.ui.bundleComboBox.addItem(choice.label, choice.key)
            self.ui.bundleComboBox.setItemData(index, choice.description, qt.Qt.ToolTipRole)
        self.ui.bundleComboBox.blockSignals(wasBlocked)
        if self._parameterNode:
            self.updateGUIFromParameterNode()

    def onBundleChanged(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.bundle = self.ui.bundleComboBox.itemData(index)

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def _deviceInfo(self) -> str:
        from TextGuidedSegLogic.dependencies import describe_devices

        return describe_devices()

    def _setVocabulary(self, bundle: str) -> None:
        """Completion and the structure list for the chosen bundle."""
        self._vocabularyBundle = bundle
        choice = self._bundleChoices.get(bundle)
        vocabulary = choice.vocabulary if choice else self.logic.vocabulary(bundle)
        self.ui.bundleInfoLabel.text = choice.description.split("\n")[0] if choice else bundle
        if vocabulary == self._vocabulary:
            return
        from TextGuidedSegLogic.prompts import completion_vocabulary, taxonomy_for_names

        self._vocabulary = vocabulary
        self._taxonomy = taxonomy_for_names(vocabulary)
        self.promptCompleter.setVocabulary(completion_vocabulary(vocabulary))
        self._updatingStructureList = True
        try:
            self.ui.structureListWidget.clear()
            for name in vocabulary:
                item = qt.QListWidgetItem(name, self.ui.structureListWidget)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Unchecked)
        finally:
            self._updatingStructureList = False
        self.ui.structureSearchLineEdit.placeholderText = _("Search {count} structures").format(
            count=len(vocabulary)
        )
        self.onStructureSearchChanged(self.ui.structureSearchLineEdit.text)
        self.onPromptChanged(self.ui.promptLineEdit.text)

    def onStructureSearchChanged(self, text: str) -> None:
        """Show only the structures whose names contain every word typed in the search field."""
        from TextGuidedSegLogic.prompts import filter_structure_names

        names = [self.ui.structureListWidget.item(r).text() for r in range(self.ui.structureListWidget.count)]
        for row, shown in enumerate(filter_structure_names(names, text)):
            self.ui.structureListWidget.item(row).setHidden(not shown)

    def onImportBundleFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Choose a TextGuidedSeg bundle folder")
        )
        if folder:
            self._importBundle(folder)

    def onImportBundleZip(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Choose a TextGuidedSeg bundle .zip"), "", _("Bundle (*.zip)")
        )
        if path:
            self._importBundle(path)

    def _importBundle(self, source: str) -> None:
        """Check a bundle and copy it into the bundle cache, then select it."""
        if not ensureDependencies(self._showStatus):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not import the bundle."), waitCursor=True):
            cached = self.logic.import_bundle(source)
            self.populateBundles()
            self._parameterNode.bundle = cached.key
            self.ui.statusLabel.text = _("Imported bundle {name} {version} into {path}").format(
                name=cached.name, version=cached.version, path=cached.path
            )

    def onClearCache(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(
            _("Remove every downloaded and imported bundle from {folder}? Built-in bundles stay.").format(
                folder=self.logic.store.root
            ),
            _("Clear the bundle cache"),
        ):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not clear the bundle cache."), waitCursor=True):
            removed = self.logic.clear_cache()
            self.populateBundles()
            self.ui.statusLabel.text = _("Removed {count} bundle(s) from the cache.").format(count=removed)

    # -- prompt, completion and the structure list -------------------------------------------------------

    def onPromptChanged(self, text: str) -> None:
        """Tick the structures the prompt names."""
        from TextGuidedSegLogic.prompts import structures_in_prompt

        named = {name.casefold() for name in structures_in_prompt(text, self._taxonomy)}
        self._updatingStructureList = True
        try:
            for row in range(self.ui.structureListWidget.count):
                item = self.ui.structureListWidget.item(row)
                item.setCheckState(qt.Qt.Checked if item.text().casefold() in named else qt.Qt.Unchecked)
        finally:
            self._updatingStructureList = False
        self._updateButtons()

    def onStructureToggled(self, item) -> None:
        """Add or remove a ticked structure in the prompt."""
        if self._updatingStructureList:
            return
        from TextGuidedSegLogic.prompts import toggle_structure

        checked = item.checkState() == qt.Qt.Checked
        self.ui.promptLineEdit.text = toggle_structure(
            self.ui.promptLineEdit.text, item.text(), checked, self._taxonomy
        )

    # -- apply, progress, cancel -------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        """Check dependencies, copy the inputs and submit the job to the inference server."""
        if self._worker is not None or not self.ui.applyButton.enabled:
            return
        if not ensureDependencies(self._showStatus):
            return
        parameters = self._parameterNode
        if not self._licenseAccepted(parameters.bundle):
            return
        from TextGuidedSegLogic.prompts import read_prompt

        reading = read_prompt(parameters.prompt, self._taxonomy)  # the parse guessed: ask before running
        if reading.guessed and not slicer.util.confirmOkCancelDisplay(
            reading.message + "\n\n" + _("Run with this reading of the prompt?"),
            windowTitle=_("Check the prompt"),
        ):
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot start the segmentation."), waitCursor=True):
            self._job = self.logic.prepare_inputs(
                parameters.inputVolume,
                parameters.prompt,
                parameters.bundle,
                options_from_parameters(parameters),
            )
            self._saveSettings()
            job, logic = self._job, self.logic
            self._worker = logic.submit(job)  # runs in the inference server process
            self._pollTimer.start()
            self.ui.progressBar.show()
            self.ui.progressBar.setRange(0, 0)
            self.ui.statusLabel.text = _("Starting...")
            self._updateButtons()

    def onTryIt(self, link: str = "") -> None:
        """The "Try it" link: load the sample phantom CT (and its reference segmentation), select it."""
        from TextGuidedSegUI.sampledata import loadSampleData

        with slicer.util.tryWithErrorDisplay(_("Could not load the sample data."), waitCursor=True):
            volumeNode = loadSampleData()
            if self._parameterNode is not None:
                self._parameterNode.inputVolume = volumeNode
                if not self._parameterNode.prompt.strip():
                    self._parameterNode.prompt = "liver and spleen"
            self.ui.statusLabel.text = _("Sample CT loaded: press Apply.")

    def _licenseAccepted(self, bundle: str) -> bool:
        """Ask once per user before a bundle whose licence must be accepted (non-commercial weights) runs."""
        choice = self._bundleChoices.get(bundle)
        if choice is None or not choice.needs_license_acceptance:
            return True
        question = _(
            "The weights of {bundle} are published under the licence {license}, which restricts their use "
            "(for example to non-commercial research). Do you accept this licence?\n\n{description}"
        ).format(
            bundle=choice.label, license=choice.license or _("(not stated)"), description=choice.description
        )
        if not slicer.util.confirmYesNoDisplay(question, windowTitle=_("Accept the licence")):
            self.ui.statusLabel.text = _("Not run: the licence of {bundle} was not accepted.").format(
                bundle=bundle
            )
            return False
        self.logic.accept_license(bundle)
        self.populateBundles()
        return True

    def _showStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def onCancelButton(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            self.ui.cancelButton.enabled = False

    def onPollWorker(self) -> None:
        """Runs every 50 ms while a job runs: show progress, write results when it ends."""
        if self._worker is None:
            self._pollTimer.stop()
            return
        for event in self._worker.poll():
            if event.kind == "progress":
                self._showProgress(event.stage, event.done, event.total)
            elif event.kind == "done":
                self._finish()
                self._writeResults(event.result)
            elif event.kind == "cancelled":
                self._finish()
                self.ui.statusLabel.text = _("Cancelled: nothing was written.")
            elif event.kind == "error":
                self._finish()
                self.ui.statusLabel.text = _("Failed: {error}").format(error=event.error)
                slicer.util.errorDisplay(
                    _("Segmentation failed: {error}").format(error=event.error), detailedText=event.details
                )

    def _showProgress(self, stage: str, done: int, total: int | None) -> None:
        text = _(STAGE_TEXT.get(stage, stage))
        if total:
            self.ui.progressBar.setRange(0, int(total))
            self.ui.progressBar.value = min(int(done), int(total))
            if stage == "download":
                text += f" ({done / 2**20:.0f} / {total / 2**20:.0f} MB)"
            else:
                text += f" ({done} / {total} windows)"
        else:
            self.ui.progressBar.setRange(0, 0)  # busy indicator
        self.ui.statusLabel.text = text + "..."

    def _finish(self) -> None:
        self._pollTimer.stop()
        self._worker = None
        self.ui.progressBar.hide()
        self.ui.deviceInfoLabel.text = self._deviceInfo()
        choice = self._bundleChoices.get(self._job.bundle) if self._job is not None else None
        if choice is None or not choice.available:
            self.populateBundles()  # a download may have made a bundle available
        self._updateButtons()

    def _writeResults(self, output) -> None:
        """Write the finished job into the scene (main thread); confirm replacing segments first.

        Writes nothing when the scene was closed or the input volume removed while the job ran (the reason
        goes to the status line and the error display).
        """
        from TextGuidedSegLogic.interaction import can_write_results

        volumeNode = slicer.mrmlScene.GetNodeByID(output.job.volume_node_id)
        reason = can_write_results(self._parameterNode is not None, volumeNode is not None)
        if reason is not None:
            self.ui.statusLabel.text = _("Not written: {reason}.").format(reason=reason)
            slicer.util.errorDisplay(_("The segmentation was not written: {reason}.").format(reason=reason))
            return
        segmentationNode = self._parameterNode.outputSegmentation
        conflicts = self.logic.conflicting_segment_names(segmentationNode, output)
        replace = False
        if conflicts:
            replace = slicer.util.confirmYesNoDisplay(
                _("{segmentation} already has the segment(s) {names}. Replace them?").format(
                    segmentation=segmentationNode.GetName(), names=", ".join(conflicts)
                ),
                _("Replace segments"),
            )
            if not replace:
                self.ui.statusLabel.text = _(
                    "Not written: choose another output segmentation or allow replacing."
                )
                return
        with slicer.util.tryWithErrorDisplay(_("Could not write the segmentation."), waitCursor=True):
            outputs = self.logic.write_results(output, volumeNode, segmentationNode, replace_existing=replace)
            self._parameterNode.outputSegmentation = outputs.segmentation_node
            if outputs.table_node is not None:
                self.ui.resultsTableView.setMRMLTableNode(outputs.table_node)
            slicer.util.setSliceViewerLayers(background=volumeNode)
            summary = ", ".join(f"{s.name} {s.volume_ml:.1f} mL" for s in output.result.segments)
            self.ui.statusLabel.text = _("Done in {seconds:.1f} s with {bundle}{reused}: {summary}").format(
                seconds=output.seconds,
                bundle=output.bundle_name,
                reused=_(" (encoded volume reused)") if output.reused_encoding else "",
                summary=summary,
            )


#
# TextGuidedSegTest
#


class TextGuidedSegTest(ScriptedLoadableModuleTest, PanelDefectTests):
    """In-Slicer self-test: the panel's logic on a phantom with the demo bundle, Dice per structure, and one
    test per GUI defect of issue 11 (``TextGuidedSegUI.selftests.PanelDefectTests``).

    Run it from the Self Tests module, with ``Slicer --testing --python-code "..."`` (see the README) or with
    ctest in a build tree.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_PhantomDice()
        self.setUp()
        self.test_PanelApply()
        for test in (
            self.test_PanelEnterWithOpenCompleter,
            self.test_PanelParameterNodeAfterSceneClose,
            self.test_PanelWriteResultsAfterSceneClose,
            self.test_PanelSceneCloseCancelsJob,
            self.test_PanelTryItLoadsSampleData,
        ):
            self.setUp()
            test()

    def _demoBundle(self):
        """The demo bundle's path; the Python packages must be installed (open the module, Apply once)."""
        from TextGuidedSegLogic.selftest import demo_bundle

        _key, path = demo_bundle()
        return path

    def test_PhantomDice(self) -> None:
        """The logic segments a phantom with the demo bundle: Dice per structure above the demo's floor."""
        self.delayDisplay("Segmenting a phantom with the demo bundle")
        from TextGuidedSegLogic.selftest import MIN_DICE, dice, phantom_volume_node, truth_mask

        from TextGuidedSegLib.bundle import load_bundle

        bundlePath = self._demoBundle()
        spacing = load_bundle(bundlePath).config.preprocessing.spacing
        volumeNode, phantom = phantom_volume_node(seed=300, spacing=spacing)
        voxelsBefore = slicer.util.arrayFromVolume(volumeNode).copy()
        logic = TextGuidedSegLogic()
        outputs = logic.segment(volumeNode, "liver, spleen and both kidneys", bundle=str(bundlePath))
        segmentation = outputs.segmentation_node.GetSegmentation()
        self.assertEqual(
            [segmentation.GetSegment(s).GetName() for s in outputs.segment_ids],
            ["Liver", "Spleen", "Right Kidney", "Left Kidney"],
        )
        for segmentId, info in zip(outputs.segment_ids, outputs.output.result.segments, strict=True):
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(
                outputs.segmentation_node, segmentId, volumeNode
            )
            score = dice(mask.transpose(2, 1, 0), truth_mask(phantom, info.class_name))
            logging.info("TextGuidedSeg self-test: %s Dice %.3f", info.name, score)
            self.assertGreaterEqual(score, MIN_DICE[info.class_name], info.name)
        self.assertTrue((slicer.util.arrayFromVolume(volumeNode) == voxelsBefore).all())
        self.assertEqual(outputs.table_node.GetTable().GetNumberOfRows(), 4)
        # re-prompting the same volume reuses the encoded volume
        again = logic.segment(
            volumeNode,
            "spleen",
            bundle=str(bundlePath),
            segmentation_node=outputs.segmentation_node,
            replace_existing=True,
        )
        self.assertTrue(again.output.reused_encoding)
        self.assertEqual(logic.encode_count, 1)
        self.delayDisplay("Phantom test passed")

    def test_PanelApply(self) -> None:
        """The panel: type a prompt, press Apply, wait for the worker, check the segments and the table."""
        self.delayDisplay("Driving the panel")
        from TextGuidedSegLogic.selftest import MIN_DICE, dice, phantom_volume_node, truth_mask

        bundlePath = self._demoBundle()
        from TextGuidedSegLib.bundle import load_bundle

        spacing = load_bundle(bundlePath).config.preprocessing.spacing
        volumeNode, phantom = phantom_volume_node(seed=301, spacing=spacing)
        slicer.util.selectModule("TextGuidedSeg")
        widget = slicer.modules.textguidedseg.widgetRepresentation().self()
        widget.ui.inputVolumeSelector.setCurrentNode(volumeNode)
        widget.ui.bundleComboBox.currentIndex = widget.ui.bundleComboBox.findData(
            widget.logic.store.entry(DEFAULT_BUNDLE).key
        )
        widget.ui.promptLineEdit.text = "liver and spleen"
        ticked = [
            widget.ui.structureListWidget.item(r).text()
            for r in range(widget.ui.structureListWidget.count)
            if widget.ui.structureListWidget.item(r).checkState() == qt.Qt.Checked
        ]
        self.assertEqual(ticked, ["Liver", "Spleen"])
        # the structure search hides what does not match and shows everything again when cleared
        widget.ui.structureSearchLineEdit.text = "kidney"
        shown = [
            widget.ui.structureListWidget.item(r).text()
            for r in range(widget.ui.structureListWidget.count)
            if not widget.ui.structureListWidget.item(r).isHidden()
        ]
        self.assertEqual(shown, ["Right Kidney", "Left Kidney"])
        widget.ui.structureSearchLineEdit.text = ""
        self.assertFalse(any(widget.ui.structureListWidget.item(r).isHidden() for r in range(4)))
        widget.ui.outputSegmentationSelector.setCurrentNode(None)
        self.assertTrue(widget.ui.applyButton.enabled)
        widget.ui.applyButton.click()
        for _step in range(6000):  # up to 10 minutes on a slow CPU
            if widget._worker is None:
                break
            slicer.app.processEvents()
            time.sleep(0.1)  # the job runs in the inference server process
        self.assertIsNone(widget._worker, "the panel's job did not finish")
        segmentationNode = widget.ui.outputSegmentationSelector.currentNode()
        self.assertIsNotNone(segmentationNode, widget.ui.statusLabel.text)
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 2)
        for index, className in enumerate(("liver", "spleen")):
            segmentId = segmentation.GetNthSegmentID(index)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
            self.assertGreaterEqual(
                dice(mask.transpose(2, 1, 0), truth_mask(phantom, className)), MIN_DICE[className]
            )
        self.assertEqual(widget.ui.resultsTableView.mrmlTableNode().GetTable().GetNumberOfRows(), 2)
        self.delayDisplay("Panel test passed")
