"""The prompt embeddings a training run conditions on: an ``EmbeddingCache`` folder, or synthetic vectors.

Real runs read the cache that ``textguidedseg encode-prompts`` built with a CLIP text encoder. Where no CLIP
weights exist (the CPU demo, tests), :func:`synthetic_text_cache` gives every prompt a fixed random unit
vector. A model trained on such vectors learns their vocabulary as arbitrary codes: it understands exactly the
prompts it was trained on and nothing else (no free text, no synonyms at the embedding level, no CLIP
embeddings), and a bundle exported from it carries those vectors and no text encoder.

A global-mode model is conditioned by :class:`GlobalConditioning`: one vector per dataset key (the seed's
dataset prompts, ``text.global_conditioning: dataset_sentence | dataset_mean``; see
``TextGuidedSegLib.data.dataset_prompts``) or one fixed prompt for every sample (``fixed``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from TextGuidedSegLib.data.dataset_prompts import dataset_prompts
from TextGuidedSegLib.text import EmbeddingCache

from .config import ConfigError

__all__ = [
    "SYNTHETIC_ENCODER_ID",
    "GlobalConditioning",
    "conditioning_prompts",
    "load_embeddings",
    "synthetic_embedding",
    "synthetic_text_cache",
]

logger = logging.getLogger(__name__)

#: ``encoder_id`` of synthetic caches (seed 0; other seeds append ``-seed<n>``).
SYNTHETIC_ENCODER_ID = "synthetic-gaussian-v1"


def synthetic_embedding(prompt: str, dim: int, seed: int = 0) -> torch.Tensor:
    """The synthetic embedding of one prompt: a standard Gaussian vector, normalised to unit length.

    The generator is seeded by the first 8 bytes of ``sha256(f"{seed}:{prompt}")``, so a prompt's vector
    depends on the prompt, ``dim`` and ``seed`` only (not on the other prompts, the order or the platform).

    Returns:
        ``(dim,)`` float32, unit L2 norm.
    """
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    vector = torch.randn(dim, generator=generator, dtype=torch.float64)
    return (vector / vector.norm()).float()


def synthetic_text_cache(prompts: Sequence[str], dim: int, seed: int = 0) -> EmbeddingCache:
    """An ``EmbeddingCache`` of synthetic unit vectors (see :func:`synthetic_embedding`).

    Args:
        prompts: the vocabulary; repeats are stored once.
        dim: embedding size ``E``.
        seed: a different seed gives unrelated vectors (and a different ``encoder_id``).

    Returns:
        a cache with ``encoder_id`` ``"synthetic-gaussian-v1"`` (``"synthetic-gaussian-v1-seed<n>"`` for
        ``seed != 0``).
    """
    encoder_id = SYNTHETIC_ENCODER_ID if seed == 0 else f"{SYNTHETIC_ENCODER_ID}-seed{seed}"
    unique = list(dict.fromkeys(prompts))
    cache = EmbeddingCache(encoder_id, dim)
    if unique:
        cache.add(unique, torch.stack([synthetic_embedding(p, dim, seed) for p in unique]))
    return cache


def load_embeddings(
    source: str, prompts: Sequence[str], cache_dir: str = "", dim: int = 512
) -> tuple[torch.Tensor, str]:
    """The embeddings of ``prompts`` from the configured source.

    Args:
        source: ``"cache"`` (read ``cache_dir``) or ``"synthetic"`` (:func:`synthetic_text_cache`).
        prompts: ``N`` prompts, in the order wanted.
        cache_dir: the ``EmbeddingCache`` folder for ``source="cache"``.
        dim: the synthetic embedding size.

    Returns:
        ``(embeddings (N, E) float32, encoder_id)``.

    Raises:
        ConfigError: no cache folder, or prompts missing from the cache (named, with the command that adds
            them).
    """
    if source == "synthetic":
        cache = synthetic_text_cache(prompts, dim)
    else:
        if not cache_dir:
            raise ConfigError(
                "text.cache_dir is empty: build an embedding cache with "
                "`textguidedseg encode-prompts -o DIR` "
                "and set text.cache_dir=DIR (or text.source=synthetic for a demo without CLIP)"
            )
        cache = EmbeddingCache.load(Path(cache_dir))
    missing = [p for p in prompts if p not in cache]
    if missing:
        quoted = " ".join(f'"{p}"' for p in missing)
        raise ConfigError(
            f"the embedding cache {cache_dir} ({cache.encoder_id}) lacks {len(missing)} prompt(s) "
            "the run needs: "
            f"{missing}; add them with `textguidedseg encode-prompts -o {cache_dir} {quoted}`"
        )
    logger.info("text embeddings: %d prompt(s), E=%d, encoder %s", len(prompts), cache.dim, cache.encoder_id)
    return cache.get(list(prompts)), cache.encoder_id


def conditioning_prompts(mode: str, datasets: Sequence[str], global_prompt: str) -> dict[str, list[str]]:
    """Dataset key -> the prompts whose mean embedding conditions its samples (``mode`` a dataset variant),
    or ``{}`` for ``mode="fixed"`` (every sample gets ``global_prompt``)."""
    if mode == "fixed":
        return {}
    return {key: dataset_prompts(key, mode) for key in sorted(set(datasets))}


@dataclass(frozen=True)
class GlobalConditioning:
    """The text that conditions a global-mode model: one vector per dataset key, or one for every sample.

    Attributes:
        mode: ``"fixed"``, ``"dataset_sentence"`` or ``"dataset_mean"`` (``text.global_conditioning``).
        vectors: dataset key -> ``(E,)`` conditioning vector (the mean of its prompts' embeddings);
            ``{"": vector}`` in ``fixed`` mode.
        prompts: dataset key -> the prompts averaged (``{"": [global_prompt]}`` in ``fixed`` mode).
    """

    mode: str
    vectors: Mapping[str, torch.Tensor]
    prompts: Mapping[str, list[str]]

    @classmethod
    def from_text_state(cls, text_state: Mapping, global_prompt: str, device: torch.device | None = None):
        """Read it from a checkpoint's ``text`` state (``prompts``, ``embeddings`` (P, E), and
        ``dataset_prompts`` in a dataset mode; a checkpoint without it conditions on ``global_prompt``)."""
        rows = {p: i for i, p in reversed(list(enumerate(text_state["prompts"])))}
        embeddings = text_state["embeddings"].to(device) if device is not None else text_state["embeddings"]
        mode = text_state.get("global_conditioning", "fixed")
        prompts = dict(text_state.get("dataset_prompts") or {}) if mode != "fixed" else {"": [global_prompt]}
        missing = sorted({p for group in prompts.values() for p in group} - set(rows))
        if missing:
            raise ConfigError(f"the checkpoint's text embeddings lack the conditioning prompt(s) {missing}")
        vectors = {key: embeddings[[rows[p] for p in group]].mean(0) for key, group in prompts.items()}
        return cls(mode, vectors, prompts)

    def for_datasets(self, datasets: Sequence[str]) -> torch.Tensor:
        """``(N, 1, E)`` conditioning of ``N`` samples from ``datasets`` (their dataset keys).

        Raises:
            ConfigError: a dataset key has no vector (not among the run's datasets when it started).
        """
        if self.mode == "fixed":
            return self.vectors[""].expand(len(datasets), 1, -1)
        unknown = sorted(set(datasets) - set(self.vectors))
        if unknown:
            raise ConfigError(
                f"no {self.mode} conditioning for dataset(s) {unknown}: the run embedded the prompts of "
                f"{sorted(self.vectors)} only (a resumed run keeps its first datasets' prompts)"
            )
        return torch.stack([self.vectors[d] for d in datasets])[:, None]
