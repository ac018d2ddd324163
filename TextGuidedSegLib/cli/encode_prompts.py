"""``textguidedseg encode-prompts``: build or extend a prompt -> embedding cache with a CLIP text encoder.

Example::

    textguidedseg encode-prompts --encoder openai/clip-vit-base-patch32 -o text_cache
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from TextGuidedSegLib.cli.arguments import add_device_argument, add_output_argument

logger = logging.getLogger("textguidedseg")


def run(args: argparse.Namespace) -> int:
    """Encode prompts with a CLIP text encoder into an embedding cache folder (adds to an existing one)."""
    from TextGuidedSegLib.inference import resolve_device
    from TextGuidedSegLib.taxonomy import get_taxonomy
    from TextGuidedSegLib.text import CLIPTextEncoder, EmbeddingCache, TextEncoderSpec

    prompts = list(args.prompts)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts-file {path} does not exist")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        prompts = get_taxonomy(args.taxonomy).prompts
    spec = TextEncoderSpec(args.encoder, output=args.output_kind)
    encoder = CLIPTextEncoder(spec, device=resolve_device(args.device))
    output = Path(args.output)
    if (output / "embeddings.json").exists():
        cache = EmbeddingCache.load(output, expected_encoder_id=encoder.identity)
    else:
        cache = EmbeddingCache(encoder.identity, encoder.dim)
    before = len(cache)
    cache.build(prompts, encoder, batch_size=args.batch_size)
    cache.save(output)
    logger.info(
        "%s: %d prompts (%d new), %d-d, encoder %s",
        output,
        len(cache),
        len(cache) - before,
        cache.dim,
        encoder.identity,
    )
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``encode-prompts`` to the ``textguidedseg`` sub-commands."""
    encode = commands.add_parser(
        "encode-prompts", help="build or extend an embedding cache with a CLIP text encoder"
    )
    encode.add_argument(
        "prompts", nargs="*", help="prompts to encode (default: the taxonomy's canonical prompts)"
    )
    add_output_argument(encode, "cache folder (extended when it exists)")
    encode.add_argument(
        "--encoder",
        default="openai/clip-vit-base-patch32",
        help="Hugging Face id or local folder of a CLIP text model",
    )
    encode.add_argument(
        "--output-kind",
        default="pooler",
        choices=["pooler", "projected"],
        help="pooler_output (as the seed) or the projected text_embeds",
    )
    encode.add_argument("--prompts-file", help="text file with one prompt per line")
    encode.add_argument("--taxonomy", default="universal32", help="taxonomy whose prompts are the default")
    encode.add_argument("--batch-size", type=int, default=64)
    add_device_argument(encode)
    encode.set_defaults(func=run)
