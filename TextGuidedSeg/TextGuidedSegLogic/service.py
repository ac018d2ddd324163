"""Inference out of Slicer's process: a client of ``textguidedseg serve`` and the server process it starts.

Slicer's main thread holds the GIL whenever it is not running Python, so inference in a Python thread of
Slicer crawls. Jobs therefore run in a ``textguidedseg serve`` process: one this module starts on first use
with Slicer's own Python (``PythonSlicer``, found as ``slicer.util`` finds it; ``sys.executable`` outside
Slicer) on 127.0.0.1 with a random token, stopped at exit; or a server the user names (a lab's GPU machine,
``InferenceService(url, token)``).

- :class:`ServiceClient`: the HTTP API over the standard library (``http.client``: Slicer's Python needs no
  extra package), errors as :class:`ServerError` (the server's message) or :class:`ServerUnavailable`.
- :class:`LocalServer`: starts, watches and stops the local server process.
- :class:`InferenceService`: the client to use (the local server restarted when it died) and which volumes it
  already holds, so a re-prompt does not send the volume again.
- :class:`ServerJob`: what the panel and the effect poll: ``poll() -> list[WorkerEvent]``, ``cancel()``,
  ``running``. A small thread does the HTTP calls (it waits on sockets, so it does not compete for the GIL);
  MRML is written by the caller on the main thread when the "done" event arrives.
"""

from __future__ import annotations

import atexit
import http.client
import json
import logging
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, "int | None"], None]
"""``progress(stage, done, total)``; stage is e.g. "download", "load", "prepare" or "segment"; ``total``
None when the stage has no known length."""

#: What ``textguidedseg serve`` prints first; the URL follows (``cli/serve.py``).
URL_LINE = re.compile(r"^Serving on (http://\S+)\s*$")
TOKEN_ENV = "TEXTGUIDEDSEG_SERVER_TOKEN"
POLL_SECONDS = 0.05
#: Seconds a request to the local server may take (a loaded machine, a large volume) before it counts as dead.
REQUEST_TIMEOUT_LOCAL = 300.0


@dataclass
class WorkerEvent:
    """One message from a job to the GUI thread.

    Attributes:
        kind: "progress", "done" (``result`` holds an ``InferenceOutput``), "cancelled" or "error".
        stage: the job stage of a progress event.
        done: units done in that stage.
        total: units in that stage, None when unknown.
        result: the job's return value ("done").
        error: the exception ("error" and "cancelled").
        details: the formatted traceback or the server's details ("error").
    """

    kind: str
    stage: str = ""
    done: int = 0
    total: int | None = None
    result: Any = None
    error: BaseException | None = None
    details: str = ""


class ServerError(RuntimeError):
    """The server answered with an error; ``status`` is the HTTP status, the message the server's."""

    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail
        super().__init__(f"inference server error {status}: {detail}")


class ServerUnavailable(ConnectionError):
    """The server could not be reached, or its process stopped."""


class JobCancelled(RuntimeError):
    """The job was cancelled; nothing was written."""


class JobFailed(RuntimeError):
    """The job failed on the server; the message is the server's (e.g. a prompt the bundle cannot answer)."""


