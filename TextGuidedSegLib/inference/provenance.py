"""Where a segmentation came from: fitness caveats and the provenance record a sidecar stores.

A bundle declares what it is fit for (``BundleConfig.intended_use``, see ``bundle.INTENDED_USES``). When a
bundle that is not a published model runs on a real CT, :func:`fitness_warnings` says so plainly; the
``Segmenter`` logs it (WARNING) and keeps it in the result's provenance, from where it reaches the sidecar,
the demo's ``volumes.md`` and overlay title, and the Slicer results table.

A real CT is any volume that is not one of this library's phantoms: :func:`is_phantom` looks for
:data:`PHANTOM_MARKER` in the NIfTI header's ``descrip``, which ``data.phantom`` writes into every phantom it
saves (a phantom made before the marker existed counts as real: the caveat errs on the side of saying it).

:func:`provenance` is the record of one run: every setting that changes the answer and what ran it.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from TextGuidedSegLib.io import Volume
    from TextGuidedSegLib.taxonomy import StructureQuery

#: Written into the NIfTI ``descrip`` of every saved phantom (``data.phantom``); :func:`is_phantom` reads it.
PHANTOM_MARKER = "TextGuidedSeg phantom"

#: intended_use -> the one-line caveat shown where space is short (overlay title, Slicer results table).
SHORT_CAVEATS: dict[str, str] = {
    "phantom": "NOT VALID ON REAL CT: model trained on phantoms only",
    "synthetic": "NOT VALID ON REAL CT: toy model",
    "research": "research model, not validated: check the result",
}


def is_phantom(volume: Volume) -> bool:
    """True when ``volume`` is one of this library's phantoms (its NIfTI header carries the marker)."""
    header = volume.header
    if header is None:
        return False
    try:
        descrip = np.asarray(header["descrip"]).item()  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return False
    text = descrip.decode("latin-1") if isinstance(descrip, bytes) else str(descrip)
    return text.startswith(PHANTOM_MARKER)


def short_caveat(intended_use: str, phantom_input: bool) -> str | None:
    """The one-line caveat for a bundle of ``intended_use`` on this input; None when there is none."""
    return None if phantom_input else SHORT_CAVEATS.get(intended_use)


def fitness_warnings(name: str, intended_use: str, volume: Volume) -> list[str]:
    """The caveats of running bundle ``name`` (fit for ``intended_use``) on ``volume``; empty on a phantom or
    for a published model."""
    if is_phantom(volume) or intended_use not in SHORT_CAVEATS:
        return []
    where = f"on {volume.source}" if volume.source else "on this CT"
    advice = (
        "use it to try the software; for real results use a published bundle (`textguidedseg bundles list`)"
    )
    if intended_use == "phantom":
        return [
            f"bundle {name!r} was trained on procedural phantoms only and has never seen a real CT: its "
            f"labels and volumes {where} are not a segmentation of this patient; {advice}"
        ]
    if intended_use == "synthetic":
        return [
            f"bundle {name!r} is a toy model (synthetic embeddings or untrained weights): its labels and "
            f"volumes {where} mean nothing; {advice}"
        ]
    return [
        f"bundle {name!r} is a research model, not validated: check every segment {where} before using its "
        "volumes"
    ]


def _versions() -> dict[str, str]:
    import monai
    import torch

    from TextGuidedSegLib import __version__

    return {
        "textguidedseg": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
    }


def provenance(
    segmenter: Any,
    volume: Volume,
    prompt: str | None,
    queries: Sequence[StructureQuery],
    warnings: Sequence[str],
) -> dict[str, Any]:
    """The JSON-ready record of one ``segmenter.segment(volume, prompt)`` run.

    Keys: ``input`` (path, shape, spacing, phantom), ``prompt`` (as typed; for parsed queries their names
    joined), ``queries`` (text, class_name, prompt each), ``bundle`` (name, version, sha256, source,
    intended_use), ``options`` (``SegmentationOptions.to_dict()``), ``settings`` (the values used: overlap,
    threshold, sw_batch_size, roi_size, blend_mode, padding_mode), ``runtime`` (device, precision, tool and
    library versions), ``warnings``.
    """
    bundle = segmenter.bundle
    config = bundle.config
    settings = segmenter.settings
    dtype = segmenter.autocast_dtype
    return {
        "input": {
            "path": str(volume.source) if volume.source else None,
            "shape": list(volume.shape),
            "spacing": [round(s, 6) for s in volume.spacing],
            "phantom": is_phantom(volume),
        },
        "prompt": prompt if prompt is not None else ", ".join(q.name for q in queries),
        "queries": [{"text": q.text, "class_name": q.class_name, "prompt": q.prompt} for q in queries],
        "bundle": {
            "name": config.name,
            "version": config.version,
            "sha256": bundle.sha256,
            "source": str(bundle.source) if bundle.source is not None else None,
            "intended_use": config.intended_use,
        },
        "options": segmenter.options.to_dict(),
        "settings": {
            "overlap": settings.overlap,
            "threshold": settings.threshold,
            "sw_batch_size": settings.sw_batch_size,
            "roi_size": list(settings.roi_size),
            "blend_mode": settings.blend_mode,
            "padding_mode": settings.padding_mode,
        },
        "runtime": {
            "device": str(segmenter.device),
            "precision": "float32" if dtype is None else str(dtype).removeprefix("torch."),
            **_versions(),
        },
        "warnings": list(warnings),
    }
