"""The input guard: is this volume a CT in Hounsfield units that the ``Segmenter`` can run on?

The ``Segmenter`` calls :func:`check_volume` before any resampling or inference (``prepare`` and ``segment``),
so the CLI, the server and Slicer share it. Three outcomes:

- **proceed**: nothing to say;
- **proceed with warnings**: they go into ``result.provenance["warnings"]`` (the sidecar JSON,
  ``result.warnings``, the Slicer results table);
- **refuse**: :class:`ImplausibleInputError` (a ``ValueError``) naming the file, every reason and, where it
  applies, the override (``force=True``, ``--force``, the Slicer "Run on implausible input" checkbox); with
  ``force`` those reasons become warnings and the run proceeds. Refusals marked *hard* below have no override:
  there is nothing a model could segment.

What is checked (thresholds chosen from the shared real CTs: TotalSegmentator's abdominal CTs put 36 % of
voxels at or below -500 HU, air at -991/-986 HU and the median of the other voxels at -25/+4 HU; the 3-slice
GE CT 55 %, -954 and +4 HU; the phantoms 47-56 %, -999 and +31/+52 HU):

1. Non-finite voxels (NaN, +-Inf) are counted and replaced by :data:`NON_FINITE_FILL` (-1024 HU, air) in a
   copy (the input is never modified), with a warning. Refused when more than :data:`NON_FINITE_BODY_LIMIT`
   (1 %) of the body's bounding box (voxels above -500 HU) is non-finite; a hard refusal when none is finite.
2. Hard refusals: a constant volume, a volume of air only (no voxel above :data:`AIR_LIMIT`), an affine that
   is not finite or not invertible (a voxel size under 1e-6 mm).
3. DICOM input whose Modality tag (0008,0060) is not CT: refused (``Volume.modality``).
4. Air: a CT has air near -1000 HU (around the body, lungs, bowel gas). When fewer than
   :data:`MIN_AIR_FRACTION` (0.5 %) of the voxels lie in [-1100, -900] HU:
   - the volume read as HU - 1024 would be a plausible CT: refused as "shifted by +1024: was the rescale
     intercept applied?" (a common DICOM -> NIfTI mistake, often stored as uint16);
   - values above 32767 that, read as negative 16-bit numbers, give air: refused as wrapped integers;
   - fewer than 0.1 % negative voxels: refused as MR or another non-CT image (an MR has no negative values;
     its background is near 0, where CT air is -1000);
   - otherwise, when the non-air voxels look like soft tissue, a warning (a CT cropped inside the body).
5. Soft tissue: the median of the voxels above -500 HU must lie in :data:`BODY_MEDIAN_RANGE` (-200..250 HU:
   a mix of fat near -100 and soft tissue near 40 plus some bone) and at least
   :data:`MIN_SOFT_TISSUE_FRACTION` (15 %) of them in -30..150 HU (real CTs: 47-58 %); else refused. Air
   away from -1000 HU (outside -1100..-800, e.g. a miscalibrated scanner) is a warning.
6. Ranges: values above 32767 or below -32768 are beyond any CT scale (a wrong rescale slope, an overflow):
   refused. More than 0.1 % of voxels at an integer type's maximum (32767, 65535, ...) is a warning
   (clipped or overflowed on conversion).
7. Geometry (warnings): slices more than twice the model's spacing apart and more than 4 times the in-plane
   spacing (0.7 x 0.7 x 5 mm at 1.5 mm); voxel axes more than :data:`OBLIQUE_DEGREES` (15 degrees) off the
   patient axes (the model sees the volume as stored); an extent under a quarter of one model window.
8. Memory: :func:`estimate_memory` (model grid from the volume's extent and the bundle's spacing and window,
   channels, test-time flips) against the free memory of the device; refused above it, with both figures.

Statistics come from at most :data:`SAMPLE_VOXELS` voxels (a regular stride over the array), so the check
costs well under a second on a whole-body CT.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from TextGuidedSegLib.io import Volume

logger = logging.getLogger(__name__)

#: The value non-finite voxels are replaced by (HU): air, as most scanners pad outside the field of view.
NON_FINITE_FILL = -1024.0
#: Refuse when more than this fraction of the body's bounding box is non-finite.
NON_FINITE_BODY_LIMIT = 0.01
#: Voxels at or below this (HU) are air; above it, body (fat, soft tissue, bone).
AIR_LIMIT = -500.0
#: Where air must lie (HU) to count as CT air, and the fraction of voxels it must hold.
AIR_RANGE = (-1100.0, -900.0)
MIN_AIR_FRACTION = 0.005
#: Air outside this range (median of the voxels in [-1500, -500] HU) is a calibration warning.
AIR_LEVEL_RANGE = (-1100.0, -800.0)
#: The median of the body voxels (HU) of a CT.
BODY_MEDIAN_RANGE = (-200.0, 250.0)
#: Soft tissue (HU) and the fraction of the body voxels it must hold in a CT (real CTs: 47-58 %).
SOFT_TISSUE_RANGE = (-30.0, 150.0)
MIN_SOFT_TISSUE_FRACTION = 0.15
#: Below this fraction of negative voxels, an image without air is not a CT (MR, PET, a photograph).
MIN_NEGATIVE_FRACTION = 0.001
#: The common offset of unsigned CT storage (HU + 1024).
SHIFT_OFFSET = 1024.0
#: Values beyond any CT scale (the extended scale ends at 32767).
CT_SCALE = (-32768.0, 32767.0)
#: Integer type maxima: more than SATURATED_FRACTION of the voxels at one of them is a warning.
INTEGER_MAXIMA = (127.0, 255.0, 4095.0, 32767.0, 65535.0, 2147483647.0)
SATURATED_FRACTION = 0.001
#: Voxel axes further than this from the patient axes are a warning.
OBLIQUE_DEGREES = 15.0
#: How many voxels the intensity statistics are computed from.
SAMPLE_VOXELS = 1_000_000
#: Fixed memory on top of the arrays (the model, one window batch's activations), bytes.
MEMORY_OVERHEAD = 1 << 30
#: An ``roi_size`` side at least this long means "the whole volume in one window" (CLIPSeg bundles'
#: ``WHOLE_VOLUME_ROI``): no padding to the window and no small-volume warning.
WHOLE_VOLUME_SIDE = 4096

_FORCE_HINT = (
    "If you are sure it is a CT in Hounsfield units, run anyway with --force "
    "(SegmentationOptions(force=True), the 'Run on implausible input' checkbox in Slicer)"
)


class ImplausibleInputError(ValueError):
    """The input is not a CT in Hounsfield units the model can run on; the message names the file, the
    reasons and, unless ``hard``, the override."""

    def __init__(self, message: str, reasons: Sequence[str] = (), hard: bool = False) -> None:
        super().__init__(message)
        self.reasons = list(reasons)
        self.hard = hard


@dataclass
class InputCheck:
    """What :func:`check_volume` found.

    Attributes:
        volume: the volume to run on: the input itself, or a copy with non-finite voxels replaced.
        warnings: messages to carry into the result (each names the file).
        non_finite: how many voxels were NaN or infinite.
        statistics: the figures the decision was made from (HU): air fraction, air level, body median, ...
    """

    volume: Volume
    warnings: list[str] = field(default_factory=list)
    non_finite: int = 0
    statistics: dict[str, float] = field(default_factory=dict)


def _name(volume: Volume) -> str:
    return volume.source or "the input volume"


def _sample(array: np.ndarray) -> np.ndarray:
    """At most ``SAMPLE_VOXELS`` voxels of ``array`` (flat, a regular stride), float32."""
    flat = array.reshape(-1)
    step = max(1, flat.size // SAMPLE_VOXELS)
    return np.asarray(flat[::step], dtype=np.float32)


def _fraction(mask: np.ndarray) -> float:
    return float(np.count_nonzero(mask)) / max(mask.size, 1)


def _looks_like_ct(values: np.ndarray) -> bool:
    """True when ``values`` (HU) have CT air and a CT body median."""
    if _fraction((values >= AIR_RANGE[0]) & (values <= AIR_RANGE[1])) < MIN_AIR_FRACTION:
        return False
    body = values[values > AIR_LIMIT]
    return (
        body.size > 0
        and BODY_MEDIAN_RANGE[0] <= float(np.median(body)) <= BODY_MEDIAN_RANGE[1]
        and _soft_tissue(body) >= MIN_SOFT_TISSUE_FRACTION
    )


def _soft_tissue(body: np.ndarray) -> float:
    """The fraction of ``body`` (HU) in SOFT_TISSUE_RANGE."""
    return _fraction((body >= SOFT_TISSUE_RANGE[0]) & (body <= SOFT_TISSUE_RANGE[1]))


def check_geometry(volume: Volume) -> None:
    """Refuse (hard) a volume without voxels or with a non-finite or non-invertible affine."""
    name = _name(volume)
    if volume.array.size == 0:
        raise ImplausibleInputError(f"{name}: the volume has no voxels (shape {volume.shape})", hard=True)
    affine = volume.affine
    if not np.isfinite(affine).all():
        raise ImplausibleInputError(f"{name}: the voxel-to-world affine has non-finite entries", hard=True)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if min(spacing) < 1e-6 or abs(np.linalg.det(affine[:3, :3])) < 1e-9 * float(np.prod(spacing)):
        raise ImplausibleInputError(
            f"{name}: the voxel-to-world affine is not invertible (voxel size "
            f"{' x '.join(f'{s:g}' for s in spacing)} mm, determinant {np.linalg.det(affine[:3, :3]):.3g}); "
            "fix the header's spacing and direction",
            hard=True,
        )


def _replace_non_finite(volume: Volume) -> tuple[Volume, int, float]:
    """A copy without NaN/Inf (NON_FINITE_FILL instead), their count and their fraction of the body box."""
    finite = np.isfinite(volume.array)
    count = int(finite.size - np.count_nonzero(finite))
    if count == 0:
        return volume, 0, 0.0
    if count == finite.size:
        raise ImplausibleInputError(
            f"{_name(volume)}: no voxel is a finite number (all NaN or Inf)", hard=True
        )
    array = np.where(finite, volume.array, np.float32(NON_FINITE_FILL)).astype(np.float32, copy=False)
    cleaned = dataclasses.replace(volume, array=array)
    body = array > AIR_LIMIT
    if not body.any():
        return cleaned, count, 1.0
    box = tuple(
        slice(int(np.argmax(a)), len(a) - int(np.argmax(a[::-1])))
        for a in (body.any(axis=(1, 2)), body.any(axis=(0, 2)), body.any(axis=(0, 1)))
    )
    in_box = finite[box]
    fraction = float(in_box.size - np.count_nonzero(in_box)) / in_box.size
    return cleaned, count, fraction


def _intensity_findings(values: np.ndarray, name: str) -> tuple[list[str], list[str], dict[str, float]]:
    """(refusal reasons, warnings, statistics) from a sample of HU values."""
    reasons: list[str] = []
    warnings: list[str] = []
    air = _fraction((values >= AIR_RANGE[0]) & (values <= AIR_RANGE[1]))
    body = values[values > AIR_LIMIT]
    stats = {
        "min": float(values.min()),
        "max": float(values.max()),
        "air_fraction": round(air, 4),
        "body_median": float(np.median(body)) if body.size else float("nan"),
        "soft_tissue_fraction": round(_soft_tissue(body), 4) if body.size else 0.0,
    }
    low, high = stats["min"], stats["max"]
    if high > CT_SCALE[1] or low < CT_SCALE[0]:
        wrapped = values >= 32768.0
        unsigned = low >= 0 and high <= 65535 and float(np.median(values[wrapped])) > 61000
        if unsigned and _looks_like_ct(np.where(wrapped, values - 65536.0, values)):
            reasons.append(
                f"values from {low:g} to {high:g}: negative HU stored as unsigned 16-bit numbers (wrapped "
                "integers, e.g. -1000 HU read as 64536); convert the file as signed int16"
            )
        else:
            reasons.append(
                f"values from {low:g} to {high:g} are beyond any CT scale ({CT_SCALE[0]:g}..{CT_SCALE[1]:g} "
                "HU): a wrong rescale slope or intercept, or an integer overflow"
            )
        return reasons, warnings, stats
    if air < MIN_AIR_FRACTION:
        if _looks_like_ct(values - SHIFT_OFFSET):
            reasons.append(
                f"intensities look shifted by +{SHIFT_OFFSET:g}: no air near -1000 HU, but the values minus "
                f"{SHIFT_OFFSET:g} look like a CT (values {low:g} to {high:g}); was the rescale intercept "
                "applied? Re-export the CT in Hounsfield units (or is it not a CT at all, e.g. an MR?)"
            )
        elif _fraction(values < 0) < MIN_NEGATIVE_FRACTION:
            reasons.append(
                f"no air near -1000 HU and no negative values (values {low:g} to {high:g}): this looks like "
                "an MR or another non-CT image; the models are trained on CT in Hounsfield units"
            )
        elif body.size and BODY_MEDIAN_RANGE[0] <= stats["body_median"] <= BODY_MEDIAN_RANGE[1]:
            warnings.append(
                f"{name}: no air near -1000 HU in the volume (cropped inside the body?); the models were "
                "trained on whole CT fields of view: check the result"
            )
        else:
            reasons.append(
                f"no air near -1000 HU and the median of the voxels above {AIR_LIMIT:g} is "
                f"{stats['body_median']:.0f}, not soft tissue (-200..250 HU): not a CT in Hounsfield units"
            )
        return reasons, warnings, stats
    if not body.size:
        return reasons, warnings, stats
    if not BODY_MEDIAN_RANGE[0] <= stats["body_median"] <= BODY_MEDIAN_RANGE[1]:
        reasons.append(
            f"the median of the voxels above {AIR_LIMIT:g} HU is {stats['body_median']:.0f} HU, not fat and "
            f"soft tissue ({BODY_MEDIAN_RANGE[0]:g}..{BODY_MEDIAN_RANGE[1]:g} HU): not a CT in Hounsfield "
            "units (a wrong rescale slope?)"
        )
    elif stats["soft_tissue_fraction"] < MIN_SOFT_TISSUE_FRACTION:
        reasons.append(
            f"only {100 * stats['soft_tissue_fraction']:.1f} % of the voxels above {AIR_LIMIT:g} HU are soft "
            f"tissue ({SOFT_TISSUE_RANGE[0]:g}..{SOFT_TISSUE_RANGE[1]:g} HU; a CT has more than "
            f"{100 * MIN_SOFT_TISSUE_FRACTION:g} %): not a CT in Hounsfield units"
        )
    air_values = values[(values >= -1500.0) & (values <= AIR_LIMIT)]
    stats["air_level"] = float(np.median(air_values))
    if not AIR_LEVEL_RANGE[0] <= stats["air_level"] <= AIR_LEVEL_RANGE[1]:
        warnings.append(
            f"{name}: air lies at {stats['air_level']:.0f} HU, expected near -1000: the intensity "
            "calibration may be off; check the result"
        )
    for maximum in INTEGER_MAXIMA:
        if high == maximum and _fraction(values == maximum) > SATURATED_FRACTION:
            warnings.append(
                f"{name}: {100 * _fraction(values == maximum):.1f} % of the voxels sit at {maximum:g}, an "
                "integer type's maximum: values may have been clipped or overflowed on conversion"
            )
    return reasons, warnings, stats


def _geometry_warnings(volume: Volume, model_spacing: Sequence[float], roi_size: Sequence[int]) -> list[str]:
    name = _name(volume)
    warnings = []
    spacing = np.asarray(volume.spacing)
    coarsest = float(spacing.max())
    if coarsest > 2 * max(model_spacing) and coarsest > 4 * float(spacing.min()):
        warnings.append(
            f"{name}: voxels are {' x '.join(f'{s:g}' for s in spacing)} mm, the model works at "
            f"{' x '.join(f'{s:g}' for s in model_spacing)} mm: structures thinner than {coarsest:g} mm "
            "between slices are interpolated; check the result"
        )
    directions = volume.affine[:3, :3] / spacing
    angle = math.degrees(math.acos(min(1.0, float(np.abs(directions).max(axis=0).min()))))
    if angle > OBLIQUE_DEGREES:
        warnings.append(
            f"{name}: the voxel axes are {angle:.0f} degrees oblique to the patient axes; the model sees the "
            "volume as stored (rotated): check the result"
        )
    extent = np.asarray(volume.shape) * spacing
    window = float(min(np.asarray(roi_size) * np.asarray(model_spacing)))
    if min(roi_size) < WHOLE_VOLUME_SIDE and float(extent.min()) < window / 4:
        warnings.append(
            f"{name}: the volume covers only {float(extent.min()):g} mm along one axis, under a quarter of "
            f"one model window ({window:g} mm): the model sees mostly padding; check the result"
        )
    return warnings


def check_volume(
    volume: Volume,
    *,
    force: bool = False,
    model_spacing: Sequence[float] = (1.5, 1.5, 1.5),
    roi_size: Sequence[int] = (96, 96, 96),
) -> InputCheck:
    """Check that ``volume`` (``(I, J, K)`` values with its affine) is a CT in HU; see the module docstring.

    Returns an :class:`InputCheck` (the volume to run on, warnings); raises :class:`ImplausibleInputError`
    naming the file and the reasons (with ``force``, only hard refusals raise; the others become warnings).
    """
    name = _name(volume)
    check_geometry(volume)
    cleaned, non_finite, box_fraction = _replace_non_finite(volume)
    warnings: list[str] = []
    reasons: list[str] = []
    if non_finite:
        warnings.append(
            f"{name}: {non_finite} voxels ({100 * non_finite / volume.array.size:.3g} %) were NaN or "
            f"infinite and were read as {NON_FINITE_FILL:g} HU (air)"
        )
        if box_fraction > NON_FINITE_BODY_LIMIT:
            reasons.append(
                f"{100 * box_fraction:.1f} % of the body's bounding box is NaN or infinite (more than "
                f"{100 * NON_FINITE_BODY_LIMIT:g} % is refused)"
            )
    values = _sample(cleaned.array)
    low, high = float(values.min()), float(values.max())
    if low == high and float(cleaned.array.min()) == float(cleaned.array.max()):
        raise ImplausibleInputError(
            f"{name}: the volume is constant (every voxel is {low:g}): there is nothing to segment", hard=True
        )
    if float(np.max(values)) <= AIR_LIMIT and float(cleaned.array.max()) <= AIR_LIMIT:
        raise ImplausibleInputError(
            f"{name}: the volume holds air only (every voxel is at or below {AIR_LIMIT:g} HU, the highest "
            f"{float(cleaned.array.max()):g}): there is no body to segment",
            hard=True,
        )
    modality = volume.modality
    if modality and modality.upper() != "CT":
        reasons.append(f"its DICOM Modality is {modality}, not CT")
    found, intensity_warnings, statistics = _intensity_findings(values, name)
    reasons += found
    warnings += intensity_warnings
    warnings += _geometry_warnings(cleaned, model_spacing, roi_size)
    statistics["non_finite"] = float(non_finite)
    if reasons and not force:
        raise ImplausibleInputError(
            f"{name} does not look like a CT in Hounsfield units: "
            + "; ".join(reasons)
            + f". {_FORCE_HINT}.",
            reasons,
        )
    if reasons:
        warnings = [f"{name}: run with force although " + reason for reason in reasons] + warnings
    for warning in warnings:
        logger.warning("%s", warning)
    return InputCheck(cleaned, warnings, non_finite, statistics)


def estimate_memory(
    volume: Volume,
    model_spacing: Sequence[float],
    roi_size: Sequence[int],
    channels: int,
    passes: int = 1,
) -> int:
    """Bytes a run is expected to hold at its peak: model-grid image copies, the sliding-window output of
    ``channels`` float32 channels (``passes`` of them with test-time flips) and ``MEMORY_OVERHEAD``.

    The model grid is the volume's extent over ``model_spacing``, padded to ``roi_size``: its size depends on
    the millimetres covered, not on the number of input voxels.
    """
    extent = np.asarray(volume.shape) * np.asarray(volume.spacing)
    axes = nib.io_orientation(volume.affine)[:, 0].astype(int)  # the RAS axis each voxel axis is closest to
    roi = [0 if int(r) >= WHOLE_VOLUME_SIDE else int(r) for r in roi_size]  # whole-volume models: no padding
    grid = [max(math.ceil(extent[i] / float(model_spacing[axes[i]])), roi[axes[i]]) for i in range(3)]
    voxels = float(np.prod(grid, dtype=np.float64))
    per_voxel = 16 + 4 * channels * (passes + (2 if passes > 1 else 0))
    return int(voxels * per_voxel + 5 * volume.array.size + MEMORY_OVERHEAD)


def available_memory(device: str = "cpu") -> int | None:
    """Free memory in bytes on ``device`` ("cpu", "cuda", "cuda:N"); None when it cannot be read."""
    if device.startswith("cuda"):
        try:
            import torch

            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, ValueError, AssertionError):
            return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(
    volume: Volume,
    *,
    model_spacing: Sequence[float],
    roi_size: Sequence[int],
    channels: int,
    passes: int = 1,
    device: str = "cpu",
    force: bool = False,
) -> list[str]:
    """Refuse a run whose :func:`estimate_memory` exceeds the device's free memory; with ``force`` it is a
    warning (returned). Nothing is said when the free memory cannot be read."""
    needed = estimate_memory(volume, model_spacing, roi_size, channels, passes)
    free = available_memory(device)
    if free is None or needed <= free:
        return []
    gib = 1 << 30
    voxels = " x ".join(str(s) for s in volume.shape)
    message = (
        f"{_name(volume)}: segmenting it would need about {needed / gib:.1f} GiB on {device} "
        f"({voxels} voxels of {' x '.join(f'{s:g}' for s in volume.spacing)} mm at the model's "
        f"{' x '.join(f'{s:g}' for s in model_spacing)} mm, {channels} channel(s)"
        f"{f', {passes} passes' if passes > 1 else ''}), and {free / gib:.1f} GiB are free"
    )
    if not force:
        raise ImplausibleInputError(
            message + "; crop the volume to the region you need, choose a coarser bundle, or run anyway with "
            "--force (SegmentationOptions(force=True))",
            [message],
        )
    logger.warning("%s (forced)", message)
    return [message + " (run with force)"]
