"""Training checkpoints: everything needed to continue a run exactly, written atomically, read without pickle.

A checkpoint (``ckpt_<step>.pt`` in the run folder, ``best.pt`` for the best validation metric) is a dict;
``training.run.Run.save`` adds the keys every trainer shares (format version, world size, generator states,
the metric, ``kind``: ``"clipseg"`` for the CLIPSeg trainer, absent for the 3D one). The 3D trainer's:

====================  =====================================================================================
``format_version``    ``CHECKPOINT_FORMAT_VERSION``
``model``             the unwrapped module's state dict (never the DDP or ``torch.compile`` wrapper)
``model_config``      the resolved ``ModelConfig.to_dict()`` (``num_classes``, ``text_dim``, ``img_size`` set)
``optimizer``         ``AdamW.state_dict()``
``scaler``            ``GradScaler.state_dict()`` (empty when mixed precision is off or bf16)
``step``              optimizer steps done; the learning rate is the pure ``get_lr(step)``: no scheduler state
``epoch``             the data epoch in progress
``epoch_draws``       images each rank consumed in that epoch (the sampler skips them on resume)
``world_size``        ranks of the run that wrote it
``rng``               one dict per rank: python, numpy, torch CPU and CUDA generator states as tensors/lists
``config``            the resolved ``TrainConfig.to_dict()``
``best_metric``       the best validation value so far; what it measures is the next two keys
``best_metric_name``  ``"val_dice_mean"`` (3D: mean Dice, -1 before any validation; its step: ``best_step``)
                      or ``"val_loss"`` (CLIPSeg: +inf before any validation; its epoch: ``best_epoch``)
``best_metric_mode``  ``"max"`` or ``"min"``: which direction is better. Older checkpoints lack both keys:
                      their trainer's metric applies (``training.run.checkpoint_metric``, by ``kind``)
``text``              ``{"encoder_id", "prompts", "embeddings" (N, E)}``: the vocabulary the model was
                      trained on (None for the text-free baselines)
``structures``        the class names of the output channels / query vocabulary, in order
====================  =====================================================================================

Every value is a tensor, a number, a string, None, or a list/dict of those, so :func:`load_checkpoint` reads
it with ``torch.load(weights_only=True)``: no code is unpickled. :func:`save_checkpoint` writes a temporary
file in the same folder, fsyncs it and ``os.replace``-s it onto the target: a checkpoint file is complete or
absent, never half written, even when the process is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "BEST_NAME",
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointWriteError",
    "checkpoint_name",
    "find_latest",
    "get_rng_state",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
    "seed_generators",
    "set_rng_state",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
BEST_NAME = "best.pt"
_CKPT = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    """``ckpt_0001000.pt`` for step 1000 (zero-padded so names sort by step)."""
    return f"ckpt_{step:07d}.pt"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, no permission); the message names the file. Whatever was
    at that path before is intact: the write goes to a temporary file that replaces it only when complete."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``).

    Raises:
        CheckpointWriteError: the write failed (e.g. the disk is full); ``path`` is as it was before.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        kept = "the previous file is intact" if path.exists() else "nothing was written there"
        reason = getattr(err, "strerror", None) or err
        error = CheckpointWriteError(
            f"cannot write checkpoint {path}: {reason}; {kept}. Free disk space (or fix the folder's "
            "permissions) and continue with --resume auto"
        )
        error.errno = getattr(err, "errno", None)
        raise error from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):  # make the rename durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (never unpickles code).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint of this trainer, or a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "model" not in state or "format_version" not in state:
        raise ValueError(f"{path} is not a TextGuidedSeg training checkpoint (no 'model'/'format_version')")
    if state["format_version"] > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format_version {state['format_version']} is newer than this library reads "
            f"({CHECKPOINT_FORMAT_VERSION}); update TextGuidedSegLib"
        )
    return state


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_<step>.pt`` in ``run_dir``, by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT.match(p.name))]
    return sorted(found)


def find_latest(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest step in ``run_dir`` (None when there is none)."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest ``ckpt_<step>.pt`` (``best.pt`` is never touched)."""
    found = list_checkpoints(run_dir)
    removed = [path for _, path in found[: max(0, len(found) - keep_last)]]
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


# ----------------------------------------------------------------------------------------------------------
# Random number generator states as weights_only-safe values
# ----------------------------------------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """This process's generator states (python, numpy, torch CPU, every CUDA device) as tensors and lists."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def seed_generators(seed: int) -> None:
    """Seed this process's global generators: torch (CPU and CUDA), numpy (``seed`` mod 2**32) and python."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        else:
            logger.warning(
                "checkpoint holds %d CUDA generator state(s) but %d device(s) are visible: CUDA RNG not "
                "restored",
                len(state["cuda"]),
                torch.cuda.device_count(),
            )
