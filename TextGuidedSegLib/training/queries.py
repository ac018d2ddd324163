"""Which structures a crop is queried for, under partial labels.

A dataset annotates some structures only (CHAOS: the liver). A structure it does not annotate is *unknown* in
its images, not absent, so a query-mode model is never asked about it there: each crop's queries are drawn
from the structures its dataset annotates (within the training subset) and nothing else.

- *positives*: annotated structures with at least one voxel in the crop;
- *negatives*: annotated structures with no voxel in the crop (the model must answer "empty").

Rule (:func:`sample_queries`), with ``Q = queries_per_sample``: ``n_neg = min(#negatives, max(round(Q *
negative_fraction), Q - #positives))`` negatives and ``min(#positives, Q - n_neg)`` positives, each drawn
without replacement; positives come first. When a dataset annotates fewer than ``Q`` structures the remaining
slots are padding: ``mask`` is False there and the loss ignores them (the trainer also trims the query axis
to the largest number of valid queries in the batch, so padding costs no compute unless other crops of the
batch need the slots).
"""

from __future__ import annotations

import numpy as np

__all__ = ["sample_queries"]


def sample_queries(
    present: np.ndarray,
    annotated: np.ndarray,
    num_queries: int,
    negative_fraction: float,
    rng: np.random.RandomState | np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the queries of one crop (rule in the module docstring).

    Args:
        present: ``(S,)`` bool, structure ``s`` has voxels in the crop.
        annotated: ``(S,)`` bool, the crop's dataset annotates structure ``s``. Structures present but not
            annotated cannot happen with transferred labels; they are never queried either way.
        num_queries: ``Q``, the query slots.
        negative_fraction: share of the slots reserved for negatives when there are enough positives.
        rng: the random state (MONAI transforms pass their ``self.R``).

    Returns:
        ``(class_indices (Q,) int64, mask (Q,) bool)``: channel indices into the subset; ``mask`` is True for
        real queries (first) and False for padding slots (index 0).
    """
    present = np.asarray(present, dtype=bool)
    annotated = np.asarray(annotated, dtype=bool)
    if present.shape != annotated.shape or present.ndim != 1:
        raise ValueError(
            f"present and annotated must be (S,) of one shape, got {present.shape}, {annotated.shape}"
        )
    positives = np.flatnonzero(present & annotated)
    negatives = np.flatnonzero(~present & annotated)
    n_neg = min(
        len(negatives), max(int(round(num_queries * negative_fraction)), num_queries - len(positives))
    )
    n_pos = min(len(positives), num_queries - n_neg)
    chosen = np.concatenate(
        [
            rng.permutation(positives)[:n_pos] if n_pos else np.zeros(0, np.int64),
            rng.permutation(negatives)[:n_neg] if n_neg else np.zeros(0, np.int64),
        ]
    ).astype(np.int64)
    indices = np.zeros(num_queries, dtype=np.int64)
    mask = np.zeros(num_queries, dtype=bool)
    indices[: len(chosen)] = chosen
    mask[: len(chosen)] = True
    return indices, mask
