"""The module logic: a CT volume node and a prompt in, a terminology-coded Segmentation node out. No Qt.

A run has three steps, so the heavy one can leave the GUI thread:

1. :meth:`TextGuidedSegLogic.prepare_inputs` (main thread) copies the volume node's voxels and geometry
   into an :class:`InferenceJob`;
2. :meth:`TextGuidedSegLogic.run` (any thread, never touches MRML) resolves and loads the bundle (a
   registry download if needed), encodes the volume (cached while the volume is unchanged) and runs the
   library's ``Segmenter`` with the job's ``SegmentationOptions`` (the library's, one name per option in every
   layer; the panel's parameter node maps to them in :mod:`.parameters`);
3. :meth:`TextGuidedSegLogic.write_results` (main thread) writes segments, a results table (a Slicer-only
   output: ``InferenceJob.results_table``, beside the options) and optional probability / uncertainty
   volumes. Nodes are created only here; if anything fails, every node it created is removed and an existing
   segmentation is restored, so the scene is left as it was.

:meth:`TextGuidedSegLogic.segment` does all three in one call, for scripts and tests::

    logic = TextGuidedSegLogic()
    outputs = logic.segment(volume_node, "liver and both kidneys")
    outputs.segmentation_node, outputs.table_node

The input volume node is never modified.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import slicer
import vtk

from .nodes import (
    add_volume_node,
    ijk_to_ras,
    oriented_image_fingerprint,
    volume_fingerprint,
    volume_from_node,
    volume_from_oriented_image,
)
from .segments import conflicting_names, replace_labelmap, write_segments
from .service import InferenceService, Progress, ServerJob, default_service, set_default_service

if TYPE_CHECKING:
    from TextGuidedSegLib.bundle import Bundle
    from TextGuidedSegLib.inference import SegmentationOptions, SegmentationResult
    from TextGuidedSegLib.io import Volume
    from TextGuidedSegLib.registry import BundleStore, CachedBundle

logger = logging.getLogger(__name__)

MODULE_NAME = "TextGuidedSeg"
#: The bundle used when none is chosen: the demo bundle, shipped with the library.
DEFAULT_BUNDLE = "demo_phantom_film_v1"
RESULTS_TABLE_COLUMNS = ("Segment", "Volume (mL)", "Mean (HU)", "Voxels")
#: The column added to the results table when the run has a caveat (a bundle not validated on real CT on a
#: real CT, see ``BundleConfig.intended_use``): the caveat, on every row.
CAVEAT_COLUMN = "Caveat"


@dataclass
class InferenceJob:
    """Everything :meth:`TextGuidedSegLogic.run` needs, copied out of the scene on the main thread.

    Attributes:
        volume: the CT: ``(I, J, K)`` float32 copy of the node's voxels and its IJK-to-RAS affine.
        prompt: the prompt as typed.
        bundle: a bundle folder or .zip, or a registry name / ``name==version``.
        options: how to segment: the library's ``SegmentationOptions``, given whole to the ``Segmenter``
            (``flip_tta`` also writes one uncertainty volume per structure, ``probabilities`` one probability
            volume per structure).
        volume_node_id: the input node's ID (checked again before writing).
        volume_name: the input node's name.
        fingerprint: the input's content fingerprint (:func:`nodes.volume_fingerprint`); it keys the cache of
            encoded volumes and detects a volume changed during the run.
        extent_start: first voxel index of the source image's extent (an oriented image from the Segment
            Editor may not start at 0; volume nodes do).
        results_table: also write a table of volume (mL) and mean HU per segment (a Slicer output, not a
            segmentation option).
    """

    volume: Volume
    prompt: str
    bundle: str
    options: SegmentationOptions
    volume_node_id: str = ""
    volume_name: str = ""
    fingerprint: tuple = ()
    extent_start: tuple[int, int, int] = (0, 0, 0)
    results_table: bool = True


@dataclass
class InferenceOutput:
    """What :meth:`TextGuidedSegLogic.run` returns (no MRML objects).

    Attributes:
        job: the job it ran.
        result: the library's result: ``(I, J, K)`` label map on the job volume's grid, segment infos,
            optional probabilities and uncertainty.
        bundle_name: ``name==version`` of the bundle used.
        mean_hu: mean CT value inside each segment (NaN for an empty one), in label order.
        reused_encoding: the encoded volume came from the cache (the volume was not resampled again).
        seconds: wall time of the run.
    """

    job: InferenceJob
    result: SegmentationResult
    bundle_name: str
    mean_hu: list[float]
    reused_encoding: bool = False
    seconds: float = 0.0


@dataclass
class SegmentationOutputs:
    """The MRML nodes :meth:`TextGuidedSegLogic.write_results` wrote.

    Attributes:
        segmentation_node: the segmentation (new or the one passed in).
        segment_ids: the segment of each result segment, in label order.
        table_node: the results table (segment, volume mL, mean HU, voxels), None when not requested.
        probability_nodes: one probability volume per segment, when requested.
        uncertainty_nodes: one uncertainty volume per segment, with test-time flips.
        output: the inference output written.
    """

    segmentation_node: Any
    segment_ids: list[str]
    table_node: Any = None
    probability_nodes: list[Any] = field(default_factory=list)
    uncertainty_nodes: list[Any] = field(default_factory=list)
    output: InferenceOutput | None = None


@dataclass
class BundleChoice:
    """One entry of the panel's bundle selector.

    Attributes:
        key: what is stored in the parameter node and passed as ``bundle`` (registry ``name==version``).
        label: the text shown.
        vocabulary: the structures it segments (completion and the structure list).
        available: usable without a download.
        description: tooltip text.
        license: licence of the weights ("" when not stated).
        size: download size in bytes when not yet downloaded and known, else None.
        needs_license_acceptance: the user must accept the licence (``accept_license``) before it runs.
    """

    key: str
    label: str
    vocabulary: list[str]
    available: bool
    description: str = ""
    license: str = ""
    size: int | None = None
    needs_license_acceptance: bool = False


class SegmentNameConflict(ValueError):
    """The output segmentation has segments with the result's names already; see ``replace_existing``."""

    def __init__(self, segmentation_name: str, names: list[str]) -> None:
        self.names = names
        super().__init__(
            f"segmentation {segmentation_name!r} already has segment(s) {', '.join(names)}; "
            "replace them (replace_existing=True) or choose another output segmentation"
        )


