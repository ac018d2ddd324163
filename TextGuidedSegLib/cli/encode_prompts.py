"""``textguidedseg encode-prompts``: build or extend a prompt -> embedding cache with a CLIP text encoder.

Example::

    textguidedseg encode-prompts --encoder openai/clip-vit-base-patch32 -o text_cache
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from TextGuidedSegLib.cli.arguments import add_device_argument, add_output_argument, existing_path

logger = logging.getLogger("textguidedseg")


def run(args: argparse.Namespace) -> int:
    """Encode prompts with a CLIP text encoder into an embedding cache folder (adds to an existing one)."""
    from TextGuidedSegLib.taxonomy import get_taxonomy

    prompts = list(args.prompts)  # every argument is checked before torch is imported
    if args.prompts_file:
        path = existing_path(args.prompts_file, "--prompts-file", "file")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        prompts = get_taxonomy(args.taxonomy).prompts
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"-o/--output {output} is a file; the cache is a folder")

    from TextGuidedSegLib.inference import resolve_device
    from TextGuidedSegLib.text import CLIPTextEncoder, EmbeddingCache, TextEncoderSpec

    spec = TextEncoderSpec(args.encoder, output=args.output_kind)
    encoder = CLIPTextEncoder(spec, device=resolve_device(args.device))
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
