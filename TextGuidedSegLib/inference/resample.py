"""Model-space maps back onto the input grid without ever holding a full-size float map per structure.

The model grid is the input grid reoriented (a signed axis permutation) and rescaled (MONAI ``Orientation``
and ``Spacing`` keep the direction cosines), so the input-voxel -> model-voxel transform is axis-aligned and
trilinear interpolation is separable: three 1-D linear passes along the model axes give, to float32 rounding,
what MONAI's ``SpatialResample`` (``align_corners=False``, ``padding_mode="border"``) gives through a full
``(3, I, J, K)`` sampling grid (``Testing/test_resample.py`` compares both). A transform that is not
axis-aligned (never produced by ``prepare``) falls back to MONAI, one structure at a time.

The label map (``InputGridResampler.labels``) is decided in model space wherever that is exact - an input
voxel whose 8 interpolation neighbours all carry the same model-space label takes that label, because a
convex combination keeps every order and threshold side its corners agree on - and only boundary voxels are
interpolated, tile by tile, for the queries that reach the threshold near them.

:class:`ProbabilityMaps` is the lazy ``(Q, I, J, K)`` view on the input grid that results hand out: each map
is computed when indexed, so writing them one after the other holds one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from TextGuidedSegLib.inference.geometry import to_original_space
from TextGuidedSegLib.io import Volume

Box = tuple[slice, slice, slice]

_AXIS_TOLERANCE = 1e-6
_TILE = 32  # model voxels per tile side when labelling boundary voxels


class InputGridResampler:
    """Resample ``(X, Y, Z)`` maps of a cropped model grid onto an input grid, bilinearly (MONAI's geometry).

    Args:
        model_affine: ``(4, 4)`` voxel-to-RAS affine of the whole model grid.
        grid_shape: ``(X, Y, Z)`` of the whole model grid.
        crop: where the maps lie in that grid; values outside it are 0.
        volume: the input volume (its ``affine`` and ``shape`` are the target grid).
    """

    def __init__(
        self, model_affine: np.ndarray, grid_shape: Sequence[int], crop: Box, volume: Volume
    ) -> None:
        self.model_affine = np.asarray(model_affine, dtype=np.float64)
        self.grid_shape = tuple(int(n) for n in grid_shape)
        self.crop = crop
        self.volume = volume
        self.shape = tuple(int(n) for n in volume.shape)
        xform = np.linalg.solve(self.model_affine, np.asarray(volume.affine, dtype=np.float64))
        self._axes = _axis_map(xform)  # per input axis d: (model axis, scale, offset), or None
        if self._axes is not None:  # shrinking axes first keeps the intermediates small
            growth = [self.shape[d] / self.grid_shape[axis] for d, (axis, _, _) in enumerate(self._axes)]
            self._order = [int(d) for d in np.argsort(growth, kind="stable")]

    @property
    def separable(self) -> bool:
        """True when the transform is axis-aligned (always, for grids made by ``Segmenter.prepare``)."""
        return self._axes is not None

    def uncrop(self, values: torch.Tensor) -> torch.Tensor:
        """``(x, y, z)`` on the crop -> ``(X, Y, Z)`` float32 on the whole model grid, 0 outside."""
        return uncrop(values.detach().to("cpu", torch.float32), self.grid_shape, self.crop)

    def labels(self, probabilities: torch.Tensor, threshold: float) -> np.ndarray:
        """The (I, J, K) label map of ``(Q, x, y, z)`` probabilities on the crop: at each input voxel,
        ``1 + q`` for the most probable query whose interpolated probability reaches ``threshold`` (the first
        on ties), else 0; uint8 below 256 queries, else uint16.

        Decided in model space where that is exact: when the model-space label is the same at the 8 corners
        of an input voxel's interpolation cell, every query's interpolated value keeps the order and the
        threshold side it has at all corners, so the voxel takes that label. Only the voxels of mixed cells
        (boundaries) are interpolated.
        """
        queries = probabilities.shape[0]
        dtype = np.uint8 if queries < 256 else np.uint16
        if self._axes is None:  # never from prepare: every structure in full, one at a time
            labels, best = np.zeros(self.shape, dtype), np.zeros(self.shape, np.float32)
            for q in range(queries):
                values = self.resample(probabilities[q])
                wins = (values >= threshold) & (values > best)  # threshold > 0: best = 0 means "none yet"
                best[wins], labels[wins] = values[wins], q + 1
            return labels
        model_labels = torch.zeros(self.grid_shape, dtype=torch.int32)
        model_labels[self.crop] = _model_labels(probabilities, threshold)
        uniform = torch.ones(self.grid_shape, dtype=torch.bool)
        for offset in ((0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
            corner = tuple(
                torch.clamp(torch.arange(n) + o, max=n - 1)
                for n, o in zip(self.grid_shape, offset, strict=True)
            )
            uniform &= model_labels == model_labels[torch.meshgrid(*corner, indexing="ij")]
        lows = [
            _linear_weights(scale, off, 0, self.shape[d], self.grid_shape[axis])
            for d, (axis, scale, off) in enumerate(self._axes)
        ]
        cell = np.ix_(*(low for low, _, _ in lows))
        order = [axis for axis, _, _ in self._axes]
        labels = model_labels.permute(order).numpy().astype(dtype)[cell]
        mixed = ~uniform.permute(order).numpy()[cell]
        self._label_mixed(probabilities, threshold, labels, mixed, ~uniform, [low for low, _, _ in lows])
        return labels

    def _label_mixed(
        self,
        probabilities: torch.Tensor,
        threshold: float,
        labels: np.ndarray,
        mixed: np.ndarray,
        mixed_cells: torch.Tensor,
        lows: list[np.ndarray],
    ) -> None:
        """Label the ``mixed`` voxels of ``labels`` from interpolated values, tile by tile of the model grid;
        in each tile only the queries at or above ``threshold`` at a corner of one of its mixed cells."""
        tiles = _tile_any(mixed_cells)
        corners = mixed_cells.clone()  # model voxels that are a corner of a mixed cell
        for axis in range(3):
            shifted = [slice(None)] * 3
            shifted[axis] = slice(1, None)
            source = [slice(None)] * 3
            source[axis] = slice(0, -1)
            corners[tuple(shifted)] |= corners[tuple(source)].clone()
        # input-voxel range of each model tile along each input axis (cells are monotone in the index)
        ranges = []
        for low in lows:
            tile_of, first, count = np.unique(low // _TILE, return_index=True, return_counts=True)
            spans = zip(tile_of, first, first + count, strict=True)
            ranges.append({int(t): slice(int(start), int(stop)) for t, start, stop in spans})
        states: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            self._blend_tiles(probabilities, threshold, corners, tiles, ranges, states, labels.dtype, pool)
        for key, (_, tile_labels) in states.items():
            box = tuple(ranges[d][key[axis]] for d, (axis, _, _) in enumerate(self._axes))
            where = mixed[box]
            labels[box][where] = tile_labels[where]

    def _blend_tiles(
        self,
        probabilities: torch.Tensor,
        threshold: float,
        corners: torch.Tensor,
        tiles: torch.Tensor,
        ranges: list[dict[int, slice]],
        states: dict,
        dtype: np.dtype,
        pool: ThreadPoolExecutor,
    ) -> None:
        """Per query, interpolate it over the boundary tiles where it matters and keep, per tile, the best
        value and its label so far (``states``: tile -> (best, labels))."""
        for q in range(probabilities.shape[0]):
            full = self.uncrop(probabilities[q])
            relevant = _tile_any((full >= threshold) & corners)
            for axis in range(3):  # a cell's corners may lie in the next tile along each axis
                ahead = [slice(None)] * 3
                ahead[axis] = slice(0, -1)
                behind = [slice(None)] * 3
                behind[axis] = slice(1, None)
                relevant[tuple(ahead)] |= relevant[tuple(behind)].clone()
            work = []
            for tile in torch.nonzero(relevant & tiles).tolist():
                box = tuple(
                    ranges[d].get(tile[axis], slice(0, 0)) for d, (axis, _, _) in enumerate(self._axes)
                )
                if any(b.stop <= b.start for b in box):
                    continue
                key = tuple(tile)
                if key not in states:
                    shape = tuple(b.stop - b.start for b in box)
                    states[key] = (np.zeros(shape, np.float32), np.zeros(shape, dtype))
                work.append((box, *states[key]))

            def blend(item: tuple, q: int = q, full: torch.Tensor = full) -> None:
                box, best, tile_labels = item
                values = self.resample(full, box)
                wins = (values >= threshold) & (values > best)  # threshold > 0: best 0 means "none yet"
                best[wins] = values[wins]
                tile_labels[wins] = q + 1

            list(pool.map(blend, work))  # tiles are independent; numpy releases the GIL

    def resample(self, values: torch.Tensor, box: Box | None = None) -> np.ndarray:
        """``(x, y, z)`` model-space values on the crop (or ``(X, Y, Z)`` on the whole grid) -> float32
        ``box`` of the input grid (all of it by default)."""
        box = box if box is not None else tuple(slice(0, n) for n in self.shape)
        full = self.uncrop(values)
        if self._axes is None:
            image = to_original_space(full[None], self.volume, mode="bilinear", affine=self.model_affine)[0]
            return np.ascontiguousarray(image[box])
        # only the model voxels the box interpolates from; then each model axis in turn becomes the input axis
        # it maps to: gather the two neighbours, blend
        weights = {}
        region = [slice(None)] * 3
        for d, (axis, scale, offset) in enumerate(self._axes):
            size = self.grid_shape[axis]
            low, high, weight = _linear_weights(scale, offset, box[d].start, box[d].stop, size)
            start = int(low.min(initial=0))
            region[axis] = slice(start, int(high.max(initial=0)) + 1)
            weights[d] = (low - start, high - start, weight)
        data = full.numpy()[tuple(region)]
        for d in self._order:  # the same order for any box: a box is exactly that part of the whole
            axis = self._axes[d][0]
            low, high, weight = weights[d]
            shape = [1, 1, 1]
            shape[axis] = -1
            # numpy, one thread: torch's thread pool costs ~ms per small operation on a busy machine
            blended = np.take(data, low, axis=axis)
            upper = np.take(data, high, axis=axis)
            upper -= blended
            upper *= weight.reshape(shape)
            blended += upper
            data = blended
        order = [axis for axis, _, _ in self._axes]  # input axis d holds model axis order[d]
        return np.ascontiguousarray(data.transpose(order))


class ProbabilityMaps(Sequence[np.ndarray]):
    """``(Q, I, J, K)`` float32 maps on the input grid, each computed from model space when indexed.

    ``maps[q]`` is one ``(I, J, K)`` array; ``np.asarray(maps)`` stacks them all (Q full-size maps: avoid it
    for many structures on a large CT).
    """

    def __init__(self, values: torch.Tensor, resampler: InputGridResampler) -> None:
        self._values = values  # (Q, x, y, z) on the model-space crop
        self._resampler = resampler

    def __len__(self) -> int:
        return int(self._values.shape[0])

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"ProbabilityMaps take one structure index, got {index!r}")
        return self._resampler.resample(self._values[index])

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[q] for q in range(len(self)))

    @property
    def shape(self) -> tuple[int, ...]:
        """``(Q, I, J, K)``."""
        return (len(self), *self._resampler.shape)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        stacked = np.stack(list(self)) if len(self) else np.zeros(self.shape, np.float32)
        return stacked if dtype is None else stacked.astype(dtype)


def uncrop(data: torch.Tensor, grid_shape: Sequence[int], crop: Box) -> torch.Tensor:
    """``(..., x, y, z)`` values on ``crop`` -> ``(..., X, Y, Z)`` on the whole ``grid_shape``, 0 outside."""
    if tuple(data.shape[-3:]) == tuple(grid_shape):
        return data
    full = data.new_zeros((*data.shape[:-3], *grid_shape))
    full[(..., *crop)] = data
    return full


def _tile_any(mask: torch.Tensor) -> torch.Tensor:
    """``(X, Y, Z)`` bool -> ``(ceil(X / T), ...)``: whether each tile (side ``_TILE``) holds a true voxel."""
    pad = [(-n) % _TILE for n in mask.shape]
    padded = torch.nn.functional.pad(mask, (0, pad[2], 0, pad[1], 0, pad[0]))
    x, y, z = (n // _TILE for n in padded.shape)
    return padded.view(x, _TILE, y, _TILE, z, _TILE).any(dim=5).any(dim=3).any(dim=1)


def _model_labels(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(x, y, z)`` int32 labels of ``(Q, x, y, z)`` probabilities: 1 + the most probable query at or above
    ``threshold`` (the first on ties), else 0."""
    best = torch.zeros(probabilities.shape[1:])
    labels = torch.zeros(probabilities.shape[1:], dtype=torch.int32)
    for q in range(probabilities.shape[0]):
        values = probabilities[q].float()
        wins = (values >= threshold) & (values > best)  # threshold > 0: best 0 means "none yet"
        torch.where(wins, values, best, out=best)
        labels.masked_fill_(wins, q + 1)
    return labels


def _axis_map(xform: np.ndarray) -> list[tuple[int, float, float]] | None:
    """Per input axis: (model axis, scale, offset) with ``model_index = scale * input_index + offset``."""
    linear = xform[:3, :3]
    axes = []
    for d in range(3):
        column = linear[:, d]
        axis = int(np.argmax(np.abs(column)))
        if np.abs(np.delete(column, axis)).max() > _AXIS_TOLERANCE * max(abs(column[axis]), 1.0):
            return None
        axes.append((axis, float(column[axis]), float(xform[axis, 3])))
    if sorted(a for a, _, _ in axes) != [0, 1, 2]:
        return None
    return axes


def _linear_weights(
    scale: float, offset: float, start: int, stop: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour indices and weights of input voxels ``start..stop-1`` along one axis (border padding)."""
    position = np.clip(scale * np.arange(start, stop, dtype=np.float64) + offset, 0.0, size - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    return low, high, (position - low).astype(np.float32)
