"""``textguidedseg info``: verify a bundle (checksums, loading) and describe what it is and understands.

Example::

    textguidedseg info demo_bundle --json
"""

from __future__ import annotations

import argparse
import json
import sys

from TextGuidedSegLib.cli.bundles import BUNDLE_HELP, resolve_bundle


def run(args: argparse.Namespace) -> int:
    """Verify a bundle and print what it is and what it understands."""
    from TextGuidedSegLib.bundle import bundle_summary, load_bundle

    summary = bundle_summary(load_bundle(resolve_bundle(args.bundle)))
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return 0
    encoder = summary["text_encoder"]
    preprocessing = summary["preprocessing"]
    steps = preprocessing.get("intensity")
    intensity = (
        f"HU window {preprocessing['hu_window']}"
        if steps is None
        else "intensity " + ", ".join(step["transform"] for step in steps)
    )
    network = summary.get("network")
    model = (
        f"MONAI {network}, {summary['parameters'] / 1e6:.2f} M parameters"
        if network
        else f"{summary['architecture']}, {summary['mode']} mode, feature size {summary['feature_size']}, "
        f"{summary['parameters'] / 1e6:.2f} M parameters"
    )
    lines = [
        f"bundle       {summary['name']} v{summary['version']} (checksums verified)",
        f"model        {model}",
        f"text         {encoder['name_or_path'] if encoder else 'none: cached vocabulary only'}, "
        f"{summary['cached_prompts']} cached prompts",
        f"spacing      {preprocessing['spacing']} mm, {intensity}",
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


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``info`` to the ``textguidedseg`` sub-commands."""
    info = commands.add_parser("info", help="verify a bundle and describe it")
    info.add_argument("bundle", help=BUNDLE_HELP)
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.set_defaults(func=run)
