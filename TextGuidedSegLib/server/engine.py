"""The work behind ``textguidedseg serve``: uploaded volumes, their encodings, bundles and jobs. No HTTP here.

- Volumes are uploaded once and kept, with their encodings (``Segmenter.prepare``) and encoder features,
  in an LRU bounded by bytes (``ServerSettings.max_cache_bytes``), so a new prompt on the same volume is not
  re-sent nor re-encoded. A volume larger than ``max_volume_bytes`` is refused.
- Bundles are loaded once per (path, device) and shared by the jobs.
- Jobs run in a pool of ``workers`` threads in the server process (torch releases the GIL in its kernels
  and nothing else competes for it here); each job has its own cancel event, set by
  :meth:`InferenceEngine.cancel`, which stops it before its next window batch. Jobs on the same encoded
  volume run one after the other (they share its feature cache); jobs on different volumes run side by side.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from TextGuidedSegLib.server.transport import result_arrays, result_summary

logger = logging.getLogger(__name__)

MIB = 2**20
#: Job states; the last three are final.
STATES = ("queued", "running", "done", "error", "cancelled")
FINAL_STATES = ("done", "error", "cancelled")


class UnknownVolume(KeyError):
    """No uploaded volume has this id (never uploaded, or evicted from the cache: upload it again)."""


class UnknownJob(KeyError):
    """No job has this id (never submitted, or forgotten after ``max_jobs_kept`` newer jobs)."""


class VolumeTooLarge(ValueError):
    """An uploaded volume is larger than ``max_volume_bytes``."""


@dataclass
class ServerSettings:
    """How ``textguidedseg serve`` runs.

    Attributes:
        host: address to bind; anything but a loopback address needs a ``token``.
        port: TCP port; 0 picks a free one.
        token: when set, every request except ``GET /health`` must send ``Authorization: Bearer <token>``.
        max_volume_bytes: largest volume accepted (float32 voxels); a larger one gets 413.
        max_cache_bytes: bound of the volume cache (voxels, encodings and encoder features together).
        device: device of jobs whose options say "auto" ("auto": CUDA when present, else the CPU).
        workers: jobs run at the same time; more wait in a queue.
        max_jobs_kept: finished jobs remembered (with their results until fetched and deleted).
    """

    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    max_volume_bytes: int = 2048 * MIB
    max_cache_bytes: int = 8192 * MIB
    device: str = "auto"
    workers: int = 2
    max_jobs_kept: int = 64

    def __post_init__(self) -> None:
        if self.max_volume_bytes <= 0 or self.max_cache_bytes <= 0:
            raise ValueError("max_volume_bytes and max_cache_bytes must be > 0")
        if self.max_volume_bytes > self.max_cache_bytes:
            raise ValueError(
                f"max_volume_bytes ({self.max_volume_bytes}) must not exceed max_cache_bytes "
                f"({self.max_cache_bytes}): an accepted volume must fit in the cache"
            )
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass
class StoredVolume:
    """An uploaded volume with its encodings (one per bundle preprocessing) and the lock jobs on it share."""

    volume: Any  # TextGuidedSegLib.io.Volume
    prepared: dict[tuple, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes held: voxels, encoded images and cached encoder features."""
        total = int(self.volume.array.nbytes)
        for prepared in self.prepared.values():
            total += int(prepared.image.nelement() * prepared.image.element_size())
            total += int(prepared.features.nbytes)
        return total