class ServiceClient:
    """Calls ``textguidedseg serve`` at ``url`` (``http://host:port``), sending ``token`` when given."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"server URL must be http://HOST:PORT or https://HOST:PORT, got {url!r}")
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self._parsed = parsed

    def request(self, method: str, path: str, body: bytes | dict | None = None, raw: bool = False) -> Any:
        """``method path`` with a JSON (dict) or binary body; the JSON answer, or bytes with ``raw``."""
        headers = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/octet-stream"
        connection_type = (
            http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_type(self._parsed.hostname, self._parsed.port, timeout=self.timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as err:
            raise ServerUnavailable(f"cannot reach the inference server at {self.url}: {err}") from err
        finally:
            connection.close()
        if response.status >= 400:
            try:
                detail = json.loads(data).get("detail", "")
            except (ValueError, AttributeError):
                detail = data.decode(errors="replace")[:500]
            raise ServerError(response.status, str(detail))
        return data if raw else json.loads(data)

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")

    def upload_volume(self, array: np.ndarray, affine: np.ndarray, name: str = "") -> str:
        """Send an (I, J, K) volume and its (4, 4) affine; return the server's volume id."""
        from TextGuidedSegLib.server.transport import volume_to_npz

        query = "?" + urllib.parse.urlencode({"name": name}) if name else ""
        return self.request("POST", f"/volumes{query}", volume_to_npz(array, affine))["volume_id"]

    def submit(self, bundle: str, volume_id: str, prompt: str, options: dict[str, Any]) -> dict[str, Any]:
        body = {"bundle": bundle, "volume_id": volume_id, "prompt": prompt, "options": options}
        return self.request("POST", "/jobs", body)

    def status(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/jobs/{job_id}/cancel")

    def forget(self, job_id: str) -> None:
        self.request("DELETE", f"/jobs/{job_id}")

    def result(self, job_id: str, volume: Any = None) -> tuple[Any, dict[str, Any]]:
        """The job's ``SegmentationResult`` (every array field) and its JSON summary."""
        from TextGuidedSegLib.server.transport import npy_to_array, result_from_payload

        summary = self.request("GET", f"/jobs/{job_id}/result")
        arrays = {
            name: npy_to_array(self.request("GET", f"/jobs/{job_id}/result/{name}", raw=True), name)
            for name in summary["arrays"]
        }
        return result_from_payload(summary, arrays, volume), summary


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` inside Slicer (on PATH there, as ``slicer.util`` finds it), else this
    interpreter."""
    try:
        from slicer import app  # noqa: F401 - importable only inside the Slicer application
    except ImportError:
        return sys.executable
    found = shutil.which("PythonSlicer")
    if not found:
        raise RuntimeError("PythonSlicer was not found on PATH: cannot start the inference server")
    return found


def _environment(library_folder: Path, token: str) -> dict[str, str]:
    """The server's environment: Slicer's startup environment inside Slicer (as ``launchConsoleProcess``
    uses), the library folder on PYTHONPATH and the token."""
    try:
        import slicer.util

        env = dict(slicer.util.startupEnvironment())
    except (ImportError, AttributeError):
        env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(library_folder), env.get("PYTHONPATH", "")]))
    env[TOKEN_ENV] = token
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class LocalServer:
    """A ``textguidedseg serve`` process on 127.0.0.1 (a free port, a random token), stopped at exit.

    Args:
        device: ``--device`` of the server.
        max_cache_mb: ``--max-cache-mb`` (volumes and encodings kept for re-prompting).
        startup_timeout: seconds to wait for the URL line.
        log_path: where the server's log goes (default: a file in the temporary folder).
    """

    def __init__(
        self,
        device: str = "auto",
        max_cache_mb: float = 4096.0,
        startup_timeout: float = 180.0,
        log_path: Path | None = None,
    ) -> None:
        self.device, self.max_cache_mb, self.startup_timeout = device, max_cache_mb, startup_timeout
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.client: ServiceClient | None = None
        self._lock = threading.Lock()
        atexit.register(self.stop)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self, wait: float = 0.0) -> int | None:
        """The server process's exit status after up to ``wait`` seconds; None while it runs (or none)."""
        process = self.process
        if process is None:
            return None
        try:
            return process.wait(wait) if wait > 0 else process.poll()
        except subprocess.TimeoutExpired:
            return None

    def ensure_started(self) -> ServiceClient:
        """The client of a running server, starting one (again, when it died) first."""
        with self._lock:
            if self.running and self.client is not None:
                return self.client
            if self.process is not None:
                logger.warning("the inference server (pid %d) stopped; starting a new one", self.process.pid)
            return self._start()

    def _start(self) -> ServiceClient:
        from .library import ensure_library_importable

        token = secrets.token_hex(24)
        command = [python_executable(), "-m", "TextGuidedSegLib.cli", "--log-level", "WARNING", "serve"]
        command += ["--host", "127.0.0.1", "--port", "0", "--device", self.device]
        command += ["--max-cache-mb", str(self.max_cache_mb), "--max-volume-mb", str(self.max_cache_mb / 2)]
        if self.log_path is None:
            import tempfile

            self.log_path = Path(tempfile.gettempdir()) / f"textguidedseg-server-{os.getpid()}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        kwargs: dict[str, Any] = {}
        if os.name == "nt":  # no console window, as slicer.util.launchConsoleProcess does
            info = subprocess.STARTUPINFO()
            info.dwFlags, info.wShowWindow = 1, 0
            kwargs["startupinfo"] = info
        try:
            self.process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=_environment(ensure_library_importable(), token),
                **kwargs,
            )
        finally:
            log.close()
        url = self._read_url()
        self.client = ServiceClient(url, token, timeout=REQUEST_TIMEOUT_LOCAL)
        logger.info("started the inference server (pid %d) at %s", self.process.pid, url)
        return self.client

    def _read_url(self) -> str:
        """The URL from the server's first line (read in a thread: ``readline`` has no timeout)."""
        assert self.process is not None and self.process.stdout is not None
        lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.process.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self.startup_timeout).decode(errors="replace")
        except queue.Empty:
            line = ""
        match = URL_LINE.match(line)
        if match is None:
            self.stop()
            raise ServerUnavailable(
                f"the inference server did not start within {self.startup_timeout:.0f} s (first line "
                f"{line.strip()!r}); see its log {self.log_path}"
            )
        return match.group(1)

    def stop(self) -> None:
        """Stop the server process (terminate, then kill after 5 s)."""
        process, self.process, self.client = self.process, None, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        logger.info("stopped the inference server (pid %d)", process.pid)


class InferenceService:
    """Where jobs run: a server at ``url`` (with ``token``), else a :class:`LocalServer` started on first use.

    Remembers which volumes (by content fingerprint) the server holds, so a re-prompt sends only the prompt;
    a volume the server has evicted (404), or a restarted server, gets the volume again.
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, local: LocalServer | None = None
    ) -> None:
        self.remote = ServiceClient(url, token) if url else None
        self.local = None if url else (local or LocalServer())
        self._volumes: OrderedDict[tuple, tuple[int, str]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def is_local(self) -> bool:
        return self.local is not None

    def client(self) -> ServiceClient:
        """The client to use now (starting the local server when needed)."""
        return self.remote if self.remote is not None else self.local.ensure_started()

    def volume_id(self, client: ServiceClient, job: Any, refresh: bool = False) -> str:
        """The server's id of the job's volume, uploading it when the server does not hold it yet."""
        key = (job.fingerprint, id(client))
        with self._lock:
            known = self._volumes.get(key)
        if known is not None and not refresh and job.fingerprint:
            return known[1]
        volume_id = client.upload_volume(job.volume.array, job.volume.affine, job.volume_name)
        if job.fingerprint:
            with self._lock:
                self._volumes[key] = (id(client), volume_id)
                while len(self._volumes) > 8:
                    self._volumes.popitem(last=False)
        return volume_id

    def run(
        self, job: Any, bundle: str, progress: Progress, cancel: threading.Event | None
    ) -> tuple[Any, dict[str, Any]]:
        """Run ``job`` (an ``InferenceJob``) with ``bundle`` on the server: its ``SegmentationResult`` and
        final status. A volume the server evicted is sent again; a server that stopped raises
        :class:`ServerUnavailable` saying that nothing was written (and that the next job restarts it)."""
        client = self.client()
        options = job.options.to_dict()
        try:
            volume_id = self.volume_id(client, job)
            try:
                status = client.submit(bundle, volume_id, job.prompt, options)
            except ServerError as err:
                if err.status != 404:
                    raise
                volume_id = self.volume_id(client, job, refresh=True)  # evicted: send it again
                status = client.submit(bundle, volume_id, job.prompt, options)
            status = wait_for_job(client, status["job_id"], progress, cancel, job.volume_name)
            result, _summary = client.result(status["job_id"], job.volume)
            client.forget(status["job_id"])
        except ServerUnavailable as err:
            local = self.local
            if local is None:
                raise ServerUnavailable(
                    f"the inference server at {client.url} failed during the job: nothing was written ({err})"
                ) from err
            code = local.exit_code(wait=2.0)  # a reset connection comes while the process is still dying
            if code is None:  # alive but not answering
                raise ServerUnavailable(
                    f"the inference server did not answer: nothing was written ({err})"
                ) from err
            raise ServerUnavailable(
                f"the inference server stopped during the job (exit code {code}): nothing was written; "
                "the next job starts a new one"
            ) from err
        return result, status

    def stop(self) -> None:
        """Stop the local server (a remote one is left running)."""
        if self.local is not None:
            self.local.stop()


_DEFAULT_SERVICE: InferenceService | None = None
_DEFAULT_LOCK = threading.Lock()


def default_service() -> InferenceService:
    """The service every logic without one of its own shares (the panel and the effect: one local server)."""
    global _DEFAULT_SERVICE
    with _DEFAULT_LOCK:
        if _DEFAULT_SERVICE is None:
            _DEFAULT_SERVICE = InferenceService()
        return _DEFAULT_SERVICE


def set_default_service(service: InferenceService | None) -> None:
    """Make ``service`` the shared one (None: a local server again); the old local server is stopped."""
    global _DEFAULT_SERVICE
    with _DEFAULT_LOCK:
        old, _DEFAULT_SERVICE = _DEFAULT_SERVICE, service
    if old is not None and old is not service:
        old.stop()


class ServerJob:
    """A job on the inference server, polled by the GUI thread (the interface the panel and effect use).

    ``function(progress, cancel)`` does the HTTP calls in a daemon thread and returns the job's result;
    :meth:`poll` hands its events to the GUI thread.

    Example::

        job = logic.submit(logic.prepare_inputs(volume_node, "liver"))
        ...                       # every 50 ms on the GUI thread:
        for event in job.poll():
            if event.kind == "done":
                logic.write_results(event.result, volume_node)
    """

    def __init__(
        self, function: Callable[[Progress, threading.Event], Any], name: str = "TextGuidedSeg"
    ) -> None:
        self._function = function
        self._events: queue.Queue[WorkerEvent] = queue.Queue()
        self.cancel_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> ServerJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop the job on the server now; a "cancelled" event follows."""
        self.cancel_event.set()

    @property
    def running(self) -> bool:
        """True until the job's last event is queued (it may still be waiting in :meth:`poll`)."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the job to end (tests and shutdown)."""
        self._thread.join(timeout)

    def poll(self, yield_seconds: float = 0.0) -> list[WorkerEvent]:
        """Every event queued since the last poll, oldest first (``yield_seconds``: ignored, kept for callers
        written for the thread worker)."""
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
            result = self._function(self._progress, self.cancel_event)
        except BaseException as err:  # noqa: BLE001 - everything goes back to the GUI thread
            if isinstance(err, _cancellation_types()):
                logger.info("job cancelled: %s", err)
                self._events.put(WorkerEvent("cancelled", error=err))
            else:
                logger.error("job failed: %s", err)
                details = getattr(err, "details", "") or traceback.format_exc()
                self._events.put(WorkerEvent("error", error=err, details=details))
            return
        self._events.put(WorkerEvent("done", result=result))


def _cancellation_types() -> tuple[type[BaseException], ...]:
    """Cancellation: this module's, and the registry's download cancellation (a bundle download)."""
    types: list[type[BaseException]] = [JobCancelled]
    segmenter = sys.modules.get("TextGuidedSegLib.inference.segmenter")  # in-process runs (scripts, tests)
    if segmenter is not None:
        types.append(segmenter.SegmentationCancelled)
    try:
        from TextGuidedSegLib.registry import DownloadCancelled

        types.append(DownloadCancelled)
    except ImportError:
        pass
    return tuple(types)


def wait_for_job(
    client: ServiceClient, job_id: str, progress: Progress, cancel: threading.Event | None, what: str
) -> dict[str, Any]:
    """Poll ``job_id`` until it ends: its final status; :class:`JobCancelled` once ``cancel`` is set (the
    server is told at once), :class:`ServerError` with the server's message when it failed."""
    last = None
    while True:
        if cancel is not None and cancel.is_set():
            try:
                client.cancel(job_id)
            except (ServerError, ServerUnavailable) as err:
                logger.info("cancelling job %s: %s", job_id, err)
            raise JobCancelled(f"segmentation of {what} cancelled")
        status = client.status(job_id)
        state = status["state"]
        if state == "done":
            return status
        if state == "cancelled":
            raise JobCancelled(f"segmentation of {what} cancelled on the server")
        if state == "error":
            raise JobFailed(status.get("error") or "the job failed on the server")
        current = (status["stage"], status["done"], status["total"])
        if status["stage"] and current != last:
            progress(*current)
            last = current
        time.sleep(POLL_SECONDS)
