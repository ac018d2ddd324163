"""Prompt -> embedding cache, keyed by the text encoder's identity, saved as safetensors + JSON.

A trained model only needs the embeddings of the prompts it was trained on, not the 250 MB text tower. The
cache holds them, one ``(E,)`` float32 vector per exact prompt string, and refuses to mix embeddings of
different encoders: every cache carries the
:attr:`~TextGuidedSegLib.text.encoder.CLIPTextEncoder.identity` it was built with.

On disk (a folder)::

    embeddings.safetensors   one tensor "embeddings", (N, E) float32, row i = prompts[i]
    embeddings.json          {"format_version": 1, "encoder_id", "dim", "count", "prompts", "sha256"}

``sha256`` is the hex digest of ``embeddings.safetensors``. Both files are first written under temporary
names in the same folder and then renamed (tensors first, index last); if the index rename fails, the old
tensor file is put back. A failed save therefore leaves an existing cache untouched, and a hard crash between
the two renames is caught at load time by the checksum.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from TextGuidedSegLib.files import sha256_file

from .encoder import CLIPTextEncoder, PromptEncoder

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TENSOR_FILE = "embeddings.safetensors"
INDEX_FILE = "embeddings.json"
TENSOR_KEY = "embeddings"
_SHOWN = 5  # prompts named in error messages


class EmbeddingCacheError(ValueError):
    """An embedding cache is inconsistent, corrupt, for another encoder, or lacks a prompt."""


class PromptNotCachedError(EmbeddingCacheError, KeyError):
    """:meth:`EmbeddingCache.get` was asked for prompts the cache does not hold (also a ``KeyError``).

    Attributes:
        missing: the missing prompts, in request order.
    """

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.missing = list(missing)

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


def _preview(prompts: Sequence[str], limit: int = _SHOWN) -> str:
    shown = ", ".join(repr(prompt) for prompt in prompts[:limit])
    more = len(prompts) - limit
    return f"[{shown}{f', ... ({more} more)' if more > 0 else ''}]"


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    """Persist renames in ``folder`` (POSIX; a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` as ``target`` (instant), or copy it where links are not supported."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _temp_path(folder: Path, name: str) -> Path:
    """A fresh hidden name beside ``name``: same filesystem (atomic ``os.replace``), default permissions."""
    return folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


class EmbeddingCache:
    """Prompt -> embedding store for one text encoder.

    Keys are exact prompt strings (no normalisation); values are ``(E,)`` float32 CPU vectors. Insertion order
    is kept and is the row order on disk.

    Args:
        encoder_id: identity of the encoder the embeddings come from (``CLIPTextEncoder.identity``).
        dim: embedding size ``E``.

    Example::

        encoder = CLIPTextEncoder()
        cache = EmbeddingCache(encoder.identity, encoder.dim).build(["liver", "spleen"], encoder)
        cache.save("bundle/text")
        cache = EmbeddingCache.load("bundle/text", expected_encoder_id=encoder.identity)
        text = cache.get(["spleen", "liver"])          # (2, E) float32
    """

    def __init__(self, encoder_id: str, dim: int) -> None:
        if not isinstance(encoder_id, str) or not encoder_id:
            raise ValueError(f"encoder_id must be a non-empty string, got {encoder_id!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._encoder_id = encoder_id
        self._dim = dim
        self._vectors: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ mapping

    @property
    def encoder_id(self) -> str:
        """Identity of the encoder that produced the embeddings."""
        return self._encoder_id

    @property
    def dim(self) -> int:
        """Embedding size ``E``."""
        return self._dim

    @property
    def prompts(self) -> list[str]:
        """Cached prompts in insertion order (a copy)."""
        return list(self._vectors)

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, prompt: object) -> bool:
        return isinstance(prompt, str) and prompt in self._vectors

    def __repr__(self) -> str:
        return f"EmbeddingCache(encoder_id={self._encoder_id!r}, dim={self._dim}, prompts={len(self)})"

    def get(self, prompts: Sequence[str]) -> Tensor:
        """Look up embeddings.

        Args:
            prompts: ``N`` prompt strings (repeats allowed).

        Returns:
            ``(N, E)`` float32 CPU tensor, row ``i`` for ``prompts[i]`` (a new tensor: safe to modify).

        Raises:
            PromptNotCachedError: (an :class:`EmbeddingCacheError` and ``KeyError``) some prompts are not
                cached; the message names them and a few cached prompts.
            TypeError: ``prompts`` is a single string.
        """
        prompts = _as_prompt_list(prompts)
        missing = list(dict.fromkeys(prompt for prompt in prompts if prompt not in self._vectors))
        if missing:
            raise PromptNotCachedError(
                f"{len(missing)} prompt(s) not in the embedding cache ({self._encoder_id}): "
                f"{_preview(missing)}; "
                f"it holds {len(self)} prompt(s), e.g. {_preview(self.prompts)}. "
                "Encode them with EmbeddingCache.build(prompts, encoder).",
                missing,
            )
        if not prompts:
            return torch.zeros(0, self._dim, dtype=torch.float32)
        return torch.stack([self._vectors[prompt] for prompt in prompts])

    def add(self, prompts: Sequence[str], embeddings: Tensor) -> EmbeddingCache:
        """Store embeddings (copied as float32 on the CPU).

        Overwriting a cached prompt with a different vector is allowed and logged as a warning.

        Args:
            prompts: ``N`` prompt strings.
            embeddings: ``(N, E)`` tensor (or array), finite values.

        Returns:
            ``self``.

        Raises:
            EmbeddingCacheError: count or ``E`` mismatch, or non-finite values.
        """
        prompts = _as_prompt_list(prompts)
        values = torch.as_tensor(embeddings).detach()
        if values.ndim != 2 or values.shape[0] != len(prompts) or values.shape[1] != self._dim:
            raise EmbeddingCacheError(
                f"embeddings must have shape (N, E) = ({len(prompts)}, {self._dim}) "
                f"for {len(prompts)} prompt(s), "
                f"got {tuple(values.shape)}"
            )
        values = values.to(device="cpu", dtype=torch.float32)
        if not torch.isfinite(values).all():
            bad = [prompts[i] for i in (~torch.isfinite(values).all(dim=1)).nonzero().flatten().tolist()]
            raise EmbeddingCacheError(f"non-finite embeddings for {_preview(bad)}")
        for prompt, vector in zip(prompts, values, strict=True):
            old = self._vectors.get(prompt)
            if old is not None and not torch.equal(old, vector):
                delta = (old - vector).abs().max().item()
                logger.warning("overwriting the cached embedding of %r (max change %.3g)", prompt, delta)
            self._vectors[prompt] = vector.clone()
        return self

    def build(
        self,
        prompts: Sequence[str],
        encoder: PromptEncoder,
        batch_size: int = 64,
        progress: bool = True,
    ) -> EmbeddingCache:
        """Encode the prompts not cached yet and add them.

        Args:
            prompts: prompt strings; already-cached ones and repeats are encoded once at most.
            encoder: a :class:`~TextGuidedSegLib.text.encoder.CLIPTextEncoder` (or anything with ``identity``,
                ``dim`` and ``encode(prompts) -> (N, E)``) whose identity equals :attr:`encoder_id`.
            batch_size: prompts per ``encoder.encode`` call, >= 1.
            progress: show a tqdm progress bar.

        Returns:
            ``self``.

        Raises:
            EmbeddingCacheError: the encoder's identity or ``dim`` differs from the cache's, or it returned a
                tensor of the wrong shape.
            ValueError: ``batch_size`` < 1.
        """
        if encoder.identity != self._encoder_id:
            raise EmbeddingCacheError(
                f"this embedding cache belongs to encoder {self._encoder_id!r}, not {encoder.identity!r}: "
                "embeddings of different encoders cannot be mixed; start a new "
                "EmbeddingCache(encoder.identity, encoder.dim)"
            )
        if encoder.dim != self._dim:
            raise EmbeddingCacheError(f"encoder dim {encoder.dim} differs from the cache's dim {self._dim}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        prompts = _as_prompt_list(prompts)
        todo = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._vectors]
        if not todo:
            logger.debug("all %d prompt(s) already cached", len(prompts))
            return self
        with tqdm(total=len(todo), desc="Encoding prompts", unit="prompt", disable=not progress) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                if isinstance(encoder, CLIPTextEncoder):  # one forward pass per batch, whatever its size
                    embeddings = encoder.encode(batch, batch_size=len(batch))
                else:
                    embeddings = encoder.encode(batch)
                if tuple(embeddings.shape) != (len(batch), self._dim):
                    raise EmbeddingCacheError(
                        f"encoder {encoder.identity!r} returned shape {tuple(embeddings.shape)} "
                        f"for {len(batch)} prompt(s), expected ({len(batch)}, {self._dim})"
                    )
                self.add(batch, embeddings)
                bar.update(len(batch))
        logger.info("encoded %d new prompt(s); the cache holds %d", len(todo), len(self))
        return self

    # ------------------------------------------------------------------ disk

    def save(self, folder: str | Path) -> Path:
        """Write ``embeddings.safetensors`` and ``embeddings.json`` into ``folder`` (created if needed).

        Both files are written to temporary files in ``folder`` first and then renamed, the index last: a
        failure leaves any previous cache in ``folder`` intact and loadable.

        Returns:
            The folder.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        prompts = self.prompts
        matrix = self.get(prompts).contiguous()
        temps: list[Path] = []
        try:
            tensor_tmp = _temp_path(folder, TENSOR_FILE)
            temps.append(tensor_tmp)
            save_file({TENSOR_KEY: matrix}, str(tensor_tmp), metadata={"format": "pt"})
            _fsync(tensor_tmp)
            index = {
                "format_version": FORMAT_VERSION,
                "encoder_id": self._encoder_id,
                "dim": self._dim,
                "count": len(prompts),
                "prompts": prompts,
                "sha256": sha256_file(tensor_tmp),
            }
            index_tmp = _temp_path(folder, INDEX_FILE)
            temps.append(index_tmp)
            index_tmp.write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            _fsync(index_tmp)
            tensor_path = folder / TENSOR_FILE
            backup = None
            if tensor_path.exists():  # keep the old tensors until the new index is in place
                backup = _temp_path(folder, TENSOR_FILE)
                temps.append(backup)
                _link_or_copy(tensor_path, backup)
            os.replace(tensor_tmp, tensor_path)
            try:
                os.replace(index_tmp, folder / INDEX_FILE)
            except BaseException:
                if backup is not None:  # put the old tensors back under the old index
                    os.replace(backup, tensor_path)
                raise
            _fsync_dir(folder)
        finally:
            for path in temps:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        logger.info(
            "saved %d embedding(s) (E=%d, %s) to %s", len(prompts), self._dim, self._encoder_id, folder
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path, expected_encoder_id: str | None = None) -> EmbeddingCache:
        """Read a cache written by :meth:`save` (no encoder needed).

        Args:
            folder: the cache folder (or its ``embeddings.json``).
            expected_encoder_id: when given, the cache must have been built with this encoder identity.

        Returns:
            The cache.

        Raises:
            EmbeddingCacheError: a file is missing or malformed, the checksum does not match, the format
                version is unknown, the row count differs from the prompt count, or the encoder identity
                differs from ``expected_encoder_id``. The message names the file.
        """
        folder = Path(folder)
        if folder.name == INDEX_FILE and folder.is_file():
            folder = folder.parent
        index_path, tensor_path = folder / INDEX_FILE, folder / TENSOR_FILE
        index = _read_index(index_path)
        if not tensor_path.is_file():
            raise EmbeddingCacheError(f"{tensor_path} is missing (the index {index_path} refers to it)")
        actual = sha256_file(tensor_path)
        if actual != index["sha256"]:
            raise EmbeddingCacheError(
                f"checksum mismatch for {tensor_path}: sha256 {actual} but {index_path} records "
                f"{index['sha256']}; the file is corrupt or was replaced: rebuild the cache"
            )
        if expected_encoder_id is not None and index["encoder_id"] != expected_encoder_id:
            raise EmbeddingCacheError(
                f"the embedding cache {index_path} was built with encoder {index['encoder_id']!r}, "
                f"not the expected {expected_encoder_id!r}: rebuild it with EmbeddingCache.build"
            )
        try:
            tensors = load_file(str(tensor_path))
        except (SafetensorError, OSError, ValueError) as err:
            raise EmbeddingCacheError(f"cannot read {tensor_path}: {err}") from err
        matrix = tensors.get(TENSOR_KEY)
        if matrix is None or set(tensors) != {TENSOR_KEY}:
            raise EmbeddingCacheError(
                f"{tensor_path} must hold exactly one tensor {TENSOR_KEY!r}, found {sorted(tensors)}"
            )
        prompts, dim = index["prompts"], index["dim"]
        if matrix.dtype != torch.float32 or matrix.ndim != 2:
            raise EmbeddingCacheError(
                f"{tensor_path}: {TENSOR_KEY!r} must be a 2-D float32 tensor, "
                f"got {matrix.dtype} {tuple(matrix.shape)}"
            )
        if matrix.shape[0] != len(prompts) or matrix.shape[1] != dim:
            raise EmbeddingCacheError(
                f"{tensor_path} holds {matrix.shape[0]} row(s) of size {matrix.shape[1]}, "
                f"but {index_path} lists "
                f"{len(prompts)} prompt(s) of dim {dim}"
            )
        cache = cls(index["encoder_id"], dim)
        for prompt, vector in zip(prompts, matrix, strict=True):
            cache._vectors[prompt] = vector.clone()
        logger.debug("loaded %d embedding(s) from %s", len(cache), folder)
        return cache


def _as_prompt_list(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string: wrap it in a list")
    prompts = list(prompts)
    bad = [type(prompt).__name__ for prompt in prompts if not isinstance(prompt, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {bad[:3]}")
    return prompts


def _read_index(path: Path) -> dict[str, Any]:
    """Read and validate ``embeddings.json``; errors name the file."""
    if not path.is_file():
        raise EmbeddingCacheError(f"no embedding cache index at {path}")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EmbeddingCacheError(f"cannot read {path}: {err}") from err
    if not isinstance(index, dict):
        raise EmbeddingCacheError(f"{path} must hold a JSON object")
    version = index.get("format_version")
    if version != FORMAT_VERSION:
        raise EmbeddingCacheError(
            f"{path} has format_version {version!r}; this TextGuidedSegLib reads version {FORMAT_VERSION}"
            + (
                " (written by a newer release: upgrade)"
                if isinstance(version, int) and version > FORMAT_VERSION
                else ""
            )
        )
    checks = {
        "encoder_id": lambda v: isinstance(v, str) and bool(v),
        "dim": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "prompts": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
        "sha256": lambda v: isinstance(v, str) and len(v) == 64,
    }
    for key, valid in checks.items():
        if key not in index or not valid(index[key]):
            raise EmbeddingCacheError(f"{path}: missing or invalid {key!r} ({index.get(key)!r:.80})")
    prompts = index["prompts"]
    if len(set(prompts)) != len(prompts):
        raise EmbeddingCacheError(f"{path}: the prompts list has duplicates")
    if "count" in index and index["count"] != len(prompts):
        raise EmbeddingCacheError(
            f"{path}: count {index['count']} differs from {len(prompts)} listed prompts"
        )
    return index