class VolumeCache:
    """Uploaded volumes by id, least recently used evicted first beyond ``max_bytes`` (never one in use)."""

    def __init__(self, max_bytes: int, max_volume_bytes: int) -> None:
        self.max_bytes, self.max_volume_bytes = max_bytes, max_volume_bytes
        self._volumes: OrderedDict[str, StoredVolume] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, volume: Any) -> str:
        """Keep ``volume`` and return its new id; :class:`VolumeTooLarge` beyond ``max_volume_bytes``."""
        nbytes = int(volume.array.nbytes)
        if nbytes > self.max_volume_bytes:
            raise VolumeTooLarge(
                f"the volume {tuple(volume.array.shape)} holds {nbytes / MIB:.1f} MiB of float32 voxels, "
                f"more than this server's --max-volume-mb {self.max_volume_bytes / MIB:.0f}"
            )
        volume_id = uuid.uuid4().hex
        with self._lock:
            self._volumes[volume_id] = StoredVolume(volume)
        self.evict()
        return volume_id

    def acquire(self, volume_id: str) -> StoredVolume:
        """The volume ``volume_id``, marked in use until :meth:`release`; :class:`UnknownVolume` if absent."""
        with self._lock:
            stored = self._volumes.get(volume_id)
            if stored is None:
                raise UnknownVolume(
                    f"volume id {volume_id!r} is unknown to this server (evicted or never uploaded): "
                    "upload the volume again with POST /volumes"
                )
            self._volumes.move_to_end(volume_id)
            stored.users += 1
            return stored

    def release(self, stored: StoredVolume) -> None:
        with self._lock:
            stored.users -= 1
        self.evict()

    def info(self, volume_id: str) -> dict[str, Any]:
        with self._lock:
            stored = self._volumes.get(volume_id)
            if stored is None:
                raise UnknownVolume(f"volume id {volume_id!r} is unknown to this server")
            return {"volume_id": volume_id, "shape": list(stored.volume.shape), "nbytes": stored.nbytes}

    @property
    def nbytes(self) -> int:
        """Bytes held by every cached volume."""
        with self._lock:
            return sum(v.nbytes for v in self._volumes.values())

    def __len__(self) -> int:
        return len(self._volumes)

    def evict(self) -> None:
        """Drop least recently used volumes not in use until the cache fits ``max_bytes``."""
        with self._lock:
            total = sum(v.nbytes for v in self._volumes.values())
            for volume_id in list(self._volumes):
                if total <= self.max_bytes:
                    break
                stored = self._volumes[volume_id]
                if stored.users:
                    continue
                total -= stored.nbytes
                del self._volumes[volume_id]
                logger.info("evicted volume %s (cache over %d MiB)", volume_id, self.max_bytes // MIB)


@dataclass
class Job:
    """One segmentation request and where it stands."""

    id: str
    bundle: str
    volume_id: str
    prompt: str
    options: Any  # SegmentationOptions
    state: str = "queued"
    stage: str = ""
    done: int = 0
    total: int | None = None
    error: str = ""
    details: str = ""
    reused_encoding: bool = False
    seconds: float = 0.0
    summary: dict[str, Any] | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def status(self) -> dict[str, Any]:
        """The JSON of ``GET /jobs/{id}``."""
        return {
            "job_id": self.id,
            "state": self.state,
            "stage": self.stage,
            "done": self.done,
            "total": self.total,
            "error": self.error,
            "reused_encoding": self.reused_encoding,
            "seconds": round(self.seconds, 3),
        }


class InferenceEngine:
    """Volumes, bundles and jobs of one server process (thread-safe)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.volumes = VolumeCache(settings.max_cache_bytes, settings.max_volume_bytes)
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="textguidedseg-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._bundles: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self._bundle_lock = threading.Lock()
        #: Volumes encoded (resampled and windowed) since the start; re-prompts do not add to it.
        self.encode_count = 0

    # -- requests --------------------------------------------------------------------------------------

    def add_volume(self, array: np.ndarray, affine: np.ndarray, name: str = "") -> str:
        """Keep an uploaded (I, J, K) volume and its affine; return its id."""
        from TextGuidedSegLib.io import Volume

        return self.volumes.add(Volume(array, affine, source=name))

    def submit(self, bundle: str, volume_id: str, prompt: str, options: dict[str, Any]) -> Job:
        """Queue a job; bad options, an empty prompt, an unknown bundle or volume raise before queueing."""
        from TextGuidedSegLib.inference.options import SegmentationOptions

        parsed = SegmentationOptions.from_dict(options)
        if parsed.device == "auto" and self.settings.device != "auto":
            parsed = parsed.replace(device=self.settings.device)
        if not prompt.strip():
            raise ValueError('prompt is empty: name the structures to segment, e.g. "liver and kidneys"')
        self.volumes.info(volume_id)  # UnknownVolume now rather than in the job
        bundle_path = str(self._resolve(bundle))
        job = Job(uuid.uuid4().hex, bundle_path, volume_id, prompt.strip(), parsed)
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old_jobs()
        self._pool.submit(self._run, job)
        return job

    def job(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"job id {job_id!r} is unknown to this server")
        return job

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop (before its next window batch); a queued job never starts."""
        job = self.job(job_id)
        job.cancel_event.set()
        if job.state == "queued":
            job.state = "cancelled"
        return job

    def forget(self, job_id: str) -> None:
        """Cancel a job if it runs and drop it with its result."""
        job = self.cancel(job_id)
        with self._lock:
            self._jobs.pop(job.id, None)

    def health(self) -> dict[str, Any]:
        """Counters for ``GET /health`` (the tests read the cache bound and the encode count here)."""
        with self._lock:
            states = [j.state for j in self._jobs.values()]
        return {
            "volumes": len(self.volumes),
            "cache_bytes": self.volumes.nbytes,
            "max_cache_bytes": self.settings.max_cache_bytes,
            "max_volume_bytes": self.settings.max_volume_bytes,
            "encode_count": self.encode_count,
            "jobs_running": states.count("running"),
            "jobs_queued": states.count("queued"),
            "workers": self.settings.workers,
            "device": self.settings.device,
        }

    def shutdown(self) -> None:
        """Cancel every job and stop the pool."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel_event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the job ---------------------------------------------------------------------------------------

    @staticmethod
    def _resolve(bundle: str) -> Path:
        """A bundle folder/.zip, a registry name or an installed bundle, on this machine (never downloads)."""
        from TextGuidedSegLib.registry import BundleStore

        return BundleStore().resolve(bundle)

    def _bundle(self, path: str, device: str) -> Any:
        """The bundle at ``path`` for ``device``, loaded once (reloaded when its files change)."""
        from TextGuidedSegLib.bundle import load_bundle

        key = (path, Path(path).stat().st_mtime_ns, device)
        with self._bundle_lock:
            bundle = self._bundles.get(key)
            if bundle is None:
                bundle = load_bundle(path)
                self._bundles = {k: v for k, v in self._bundles.items() if k[0] != path or k[2] != device}
                self._bundles[key] = bundle
            return bundle

    def _run(self, job: Job) -> None:
        from TextGuidedSegLib.inference import SegmentationCancelled, Segmenter, resolve_device

        if job.cancel_event.is_set():
            job.state = "cancelled"
            return
        started = time.perf_counter()
        job.state, job.stage = "running", "load"
        stored = None
        try:
            device = str(resolve_device(job.options.device))
            bundle = self._bundle(job.bundle, device)
            segmenter = Segmenter(
                bundle,
                job.options,
                progress=False,
                feature_cache_bytes=self.settings.max_cache_bytes // 4,
            )
            queries = segmenter.queries(job.prompt)  # an unanswerable prompt fails before any encoding
            stored = self.volumes.acquire(job.volume_id)
            preprocessing = bundle.config.preprocessing
            key = (job.bundle, repr(preprocessing))
            with stored.lock:
                prepared = stored.prepared.get(key)
                job.reused_encoding = prepared is not None
                if prepared is None:
                    job.stage = "prepare"
                    prepared = segmenter.prepare(stored.volume)
                    stored.prepared[key] = prepared
                    with self._lock:
                        self.encode_count += 1
                job.stage = "segment"

                def progress(done: int, total: int) -> None:
                    job.done, job.total = int(done), int(total)

                result = segmenter.segment(
                    stored.volume,
                    queries,
                    prepared=prepared,
                    progress_callback=progress,
                    cancel=job.cancel_event,
                )
            job.arrays = result_arrays(result)
            job.seconds = time.perf_counter() - started
            job.summary = result_summary(
                result, job.arrays, reused_encoding=job.reused_encoding, seconds=job.seconds
            )
            job.state = "done"
            logger.info("job %s: %r in %.2f s", job.id, job.prompt, job.seconds)
        except SegmentationCancelled as err:
            job.state, job.error = "cancelled", str(err)
        except Exception as err:  # noqa: BLE001 - reported to the client in the job status
            logger.exception("job %s failed", job.id)
            job.error = str(err) or type(err).__name__
            job.details = traceback.format_exc()
            job.state = "error"
        finally:
            job.seconds = time.perf_counter() - started
            if stored is not None:
                self.volumes.release(stored)

    def _forget_old_jobs(self) -> None:
        """Keep at most ``max_jobs_kept`` finished jobs (oldest dropped); call with ``self._lock`` held."""
        finished = [j.id for j in self._jobs.values() if j.state in FINAL_STATES]
        for job_id in finished[: max(0, len(finished) - self.settings.max_jobs_kept)]:
            del self._jobs[job_id]
