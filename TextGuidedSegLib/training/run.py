"""One training run's folder, files and processes, shared by both trainers: :class:`Run`.

A run owns what every trainer sets up around its step and validation, and tears it down however the run ends:

- the processes (:class:`~.distributed.DistributedContext`): joined on entry, left on exit (together, after a
  barrier, only when the run finished: a rank that failed alone must not wait for the others);
- the run folder: which checkpoint to continue from (:meth:`Run.resume`; a fresh start over checkpoints is
  refused where the trainer asks for it), ``config.yaml``, ``train.log`` (the library's log records);
- ``metrics.jsonl`` (one JSON record a line) and TensorBoard (``tensorboard/``), on rank 0 only;
- checkpoints (:meth:`Run.save`): every rank gives its generator states, rank 0 writes ``ckpt_<step>.pt``
  atomically (``training.checkpoint``), prunes to ``keep_last``, and writes ``best.pt`` when validation
  improved. Each records what its ``best_metric`` is and which direction is better (:class:`BestMetric`).

Use (the trainer's own part runs in a function of its own, so that its DDP wrapper is garbage when the run
tears down; see :meth:`Run.__exit__`)::

    run = Run.from_config(config, MEAN_DICE)  # torchrun's variables read and checked; nothing started
    ...  # the trainer's own checks of run.context.world_size
    with run:
        return _train(run, config, resume)  # run.resume(...), run.open(...), run.log(...), run.save(...)
"""

from __future__ import annotations

import gc
import json
import logging
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import torch.distributed as dist

from TextGuidedSegLib import __version__

from .checkpoint import (
    BEST_NAME,
    CHECKPOINT_FORMAT_VERSION,
    checkpoint_name,
    find_latest,
    get_rng_state,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from .distributed import DistributedContext
from .logs import close_run_log, open_run_log

__all__ = ["MEAN_DICE", "METRICS_NAME", "VAL_LOSS", "BestMetric", "Run", "RunSettings", "checkpoint_metric"]

logger = logging.getLogger(__name__)

#: The run folder's metrics file (rank 0 appends one JSON record a line).
METRICS_NAME = "metrics.jsonl"


@dataclass(frozen=True)
class BestMetric:
    """What a checkpoint's ``best_metric`` measures, which direction is better, and its value before any.

    Examples::

        >>> MEAN_DICE.improves(0.5, best=0.4), VAL_LOSS.improves(0.5, best=0.4)
        (True, False)
        >>> MEAN_DICE.improves(float("nan"), best=-1.0)
        False
    """

    name: str
    mode: str
    initial: float

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"BestMetric {self.name!r}: mode must be 'max' or 'min', got {self.mode!r}")

    def improves(self, value: float, best: float) -> bool:
        """Whether ``value`` is better than ``best`` (NaN never is)."""
        if math.isnan(value):
            return False
        return value > best if self.mode == "max" else value < best

    def describe(self) -> str:
        """``"val_loss (lower is better)"``."""
        return f"{self.name} ({'higher' if self.mode == 'max' else 'lower'} is better)"


#: The 3D trainer's: mean validation Dice over the structures, -1 before any validation.
MEAN_DICE = BestMetric("val_dice_mean", "max", -1.0)
#: The CLIPSeg trainer's: mean validation loss per sample, +inf before any validation.
VAL_LOSS = BestMetric("val_loss", "min", math.inf)
#: Checkpoints written before the metric was recorded: their trainer's metric, by the checkpoint's ``kind``.
_METRIC_OF_KIND = {None: MEAN_DICE, "clipseg": VAL_LOSS}


def checkpoint_metric(checkpoint: dict[str, Any]) -> BestMetric:
    """The metric a checkpoint's ``best_metric`` measures: as recorded, else its trainer's (older files)."""
    if "best_metric_name" in checkpoint:
        mode = checkpoint["best_metric_mode"]
        initial = -math.inf if mode == "max" else math.inf
        known = _METRIC_OF_KIND.get(checkpoint.get("kind"))
        if known is not None and (known.name, known.mode) == (checkpoint["best_metric_name"], mode):
            return known
        return BestMetric(checkpoint["best_metric_name"], mode, initial)
    return _METRIC_OF_KIND.get(checkpoint.get("kind"), MEAN_DICE)


