"""What travels between ``textguidedseg serve`` and its clients: arrays as ``.npy`` bytes, the rest as JSON.

Shared by the server and the clients (the Slicer module's ``service.py``, the tests, the benchmark), so both
ends read and write one format. Imports numpy only: no torch, no FastAPI, no httpx.

- A volume is uploaded as one ``.npz`` body (``np.savez``: members ``array``, (I, J, K) voxel values, and
  ``affine``, (4, 4) voxel-to-RAS), read back with ``allow_pickle=False``.
- A result is :func:`result_summary` (JSON: segments, provenance, warnings, and the shape and dtype of each
  array field) plus one ``.npy`` body per array field in :data:`ARRAY_FIELDS`; :func:`result_from_payload`
  rebuilds a ``SegmentationResult`` from them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from TextGuidedSegLib.inference.result import SegmentationResult
    from TextGuidedSegLib.io import Volume

#: The array fields of ``SegmentationResult`` sent as ``.npy``: labels (I, J, K), masks (Q, I, J, K) bool,
#: probabilities and uncertainty (Q, I, J, K) float32; only those that are set are sent.
ARRAY_FIELDS = ("labels", "masks", "probabilities", "uncertainty")
NPY_MEDIA_TYPE = "application/x-npy"
NPZ_MEDIA_TYPE = "application/x-npz"


class TransportError(ValueError):
    """A body could not be read as the arrays it should hold; the message says which and why."""


def array_to_npy(array: np.ndarray) -> bytes:
    """``array`` as ``.npy`` bytes (never pickled: object arrays are refused)."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise TransportError(f"cannot send an array of Python objects (dtype {array.dtype})")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_to_array(data: bytes, what: str = "body") -> np.ndarray:
    """The array in ``.npy`` bytes; a :class:`TransportError` naming ``what`` when they are not one."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise TransportError(f"{what} is not a .npy array: {err}") from None


def volume_to_npz(array: np.ndarray, affine: np.ndarray) -> bytes:
    """The upload body of a volume: ``array`` (I, J, K) and its (4, 4) voxel-to-RAS ``affine``."""
    buffer = io.BytesIO()
    np.savez(buffer, array=np.asarray(array, dtype=np.float32), affine=np.asarray(affine, dtype=np.float64))
    return buffer.getvalue()


def npz_to_volume(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` from an upload body; a :class:`TransportError` saying what is missing or wrong."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            missing = [name for name in ("array", "affine") if name not in archive.files]
            if missing:
                raise TransportError(
                    f"the volume body lacks {', '.join(missing)}: send np.savez(array=(I, J, K) voxels, "
                    "affine=(4, 4) voxel-to-RAS)"
                )
            array, affine = archive["array"], archive["affine"]
    except TransportError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise TransportError(f"the volume body is not an .npz archive of array and affine: {err}") from None
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.number):
        raise TransportError(f"the volume array must be a 3D number array, got {array.dtype} {array.shape}")
    if affine.shape != (4, 4):
        raise TransportError(f"the volume affine must be 4 x 4, got shape {affine.shape}")
    return array, affine


def result_arrays(result: SegmentationResult) -> dict[str, np.ndarray]:
    """The array fields of ``result`` that are set, each as one array (lazy probability maps computed)."""
    arrays: dict[str, np.ndarray] = {"labels": np.asarray(result.labels)}
    if result.masks is not None:
        arrays["masks"] = np.asarray(result.masks, dtype=bool)
    for name in ("probabilities", "uncertainty"):
        maps = getattr(result, name)
        if maps is not None:
            arrays[name] = np.stack([np.asarray(m, dtype=np.float32) for m in maps])
    return arrays


def result_summary(result: SegmentationResult, arrays: Mapping[str, np.ndarray], **extra: Any) -> dict:
    """The JSON part of a result: the sidecar (provenance, segments), the arrays' shapes, and ``extra``."""
    summary = result.sidecar()
    summary["arrays"] = {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()}
    summary.update(extra)
    return summary


def result_from_payload(
    summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray], volume: Volume | None = None
) -> SegmentationResult:
    """Rebuild a ``SegmentationResult`` from :func:`result_summary` and its arrays (``volume``: the input)."""
    from TextGuidedSegLib.inference.result import SegmentationResult, SegmentInfo
    from TextGuidedSegLib.taxonomy import StructureQuery

    segments = [
        SegmentInfo(
            label_id=int(s["label_id"]),
            name=s["name"],
            class_name=s["class_name"],
            prompt=s["prompt"],
            text=s["text"],
            color=tuple(int(c) for c in s["color"]),
            terminology=s["terminology"],
            voxels=int(s["voxels"]),
            volume_ml=float(s["volume_ml"]),
        )
        for s in summary["segments"]
    ]
    queries = [StructureQuery(s.text, s.prompt, _structure(s.class_name)) for s in segments]
    labels = arrays["labels"]
    if volume is not None and tuple(labels.shape) != tuple(volume.shape):
        raise TransportError(f"the label map {labels.shape} is not on the input volume's grid {volume.shape}")
    skip = {"format_version", "segments", "arrays", "reused_encoding", "seconds"}
    return SegmentationResult(
        labels=labels,
        segments=segments,
        queries=queries,
        probabilities=arrays.get("probabilities"),
        uncertainty=arrays.get("uncertainty"),
        masks=arrays.get("masks"),
        volume=volume,
        provenance={k: v for k, v in summary.items() if k not in skip},
    )


def _structure(class_name: str | None) -> Any:
    """The default taxonomy's structure named ``class_name``, None for free text or a name it lacks."""
    if class_name is None:
        return None
    from TextGuidedSegLib.taxonomy import get_taxonomy

    try:
        return get_taxonomy()[class_name]
    except KeyError:
        return None
