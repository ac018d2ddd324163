"""``textguidedseg phantoms``: procedural abdominal CT phantoms (images, label maps, a list file).

Example::

    textguidedseg phantoms -o phantoms -n 10
"""

from __future__ import annotations

import argparse
import logging

from TextGuidedSegLib.cli.arguments import add_output_argument, add_progress_argument

logger = logging.getLogger("textguidedseg")


def run(args: argparse.Namespace) -> int:
    """Write procedural CT phantoms (images, label maps, list file) for training, evaluation and demos."""
    if args.count < 1:
        raise ValueError(f"-n/--count must be >= 1, got {args.count}")
    for name, values in (("--shape", args.shape), ("--spacing", args.spacing)):
        if min(values) <= 0:
            raise ValueError(f"{name} must be 3 positive values, got {' '.join(str(v) for v in values)}")
    if args.noise_hu < 0:
        raise ValueError(f"--noise-hu must be a standard deviation >= 0, got {args.noise_hu}")

    from TextGuidedSegLib.data.phantom import PhantomConfig, write_phantoms

    config = PhantomConfig(shape=tuple(args.shape), spacing=tuple(args.spacing), noise_hu=args.noise_hu)
    list_file = write_phantoms(args.output, args.count, config, seed=args.seed, progress=not args.no_progress)
    logger.info("wrote %d phantom(s) and %s", args.count, list_file)
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``phantoms`` to the ``textguidedseg`` sub-commands."""
    phantoms = commands.add_parser("phantoms", help="write procedural abdominal CT phantoms and a list file")
    add_output_argument(phantoms, "folder for images/, labels/ and phantom.txt")
    phantoms.add_argument("--count", "-n", type=int, default=10, help="number of phantoms (default: 10)")
    phantoms.add_argument(
        "--seed", type=int, default=0, help="seed of the set (case i: a seed derived from it)"
    )
    phantoms.add_argument("--shape", type=int, nargs=3, default=(128, 128, 64), metavar=("I", "J", "K"))
    phantoms.add_argument("--spacing", type=float, nargs=3, default=(2.5, 2.5, 2.5), metavar=("X", "Y", "Z"))
    phantoms.add_argument("--noise-hu", type=float, default=15.0, help="Gaussian noise standard deviation")
    add_progress_argument(phantoms)
    phantoms.set_defaults(func=run)
