"""Training: one trainer for every model, as one process or under torchrun (``Training/train.py``).

- ``config``: ``TrainConfig`` (YAML file + ``--key=value`` overrides, type-checked, unknown keys rejected).
- ``data``: list files -> MONAI transforms (label transfer into the training structures) -> batches; the
  ``ResumableSampler`` makes every batch a pure function of (seed, epoch, position), so runs resume exactly.
- ``queries``: partial-label query sampling (only structures the case's dataset annotates).
- ``loss``: BCE + Dice over the valid queries / annotated channels.
- ``embeddings``: the prompt embeddings (an ``EmbeddingCache`` folder, or ``synthetic_text_cache``).
- ``validation``: sliding-window per-structure Dice.
- ``checkpoint``: atomic, ``weights_only``-loadable checkpoints with RNG states and the data position.
- ``run``: ``Run``, the run context both trainers share: run folder, ``train.log``, ``metrics.jsonl``,
  TensorBoard, checkpoints (with what ``best_metric`` means: ``BestMetric``), pruning, teardown.
- ``trainer``: ``get_lr`` and the loop, ``train(config, resume)``.
- ``distributed``: ``DistributedContext``: one process or torchrun's, device, process group (both trainers).
- ``logs``, ``arguments``: console logging, the run's ``train.log``, the entry points' command line.
- ``export``: checkpoint -> bundle (``export_bundle``).

Heavy modules (MONAI transforms, TensorBoard) load on first use of the names below.
"""

from __future__ import annotations

from TextGuidedSegLib._lazy import lazy_getattr

__all__ = [
    "ConfigError",
    "SegmentationLoss",
    "TrainConfig",
    "TrainResult",
    "export_bundle",
    "get_lr",
    "load_config",
    "sample_queries",
    "synthetic_text_cache",
    "train",
]

_WHERE = {
    "ConfigError": "config",
    "TrainConfig": "config",
    "load_config": "config",
    "SegmentationLoss": "loss",
    "sample_queries": "queries",
    "synthetic_text_cache": "embeddings",
    "TrainResult": "trainer",
    "get_lr": "trainer",
    "train": "trainer",
    "export_bundle": "export",
}

__getattr__ = lazy_getattr(__name__, _WHERE)
