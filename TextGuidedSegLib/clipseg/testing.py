"""Tiny random-init CLIPSeg models for tests and dry runs: no download, deterministic, a fraction of a second.

::

    folder = make_tiny_clipseg(tmp_path / "clipseg")   # loads like CIDAS/clipseg-rd64-refined
    net = CLIPSegNet.from_pretrained(str(folder))
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from TextGuidedSegLib.text.tokenizer import load_clip_tokenizer, write_clip_tokenizer_files

from .model import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["make_tiny_clipseg"]

logger = logging.getLogger(__name__)


def make_tiny_clipseg(
    folder: str | Path,
    image_size: int = 64,
    hidden_size: int = 32,
    vision_layers: int = 4,
    extract_layers: tuple[int, ...] = (0, 1, 2),
    seed: int = 0,
    text_layers: int = 2,
) -> Path:
    """Save a tiny random-init ``CLIPSegForImageSegmentation`` and its ``CLIPSegProcessor`` into ``folder``.

    The layout of the real checkpoints, scaled down: a vision tower of ``vision_layers`` layers (patch 16,
    ``image_size`` pixels) whose layers ``extract_layers`` feed the decoder (the last layer is unused, as
    layers 10-12 of ViT-B/16 in CIDAS/clipseg-rd64-refined), a 2-layer text tower, projection and reduce
    size 16, the refined decoder's transposed convolutions; a byte-level CLIP tokenizer (514 tokens, no
    merges). The same arguments always give identical weights; the global RNG is left untouched.
    ``text_layers``: depth of the text tower (the benchmark's adapter layout reads its ``extract_layers``).

    Returns:
        ``folder``.
    """
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="tiny_clipseg_tokenizer_") as tmp:
        write_clip_tokenizer_files(tmp, [], model_max_length=77)
        tokenizer = load_clip_tokenizer(tmp)
    config = CLIPSegConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": text_layers,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": 4,
            "image_size": image_size,
            "patch_size": 16,
        },
        projection_dim=16,
        reduce_dim=16,
        extract_layers=list(extract_layers),
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        use_complex_transposed_convolution=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPSegForImageSegmentation(config)
    model.save_pretrained(folder)
    image_processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    logger.debug("saved tiny CLIPSeg (%d px, seed %d) to %s", image_size, seed, folder)
    return folder
