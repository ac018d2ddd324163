"""The ``textguidedseg`` command: segment CTs from text prompts, evaluate bundles, run the demo, and more.

Examples::

    textguidedseg bundles pull wholebody_ct_highres
    textguidedseg segment ct.nii.gz --prompt "liver and both kidneys" -b wholebody_ct_highres -o seg.nii.gz
    textguidedseg bundles list
    textguidedseg evaluate --bundle demo_phantom_film_v1 --list phantoms/phantom.txt -o eval_report
    textguidedseg demo -o demo_out
    textguidedseg encode-prompts --encoder openai/clip-vit-base-patch32 -o text_cache
    textguidedseg info demo_phantom_film_v1
    textguidedseg clipseg-bench --tiny --volumes ct.nii.gz,seg.nii.gz --val-volumes ct2.nii.gz,seg2.nii.gz

One module per verb, each with ``add_parser(commands)`` beside its handler; the arguments several verbs
share (``--output``/``-o`` where a verb writes, ``--device``, the segmentation options) are spelt once in
``arguments``. Modules import nothing heavy at the top, so ``--help`` stays free of torch and MONAI, and each
handler checks its arguments and paths (option values, input files, output suffixes, ``--overwrite``) before
it imports them: a mistake, and ``info``, answer in well under a second (``Testing/bench/bench_startup.py``).

``--bundle`` takes a registry name, an installed bundle's name or a bundle folder/.zip; ``segment`` without it
uses the first installed of ``wholebody_ct_highres``, ``wholebody_ct_lowres``, ``swin_unetr_btcv``, else the
built-in phantom demo (with a warning). Every error names the file or argument at fault and exits with
status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from TextGuidedSegLib import __version__
from TextGuidedSegLib.cli import (
    bundles,
    clipseg_bench,
    demo,
    encode_prompts,
    evaluate,
    info,
    phantoms,
    segment,
    serve,
)

__all__ = ["VERBS", "build_parser", "main"]

logger = logging.getLogger("textguidedseg")

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
LOG_LEVEL_HELP = "how much to log (default: INFO)"

# The verb modules in the order of ``textguidedseg --help``.
VERBS = (segment, evaluate, demo, phantoms, encode_prompts, clipseg_bench, info, bundles, serve)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` taking flags only as spelt (``--out`` is not ``--output``), sub-commands too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``textguidedseg`` (exposed for documentation and tests)."""
    parser = _Parser(prog="textguidedseg", description="Text-guided CT segmentation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help=LOG_LEVEL_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.add_parser(commands)
    _add_log_level_after_verbs(commands)
    return parser


def _add_log_level_after_verbs(commands: argparse._SubParsersAction) -> None:
    """Accept ``--log-level`` after the verb too (``segment ct.nii.gz --log-level DEBUG``), sub-verbs
    included; unset there, it leaves the value given before the verb (or INFO) alone."""
    for sub in commands.choices.values():
        sub.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, help=LOG_LEVEL_HELP)
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_log_level_after_verbs(action)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``textguidedseg`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    # The library's errors are ValueError subclasses (bad input, named in the message), OSError (files) and
    # TextEncoderUnavailableError; anything else is a bug and keeps its traceback.
    try:
        return args.func(args)
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        logger.debug("details", exc_info=True)
        command = " ".join(filter(None, (args.command, getattr(args, "verb", None))))
        sys.stderr.write(f"textguidedseg {command}: error: {message}\n")
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors reported as a message with exit status 2. TextEncoderUnavailableError is looked up only when its
    module was imported (it pulls in torch, which ``bundles list`` must not)."""
    errors: list[type[BaseException]] = [ValueError, OSError]
    encoder = sys.modules.get("TextGuidedSegLib.text.encoder")
    if encoder is not None:
        errors.append(encoder.TextEncoderUnavailableError)
    return tuple(errors)
