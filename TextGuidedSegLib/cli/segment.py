"""``textguidedseg segment``: one CT and a prompt in; a label map, its JSON sidecar and optional maps out.

Example::

    textguidedseg segment ct.nii.gz --prompt "liver and both kidneys" -b wholebody_ct_highres -o seg.nii.gz
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from TextGuidedSegLib.cli.arguments import (
    add_options_arguments,
    add_output_argument,
    add_progress_argument,
    existing_path,
    options_from_args,
)
from TextGuidedSegLib.cli.bundles import DEFAULT_BUNDLE_HELP, default_bundle, resolve_bundle

logger = logging.getLogger("textguidedseg")


def _label_map_stem(path: Path) -> tuple[Path, str]:
    """Split an output path into (path without suffix, suffix); raise naming -o/--output when unsupported."""
    from TextGuidedSegLib.inference.outputs import label_map_stem

    try:
        return label_map_stem(path)
    except ValueError as err:
        raise ValueError(f"-o/--output {err}") from None


def _show_parse(segmenter: object, prompt: str) -> None:
    """Log what the prompt was read as (structures, exclusions, corrections, free text) before any work."""
    from TextGuidedSegLib.taxonomy.prompt import explain_prompt

    config = segmenter.bundle.config  # type: ignore[attr-defined]
    if not prompt.strip() and segmenter.bundle.model.config.mode == "global":  # type: ignore[attr-defined]
        logger.info("prompt: empty; segmenting every structure of %s", config.name)
        return
    parse = explain_prompt(prompt, config.taxonomy, allow_free_text=segmenter.understands_free_text)  # type: ignore[attr-defined]
    for query in parse.queries:
        kind = "free text" if query.structure is None else query.structure.class_name
        logger.info("prompt: %-28s (%s) <- %r", query.name, kind, query.text)
    for line in parse.notes:
        logger.info("prompt: %s", line)
    if parse.excluded:
        logger.info("prompt: excluded %s", ", ".join(parse.excluded))
    if parse.guessed:
        logger.warning(
            "prompt: the parse guessed (see above); check the structures before trusting the result"
        )


def run(args: argparse.Namespace) -> int:
    """Segment one CT and write the label map, its JSON sidecar and optional probability maps."""
    # Every argument is checked before torch and MONAI are imported, so a mistake is reported at once.
    options = options_from_args(args)
    output = Path(args.output)
    _label_map_stem(output)  # fail on a bad suffix before any work
    if output.exists() and not args.overwrite and not args.dry_run:
        raise FileExistsError(f"-o/--output {output} already exists; pass --overwrite to replace it")
    existing_path(args.input, "input")
    bundle_path = resolve_bundle(args.bundle) if args.bundle is not None else default_bundle()

    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.inference import Segmenter
    from TextGuidedSegLib.io import load_volume

    bundle = load_bundle(bundle_path)
    segmenter = Segmenter(bundle, options, progress=not args.no_progress)
    _show_parse(segmenter, args.prompt)
    if args.dry_run:
        return 0
    volume = load_volume(args.input)
    result = segmenter.segment(volume, args.prompt)  # a caveat of the bundle on this CT is logged (WARNING)
    files = result.save(output)
    for segment in result.segments:
        logger.info("%2d %-28s %10.1f mL", segment.label_id, segment.name, segment.volume_ml)
    logger.info("wrote %s and %s", files.label_map, files.sidecar)
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``segment`` to the ``textguidedseg`` sub-commands."""
    segment = commands.add_parser("segment", help="segment a CT volume from a text prompt")
    segment.add_argument("input", help="CT volume: NIfTI (.nii/.nii.gz), NRRD, or a DICOM series folder")
    segment.add_argument(
        "--prompt", "-p", required=True, help='structures to segment, e.g. "liver and both kidneys"'
    )
    segment.add_argument("--bundle", "-b", help=DEFAULT_BUNDLE_HELP)
    add_output_argument(segment, "label map to write (.nii.gz, .nii, .nrrd; .seg.nrrd: Slicer segmentation)")
    segment.add_argument("--overwrite", action="store_true", help="replace existing output files")
    segment.add_argument(
        "--dry-run",
        action="store_true",
        help="print the structures the prompt is read as and stop (loads the bundle, not the CT)",
    )
    add_progress_argument(segment)
    add_options_arguments(segment)
    segment.set_defaults(func=run)
