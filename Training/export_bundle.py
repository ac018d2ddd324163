"""Export a training checkpoint as an inference bundle (folder, or .zip when --output ends in .zip).

    python Training/export_bundle.py --checkpoint runs/demo_phantom/best.pt --output demo_bundle \
        --name demo_phantom --version 0.1.0 --description "Phantom demo, liver/spleen/kidneys"
    textguidedseg info demo_bundle

The bundle holds the weights, the model config, the structures trained on, the training spacing, HU window
and ROI, and the embeddings of its vocabulary (see TextGuidedSegLib.training.export).
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="ckpt_<step>.pt or best.pt of a training run")
    parser.add_argument("--output", required=True, help="bundle folder, or a path ending in .zip")
    parser.add_argument("--name", help="bundle name (default: <architecture>_<run folder name>)")
    parser.add_argument("--version", default="0.1.0", help="version of the weights")
    parser.add_argument("--description", help="one paragraph for users (default: generated)")
    parser.add_argument("--license", default="", help="licence of the weights")
    parser.add_argument(
        "--intended-use",
        choices=("phantom", "synthetic", "research", "published"),
        help="what the bundle is fit for (default: phantom for phantom training lists, synthetic for "
        "synthetic embeddings, else research)",
    )
    parser.add_argument(
        "--dataset-key",
        help="global mode trained on dataset prompts: the dataset key inference conditions on (needed when "
        "the run had several datasets)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from TextGuidedSegLib.bundle import BundleError
    from TextGuidedSegLib.training.export import export_bundle

    try:
        path = export_bundle(
            args.checkpoint,
            args.output,
            name=args.name,
            version=args.version,
            description=args.description,
            license=args.license,
            overwrite=args.overwrite,
            intended_use=args.intended_use,
            dataset_key=args.dataset_key,
        )
    except (BundleError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
