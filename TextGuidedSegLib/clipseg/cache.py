"""Frozen-encoder cache: CLIP's vision activations per slice and text features per prompt, computed once.

With the ``decoder`` and ``adapter`` strategies both CLIP towers are frozen, so for a given slice the hidden
states the decoder extracts (``config.extract_layers``) never change, nor does a prompt's pooled text output.
:class:`EncoderCache` computes them once (batched, with a progress bar) and serves them to every training
step: the step then runs only what trains (adapters, ``text_projection`` and the decoder), and its losses are
those of the uncached run (the same float32 values enter the same decoder; ``Testing/test_clipseg.py``
checks the trajectories agree to 1e-4 and ``Testing/bench/bench_clipseg_cache.py`` measures the speed-up).

Storage: in memory (``memory``; on the training device) or on disk (``disk``; one ``.npy`` per extracted
layer, memory-mapped, in a folder named after the digest of the encoder weights, the pixel spec and the slice
set, so it is reused across runs and strategies). ``float16`` storage halves the size
(CIDAS/clipseg-rd64-refined at 352 px: 3 layers x 485 tokens x 768 = 4.5 MB per slice in float32) at the
price of exact losses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import SliceSet
from .model import CLIPSegNet

__all__ = ["CACHE_DTYPES", "EncoderCache", "encoder_digest"]

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def encoder_digest(net: CLIPSegNet) -> str:
    """sha256 over the frozen towers' weights (vision, text, text projection) and the pixel spec."""
    digest = hashlib.sha256(json.dumps(asdict(net.pixel), sort_keys=True).encode())
    digest.update(json.dumps(net.extract_layers).encode())
    clip = net.hf.clip
    for prefix, module in (("v", clip.vision_model), ("t", clip.text_model), ("p", clip.text_projection)):
        for name, tensor in module.state_dict().items():
            digest.update(f"{prefix}.{name}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class EncoderCache:
    """Vision activations of some slices and text features of some prompts, from a frozen :class:`CLIPSegNet`.

    Attributes:
        layers: one ``(N, T, H)`` tensor (or memory-mapped array, ``disk``) per extracted layer.
        rows: ``(N_slices,)`` int64: the row of each slice index of the slice set, -1 when not cached.
        text: ``(P, H_text)`` float32 pooled text outputs, on ``device``.
        prompts: prompt -> row of ``text``.
        device: where batches are returned.
    """

    def __init__(
        self,
        layers: list[torch.Tensor | np.ndarray],
        rows: np.ndarray,
        text: torch.Tensor,
        prompts: Sequence[str],
        device: torch.device,
    ) -> None:
        self.layers = layers
        self.rows = rows
        self.text = text.to(device)
        self.prompts = {p: i for i, p in enumerate(prompts)}
        self.device = device

    @property
    def nbytes(self) -> int:
        """Bytes held by the activations."""
        return int(
            sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size() for a in self.layers)
        )

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        net: CLIPSegNet,
        slice_set: SliceSet,
        prompts: Sequence[str],
        slices: np.ndarray | None = None,
        storage: str = "memory",
        dtype: str = "float32",
        folder: str | Path | None = None,
        batch_size: int = 32,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> EncoderCache:
        """Run the frozen towers once over ``slices`` of ``slice_set`` and over ``prompts``.

        Args:
            net: a net whose vision and text towers are frozen (``net.cacheable``).
            slice_set: the slices.
            prompts: every prompt the run may use (synonyms included).
            slices: slice indices to cache (default: those the slice set's samples use).
            storage: ``memory`` or ``disk`` (``folder`` required; reused when its digest matches).
            dtype: ``float32`` (exact) or ``float16``.
            folder: parent folder of disk caches.
            batch_size: slices per vision forward pass.
            device: where the towers run and where batches are returned.
            progress: tqdm progress bar.

        Raises:
            ValueError: the net's towers are trainable, or a bad ``storage`` / ``dtype``.
        """
        if not net.cacheable:
            raise ValueError(
                f"strategy {net.strategy!r} trains the CLIP encoder: its activations change every step and "
                "cannot be cached; use cache: off"
            )
        if storage not in ("memory", "disk"):
            raise ValueError(f"cache storage must be 'memory' or 'disk', got {storage!r}")
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
        device = torch.device(device)
        if slices is None:
            slices = np.unique(slice_set.samples[:, 0])
        slices = np.asarray(slices, dtype=np.int64)
        rows = np.full(slice_set.images.shape[0], -1, dtype=np.int64)
        rows[slices] = np.arange(slices.size)
        was_training = net.training
        net.eval()
        text = net.text_features(list(prompts)).float()
        torch_dtype = CACHE_DTYPES[dtype]
        if storage == "disk":
            if folder is None:
                raise ValueError("cache storage 'disk' needs a folder")
            layers = cls._disk(
                net, slice_set, slices, torch_dtype, dtype, Path(folder), batch_size, device, progress
            )
        else:
            layers = cls._compute(net, slice_set, slices, torch_dtype, batch_size, device, progress)
        net.train(was_training)
        cache = cls(layers, rows, text, prompts, device)
        logger.info(
            "encoder cache: %d slices x %d layers (%.1f MiB, %s, %s), %d prompts",
            slices.size,
            len(layers),
            cache.nbytes / 2**20,
            dtype,
            storage,
            len(prompts),
        )
        return cache

    @staticmethod
    def _batches(
        net: CLIPSegNet,
        slice_set: SliceSet,
        slices: np.ndarray,
        batch_size: int,
        device: torch.device,
        progress: bool,
    ):
        for start in tqdm(
            range(0, slices.size, batch_size), desc="encoder cache", unit="batch", disable=not progress
        ):
            chunk = slices[start : start + batch_size]
            images = torch.from_numpy(np.ascontiguousarray(slice_set.images[chunk])).to(device)
            yield start, net.vision_activations(net.pixel.normalize(images))

    @classmethod
    def _compute(
        cls,
        net: CLIPSegNet,
        slice_set: SliceSet,
        slices: np.ndarray,
        dtype: torch.dtype,
        batch_size: int,
        device: torch.device,
        progress: bool,
    ) -> list[torch.Tensor]:
        layers: list[torch.Tensor] = []
        for start, acts in cls._batches(net, slice_set, slices, batch_size, device, progress):
            if not layers:
                layers = [torch.empty((slices.size, *a.shape[1:]), dtype=dtype, device=device) for a in acts]
            for store, a in zip(layers, acts, strict=True):
                store[start : start + a.shape[0]] = a.to(dtype)
        return layers

    @classmethod
    def _disk(
        cls,
        net: CLIPSegNet,
        slice_set: SliceSet,
        slices: np.ndarray,
        dtype: torch.dtype,
        dtype_name: str,
        root: Path,
        batch_size: int,
        device: torch.device,
        progress: bool,
    ) -> list[np.ndarray]:
        key = hashlib.sha256(
            json.dumps(
                [CACHE_FORMAT_VERSION, encoder_digest(net), slice_set.key, dtype_name, slices.tolist()]
            ).encode()
        ).hexdigest()
        folder = root / f"encoder-{key[:16]}"
        n_layers = len(net.extract_layers)
        if (folder / "cache.json").is_file():
            meta = json.loads((folder / "cache.json").read_text(encoding="utf-8"))
            if meta.get("key") == key:
                logger.info("reusing encoder cache %s", folder)
                return [
                    np.load(folder / f"layer_{i}.npy", mmap_mode="r", allow_pickle=False)
                    for i in range(n_layers)
                ]
        root.mkdir(parents=True, exist_ok=True)
        np_dtype = np.float16 if dtype == torch.float16 else np.float32
        with tempfile.TemporaryDirectory(dir=root, prefix=".encoder-") as tmp:
            staging = Path(tmp) / "cache"
            staging.mkdir()
            arrays: list[np.ndarray] = []
            for start, acts in cls._batches(net, slice_set, slices, batch_size, device, progress):
                if not arrays:
                    arrays = [
                        np.lib.format.open_memmap(
                            staging / f"layer_{i}.npy",
                            mode="w+",
                            dtype=np_dtype,
                            shape=(slices.size, *a.shape[1:]),
                        )
                        for i, a in enumerate(acts)
                    ]
                for store, a in zip(arrays, acts, strict=True):
                    store[start : start + a.shape[0]] = a.to(dtype).cpu().numpy()
            for array in arrays:
                array.flush()
            del arrays
            (staging / "cache.json").write_text(
                json.dumps({"key": key, "dtype": dtype_name}) + "\n", encoding="utf-8"
            )
            if folder.exists():
                import shutil

                shutil.rmtree(folder)
            os.replace(staging, folder)
        return [
            np.load(folder / f"layer_{i}.npy", mmap_mode="r", allow_pickle=False) for i in range(n_layers)
        ]

    def activations(self, slices: np.ndarray) -> list[torch.Tensor]:
        """``(B, T, H)`` float32 activations per extracted layer for slice indices ``slices`` (``(B,)``)."""
        rows = self.rows[np.asarray(slices, dtype=np.int64)]
        if (rows < 0).any():
            raise KeyError(f"slices {np.asarray(slices)[rows < 0][:5].tolist()} are not in the encoder cache")
        out = []
        for layer in self.layers:
            if isinstance(layer, np.ndarray):
                order = np.argsort(rows, kind="stable")
                gathered = np.empty((rows.size, *layer.shape[1:]), dtype=layer.dtype)
                gathered[order] = layer[rows[order]]
                out.append(torch.from_numpy(gathered).to(self.device, torch.float32))
            else:
                index = torch.from_numpy(rows).to(layer.device)
                out.append(layer.index_select(0, index).to(self.device, torch.float32))
        return out

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(P, H_text)`` pooled text outputs of cached prompts."""
        try:
            index = [self.prompts[p] for p in prompts]
        except KeyError as err:
            raise KeyError(f"prompt {err.args[0]!r} is not in the encoder cache") from None
        return self.text[torch.tensor(index, device=self.text.device)]
