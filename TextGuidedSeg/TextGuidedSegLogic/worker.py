"""A worker thread for long jobs, with progress and results handed to the GUI thread through a queue.

The job function never touches MRML (Slicer's scene is not thread-safe): it receives a ``progress`` callback
and a ``cancel`` event and returns a value. The GUI thread polls :meth:`Worker.poll` (a ``QTimer`` in the
widget and the effect) and writes MRML when the ``done`` event arrives. There is no child process: cancelling
sets the event, and the job stops before its next window batch (or download chunk).

Slicer's embedded interpreter may hold the GIL while the Qt event loop is idle, so a Python thread only
advances while the main thread runs Python. PyTorch releases the GIL inside its kernels, but the Python code
between kernels needs it: ``poll(yield_seconds)`` sleeps briefly (releasing the GIL) on every timer tick so
the worker keeps going whatever the interpreter does while idle.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, "int | None"], None]
"""``progress(stage, done, total)``; stage is e.g. "download", "load", "prepare" or "segment"; ``total``
None when the stage has no known length."""


@dataclass
class WorkerEvent:
    """One message from the worker thread.

    Attributes:
        kind: "progress", "done" (``result`` holds the job's return value), "cancelled" or "error".
        stage: the job stage of a progress event.
        done: units done in that stage.
        total: units in that stage, None when unknown.
        result: the job's return value ("done").
        error: the exception ("error" and "cancelled").
        details: the formatted traceback ("error").
    """

    kind: str
    stage: str = ""
    done: int = 0
    total: int | None = None
    result: Any = None
    error: BaseException | None = None
    details: str = ""


def _cancellation_types() -> tuple[type[BaseException], ...]:
    """The library's cancellation exceptions (imported lazily: they pull in the model stack)."""
    types: list[type[BaseException]] = []
    try:
        from TextGuidedSegLib.inference import SegmentationCancelled

        types.append(SegmentationCancelled)
    except ImportError:  # dependencies not installed: then nothing ran that could be cancelled
        pass
    from TextGuidedSegLib.registry import DownloadCancelled

    types.append(DownloadCancelled)
    return tuple(types)


class Worker:
    """Runs ``job(progress, cancel)`` in a daemon thread.

    Example::

        worker = Worker(lambda progress, cancel: logic.run(job, progress, cancel))
        worker.start()
        ...                       # every 100 ms on the GUI thread:
        for event in worker.poll():
            if event.kind == "done":
                logic.write_results(event.result, volume_node)
    """

    def __init__(self, job: Callable[[Progress, threading.Event], Any], name: str = "TextGuidedSeg") -> None:
        self._job = job
        self._events: queue.Queue[WorkerEvent] = queue.Queue()
        self.cancel_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the job."""
        self._thread.start()

    def cancel(self) -> None:
        """Ask the job to stop; a "cancelled" event follows once it has."""
        self.cancel_event.set()

    @property
    def running(self) -> bool:
        """True while the thread runs (its last events may still be waiting in :meth:`poll`)."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (tests and application shutdown)."""
        self._thread.join(timeout)

    def poll(self, yield_seconds: float = 0.0) -> list[WorkerEvent]:
        """Every event queued since the last poll, oldest first (call it on the GUI thread).

        Args:
            yield_seconds: while the job runs, first sleep this long so the worker thread gets the GIL.
        """
        if yield_seconds > 0 and self.running:
            time.sleep(yield_seconds)
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def _progress(self, stage: str, done: int, total: int | None) -> None:
        self._events.put(WorkerEvent("progress", stage=stage, done=int(done), total=total))

    def _run(self) -> None:
        try:
            result = self._job(self._progress, self.cancel_event)
        except BaseException as err:  # noqa: BLE001 - everything goes back to the GUI thread
            if isinstance(err, _cancellation_types()):
                logger.info("job cancelled: %s", err)
                self._events.put(WorkerEvent("cancelled", error=err))
            else:
                logger.exception("job failed")
                self._events.put(WorkerEvent("error", error=err, details=traceback.format_exc()))
            return
        self._events.put(WorkerEvent("done", result=result))