class RunSettings(Protocol):
    """What :meth:`Run.from_config` reads of a trainer's config (``TrainConfig``, ``CLIPSegTrainConfig``)."""

    device: str
    run_dir: str
    keep_last: int
    tensorboard: bool
    threads: int


class Run:
    """The run folder, its files and the processes of one training run, as a context manager.

    Args:
        context: this process's place in the run (not started yet: entering the run starts it).
        run_dir: the run folder (rank 0 creates it in :meth:`open`).
        metric: what ``best_metric`` means for this trainer.
        keep_last: periodic checkpoints kept by :meth:`save`.
        tensorboard: write TensorBoard event files (rank 0).
        kind: written into every checkpoint as ``"kind"`` (None: the 3D trainer, whose files have none).
        threads: ``torch.set_num_threads`` while the run lasts; 0 keeps PyTorch's default.
    """

    def __init__(
        self,
        context: DistributedContext,
        run_dir: str | Path,
        metric: BestMetric,
        *,
        keep_last: int,
        tensorboard: bool = False,
        kind: str | None = None,
        threads: int = 0,
    ) -> None:
        self.context = context
        self.run_dir = Path(run_dir)
        self.metric = metric
        self.keep_last = keep_last
        self.tensorboard = tensorboard
        self.kind = kind
        self.threads = threads
        self.resumed_from: Path | None = None
        self._log_handler: logging.Handler | None = None
        self._metrics: Any = None
        self._writer: Any = None

    @classmethod
    def from_config(cls, config: RunSettings, metric: BestMetric, kind: str | None = None) -> Run:
        """The run of a trainer's config: its device (torchrun's place, checked), folder, ``keep_last``,
        ``tensorboard`` and ``threads``; nothing starts before ``with``."""
        return cls(
            DistributedContext.from_environment(config.device),
            config.run_dir,
            metric,
            keep_last=config.keep_last,
            tensorboard=config.tensorboard,
            kind=kind,
            threads=config.threads,
        )

    @property
    def master(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.context.is_master

    # ---- set-up ----------------------------------------------------------------------------------------
    def __enter__(self) -> Run:
        self.context.start(self.threads)
        return self

    def resume(self, resume: str | Path | None, *, refuse_existing: bool) -> dict[str, Any] | None:
        """The checkpoint to continue from, read, or None for a fresh start.

        Args:
            resume: ``"auto"`` (the latest checkpoint in the run folder; None when there is none), a
                checkpoint path, or None.
            refuse_existing: refuse a fresh start (``resume`` None) in a folder that holds checkpoints.

        Raises:
            FileExistsError: a fresh start over checkpoints, with ``refuse_existing``.
            FileNotFoundError, ValueError: the checkpoint is missing, not one, or measures another metric.
        """
        if resume == "auto":
            path = find_latest(self.run_dir)
            if path is None:
                logger.info("--resume auto: no checkpoint in %s, starting a new run", self.run_dir)
        elif resume:
            path = Path(resume)
        else:
            path = None
            if refuse_existing and list_checkpoints(self.run_dir):
                raise FileExistsError(
                    f"{self.run_dir} already holds checkpoints; pass --resume auto to continue that run, "
                    "or choose another run_dir"
                )
        if path is None:
            return None
        checkpoint = load_checkpoint(path)
        found = checkpoint_metric(checkpoint)
        if (found.name, found.mode) != (self.metric.name, self.metric.mode):
            raise ValueError(
                f"{path}: its best_metric is {found.describe()}, but this trainer tracks "
                f"{self.metric.describe()}: it was written by another trainer"
            )
        self.resumed_from = path
        return checkpoint

    def open(self, config_text: str) -> None:
        """Rank 0: create the run folder, ``train.log``, ``config.yaml``, ``metrics.jsonl``, TensorBoard."""
        if not self.master:
            return
        self._log_handler = open_run_log(self.run_dir)
        (self.run_dir / "config.yaml").write_text(config_text, encoding="utf-8")
        context = self.context
        logger.info(
            "TextGuidedSegLib %s, %d rank(s) on %s; config:\n%s",
            __version__,
            context.world_size,
            context.device.type,
            config_text,
        )
        if self.resumed_from is not None:
            logger.info("resuming from %s", self.resumed_from)
        self._metrics = open(self.run_dir / METRICS_NAME, "a", encoding="utf-8")  # noqa: SIM115
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def restore_generators(self, checkpoint: dict[str, Any]) -> bool:
        """Restore this rank's generator states from ``checkpoint``; False (nothing done) at another world
        size."""
        if checkpoint["world_size"] != self.context.world_size:
            return False
        set_rng_state(checkpoint["rng"][self.context.rank])
        return True

    # ---- during the run ----------------------------------------------------------------------------------
    def log(
        self,
        record: dict[str, Any],
        scalars: dict[str, float] | None = None,
        *,
        step: int | None = None,
        flush: bool = True,
    ) -> None:
        """Rank 0: append ``record`` to ``metrics.jsonl``; ``scalars`` (``{"train/loss": v}``) to TensorBoard,
        when it is on, at ``step`` (default ``record["step"]``)."""
        if not self.master:
            return
        self._metrics.write(json.dumps(record) + "\n")
        if flush:
            self._metrics.flush()
        if scalars and self._writer is not None:
            for tag, value in scalars.items():
                self._writer.add_scalar(tag, value, record["step"] if step is None else step)

    def save(
        self, step: int, state: Callable[[], dict[str, Any]], *, periodic: bool, best: bool
    ) -> Path | None:
        """Write ``ckpt_<step>.pt`` (``periodic``, then prune) and ``best.pt`` (``best``); all ranks call it.

        Args:
            step: optimizer steps done.
            state: builds the trainer's part of the checkpoint (rank 0 only calls it), with ``best_metric``;
                the run adds the format version, world size, every rank's generator states, the metric's name
                and direction, ``kind`` and the library version.
            periodic: write the periodic checkpoint.
            best: write ``best.pt``.

        Returns:
            the periodic checkpoint written (rank 0), else None.
        """
        rng_states = self.context.gather(get_rng_state())  # every rank gives its states, rank 0 writes
        if not self.master or not (periodic or best):
            return None
        full = {"format_version": CHECKPOINT_FORMAT_VERSION, **state()}
        full.update(
            world_size=self.context.world_size,
            rng=rng_states,
            best_metric_name=self.metric.name,
            best_metric_mode=self.metric.mode,
            library_version=__version__,
        )
        if self.kind is not None:
            full["kind"] = self.kind
        written = None
        if periodic:
            written = save_checkpoint(full, self.run_dir / checkpoint_name(step))
            prune_checkpoints(self.run_dir, self.keep_last)
            logger.info("saved %s", written)
        if best:
            save_checkpoint(full, self.run_dir / BEST_NAME)
            logger.info("saved %s (%s %.4f)", self.run_dir / BEST_NAME, self.metric.name, full["best_metric"])
        return written

    # ---- teardown ----------------------------------------------------------------------------------------
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            if self._metrics is not None:
                self._metrics.close()
            if self._log_handler is not None:
                close_run_log(self._log_handler)
        finally:
            self._writer = self._metrics = self._log_handler = None
            if self.context.ddp and dist.is_initialized():
                # Free the DDP wrapper (it holds the process group) while every rank is still connected, then
                # leave together: a process group torn down after a peer has exited can wait for it forever.
                # The wrapper lives in the trainer's function: gone once it returned; after an error the
                # traceback still holds that function's frame, so clear the frames' variables first.
                if tb is not None:
                    traceback.clear_frames(tb)
                gc.collect()
            self.context.stop(barrier=exc_type is None)
