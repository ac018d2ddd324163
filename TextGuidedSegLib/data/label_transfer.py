"""Label transfer: a dataset's raw label map -> a multi-label target over the taxonomy channels.

A raw label map holds one integer per voxel in the dataset's own numbering. Training needs one binary mask per
taxonomy channel (label id ``c`` -> channel ``c - 1``) and the list of channels the dataset annotates (its
template): a channel outside the template is unknown, not background, and the loss must ignore it. Channels
may overlap: a liver tumour voxel is also a liver voxel, a kidney cyst voxel also a kidney voxel (see
:mod:`TextGuidedSegLib.data.datasets` for the mapping rules and ``resources/datasets.json`` for the data).

Where a dataset labels both kidneys (lungs, adrenal glands) as one class, :func:`split_left_right` assigns
each connected component to the patient's right or left by its world position. Affines map voxel indices to
RAS+ millimetres (the nibabel/NIfTI convention): +x points to the patient's Right, so the right kidney lies at
larger x than the left one. DICOM/ITK LPS coordinates have +x to the patient's Left; convert them before
calling (``TextGuidedSegLib.io`` does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from TextGuidedSegLib.data.datasets import (
    NUM_CHANNELS,
    SIDED_HOST,
    DatasetSpec,
    get_dataset,
    pair_of,
    structure_name,
)

logger = logging.getLogger(__name__)

#: Two components whose centres lie at least this far apart in x (mm) define the midline between them.
MIN_SEPARATION_MM = 20.0
#: A component with at least this fraction of its voxels on each side of the midline is cut at the midline.
STRADDLE_FRACTION = 0.25
#: A channel reached by at most this many raw values is filled by comparisons, by a lookup table otherwise.
_MAX_COMPARISONS = 4
#: Above this raw value, present values are found with ``np.unique`` instead of ``np.bincount``.
_BINCOUNT_LIMIT = 1 << 16

_warned: set[tuple[str, int]] = set()


@dataclass(frozen=True, eq=False)
class TransferredLabels:
    """A label map transferred into the taxonomy.

    Attributes:
        target: ``(C, I, J, K)`` uint8 in {0, 1}, ``C = 32``: channel ``c - 1`` is the mask of label id ``c``.
            Channels overlap (tumour voxels also count as their host structure). Every channel outside
            ``annotated`` is all zero.
        annotated: sorted label ids (1-based) the dataset annotates in this case: the loss is defined on
            these channels only.
        dataset: the dataset key the labels were transferred with.
        unknown_values: raw values present in the label map that the dataset does not define (dropped, and
            warned about once per dataset and value).
    """

    target: np.ndarray
    annotated: tuple[int, ...]
    dataset: str
    unknown_values: tuple[int, ...] = ()

    def mask(self, label_id: int) -> np.ndarray:
        """The ``(I, J, K)`` uint8 mask of one label id (a view into :attr:`target`)."""
        if not 1 <= label_id <= self.target.shape[0]:
            raise ValueError(f"label_id must be in 1..{self.target.shape[0]}, got {label_id}")
        return self.target[label_id - 1]


def _as_label_array(label_map: np.ndarray) -> np.ndarray:
    """Check a raw label map; return it as non-negative integers in the smallest unsigned dtype that fits.

    Small dtypes make the per-value comparisons of :func:`_fill_mask` several times faster; a uint8 input is
    returned without a copy.
    """
    labels = np.asarray(label_map)
    if labels.ndim != 3:
        raise ValueError(f"label_map must be a 3D (I, J, K) array, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.view(np.uint8)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or not np.array_equal(np.rint(labels), labels):
            raise ValueError("label_map holds non-integer values; pass the raw label values (integers)")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label_map must hold integers, got dtype {labels.dtype}")
    if labels.size == 0:
        return labels.astype(np.uint8)
    low, high = labels.min(), labels.max()
    if low < 0:
        raise ValueError(f"label_map holds negative values (min {low}); raw label values are >= 0")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if high <= np.iinfo(dtype).max:
            return labels if labels.dtype == dtype else labels.astype(dtype)
    return labels.astype(np.int64)


def _fill_mask(labels: np.ndarray, values: list[int], out: np.ndarray) -> np.ndarray:
    """Set ``out`` (``(I, J, K)``, uint8 or bool) to 1 where ``labels`` holds one of ``values``; return it.

    A few values are compared one by one (a vectorised comparison of a uint8 map is much faster than a
    gather); many values go through a lookup table with :func:`numpy.take`.
    """
    flags = out.view(bool)
    if len(values) <= _MAX_COMPARISONS:
        np.equal(labels, values[0], out=flags)
        for value in values[1:]:
            flags |= labels == value
        return out
    lookup = np.zeros(max(int(labels.max()), *values) + 1, dtype=out.dtype)
    lookup[values] = 1
    np.take(lookup, labels, out=out, mode="clip")  # every label indexes the table: no clipping happens
    return out


def _present_values(labels: np.ndarray) -> np.ndarray:
    """Sorted non-zero values present in ``labels``."""
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    top = int(labels.max())
    if top < _BINCOUNT_LIMIT:
        values = np.flatnonzero(np.bincount(labels.ravel(), minlength=top + 1))
    else:
        values = np.unique(labels)
    return values[values > 0]


def split_left_right(
    mask: np.ndarray, affine: np.ndarray, min_separation_mm: float = MIN_SEPARATION_MM
) -> tuple[np.ndarray, np.ndarray]:
    """Split a mask of a paired structure (both kidneys as one class) into the patient's right and left.

    The midline is the x halfway between the centres of the two largest connected components (26-connected)
    when they lie at least ``min_separation_mm`` apart in x; otherwise (one kidney after nephrectomy, or two
    fragments of one organ) it is the x of the grid's centre, which is close to the patient's midline in a
    CT field of view. Each component goes to the side holding most of its voxels; a component with at least
    ``STRADDLE_FRACTION`` of its voxels on each side (a horseshoe kidney) is cut at the midline.

    Args:
        mask: ``(I, J, K)`` bool or {0, 1} mask of the structure, both sides.
        affine: ``(4, 4)`` voxel-to-RAS+ matrix (mm; +x = patient's Right).
        min_separation_mm: distance in x above which the two largest components are taken as the two sides.

    Returns:
        ``(right, left)``: two ``(I, J, K)`` bool masks, disjoint, whose union is ``mask``.
    """
    mask = np.asarray(mask, dtype=bool)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be a (4, 4) voxel-to-RAS matrix, got shape {affine.shape}")
    right = np.zeros(mask.shape, dtype=bool)
    left = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return right, left
    # work inside the mask's bounding box: labelling the whole grid costs far more
    occupied = [np.flatnonzero(mask.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
    box = tuple(slice(int(along[0]), int(along[-1]) + 1) for along in occupied)
    origin = np.array([b.start for b in box], dtype=np.float64)
    full_shape = mask.shape
    mask = mask[box]
    index = np.nonzero(mask)
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    component = components[index]
    # world x (RAS+, mm) of each voxel of the mask
    x = affine[0, 3] + sum(affine[0, axis] * (index[axis] + origin[axis]) for axis in range(3))
    sizes = np.bincount(component, minlength=count + 1)[1:]
    centres = np.bincount(component, weights=x, minlength=count + 1)[1:] / np.maximum(sizes, 1)
    order = np.argsort(-sizes, kind="stable")
    if count >= 2 and abs(centres[order[0]] - centres[order[1]]) >= min_separation_mm:
        midline = 0.5 * (centres[order[0]] + centres[order[1]])
    else:
        centre = (np.asarray(full_shape, dtype=np.float64) - 1.0) / 2.0
        midline = float(affine[0, :3] @ centre + affine[0, 3])
        logger.debug(
            "split_left_right: %d component(s), midline from the grid centre (x = %.1f mm)", count, midline
        )
    on_right = x > midline
    fraction_right = np.bincount(component, weights=on_right, minlength=count + 1)[1:] / np.maximum(sizes, 1)
    component_right = np.concatenate([[False], fraction_right >= 0.5])
    straddles = np.concatenate(
        [[False], (fraction_right >= STRADDLE_FRACTION) & (fraction_right <= 1.0 - STRADDLE_FRACTION)]
    )
    voxel_right = np.where(straddles[component], on_right, component_right[component])
    right[box][index] = voxel_right
    left[box][index] = ~voxel_right
    return right, left


def transfer_labels(
    label_map: np.ndarray,
    dataset: str | DatasetSpec,
    affine: np.ndarray | None = None,
    case: str | None = None,
) -> TransferredLabels:
    """Transfer a raw label map of ``dataset`` into the 32 taxonomy channels.

    Args:
        label_map: ``(I, J, K)`` integer raw label values (0 = background; integral floats are accepted).
        dataset: a dataset key (``"btcv"``, ``"kits"``, ``"msd_task03"``, ...; see
            :func:`~TextGuidedSegLib.data.datasets.known_datasets`) or a :class:`DatasetSpec` (e.g. from
            :func:`~TextGuidedSegLib.data.datasets.dataset_from_class_map`).
        affine: ``(4, 4)`` voxel-to-RAS+ matrix of ``label_map``; required for datasets that label both
            sides of a paired structure as one class (KiTS, AbdomenCT-1K, CT-ORG, WORD's adrenal glands).
        case: the case name (``label0061``); selects a dataset's ``later_cases`` template (BTCV ``01_2``).

    Returns:
        The :class:`TransferredLabels`: ``target`` ``(32, I, J, K)`` uint8 and the annotated label ids.

    Raises:
        UnknownDatasetError: ``dataset`` is not a known key (the message lists the known ones).
        ValueError: ``label_map`` is not a 3D array of non-negative integers, or ``affine`` is missing where a
            left/right split needs it.

    Example::

        result = transfer_labels(raw, "kits", affine)
        kidney_right = result.mask(2)  # kidney, tumour and cyst voxels on the patient's right
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset)
    labels = _as_label_array(label_map)
    if spec.pairs and affine is None:
        raise ValueError(
            f"dataset {spec.key!r} labels both sides of {', '.join(spec.pairs)} as one class; pass the label "
            "map's (4, 4) voxel-to-RAS affine so they can be split into right and left"
        )
    present = _present_values(labels)
    unknown = tuple(int(v) for v in present if int(v) not in spec.table and v > spec.num_classes)
    for value in unknown:
        if (spec.key, value) not in _warned:
            _warned.add((spec.key, value))
            logger.warning(
                "dataset %r has no mapping for raw label value %d: its voxels are dropped (warned once)",
                spec.key,
                value,
            )
    channel_values: dict[int, list[int]] = {}
    pair_values: dict[str, list[int]] = {}
    for value, targets in spec.table.items():
        for target in targets:
            if isinstance(target, str):
                pair_values.setdefault(target, []).append(value)
            else:
                channel_values.setdefault(target, []).append(value)

    target = np.zeros((NUM_CHANNELS, *labels.shape), dtype=np.uint8)
    for label_id, values in sorted(channel_values.items()):
        _fill_mask(labels, values, target[label_id - 1])
    # pairs labelled as one class first, then hosts joining sides labelled apart ("+kidney")
    voxels = np.zeros(labels.shape, dtype=bool)
    for pair_target, values in sorted(pair_values.items(), key=lambda item: item[0].startswith(SIDED_HOST)):
        _fill_mask(labels, values, voxels)
        right_id, left_id = spec.pairs[pair_of(pair_target)]
        if pair_target.startswith(SIDED_HOST):
            whole = voxels | target[right_id - 1].view(bool) | target[left_id - 1].view(bool)
            right, left = split_left_right(whole, affine)  # type: ignore[arg-type]
            right &= voxels
            left &= voxels
        else:
            right, left = split_left_right(voxels, affine)  # type: ignore[arg-type]
        target[right_id - 1] |= right
        target[left_id - 1] |= left
        logger.debug(
            "%s: %s -> %s (%d voxels) and %s (%d voxels)",
            spec.key,
            pair_target,
            structure_name(right_id),
            int(right.sum()),
            structure_name(left_id),
            int(left.sum()),
        )
    annotated = set(spec.annotated)
    annotated.update(spec.channels_of([int(v) for v in present if int(v) in spec.optional]))
    subset = spec.annotated_in(case)
    if subset is not None:  # a later case annotates fewer structures: the others are unknown, not absent
        for label_id in annotated - subset:
            target[label_id - 1] = 0
        annotated &= subset
    return TransferredLabels(
        target=target, annotated=tuple(sorted(annotated)), dataset=spec.key, unknown_values=unknown
    )
