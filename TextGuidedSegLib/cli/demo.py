"""``textguidedseg demo``: segment a phantom (or ``--input``) with the demo bundle; write the label map, an
overlay and the volumes.

Example::

    textguidedseg demo -o demo_out              # refuses a folder that is not empty; --overwrite replaces
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from TextGuidedSegLib.cli.arguments import (
    add_options_arguments,
    add_output_argument,
    add_progress_argument,
    existing_path,
    options_from_args,
)
from TextGuidedSegLib.cli.bundles import BUNDLE_HELP, resolve_bundle


def run(args: argparse.Namespace) -> int:
    """Segment a phantom (or --input) with the demo bundle; write the label map, an overlay and volumes."""
    options = options_from_args(args)  # arguments are checked before torch and MONAI are imported
    output = Path(args.output)
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        raise FileExistsError(
            f"-o/--output {output} is not empty; pass --overwrite to replace the files an earlier demo wrote "
            "there, or choose another folder"
        )
    if args.input is not None:
        existing_path(args.input, "-i/--input")
    bundle = resolve_bundle(args.bundle) if args.bundle is not None else None

    from TextGuidedSegLib.demo import DEFAULT_DEMO_BUNDLE, run_demo

    result = run_demo(
        args.output,
        bundle=bundle if bundle is not None else DEFAULT_DEMO_BUNDLE,
        input=args.input,
        prompt=args.prompt,
        seed=args.seed,
        options=options,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    written = [result.segmentation, result.sidecar, result.overlay, result.volumes]
    if result.truth is not None:
        written[:0] = [result.input, result.truth]
    sys.stdout.write("\n".join(result.table) + "\n")
    sys.stdout.write(f"wrote {', '.join(str(p) for p in written)} in {result.seconds:.0f} s\n")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``textguidedseg`` sub-commands."""
    demo = commands.add_parser("demo", help="segment a phantom (or --input) and write an overlay and volumes")
    add_output_argument(demo, "output folder (default: %(default)s)", default="demo_out")
    demo.add_argument(
        "--input", "-i", help="a CT to segment instead of the phantom (NIfTI, NRRD, DICOM folder)"
    )
    demo.add_argument(
        "--prompt",
        "-p",
        default="liver, spleen and both kidneys",
        help="structures to segment (default: %(default)s)",
    )
    demo.add_argument("--bundle", "-b", help=f"{BUNDLE_HELP} (default: the shipped demo bundle)")
    demo.add_argument("--seed", type=int, default=0, help="the phantom's seed (default: 0)")
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not empty, replacing an earlier demo's files (others are kept)",
    )
    add_progress_argument(demo)
    add_options_arguments(demo)
    demo.set_defaults(func=run)
