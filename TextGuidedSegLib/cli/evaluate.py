"""``textguidedseg evaluate``: segment every case of a list file, score it (Dice, NSD), write a report.

Example::

    textguidedseg evaluate --bundle demo_phantom_film_v1 --list phantoms/phantom.txt -o eval_report
"""

from __future__ import annotations

import argparse
import logging

from TextGuidedSegLib.cli.arguments import (
    add_options_arguments,
    add_output_argument,
    add_progress_argument,
    existing_path,
    options_from_args,
)
from TextGuidedSegLib.cli.bundles import BUNDLE_HELP, resolve_bundle

logger = logging.getLogger("textguidedseg")


def run(args: argparse.Namespace) -> int:
    """Segment every case of a list file and score it against its labels (Dice, NSD); write a report."""
    options = options_from_args(args)  # every argument is checked before torch and MONAI are imported
    list_file = existing_path(args.list, "-l/--list", "file")
    if args.data_root is not None:
        existing_path(args.data_root, "--data-root", "folder")
    if args.nsd_tolerance < 0:
        raise ValueError(f"--nsd-tolerance must be a distance in mm >= 0, got {args.nsd_tolerance}")
    bundle_path = resolve_bundle(args.bundle)

    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.evaluation import evaluate
    from TextGuidedSegLib.inference import Segmenter

    bundle = load_bundle(bundle_path)
    report = evaluate(
        bundle,
        list_file,
        args.output,
        data_root=args.data_root,
        dataset=args.dataset,
        structures=args.structures,
        save_predictions=args.save_predictions,
        nsd_tolerance_mm=args.nsd_tolerance,
        progress=not args.no_progress,
        segmenter=Segmenter(bundle, options, progress=False),
    )
    logger.info(
        "%d scores over %d structures: mean Dice %.3f, mean NSD %.3f (%g mm)",
        len(report.scores),
        len(report.summary),
        report.mean_dice,
        report.mean_nsd,
        report.nsd_tolerance_mm,
    )
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the ``textguidedseg`` sub-commands."""
    evaluate = commands.add_parser(
        "evaluate", help="score a bundle on labelled CTs (Dice, surface Dice) and write a report"
    )
    evaluate.add_argument("--bundle", "-b", required=True, help=BUNDLE_HELP)
    evaluate.add_argument(
        "--list",
        "-l",
        required=True,
        help="list file, one 'image<TAB>label' case a line (the trainer's format)",
    )
    add_output_argument(evaluate, "report folder: metrics.csv, summary.md, dice_boxplot.png")
    evaluate.add_argument("--data-root", help="folder the list's paths are relative to (default: the list's)")
    evaluate.add_argument(
        "--dataset",
        help="dataset key of every case (phantom, totalseg, btcv, ...; default: from each image's folder)",
    )
    evaluate.add_argument(
        "--structures",
        help='what to score, e.g. "liver, spleen and kidneys" (default: every structure of the bundle); '
        "each case scores those its dataset annotates",
    )
    evaluate.add_argument(
        "--save-predictions", action="store_true", help="also write predictions/<case>.nii.gz with sidecars"
    )
    evaluate.add_argument(
        "--nsd-tolerance", type=float, default=3.0, help="surface Dice tolerance in mm (default: 3)"
    )
    add_progress_argument(evaluate)
    add_options_arguments(evaluate)
    evaluate.set_defaults(func=run)
