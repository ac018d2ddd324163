"""Validation splits of a slice set when no validation volumes are given (``clipseg-bench``).

- 2+ volumes: whole volumes are held out (``round(fraction * n)``, at least one, seeded), so no patient is
  in both parts.
- 1 volume: one contiguous block of ``round(fraction * Z)`` slices (at least :data:`MIN_VAL_SLICES`, placed
  by the seed where the annotated structures appear both in the block and outside it) is held out, and
  :data:`GAP_SLICES` slices either side of it are left out of training, so no training slice is the
  neighbour of a validation slice. Slices of one patient look alike, so this flatters Dice: the split says
  so in its ``warning``.

The parts are new slice sets (:func:`subset_slice_set`), so the 3D Dice of a slice split stacks the held-out
block (``volume_dice`` scores each case of the validation set, here the block).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import SliceSet, publish_slice_folder

__all__ = [
    "GAP_SLICES",
    "MIN_VAL_SLICES",
    "VAL_FRACTION",
    "SplitError",
    "ValidationSplit",
    "holdout_split",
    "min_slices_for_split",
    "subset_slice_set",
]

logger = logging.getLogger(__name__)

#: Share of the volumes (2+) or of the slices (one volume) held out.
VAL_FRACTION = 0.2
#: Fewest slices in a held-out block.
MIN_VAL_SLICES = 2
#: Slices left out of training on each side of a held-out block.
GAP_SLICES = 2
#: The flattery warning of a slice split.
SLICE_SPLIT_WARNING = (
    "slice-level validation from one patient flatters Dice: the held-out slices come from the patient the "
    "model trained on, so these numbers overstate how it does on a new patient; pass --val-volumes "
    "IMAGE,LABEL (another patient) or 2+ --volumes for a validation by volume"
)


class SplitError(ValueError):
    """No validation split is possible; the message says how many volumes or slices are needed."""


@dataclass
class ValidationSplit:
    """A training / validation split of one slice set.

    Attributes:
        train, val: the two parts (new slice sets).
        kind: ``volumes`` or ``slices``.
        description: one sentence: what was held out, from what, with which seed.
        warning: why the numbers flatter (slice splits), else ``""``.
    """

    train: SliceSet
    val: SliceSet
    kind: str
    description: str
    warning: str = ""


def val_slices(num_slices: int, fraction: float = VAL_FRACTION) -> int:
    """Slices held out of a volume of ``num_slices``: ``round(fraction * Z)``, at least ``MIN_VAL_SLICES``."""
    return max(MIN_VAL_SLICES, int(round(fraction * num_slices)))


def min_slices_for_split(fraction: float = VAL_FRACTION, gap: int = GAP_SLICES) -> int:
    """Fewest slices of one volume that split: a held-out block, a gap each side, twice the block to train."""
    z = 1
    while z - val_slices(z, fraction) - 2 * gap < 2 * val_slices(z, fraction):
        z += 1
    return z


def _refuse(reason: str, fraction: float, gap: int) -> SplitError:
    need = min_slices_for_split(fraction, gap)
    return SplitError(
        f"no validation set was given and {reason}: a validation split needs 2 or more volumes (split by "
        f"volume) or one volume of at least {need} slices at the slice set's spacing "
        f"({MIN_VAL_SLICES}+ held out, {gap} left out either side) with the structures on both sides of "
        f"the held-out block; pass --val-volumes IMAGE,LABEL or --val-list FILE, or more --volumes"
    )


def _present_slices(slice_set: SliceSet, case: int) -> np.ndarray:
    """Case-relative slice indices holding a present sample."""
    record = slice_set.cases[case]
    first = record["first_slice"]
    rows = slice_set.samples
    mask = (rows[:, 2] == 1) & (rows[:, 0] >= first) & (rows[:, 0] < first + record["num_slices"])
    return np.unique(rows[mask, 0] - first)


def holdout_split(
    slice_set: SliceSet, fraction: float = VAL_FRACTION, seed: int = 0, gap: int = GAP_SLICES
) -> ValidationSplit:
    """Split ``slice_set`` into training and validation parts (module docstring).

    Raises:
        SplitError: too few volumes / slices, or no block position leaves structures on both sides.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng([seed, 17])
    cases = slice_set.cases
    if len(cases) >= 2:
        eligible = [i for i, c in enumerate(cases) if c["num_present"] > 0]
        if len(eligible) < 2:
            raise _refuse(f"only {len(eligible)} of {len(cases)} volumes hold a structure", fraction, gap)
        n_val = min(len(eligible) - 1, max(1, int(round(fraction * len(cases)))))
        held = sorted(int(i) for i in rng.choice(eligible, size=n_val, replace=False))
        kept = [i for i in range(len(cases)) if i not in held]
        train = subset_slice_set(slice_set, [(i, 0, cases[i]["num_slices"]) for i in kept])
        val = subset_slice_set(slice_set, [(i, 0, cases[i]["num_slices"]) for i in held])
        names = ", ".join(cases[i]["name"] for i in held)
        description = (
            f"no validation volumes given: {n_val} of {len(cases)} volumes held out by volume (seed {seed}): "
            f"{names}"
        )
        return ValidationSplit(train, val, "volumes", description)
    record = cases[0]
    total = int(record["num_slices"])
    n_val = val_slices(total, fraction)
    if total < min_slices_for_split(fraction, gap):
        raise _refuse(f"the one volume {record['name']} has {total} slices", fraction, gap)
    present = _present_slices(slice_set, 0)
    candidates = []
    for start in range(total - n_val + 1):
        end = start + n_val
        train_ranges = [(a, b) for a, b in ((0, start - gap), (end + gap, total)) if b > a]
        in_val = np.any((present >= start) & (present < end))
        in_train = any(np.any((present >= a) & (present < b)) for a, b in train_ranges)
        if in_val and in_train:
            candidates.append((start, train_ranges))
    if not candidates:
        where = f"slices {present.min()}-{present.max()}" if present.size else "no slice"
        raise _refuse(
            f"the structures of the one volume {record['name']} lie on {where} of {total}",
            fraction,
            gap,
        )
    start, train_ranges = candidates[int(rng.integers(len(candidates)))]
    train = subset_slice_set(slice_set, [(0, a, b) for a, b in train_ranges])
    val = subset_slice_set(slice_set, [(0, start, start + n_val)])
    description = (
        f"no validation volumes given, one volume: slices {start}-{start + n_val - 1} of {record['name']} "
        f"({n_val} of {total} slices, {100 * n_val / total:.0f} %, one contiguous block placed by seed "
        f"{seed}) held out; {gap} slices either side of it left out of training; the 3D Dice covers the block"
    )
    return ValidationSplit(train, val, "slices", description, SLICE_SPLIT_WARNING)


