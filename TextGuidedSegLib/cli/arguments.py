"""Arguments several verbs share, spelt once: ``--device``, ``--output``, ``--no-progress`` and the
segmentation options (one flag per :class:`~TextGuidedSegLib.inference.options.SegmentationOptions` field).

A field ``flip_tta`` is the flag ``--flip-tta`` and the attribute ``args.flip_tta``; :func:`options_from_args`
reads them back into one options object. The flags are made from the fields and their ``metadata["help"]``,
so a new field gets its flag without an edit here.

Examples::

    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_options_arguments(parser)
    >>> options = options_from_args(parser.parse_args(["--overlap", "0.25", "--flip-tta"]))
    >>> options.overlap, options.threshold, options.flip_tta
    (0.25, None, True)
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from TextGuidedSegLib.inference.options import DEVICE_HELP, SegmentationOptions

__all__ = [
    "DEVICE_HELP",
    "add_device_argument",
    "add_options_arguments",
    "add_output_argument",
    "add_progress_argument",
    "existing_path",
    "flag",
    "options_from_args",
]

_BUNDLES = "(default: None, the bundle's value)"


def flag(name: str) -> str:
    """The command-line flag of an option field: ``flip_tta`` -> ``--flip-tta``."""
    return "--" + name.replace("_", "-")


def existing_path(value: str | Path, argument: str, kind: str = "file or folder") -> Path:
    """``value`` as a Path once it exists, checked before any heavy import; else FileNotFoundError naming the
    ``argument`` (``"input"``, ``"--list"``) and the path."""
    path = Path(value)
    exists = path.is_file() if kind == "file" else path.is_dir() if kind == "folder" else path.exists()
    if not exists:
        found = " (it is a folder)" if kind == "file" and path.is_dir() else ""
        raise FileNotFoundError(f"{argument} {path}: no such {kind}{found}")
    return path


def _device(value: str) -> str:
    """``--device`` values, checked exactly as ``SegmentationOptions.device`` is."""
    try:
        SegmentationOptions(device=value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def add_device_argument(parser: argparse._ActionsContainer, default: str = "auto") -> None:
    """Add ``--device`` (auto, cpu, cuda, cuda:N, mps) to a parser or group; a bad value exits with 2."""
    parser.add_argument("--device", type=_device, default=default, help=f"{DEVICE_HELP} (default: {default})")


def add_output_argument(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """Add ``--output``/``-o``, where a verb writes; required when there is no default."""
    parser.add_argument("--output", "-o", required=default is None, default=default, help=help)


def add_progress_argument(parser: argparse.ArgumentParser, help: str = "no progress bar") -> None:
    """Add ``--no-progress``."""
    parser.add_argument("--no-progress", action="store_true", help=help)


def add_options_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ``SegmentationOptions`` field (``--flip-tta`` for ``flip_tta``), from its metadata."""
    group = parser.add_argument_group(
        "segmentation options", "how to run the bundle; None takes the bundle's own value"
    )
    types = typing.get_type_hints(SegmentationOptions)
    for option in dataclasses.fields(SegmentationOptions):
        help, kind = option.metadata["help"], types[option.name]
        if option.name == "device":
            add_device_argument(group)
        elif kind is bool:
            action = argparse.BooleanOptionalAction if option.default else "store_true"
            group.add_argument(flag(option.name), action=action, help=help)
        else:
            value_type = next(t for t in typing.get_args(kind) or (kind,) if t is not type(None))
            bundles = f" {_BUNDLES}" if option.default is None else f" (default: {option.default})"
            group.add_argument(
                flag(option.name),
                type=value_type,
                default=option.default,
                choices=option.metadata.get("choices"),
                help=help + bundles,
            )


def options_from_args(args: argparse.Namespace) -> SegmentationOptions:
    """The ``SegmentationOptions`` of parsed arguments; a bad value raises ``ValueError`` naming its flag."""
    values = {name: getattr(args, name) for name in SegmentationOptions.names()}
    for name, value in values.items():
        try:
            SegmentationOptions(**{name: value})  # the checks are per field: this one names the culprit
        except ValueError as err:
            raise ValueError(f"{flag(name)} {value}: {err}") from None
    return SegmentationOptions(**values)
