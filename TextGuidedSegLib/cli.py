"""The ``textguidedseg`` command: segment a CT from a text prompt, build embedding caches, describe bundles.

Examples::

    textguidedseg segment ct.nii.gz --prompt "liver and both kidneys" --bundle demo_bundle -o ct_seg.nii.gz
    textguidedseg encode-prompts --encoder openai/clip-vit-base-patch32 -o text_cache
    textguidedseg info demo_bundle

Every error names the file or argument at fault and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from TextGuidedSegLib import __version__

logger = logging.getLogger("textguidedseg")

LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


def _label_map_stem(path: Path) -> tuple[Path, str]:
    """Split an output path into (path without suffix, suffix); raise for an unsupported suffix."""
    name = path.name
    for suffix in LABEL_MAP_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return path.with_name(name[: -len(suffix)]), suffix
    raise ValueError(f"-o/--output {path}: the label map must end in one of {', '.join(LABEL_MAP_SUFFIXES)}")


def _cmd_segment(args: argparse.Namespace) -> int:
    """Segment one CT and write the label map, its JSON sidecar and optional probability maps."""
    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.inference import Segmenter
    from TextGuidedSegLib.io import load_volume, save_label_map, save_volume

    output = Path(args.output)
    stem, suffix = _label_map_stem(output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"-o/--output {output} already exists; pass --overwrite to replace it")
    volume = load_volume(args.input)
    bundle = load_bundle(args.bundle)
    segmenter = Segmenter(
        bundle,
        device=args.device,
        overlap=args.overlap,
        threshold=args.threshold,
        sw_batch_size=args.sw_batch_size,
        largest_component=args.largest_component,
        split_laterality=args.split_laterality,
        progress=not args.no_progress,
    )
    result = segmenter.segment(volume, args.prompt, return_probabilities=args.probabilities)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_label_map(output, result.labels, reference=volume)
    sidecar = result.sidecar(
        input=str(Path(args.input)),
        label_map=output.name,
        prompt=args.prompt,
        bundle={"name": bundle.config.name, "version": bundle.config.version},
        threshold=segmenter.threshold,
    )
    if result.probabilities is not None:
        for segment, probability in zip(result.segments, result.probabilities, strict=True):
            key = segment.class_name or f"query{segment.label_id}"
            path = save_volume(Path(f"{stem}_probability_{segment.label_id:02d}_{key}{suffix}"), probability, volume)
            sidecar["segments"][segment.label_id - 1]["probability_map"] = path.name
    sidecar_path = Path(f"{stem}.json")
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    for segment in result.segments:
        logger.info("%2d %-28s %10.1f mL", segment.label_id, segment.name, segment.volume_ml)
    logger.info("wrote %s and %s", output, sidecar_path)
    return 0


def _cmd_encode_prompts(args: argparse.Namespace) -> int:
    """Encode prompts with a CLIP text encoder into an embedding cache folder (adds to an existing one)."""
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
    encoder = CLIPTextEncoder(TextEncoderSpec(args.encoder, output=args.output_kind), device=args.device)
    output = Path(args.output)
    if (output / "embeddings.json").exists():
        cache = EmbeddingCache.load(output, expected_encoder_id=encoder.identity)
    else:
        cache = EmbeddingCache(encoder.identity, encoder.dim)
    before = len(cache)
    cache.build(prompts, encoder, batch_size=args.batch_size)
    cache.save(output)
    logger.info("%s: %d prompts (%d new), %d-d, encoder %s", output, len(cache), len(cache) - before, cache.dim,
                encoder.identity)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    """Verify a bundle and print what it is and what it understands."""
    from TextGuidedSegLib.bundle import bundle_summary, load_bundle

    summary = bundle_summary(load_bundle(args.bundle))
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return 0
    encoder = summary["text_encoder"]
    lines = [
        f"bundle       {summary['name']} v{summary['version']} (checksums verified)",
        f"model        {summary['architecture']}, {summary['mode']} mode, feature size {summary['feature_size']}, "
        f"{summary['parameters'] / 1e6:.2f} M parameters",
        f"text         {encoder['name_or_path'] if encoder else 'none: cached vocabulary only'}, "
        f"{summary['cached_prompts']} cached prompts",
        f"spacing      {summary['preprocessing']['spacing']} mm, HU window {summary['preprocessing']['hu_window']}",
        f"inference    ROI {summary['inference']['roi_size']}, overlap {summary['inference']['overlap']}, "
        f"threshold {summary['inference']['threshold']}",
        f"structures   {', '.join(summary['structures'])}",
    ]
    if summary["description"]:
        lines.append(f"description  {summary['description']}")
    if summary["license"]:
        lines.append(f"license      {summary['license']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``textguidedseg`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="textguidedseg", description="Text-guided CT segmentation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment a CT volume from a text prompt")
    segment.add_argument("input", help="CT volume: NIfTI (.nii/.nii.gz), NRRD, or a DICOM series folder")
    segment.add_argument("--prompt", "-p", required=True, help='structures to segment, e.g. "liver and both kidneys"')
    segment.add_argument("--bundle", "-b", required=True, help="model bundle folder or .zip")
    segment.add_argument("--output", "-o", required=True, help="label map to write (.nii.gz, .nii or .nrrd)")
    segment.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    segment.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1) (default: the bundle's)")
    segment.add_argument("--threshold", type=float, help="probability threshold (default: the bundle's)")
    segment.add_argument("--sw-batch-size", type=int, help="windows per forward pass (default: the bundle's)")
    segment.add_argument("--largest-component", action="store_true", help="keep each structure's largest component")
    segment.add_argument("--split-laterality", action="store_true",
                         help="restrict left/right structures to their side of the body midline")
    segment.add_argument("--probabilities", action="store_true", help="also write one probability map per query")
    segment.add_argument("--overwrite", action="store_true", help="replace existing output files")
    segment.add_argument("--no-progress", action="store_true", help="no progress bar")
    segment.set_defaults(func=_cmd_segment)

    encode = commands.add_parser("encode-prompts", help="build or extend an embedding cache with a CLIP text encoder")
    encode.add_argument("prompts", nargs="*", help="prompts to encode (default: the taxonomy's canonical prompts)")
    encode.add_argument("--output", "-o", required=True, help="cache folder (extended when it exists)")
    encode.add_argument("--encoder", default="openai/clip-vit-base-patch32",
                        help="Hugging Face id or local folder of a CLIP text model")
    encode.add_argument("--output-kind", default="pooler", choices=["pooler", "projected"],
                        help="pooler_output (as the seed) or the projected text_embeds")
    encode.add_argument("--prompts-file", help="text file with one prompt per line")
    encode.add_argument("--taxonomy", default="universal32", help="taxonomy whose prompts are the default")
    encode.add_argument("--batch-size", type=int, default=64)
    encode.add_argument("--device", default="cpu")
    encode.set_defaults(func=_cmd_encode_prompts)

    info = commands.add_parser("info", help="verify a bundle and describe it")
    info.add_argument("bundle", help="bundle folder or .zip")
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``textguidedseg`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, OSError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        logger.debug("details", exc_info=True)
        sys.stderr.write(f"textguidedseg {args.command}: error: {message}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
