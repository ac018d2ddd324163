"""Per-window encoder features of a prepared volume, kept so that a new prompt runs only the conditioned part.

A FiLM model's Swin transformer and encoder blocks do not see the text. ``FeatureCache`` keeps, for every
sliding window of a ``PreparedVolume``, the encoder maps the text-conditioned part consumes (``enc1``,
``enc2``, ``enc3``, ``hs3``, ``dec4`` of ``models.backbone.SwinFeatures``) in bfloat16; the full-resolution
``enc0 = encoder1(window)`` - at ``fs`` channels over the whole ROI it is 6x the others together - is
recomputed per window, which costs one residual conv block. bfloat16 rather than float16: it keeps float32's
exponent range, so an activation can neither overflow to inf nor flush to zero whatever the weights; its
coarser mantissa (8 bits) moves labels by far less than the Dice >= 0.99 the tests hold it to.

Entries are keyed by the window's position in the (padded) image and by what else changes the features:
the flip the image went through, the image size, the padding mode, the autocast dtype and the device.
The overlap and ROI only decide which positions are visited, so they are not part of the key; a change of
model object clears the cache (``bind``). Eviction is LRU over a byte limit, restricted to entries not
used by the current request (``new_request``): a window that does not fit beside this request's own
entries is simply not stored and is recomputed next time. Sliding windows are visited in the same order
on every prompt, so plain LRU would evict exactly the entry needed next and keep nothing useful.

The models that offer it (film_v1, film_v2 in query mode) answer ``encode(image) -> SwinFeatures``,
``encode_full_resolution(image) -> enc0`` and ``logits_from_features(features, text)``; other models run
unchanged.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from TextGuidedSegLib.models.backbone import SwinFeatures

__all__ = [
    "CACHED_FIELDS",
    "DEFAULT_FEATURE_CACHE_BYTES",
    "FeatureCache",
    "FeatureCacheModel",
    "supports_feature_cache",
    "window_features",
    "window_position",
]

#: The ``SwinFeatures`` maps kept per window (``enc0`` is recomputed).
CACHED_FIELDS: tuple[str, ...] = ("enc1", "enc2", "enc3", "hs3", "dec4")
#: Default byte limit of a ``PreparedVolume``'s cache: the 80 windows of a 244x202x224 volume at fs 48
#: (1.05 GiB) fit.
DEFAULT_FEATURE_CACHE_BYTES = 2 * 1024**3


@runtime_checkable
class FeatureCacheModel(Protocol):
    """A query-mode model whose text-independent encoder can run apart from its conditioned decoder."""

    def encode(self, image: torch.Tensor) -> SwinFeatures:
        """``(B, C, D, H, W)`` -> encoder features, batch ``B``."""

    def encode_full_resolution(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> ``enc0`` ``(B, fs, D, H, W)``."""

    def logits_from_features(self, features: SwinFeatures, text: torch.Tensor) -> torch.Tensor:
        """Features (batch ``B``) and text ``(B, Q, E)`` -> logits ``(B, Q, D, H, W)``."""


def supports_feature_cache(model: Any) -> bool:
    """True for a query-mode model that offers ``FeatureCacheModel`` (film_v1, film_v2)."""
    return getattr(model, "output", None) == "query" and isinstance(model, FeatureCacheModel)


@dataclass
class _Entry:
    tensors: dict[str, torch.Tensor]
    nbytes: int
    request: int


