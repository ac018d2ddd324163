"""``textguidedseg info``: verify a bundle (checksums, weight headers); describe what it is and understands.

Reads the bundle's files only (:func:`~TextGuidedSegLib.bundle_header.describe_bundle`, no torch), so it
answers at once; ``--load`` also builds the model and loads the weights into it, as ``segment`` does.

Examples::

    textguidedseg info demo_phantom_film_v1
    textguidedseg info path/to/bundle.zip --json
    textguidedseg info wholebody_ct_highres --load
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from TextGuidedSegLib.cli.bundles import BUNDLE_HELP, resolve_bundle


def _summary(args: argparse.Namespace) -> dict[str, Any]:
    """The bundle's description: from its files, or (``--load``) from the loaded model too."""
    path = resolve_bundle(args.bundle)
    if not args.load:
        from TextGuidedSegLib.bundle_header import describe_bundle

        return describe_bundle(path)
    from TextGuidedSegLib.bundle import bundle_summary, load_bundle

    bundle = load_bundle(path)
    return {**bundle_summary(bundle), "sha256": bundle.sha256, "checksums_verified": True, "loaded": True}


def run(args: argparse.Namespace) -> int:
    """Verify a bundle and print what it is and what it understands."""
    summary = _summary(args)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return 0
    encoder = summary["text_encoder"]
    preprocessing, inference = summary["preprocessing"], summary["inference"]
    steps = preprocessing.get("intensity")
    intensity = (
        f"HU window {preprocessing.get('hu_window', 'default')}"
        if steps is None
        else "intensity " + ", ".join(step["transform"] for step in steps)
    )
    network = summary.get("network")
    size = (
        f"{summary['parameters'] / 1e6:.2f} M parameters (weights loaded)"
        if "parameters" in summary
        else f"{summary['weights'] / 1e6:.2f} M stored weights in {summary['tensors']} tensors"
    )
    model = (
        f"MONAI {network}, {size}"
        if network
        else f"{summary['architecture']}, {summary['mode']} mode, feature size {summary['feature_size']}, "
        f"{size}"
    )
    verified = "checksums verified" + (", model loaded" if summary.get("loaded") else "")
    lines = [
        f"bundle       {summary['name']} v{summary['version']} ({verified})",
        f"fit for      {summary.get('intended_use') or 'not declared'}",
        f"model        {model}",
        f"text         {encoder['name_or_path'] if encoder else 'none: cached vocabulary only'}, "
        f"{summary['cached_prompts']} cached prompts",
        f"spacing      {preprocessing.get('spacing', 'default')} mm, {intensity}",
        f"inference    ROI {inference.get('roi_size', 'default')}, "
        f"overlap {inference.get('overlap', 'default')}, "
        f"threshold {inference.get('threshold', 'default')}",
        f"structures   {', '.join(summary['structures'])}",
    ]
    if summary["description"]:
        lines.append(f"description  {summary['description']}")
    if summary["license"]:
        lines.append(f"license      {summary['license']}")
    lines.append(f"sha256       {summary['sha256']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``info`` to the ``textguidedseg`` sub-commands."""
    info = commands.add_parser("info", help="verify a bundle and describe it")
    info.add_argument("bundle", help=BUNDLE_HELP)
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.add_argument(
        "--load",
        action="store_true",
        help="also build the model and load its weights (checks they fit the architecture; loads torch)",
    )
    info.set_defaults(func=run)