def default_segmenter_factory(bundle: Bundle, options: SegmentationOptions, **settings: Any) -> Any:
    """``Segmenter(bundle, options, **settings)``, imported on first use (the model stack is heavy)."""
    from TextGuidedSegLib.inference import Segmenter

    return Segmenter(bundle, options, **settings)


def _options(options: SegmentationOptions | None) -> SegmentationOptions:
    """``options``, or the defaults (every value the bundle's) when None."""
    if options is not None:
        return options
    from TextGuidedSegLib.inference.options import SegmentationOptions

    return SegmentationOptions()


def _checked_prompt(prompt: str) -> str:
    """``prompt`` without surrounding blanks; a ValueError when it is empty."""
    if not prompt or not prompt.strip():
        raise ValueError('the prompt is empty: type the structures to segment, e.g. "liver and kidneys"')
    return prompt.strip()


def _table_caveat(result: SegmentationResult) -> str:
    """Every warning of a result for the results table, the bundle's fitness caveat (always the first
    warning) in its short form."""
    from TextGuidedSegLib.inference.provenance import short_caveat

    record = result.provenance
    use = record.get("bundle", {}).get("intended_use", "")
    short = short_caveat(use, bool(record.get("input", {}).get("phantom")))
    return "; ".join([short, *result.warnings[1:]] if short else result.warnings)


def mean_values(volume: np.ndarray, labels: np.ndarray, n_labels: int) -> list[float]:
    """Mean of ``volume`` inside each label ``1..n_labels`` of ``labels`` (NaN where a label is empty)."""
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n_labels + 1)[1 : n_labels + 1]
    sums = np.bincount(flat, weights=volume.ravel().astype(np.float64), minlength=n_labels + 1)[
        1 : n_labels + 1
    ]
    with np.errstate(invalid="ignore", divide="ignore"):
        return [float(s / c) if c else float("nan") for s, c in zip(sums, counts, strict=True)]