class FeatureCache:
    """An LRU of per-window encoder features with a byte limit, stored in ``dtype`` (bfloat16).

    Args:
        max_bytes: most bytes of feature maps to hold (0 keeps nothing).
        dtype: storage dtype of the maps.
    """

    def __init__(
        self, max_bytes: int = DEFAULT_FEATURE_CACHE_BYTES, dtype: torch.dtype = torch.bfloat16
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"feature cache byte limit must be >= 0, got {max_bytes}")
        self._max_bytes = int(max_bytes)
        self.dtype = dtype
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._model: weakref.ref | None = None
        self._request = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __repr__(self) -> str:
        return f"FeatureCache({len(self)} windows, {self.nbytes} of {self.max_bytes} bytes, {self.dtype})"

    @property
    def max_bytes(self) -> int:
        """The byte limit; lowering it evicts least recently used windows."""
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"feature cache byte limit must be >= 0, got {value}")
        with self._lock:
            self._max_bytes = int(value)
            self._evict(0, current_too=True)

    def clear(self) -> None:
        """Drop every window."""
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def bind(self, model: torch.nn.Module) -> None:
        """Use the cache for ``model``; a different model object than last time clears it."""
        with self._lock:
            if self._model is None or self._model() is not model:
                self._entries.clear()
                self.nbytes = 0
                self._model = weakref.ref(model)

    def new_request(self) -> None:
        """Start a request (one ``segment`` call): windows it uses are not evicted for its other windows."""
        with self._lock:
            self._request += 1

    def get(self, key: Hashable) -> dict[str, torch.Tensor] | None:
        """The stored maps of window ``key`` (``CACHED_FIELDS``, no batch axis), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            entry.request = self._request
            self._entries.move_to_end(key)
            return entry.tensors

    def put(self, key: Hashable, tensors: dict[str, torch.Tensor]) -> bool:
        """Store one window's maps (no batch axis) as ``dtype`` copies; False when they do not fit."""
        nbytes = sum(t.numel() for t in tensors.values()) * self.dtype.itemsize
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            if not self._evict(nbytes, current_too=False):
                return False
            stored = {name: t.to(dtype=self.dtype, copy=True) for name, t in tensors.items()}
            self._entries[key] = _Entry(stored, nbytes, self._request)
            self.nbytes += nbytes
            return True

    def _evict(self, room: int, current_too: bool) -> bool:
        """Evict LRU windows (of earlier requests only, unless ``current_too``) until ``room`` bytes fit."""
        while self._entries and self.nbytes + room > self._max_bytes:
            key, entry = next(iter(self._entries.items()))
            if entry.request == self._request and not current_too:
                return False
            del self._entries[key]
            self.nbytes -= entry.nbytes
            self.evictions += 1
        return self.nbytes + room <= self._max_bytes


def window_position(coords: Sequence[slice]) -> tuple[tuple[int, int], ...]:
    """The spatial ``(start, stop)`` pairs of one window as ``sliding_window_inference(with_coord=True)``
    passes it: ``[batch slice, channel slice, x, y, z]``."""
    return tuple((int(s.start), int(s.stop)) for s in list(coords)[2:])


def window_features(
    model: FeatureCacheModel, windows: torch.Tensor, keys: Sequence[Hashable], cache: FeatureCache
) -> SwinFeatures:
    """Encoder features of a batch of windows ``(N, C, D, H, W)``: ``enc0`` computed, the rest from ``cache``
    where present, else from the encoder (and then stored)."""
    stored = [cache.get(key) for key in keys]
    missing = [i for i, entry in enumerate(stored) if entry is None]
    present = [i for i, entry in enumerate(stored) if entry is not None]
    if not present:
        fresh = model.encode(windows)
        for i, key in enumerate(keys):
            cache.put(key, {name: getattr(fresh, name)[i] for name in CACHED_FIELDS})
        return fresh
    enc0 = model.encode_full_resolution(windows if not missing else windows[present])
    dtype = enc0.dtype
    per_window: list[dict[str, torch.Tensor]] = [{} for _ in keys]
    for j, i in enumerate(present):
        per_window[i] = {name: t.to(dtype=dtype) for name, t in stored[i].items()}
        per_window[i]["enc0"] = enc0[j]
    if missing:
        fresh = model.encode(windows[missing])
        for j, i in enumerate(missing):
            per_window[i] = {name: getattr(fresh, name)[j] for name in ("enc0", *CACHED_FIELDS)}
            cache.put(keys[i], {name: per_window[i][name] for name in CACHED_FIELDS})
    names = ("enc0", *CACHED_FIELDS)
    return SwinFeatures(**{name: torch.stack([w[name].to(dtype) for w in per_window]) for name in names})