def subset_slice_set(
    slice_set: SliceSet, ranges: Sequence[tuple[int, int, int]], root: str | Path | None = None
) -> SliceSet:
    """A new slice set of some slices of ``slice_set``: its own folder, written once, then reused.

    Args:
        slice_set: the parent set.
        ranges: ``(case, z0, z1)``: slices ``z0 <= z < z1`` of parent case ``case`` (case-relative) become one
            case of the subset, in this order; a partial range's case is named ``<name>_z<z0>-<z1>``, its
            model-space ``shape`` and ``affine`` are the slab's, and ``z_range`` records ``[z0, z1]``.
        root: where the ``slices-<digest>`` folder goes (default: beside the parent's).

    Returns:
        The subset :class:`SliceSet` (samples, masks and images copied; empty samples kept as drawn).
    """
    checked = []
    for case, z0, z1 in ranges:
        count = slice_set.cases[case]["num_slices"] if 0 <= case < len(slice_set.cases) else -1
        if count < 0 or not 0 <= z0 < z1 <= count:
            raise ValueError(f"subset_slice_set: ({case}, {z0}, {z1}) is outside the cases of {slice_set}")
        checked.append((int(case), int(z0), int(z1)))
    if not checked:
        raise ValueError("subset_slice_set: no slice ranges")
    key = hashlib.sha256(json.dumps(["subset", slice_set.key, checked]).encode()).hexdigest()
    root = Path(root) if root is not None else slice_set.folder.parent
    folder = root / f"slices-{key[:16]}"
    if (folder / "metadata.json").is_file():
        existing = SliceSet(folder)
        if existing.key == key:
            return existing
    rows_of = []
    for case, z0, z1 in checked:
        first = slice_set.cases[case]["first_slice"]
        slices = slice_set.samples[:, 0]
        rows_of.append(np.flatnonzero((slices >= first + z0) & (slices < first + z1)))
    n_slices = sum(z1 - z0 for _, z0, z1 in checked)
    n_samples = sum(rows.size for rows in rows_of)
    size = slice_set.config.image_size
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".slices-") as tmp:
        staging = Path(tmp) / "set"
        staging.mkdir()
        images = np.lib.format.open_memmap(
            staging / "images.npy", mode="w+", dtype=np.uint8, shape=(n_slices, size, size)
        )
        masks = np.lib.format.open_memmap(
            staging / "masks.npy", mode="w+", dtype=np.uint8, shape=(n_samples, size, size)
        )
        samples = np.zeros((n_samples, 3), dtype=np.int32)
        records = []
        first_slice = first_sample = 0
        for (case, z0, z1), rows in zip(checked, rows_of, strict=True):
            parent = slice_set.cases[case]
            start = parent["first_slice"]
            images[first_slice : first_slice + z1 - z0] = slice_set.images[start + z0 : start + z1]
            masks[first_sample : first_sample + rows.size] = slice_set.masks[rows]
            block = slice_set.samples[rows].copy()
            block[:, 0] += first_slice - start - z0
            samples[first_sample : first_sample + rows.size] = block
            whole = z0 == 0 and z1 == parent["num_slices"]
            affine = np.asarray(parent["affine"], dtype=np.float64)
            affine[:3, 3] += affine[:3, 2] * z0
            records.append(
                {
                    **parent,
                    "name": parent["name"] if whole else f"{parent['name']}_z{z0}-{z1}",
                    "shape": [*parent["shape"][:2], z1 - z0],
                    "affine": affine.tolist(),
                    "num_present": int(block[:, 2].sum()),
                    "num_empty": int((block[:, 2] == 0).sum()),
                    "first_slice": first_slice,
                    "num_slices": z1 - z0,
                    "first_sample": first_sample,
                    "num_samples": int(rows.size),
                    "z_range": [z0, z1],
                }
            )
            first_slice += z1 - z0
            first_sample += rows.size
        images.flush()
        masks.flush()
        del images, masks
        np.save(staging / "samples.npy", samples, allow_pickle=False)
        metadata = {
            **slice_set.metadata,
            "key": key,
            "subset_of": slice_set.key,
            "num_slices": n_slices,
            "num_samples": n_samples,
            "cases": records,
        }
        publish_slice_folder(staging, folder, metadata)
    logger.info("wrote slice subset %s: %d slices, %d samples", folder, n_slices, n_samples)
    return SliceSet(folder)
