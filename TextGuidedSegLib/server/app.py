"""The HTTP API of ``textguidedseg serve`` (FastAPI): upload a volume once, run jobs on it, fetch results.

Endpoints (every error is ``{"detail": "<what is wrong, naming the argument>"}``):

- ``GET /health``: version, pid and the engine's counters (cache bytes and bound, encode count, jobs);
- ``POST /volumes``: body ``np.savez(array=(I, J, K), affine=(4, 4))`` -> ``{"volume_id", "shape",
  "nbytes"}``; 413 beyond ``max_volume_bytes``;
- ``GET /volumes/{id}``: its shape and bytes held (404 once evicted: upload it again);
- ``POST /jobs``: ``{"bundle", "volume_id", "prompt", "options": SegmentationOptions.to_dict()}`` ->
  the job's status; unknown keys or bad values -> 422 naming them, unknown volume -> 404;
- ``GET /jobs/{id}``: ``state`` (queued, running, done, error, cancelled), ``stage``, ``done``/``total``;
- ``POST /jobs/{id}/cancel``: stop it before its next window batch;
- ``GET /jobs/{id}/result``: the sidecar JSON (segments, provenance, warnings) and ``arrays`` (shape and
  dtype of each array field); ``GET /jobs/{id}/result/{field}``: that array as ``.npy``;
- ``DELETE /jobs/{id}``: forget the job and its result.

With ``settings.token`` set every endpoint but ``/health`` needs ``Authorization: Bearer <token>`` (401).
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from TextGuidedSegLib import __version__
from TextGuidedSegLib.server.engine import (
    InferenceEngine,
    ServerSettings,
    UnknownJob,
    UnknownVolume,
    VolumeTooLarge,
)
from TextGuidedSegLib.server.transport import (
    ARRAY_FIELDS,
    NPY_MEDIA_TYPE,
    TransportError,
    array_to_npy,
    npz_to_volume,
)


class JobRequest(BaseModel):
    """The body of ``POST /jobs``."""

    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(min_length=1, description="bundle folder/.zip on the server, or a registry name")
    volume_id: str = Field(min_length=1, description="id returned by POST /volumes")
    prompt: str = Field(description='structures to segment, e.g. "liver and both kidneys"')
    options: dict[str, Any] = Field(default_factory=dict, description="SegmentationOptions fields")


def _validation_message(err: RequestValidationError) -> str:
    """One sentence per problem of a request body, naming the field ("unknown field 'x'")."""
    parts = []
    for error in err.errors():
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        kind = error.get("type", "")
        if kind == "extra_forbidden":
            parts.append(f"unknown field {location!r} (valid: {', '.join(JobRequest.model_fields)})")
        elif kind == "missing":
            parts.append(f"missing field {location!r}")
        else:
            parts.append(f"{location}: {error.get('msg', 'invalid')}")
    return "malformed request body: " + "; ".join(parts)


def create_app(settings: ServerSettings | None = None, engine: InferenceEngine | None = None) -> FastAPI:
    """The FastAPI application of ``textguidedseg serve`` for ``settings`` (``engine``: tests)."""
    settings = settings or ServerSettings()
    engine = engine or InferenceEngine(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.shutdown()  # cancel running jobs when uvicorn stops

    app = FastAPI(title="TextGuidedSeg inference server", version=__version__, lifespan=lifespan)
    app.state.engine = engine

    def authorized(request: Request) -> None:
        if settings.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.token.encode()):
            raise HTTPException(
                401,
                "missing or wrong token: send the server's token as 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(RequestValidationError)
    async def malformed(_request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(err)}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "pid": os.getpid(), **engine.health()}

    @app.post("/volumes", dependencies=[Depends(authorized)])
    async def upload_volume(request: Request, name: str = "") -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_volume_bytes + 4096:
            raise HTTPException(
                413,
                f"the volume body holds {int(declared) / 2**20:.1f} MiB, more than this server's "
                f"--max-volume-mb {settings.max_volume_bytes / 2**20:.0f}",
            )
        body = await request.body()
        try:
            array, affine = await run_in_threadpool(npz_to_volume, body)
            volume_id = await run_in_threadpool(engine.add_volume, array, affine, name)
        except VolumeTooLarge as err:
            raise HTTPException(413, str(err)) from None
        except (TransportError, ValueError) as err:
            raise HTTPException(422, str(err)) from None
        return engine.volumes.info(volume_id)

    @app.get("/volumes/{volume_id}", dependencies=[Depends(authorized)])
    def volume_info(volume_id: str) -> dict[str, Any]:
        try:
            return engine.volumes.info(volume_id)
        except UnknownVolume as err:
            raise HTTPException(404, err.args[0]) from None

    @app.post("/jobs", dependencies=[Depends(authorized)])
    def submit(request: JobRequest) -> dict[str, Any]:
        try:
            job = engine.submit(request.bundle, request.volume_id, request.prompt, request.options)
        except UnknownVolume as err:
            raise HTTPException(404, err.args[0]) from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        return job.status()

    def known_job(job_id: str) -> Any:
        try:
            return engine.job(job_id)
        except UnknownJob as err:
            raise HTTPException(404, err.args[0]) from None

    @app.get("/jobs/{job_id}", dependencies=[Depends(authorized)])
    def job_status(job_id: str) -> dict[str, Any]:
        return known_job(job_id).status()

    @app.post("/jobs/{job_id}/cancel", dependencies=[Depends(authorized)])
    def cancel(job_id: str) -> dict[str, Any]:
        known_job(job_id)
        return engine.cancel(job_id).status()

    @app.delete("/jobs/{job_id}", dependencies=[Depends(authorized)])
    def forget(job_id: str) -> dict[str, Any]:
        known_job(job_id)
        engine.forget(job_id)
        return {"job_id": job_id, "deleted": True}

    def finished_job(job_id: str) -> Any:
        job = known_job(job_id)
        if job.state != "done":
            reason = f": {job.error}" if job.error else ""
            raise HTTPException(409, f"job {job_id} has no result: it is {job.state}{reason}")
        return job

    @app.get("/jobs/{job_id}/result", dependencies=[Depends(authorized)])
    def result(job_id: str) -> dict[str, Any]:
        return finished_job(job_id).summary

    @app.get("/jobs/{job_id}/result/{field}", dependencies=[Depends(authorized)])
    def result_array(job_id: str, field: str) -> Response:
        job = finished_job(job_id)
        if field not in job.arrays:
            fields = ", ".join(job.arrays) if field in ARRAY_FIELDS else ", ".join(ARRAY_FIELDS)
            raise HTTPException(404, f"job {job_id} has no array {field!r} (it has: {fields})")
        return Response(array_to_npy(job.arrays[field]), media_type=NPY_MEDIA_TYPE)

    return app