class TextGuidedSegLogic:
    """Segment CT volume nodes from text prompts with TextGuidedSegLib bundles. Usable without the GUI.

    Args:
        store: the bundle registry and cache (default: the shipped registry and the per-user cache).
        segmenter_factory: ``factory(bundle, options, progress=False)`` returning a ``Segmenter``-like
            object (tests).
        max_cached_volumes: how many encoded volumes to keep for re-prompting (in-process :meth:`run`).
        service: where :meth:`submit` runs jobs (default: a local ``textguidedseg serve`` started on first
            use; ``InferenceService(url, token)`` for a server the user names).
    """

    def __init__(
        self,
        store: BundleStore | None = None,
        segmenter_factory: Callable[..., Any] | None = None,
        max_cached_volumes: int = 2,
        service: InferenceService | None = None,
    ) -> None:
        self._service = service
        self._store = store
        self._segmenter_factory = segmenter_factory or default_segmenter_factory
        self._max_cached_volumes = max_cached_volumes
        self._lock = threading.Lock()
        self._bundles: OrderedDict[tuple, Bundle] = OrderedDict()
        self._prepared: OrderedDict[tuple, Any] = OrderedDict()
        #: How many times a volume was encoded (resampled and windowed); re-prompts do not add to it.
        self.encode_count = 0

    # -- parameter node ----------------------------------------------------------------------------------

    def getParameterNode(self) -> Any:  # noqa: N802 - Slicer's name for it (ScriptedLoadableModuleLogic)
        """The module's singleton parameter node in the scene (created on first call)."""
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is not None and node.GetAttribute("ModuleName") != MODULE_NAME:
            node.SetAttribute("ModuleName", MODULE_NAME)  # a scene close resets the singleton's attributes
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(scene.GenerateUniqueName(MODULE_NAME))
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = scene.AddNode(node)
        return node

    # -- bundles -----------------------------------------------------------------------------------------

    @property
    def store(self) -> BundleStore:
        """The bundle registry and per-user cache."""
        if self._store is None:
            from TextGuidedSegLib.registry import BundleStore

            self._store = BundleStore()
        return self._store

    def bundle_choices(self) -> list[BundleChoice]:
        """Registry entries and imported bundles, for the bundle selector."""
        choices = []
        for entry in self.store.entries:
            available = self.store.is_available(entry)
            if entry.is_builtin:
                state = "built-in" if available else "missing from this installation"
            elif available:
                state = "downloaded"
            else:
                size = f", {entry.size / 2**20:.0f} MB" if entry.size else ""
                state = f"download{size}"
            needs_acceptance = not self.store.is_license_accepted(entry)
            licence = entry.license or "licence not stated"
            if needs_acceptance:
                licence += ", must be accepted"
            choices.append(
                BundleChoice(
                    key=entry.key,
                    label=(
                        f"{entry.name} {entry.version} "
                        f"({state}; {len(entry.vocabulary)} structures; {licence})"
                    ),
                    vocabulary=list(entry.vocabulary),
                    available=available,
                    description=f"{entry.description}\nLicence: {entry.license or 'not stated'}",
                    license=entry.license,
                    size=None if available else entry.size,
                    needs_license_acceptance=needs_acceptance,
                )
            )
        registered = {c.key for c in choices}
        for cached in self.store.cached():
            if cached.key not in registered:
                choices.append(
                    BundleChoice(
                        key=cached.key,
                        label=f"{cached.name} {cached.version} (imported)",
                        vocabulary=cached.vocabulary,
                        available=True,
                        description=str(cached.path),
                    )
                )
        return choices

    def accept_license(self, bundle: str) -> None:
        """Remember that the user accepted the licence of registry bundle ``bundle`` (``name`` or key)."""
        self.store.accept_license(self.store.entry(bundle))

    def vocabulary(self, bundle: str) -> list[str]:
        """Structure names of a bundle (path, registry or imported), without loading it; [] if unknown."""
        from TextGuidedSegLib.registry import RegistryError, bundle_vocabulary

        if Path(bundle).exists():
            try:
                return bundle_vocabulary(bundle)
            except RegistryError:
                return []
        for choice in self.bundle_choices():
            if bundle in (choice.key, choice.key.split("==")[0]):
                return choice.vocabulary
        return []

    def resolve_bundle(
        self, bundle: str, progress: Progress | None = None, cancel: threading.Event | None = None
    ) -> Path:
        """The local path of a bundle: a folder or .zip as given, else a registry entry (downloaded if
        needed) or an imported bundle named ``name==version``."""
        from TextGuidedSegLib.registry import RegistryError

        path = Path(bundle).expanduser()
        if path.exists():
            return path
        try:
            entry = self.store.entry(bundle)
        except RegistryError:
            for cached in self.store.cached():
                if bundle in (cached.key, cached.name):
                    return cached.path
            raise RegistryError(
                f"bundle {bundle!r} is neither a folder or .zip nor in the registry or the cache; choose one "
                "in the bundle selector or use Browse... to import one"
            ) from None

        def download_progress(done: int, total: int | None) -> None:
            if progress is not None:
                progress("download", done, total)

        return self.store.fetch(entry, progress=download_progress, cancel=cancel)

    def load_bundle(self, path: str | Path) -> Bundle:
        """Load a bundle (kept in memory while its files are unchanged)."""
        from TextGuidedSegLib.bundle import load_bundle

        path = Path(path).resolve()
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            bundle = self._bundles.get(key)
            if bundle is not None:
                self._bundles.move_to_end(key)
                return bundle
        bundle = load_bundle(path)
        with self._lock:
            self._bundles[key] = bundle
            while len(self._bundles) > 2:
                self._bundles.popitem(last=False)
        return bundle

    def import_bundle(self, source: str | Path) -> CachedBundle:
        """Import a bundle folder or .zip into the per-user cache (offline install); return it."""
        return self.store.import_bundle(source)

    def clear_cache(self, downloads: bool = True) -> int:
        """Forget loaded bundles and encoded volumes; with ``downloads``, empty the bundle cache folder too.

        Returns the number of bundles removed from the cache folder.
        """
        with self._lock:
            self._bundles.clear()
            self._prepared.clear()
        return self.store.clear() if downloads else 0

    # -- 1. main thread: copy the inputs out of the scene ------------------------------------------------

    def prepare_inputs(
        self,
        volume_node: Any,
        prompt: str,
        bundle: str | Path | None = None,
        options: SegmentationOptions | None = None,
        results_table: bool = True,
    ) -> InferenceJob:
        """Copy what a run needs out of the scene (call on the main thread); ``options`` None: defaults."""
        prompt = _checked_prompt(prompt)
        return InferenceJob(
            volume=volume_from_node(volume_node),
            prompt=prompt,
            bundle=str(bundle) if bundle else DEFAULT_BUNDLE,
            options=_options(options),
            volume_node_id=volume_node.GetID(),
            volume_name=volume_node.GetName(),
            fingerprint=volume_fingerprint(volume_node),
            results_table=results_table,
        )

    def prepare_image_inputs(
        self,
        image: Any,
        source_node: Any | None,
        prompt: str,
        bundle: str | Path | None = None,
        options: SegmentationOptions | None = None,
    ) -> InferenceJob:
        """Like :meth:`prepare_inputs` for an oriented image: the Segment Editor's source volume, already
        aligned to the segmentation's geometry (``scriptedEffect.sourceVolumeImageData()``); no results
        table (the Segment Editor writes the segments only)."""
        prompt = _checked_prompt(prompt)
        name = source_node.GetName() if source_node is not None else "source volume"
        x0, _x1, y0, _y1, z0, _z1 = image.GetExtent()
        return InferenceJob(
            volume=volume_from_oriented_image(image, name),
            prompt=prompt,
            bundle=str(bundle) if bundle else DEFAULT_BUNDLE,
            options=_options(options),
            volume_node_id=source_node.GetID() if source_node is not None else "",
            volume_name=name,
            fingerprint=oriented_image_fingerprint(image, source_node),
            extent_start=(x0, y0, z0),
            results_table=False,
        )

    # -- 2. any thread: inference, no MRML ---------------------------------------------------------------

    def run(
        self, job: InferenceJob, progress: Progress | None = None, cancel: threading.Event | None = None
    ) -> InferenceOutput:
        """Resolve and load the bundle, encode the volume (or reuse it) and segment. Touches no MRML node.

        Raises:
            TextGuidedSegLib.inference.SegmentationCancelled / registry.DownloadCancelled: ``cancel`` was set.
            PromptError, BundleError, RegistryError, ValueError: the message says what to fix.
        """
        started = time.perf_counter()

        def report(stage: str, done: int = 0, total: int | None = None) -> None:
            if progress is not None:
                progress(stage, done, total)

        bundle_path = self.resolve_bundle(job.bundle, progress, cancel)
        report("load")
        bundle = self.load_bundle(bundle_path)
        segmenter = self._segmenter_factory(bundle, job.options, progress=False)
        queries = segmenter.queries(job.prompt)  # fail on an unanswerable prompt before encoding the volume
        preprocessing = bundle.config.preprocessing
        key = (
            job.fingerprint,
            str(bundle_path),
            tuple(preprocessing.spacing),
            tuple(preprocessing.hu_window),
        )
        with self._lock:
            prepared = self._prepared.get(key) if job.fingerprint else None
        reused = prepared is not None
        if prepared is None:
            report("prepare")
            prepared = segmenter.prepare(job.volume)
            self.encode_count += 1
            if job.fingerprint:
                with self._lock:
                    self._prepared[key] = prepared
                    while len(self._prepared) > self._max_cached_volumes:
                        self._prepared.popitem(last=False)
        result = segmenter.segment(
            job.volume,
            queries,
            prepared=prepared,
            progress_callback=lambda done, total: report("segment", done, total),
            cancel=cancel,
        )
        seconds = time.perf_counter() - started
        logger.info(
            "segmented %s for %r with %s in %.1f s%s",
            job.volume_name,
            job.prompt,
            bundle.config.name,
            seconds,
            " (encoded volume reused)" if reused else "",
        )
        return InferenceOutput(
            job=job,
            result=result,
            bundle_name=f"{bundle.config.name}=={bundle.config.version}",
            mean_hu=mean_values(job.volume.array, result.labels, len(result.segments)),
            reused_encoding=reused,
            seconds=seconds,
        )

    # -- 2'. out of process: the inference server --------------------------------------------------------

    @property
    def service(self) -> InferenceService:
        """Where :meth:`submit` runs jobs: by default a local ``textguidedseg serve`` started on first use."""
        return self._service if self._service is not None else default_service()

    def use_server(self, url: str | None, token: str | None = None) -> None:
        """Run later jobs on the server at ``url`` (a lab's GPU machine), or on a local one when None.

        A logic on the shared service (the panel's and the effect's) switches the shared one, so both follow.
        """
        new = InferenceService(url, token) if url else None
        if self._service is None:
            set_default_service(new)
        else:
            self.cleanup()
            self._service = new

    def submit(self, job: InferenceJob) -> ServerJob:
        """Start ``job`` on the inference server; poll the returned job on the GUI thread (``poll()``,
        ``cancel()``, ``running``); its "done" event's ``result`` is an :class:`InferenceOutput`."""
        return ServerJob(lambda progress, cancel: self.run_on_server(job, progress, cancel)).start()

    def run_on_server(
        self, job: InferenceJob, progress: Progress | None = None, cancel: threading.Event | None = None
    ) -> InferenceOutput:
        """Like :meth:`run`, on the inference server (the volume is sent only if the server lacks it).

        Raises:
            service.JobCancelled / registry.DownloadCancelled: ``cancel`` was set.
            service.ServerUnavailable: the server stopped or cannot be reached (a local one is restarted by
                the next job); service.JobFailed, ServerError: the server's message says what to fix.
        """
        started = time.perf_counter()
        report = progress or (lambda stage, done, total: None)
        service = self.service
        # a local server reads the bundle from this machine (downloaded here, with progress); a remote one
        # resolves the name itself
        bundle = str(self.resolve_bundle(job.bundle, report, cancel)) if service.is_local else job.bundle
        report("load", 0, None)
        result, status = service.run(job, bundle, report, cancel)
        if not status["reused_encoding"]:
            self.encode_count += 1
        seconds = time.perf_counter() - started
        return InferenceOutput(
            job=job,
            result=result,
            bundle_name="{name}=={version}".format(**result.provenance.get("bundle", {})),
            mean_hu=mean_values(job.volume.array, result.labels, len(result.segments)),
            reused_encoding=bool(status["reused_encoding"]),
            seconds=seconds,
        )

    def cleanup(self) -> None:
        """Stop this logic's own local inference server (the shared default one stops at exit)."""
        if self._service is not None:
            self._service.stop()

    # -- 3. main thread: write MRML ----------------------------------------------------------------------

    def conflicting_segment_names(self, segmentation_node: Any, output: InferenceOutput) -> list[str]:
        """Result segment names that ``segmentation_node`` already has (the widget asks before replacing)."""
        return conflicting_names(segmentation_node, [s.name for s in output.result.segments])

    def write_results(
        self,
        output: InferenceOutput,
        volume_node: Any,
        segmentation_node: Any | None = None,
        replace_existing: bool = False,
    ) -> SegmentationOutputs:
        """Write a run's result into the scene (call on the main thread).

        Args:
            output: what :meth:`run` returned.
            volume_node: the input volume node (must be the job's, unchanged since :meth:`prepare_inputs`).
            segmentation_node: write into this segmentation; None creates one named "<volume> segmentation"
                with the volume's geometry (and parent transform).
            replace_existing: overwrite segments of ``segmentation_node`` that have a result segment's name;
                without it such a name raises :class:`SegmentNameConflict` before anything changes.

        Raises:
            SegmentNameConflict, ValueError, RuntimeError: nothing in the scene was changed.
        """
        job, result = output.job, output.result
        scene = slicer.mrmlScene
        if (
            volume_node is None
            or volume_node.GetID() != job.volume_node_id
            or scene.GetNodeByID(job.volume_node_id) is not volume_node
        ):
            raise ValueError(f"the input volume {job.volume_name!r} is no longer in the scene")
        if volume_fingerprint(volume_node) != job.fingerprint:
            raise RuntimeError(
                f"volume {job.volume_name!r} changed while it was being segmented; apply again"
            )
        if tuple(result.labels.shape) != tuple(job.volume.shape):
            raise ValueError(
                f"the label map {result.labels.shape} is not on the volume's grid {job.volume.shape}"
            )
        if segmentation_node is not None:
            conflicts = conflicting_names(segmentation_node, [s.name for s in result.segments])
            if conflicts and not replace_existing:
                raise SegmentNameConflict(segmentation_node.GetName(), conflicts)

        nodes_before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        backup = None
        try:
            if segmentation_node is None:
                segmentation_node = self._new_segmentation_node(volume_node)
            else:
                backup = slicer.vtkSegmentation()
                backup.DeepCopy(segmentation_node.GetSegmentation())
                if segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
                    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            segment_ids = write_segments(
                segmentation_node,
                result.labels,
                result.segments,
                ijk_to_ras(volume_node),
                replace_labelmap(segmentation_node),
                masks=result.masks,  # overlapping structures: each segment its own mask
            )
            outputs = SegmentationOutputs(
                segmentation_node=segmentation_node, segment_ids=segment_ids, output=output
            )
            if job.results_table:
                outputs.table_node = self._results_table(segmentation_node, output)
            affine = ijk_to_ras(volume_node)
            base = segmentation_node.GetName()
            if result.probabilities is not None:
                outputs.probability_nodes = [
                    add_volume_node(p, affine, f"{base} {s.name} probability", like=volume_node)
                    for s, p in zip(result.segments, result.probabilities, strict=True)
                ]
            if result.uncertainty is not None:
                outputs.uncertainty_nodes = [
                    add_volume_node(u, affine, f"{base} {s.name} uncertainty", like=volume_node)
                    for s, u in zip(result.segments, result.uncertainty, strict=True)
                ]
        except BaseException:
            self._remove_new_nodes(nodes_before)
            if backup is not None:
                segmentation_node.GetSegmentation().DeepCopy(backup)
            raise
        return outputs

    def segment(
        self,
        volume_node: Any,
        prompt: str,
        bundle: str | Path | None = None,
        segmentation_node: Any | None = None,
        replace_existing: bool = False,
        options: SegmentationOptions | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        results_table: bool = True,
    ) -> SegmentationOutputs:
        """Prepare, run and write in one call, on the calling thread (scripts, tests, the Python console).

        Example::

            outputs = TextGuidedSegLogic().segment(getNode("CTChest"), "liver, spleen and both kidneys")
        """
        job = self.prepare_inputs(volume_node, prompt, bundle, options, results_table)
        output = self.run(job, progress, cancel)
        return self.write_results(output, volume_node, segmentation_node, replace_existing)

    # -- helpers -----------------------------------------------------------------------------------------

    @staticmethod
    def _new_segmentation_node(volume_node: Any) -> Any:
        scene = slicer.mrmlScene
        node = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volume_node.GetName()} segmentation")
        )
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        if volume_node.GetTransformNodeID():
            node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        return node

    @staticmethod
    def _results_table(segmentation_node: Any, output: InferenceOutput) -> Any:
        """A table node: segment name, volume (mL), mean HU and voxel count, one row per result segment; with
        a caveat (``result.warnings``), a :data:`CAVEAT_COLUMN` saying it on every row and the full warnings
        in the ``TextGuidedSeg.Warnings`` attribute."""
        scene = slicer.mrmlScene
        table_node = scene.AddNewNodeByClass(
            "vtkMRMLTableNode", scene.GenerateUniqueName(f"{segmentation_node.GetName()} volumes")
        )
        names, volumes, means, voxels = (
            vtk.vtkStringArray(),
            vtk.vtkDoubleArray(),
            vtk.vtkDoubleArray(),
            vtk.vtkIntArray(),
        )
        for array, title in zip((names, volumes, means, voxels), RESULTS_TABLE_COLUMNS, strict=True):
            array.SetName(title)
        for info, mean in zip(output.result.segments, output.mean_hu, strict=True):
            names.InsertNextValue(info.name)
            volumes.InsertNextValue(round(info.volume_ml, 3))
            means.InsertNextValue(round(mean, 1) if np.isfinite(mean) else float("nan"))
            voxels.InsertNextValue(info.voxels)
        columns = [names, volumes, means, voxels]
        warnings = output.result.warnings
        if warnings:
            caveats = vtk.vtkStringArray()
            caveats.SetName(CAVEAT_COLUMN)
            caveat = _table_caveat(output.result)
            for _ in output.result.segments:
                caveats.InsertNextValue(caveat)
            columns.append(caveats)
            table_node.SetAttribute("TextGuidedSeg.Warnings", "\n".join(warnings))
        table = table_node.GetTable()
        for array in columns:
            table.AddColumn(array)
        table_node.SetAttribute("TextGuidedSeg.Segmentation", segmentation_node.GetID())
        table_node.SetAttribute("TextGuidedSeg.Bundle", output.bundle_name)
        table_node.SetAttribute("TextGuidedSeg.Prompt", output.job.prompt)
        table_node.Modified()
        return table_node

    @staticmethod
    def _remove_new_nodes(nodes_before: set[str]) -> None:
        """Remove every node added to the scene since ``nodes_before`` was taken (newest first)."""
        scene = slicer.mrmlScene
        added = [
            scene.GetNthNode(i)
            for i in range(scene.GetNumberOfNodes())
            if scene.GetNthNode(i).GetID() not in nodes_before
        ]
        for node in reversed(added):
            if scene.IsNodePresent(node):
                scene.RemoveNode(node)
