"""``textguidedseg serve``: the library as a small HTTP service (FastAPI + uvicorn), so that inference runs
outside the Slicer process, on this machine or on a lab's GPU machine.

- :mod:`.transport`: the wire format (arrays as ``.npy``, the rest JSON), shared with the clients; numpy only.
- :mod:`.engine`: uploaded volumes (LRU bounded by bytes), bundles loaded once, the job pool; no HTTP.
- :mod:`.app`: :func:`create_app`, the FastAPI routes, token check and error messages.

``create_app`` and ``ServerSettings`` are imported on first access (FastAPI is the optional ``serve`` extra).
"""

from __future__ import annotations

from TextGuidedSegLib._lazy import lazy_getattr

_MODULES = {
    "create_app": "app",
    "InferenceEngine": "engine",
    "ServerSettings": "engine",
}
__all__ = sorted(_MODULES)

__getattr__ = lazy_getattr(__name__, _MODULES)
