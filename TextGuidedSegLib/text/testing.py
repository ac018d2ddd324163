"""Tiny random-init CLIP text towers for tests: no download, deterministic, well under a second.

Other test suites (bundles, CLI) build a real :class:`~TextGuidedSegLib.text.encoder.CLIPTextEncoder` with::

    folder = make_tiny_clip_text_model(tmp_path / "clip")
    encoder = CLIPTextEncoder(TextEncoderSpec(str(folder)))   # E = 32 (pooler) or 16 (projected)
"""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path

import torch

from .tokenizer import load_clip_tokenizer, read_bpe_merges, write_clip_tokenizer_files

logger = logging.getLogger(__name__)

TINY_NUM_LAYERS = 2
TINY_NUM_HEADS = 4
TINY_INTERMEDIATE_SIZE = 37
TINY_MAX_POSITIONS = 77


@functools.lru_cache(maxsize=4)
def _cached_merges(bpe_path: str) -> tuple[tuple[str, str], ...]:
    return tuple(read_bpe_merges(bpe_path))


def make_tiny_clip_text_model(
    folder: str | Path,
    bpe_path: str | Path | None = None,
    seed: int = 0,
    hidden_size: int = 32,
    projection_dim: int = 16,
) -> Path:
    """Save a tiny random-init ``CLIPTextModelWithProjection`` and its tokenizer into ``folder``.

    The folder loads with ``CLIPTextModel`` (pooler output, E = ``hidden_size``) and with
    ``CLIPTextModelWithProjection`` (``text_embeds``, E = ``projection_dim``): 2 layers, 4 heads, intermediate
    size 37, 77 positions. The same arguments always give byte-identical weights; the global torch RNG is left
    untouched.

    Args:
        folder: destination (created if needed).
        bpe_path: open_clip's ``bpe_simple_vocab_16e6.txt.gz``: the real 49,408-token CLIP tokenizer.
            ``None``: a byte-level CLIP tokenizer without merges (514 tokens: 256 byte symbols, the same
            with ``</w>``, ``<|startoftext|>``, ``<|endoftext|>``), built offline with no data file.
        seed: weight-initialisation seed; different seeds give different models (and encoder identities).
        hidden_size: width of the text tower (``pooler`` embedding size), a multiple of 4.
        projection_dim: size of ``text_embeds`` (``projected`` embedding size).

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``hidden_size`` is not a positive multiple of 4, or ``projection_dim`` < 1.
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    if hidden_size < TINY_NUM_HEADS or hidden_size % TINY_NUM_HEADS:
        raise ValueError(f"hidden_size must be a positive multiple of {TINY_NUM_HEADS}, got {hidden_size}")
    if projection_dim < 1:
        raise ValueError(f"projection_dim must be >= 1, got {projection_dim}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = _cached_merges(str(bpe_path)) if bpe_path is not None else ()
    with tempfile.TemporaryDirectory(prefix="tiny_clip_tokenizer_") as tmp:
        write_clip_tokenizer_files(tmp, merges, model_max_length=TINY_MAX_POSITIONS)
        tokenizer = load_clip_tokenizer(tmp)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=TINY_INTERMEDIATE_SIZE,
        num_hidden_layers=TINY_NUM_LAYERS,
        num_attention_heads=TINY_NUM_HEADS,
        max_position_embeddings=TINY_MAX_POSITIONS,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModelWithProjection(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    logger.debug("saved tiny CLIP text model (vocab %d, seed %d) to %s", len(tokenizer), seed, folder)
    return folder
