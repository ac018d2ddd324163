"""The command line of the training entry points (``Training/train.py``, ``Training/train_clipseg.py``).

Both take ``--config FILE``, ``--resume auto|CHECKPOINT`` (each also as ``--name=value``), ``-h``/``--help``,
and pass every other argument on as a ``--key=value`` config override. Errors found before training starts
(the config, the processes) are printed once, by rank 0 (:func:`report_error`); every rank exits with 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["ArgumentsError", "TrainArguments", "parse_train_arguments", "read_command_line", "report_error"]

_VALUE_OPTIONS = ("--config", "--resume")


class ArgumentsError(ValueError):
    """The command line is malformed (an option without its value)."""


class TrainArguments(NamedTuple):
    """A training command line, split up.

    Attributes:
        config: the ``--config`` file, or None.
        resume: the ``--resume`` value (``auto`` or a checkpoint), or None.
        overrides: every other argument, in order (``--key=value`` config overrides).
        help: ``-h`` or ``--help`` was given (the rest may be incomplete).
    """

    config: str | None
    resume: str | None
    overrides: list[str]
    help: bool = False


def parse_train_arguments(argv: Sequence[str]) -> TrainArguments:
    """Split a training command line into config file, resume target and overrides.

    Parsing stops at ``-h``/``--help``. The value of ``--config``/``--resume`` is the next argument, whatever
    it is; the last of several occurrences wins.

    Raises:
        ArgumentsError: ``--config`` or ``--resume`` ends the command line without a value.
    """
    config: str | None = None
    resume: str | None = None
    overrides: list[str] = []
    arguments = list(argv)
    while arguments:
        argument = arguments.pop(0)
        if argument in ("-h", "--help"):
            return TrainArguments(config, resume, overrides, help=True)
        if argument in _VALUE_OPTIONS:
            if not arguments:
                raise ArgumentsError(f"{argument} needs a value")
            value = arguments.pop(0)
        elif argument.startswith(tuple(f"{option}=" for option in _VALUE_OPTIONS)):
            argument, value = argument.split("=", 1)
        else:
            overrides.append(argument)
            continue
        if argument == "--config":
            config = value
        else:
            resume = value
    return TrainArguments(config, resume, overrides)


def read_command_line(argv: Sequence[str], usage: str) -> TrainArguments | int:
    """The entry point's parsed command line, or its exit status when there is nothing to run.

    Returns:
        :class:`TrainArguments`; or 0 after printing ``usage`` for ``-h``, 2 after printing a malformed
        command line's error to stderr.
    """
    try:
        arguments = parse_train_arguments(argv)
    except ArgumentsError as err:
        print(err, file=sys.stderr)
        return 2
    if arguments.help:
        print(usage)
        return 0
    return arguments


def report_error(error: BaseException | str, rank: int) -> int:
    """Print ``error: <message>`` to stderr on rank 0 only (the other ranks stay quiet); returns 2.

    For errors every rank finds alike before training starts (config, world size), so that a run of ``N``
    processes says it once instead of ``N`` times.
    """
    if rank == 0:
        print(f"error: {error}", file=sys.stderr)
    return 2
