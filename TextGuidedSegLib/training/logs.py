"""Logging of training runs: the entry points' console format and the run folder's ``train.log``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["RUN_LOG_NAME", "close_run_log", "configure_logging", "open_run_log"]

#: The run folder's log file (rank 0 writes it).
RUN_LOG_NAME = "train.log"
#: The logger whose records the run log receives: the library's.
LIBRARY_LOGGER = "TextGuidedSegLib"


def configure_logging(rank: int | None = None) -> int:
    """Log to the console with the rank in every line: INFO on rank 0, warnings and errors on the others.

    Args:
        rank: the process's rank; None: torchrun's ``RANK`` (0 without torchrun).

    Returns:
        the rank.
    """
    if rank is None:
        rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    return rank


def open_run_log(run_dir: str | Path) -> logging.Handler:
    """Create ``run_dir`` and append the library's log records to its ``train.log``; returns the handler."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / RUN_LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger(LIBRARY_LOGGER).addHandler(handler)
    return handler


def close_run_log(handler: logging.Handler) -> None:
    """Detach a handler :func:`open_run_log` returned and close its file."""
    logging.getLogger(LIBRARY_LOGGER).removeHandler(handler)
    handler.close()
