"""The CLIPSeg trainer's configuration: :class:`CLIPSegTrainConfig` (YAML file + ``--key=value`` overrides,
type-checked, unknown keys rejected, through the 3D trainer's ``load_dataclass_config``) and the split of its
global batch over the processes (:func:`rank_batch_size`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from TextGuidedSegLib.training.config import ConfigError, load_dataclass_config, split_over_ranks

from .cache import CACHE_DTYPES
from .data import SliceConfig
from .model import DEFAULT_CLIPSEG, STRATEGIES, StrategyOptions

__all__ = [
    "CACHE_MODES",
    "MONITORS",
    "CLIPSegDataConfig",
    "CLIPSegTrainConfig",
    "load_clipseg_config",
    "rank_batch_size",
]

CACHE_MODES = ("auto", "off", "memory", "disk")
#: ``early_stopping``: the validation score that selects the best epoch.
MONITORS = ("val_loss", "val_dice")


@dataclass
class CLIPSegDataConfig:
    """Cases and where their slice sets go.

    Args:
        train_lists: list files of training cases (``image<TAB>label``, the 3D trainer's format).
        val_lists: list files of validation cases (empty: no validation, no early stopping).
        data_root: the folder list-file paths are relative to; ``""`` = each list file's folder.
        default_dataset: dataset key for paths under no known dataset folder; ``""`` = report them.
        slices_dir: parent folder of the slice sets and disk encoder caches; ``""`` = ``<run_dir>/slices``.
    """

    train_lists: list[str] = field(default_factory=list)
    val_lists: list[str] = field(default_factory=list)
    data_root: str = ""
    default_dataset: str = ""
    slices_dir: str = ""


@dataclass
class CLIPSegTrainConfig:
    """One CLIPSeg fine-tuning run.

    Args:
        run_dir: output folder: ``config.yaml``, ``train.log``, ``metrics.jsonl``, ``tensorboard/``,
            checkpoints, ``bundle/``.
        model: base CLIPSeg, a Hugging Face id or a ``save_pretrained`` folder.
        strategy: ``full``, ``decoder``, ``adapter`` or ``lora`` (``TextGuidedSegLib.clipseg.model``).
        epochs: maximum epochs (passes over the training samples).
        batch_size: samples per optimizer step over ALL processes (the global batch, the same at any world
            size): each of ``N`` processes takes ``batch_size / N`` (:func:`rank_batch_size`), so it must be
            a multiple of ``N`` (32: 1, 2, 4, 8, 16 or 32 processes).
        lr: AdamW learning rate after the warm-up (the seed: 1e-3).
        min_lr: learning rate at the end of the cosine decay.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        grad_clip: maximum gradient norm; 0 = off.
        dice_weight: weight of MONAI's ``DiceLoss(sigmoid=True)`` added to the BCE-with-logits loss; 0 = BCE.
        patience: stop after this many epochs without a better validation score; 0 = never stop early.
        early_stopping: the validation score that picks the best epoch and stops early (:data:`MONITORS`):
            ``val_loss`` (lower is better) or ``val_dice`` (higher is better; the benchmark's).
        synonym_prob: probability of replacing a sample's prompt by one of the structure's synonyms.
        seed: seed of adapter / LoRA initialisation and of the sample order.
        device: ``auto`` (the rank's GPU, else CPU), ``cpu`` or ``cuda``.
        amp: ``off`` or ``bf16`` (autocast on a GPU).
        threads: ``torch.set_num_threads``; 0 leaves PyTorch's default.
        cache: frozen-encoder cache: ``auto`` (``memory`` when the strategy freezes CLIP, else off), ``off``,
            ``memory``, ``disk``.
        cache_dtype: ``float32`` (exact losses) or ``float16``.
        eval_batch_size: slices per forward pass in validation and caching.
        max_steps_per_epoch: cap on steps per epoch (quick runs); 0 = the whole epoch.
        log_every: log every this many steps.
        tensorboard: write TensorBoard event files (rank 0).
        progress: tqdm progress bars (rank 0).
        checkpoints: write ``ckpt_<step>.pt`` every epoch and ``best.pt``.
        keep_last: periodic checkpoints kept.
        export_bundle: write ``<run_dir>/bundle`` (the best epoch) at the end.
        slicing: how volumes become slice samples.
        data: cases.
        options: strategy hyper-parameters (adapter bottleneck, LoRA rank ...).
    """

    run_dir: str = "runs/clipseg"
    model: str = DEFAULT_CLIPSEG
    strategy: str = "decoder"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    grad_clip: float = 0.0
    dice_weight: float = 0.0
    patience: int = 3
    early_stopping: str = "val_loss"
    synonym_prob: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    threads: int = 0
    cache: str = "auto"
    cache_dtype: str = "float32"
    eval_batch_size: int = 32
    max_steps_per_epoch: int = 0
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    checkpoints: bool = True
    keep_last: int = 1
    export_bundle: bool = True
    slicing: SliceConfig = field(default_factory=SliceConfig)
    data: CLIPSegDataConfig = field(default_factory=CLIPSegDataConfig)
    options: StrategyOptions = field(default_factory=StrategyOptions)

    def __post_init__(self) -> None:
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {sorted(STRATEGIES)}, got {self.strategy!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "warmup_steps", "max_steps_per_epoch", "threads"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and self.min_lr >= 0 and self.weight_decay >= 0 and self.grad_clip >= 0):
            problems.append("lr must be > 0; min_lr, weight_decay and grad_clip >= 0")
        if self.dice_weight < 0 or not 0.0 <= self.synonym_prob <= 1.0:
            problems.append("dice_weight must be >= 0 and synonym_prob in [0, 1]")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.amp not in ("off", "bf16"):
            problems.append(f"amp must be off or bf16, got {self.amp!r}")
        if self.early_stopping not in MONITORS:
            problems.append(f"early_stopping must be one of {list(MONITORS)}, got {self.early_stopping!r}")
        if self.cache not in CACHE_MODES:
            problems.append(f"cache must be one of {list(CACHE_MODES)}, got {self.cache!r}")
        if self.cache_dtype not in CACHE_DTYPES:
            problems.append(f"cache_dtype must be one of {sorted(CACHE_DTYPES)}, got {self.cache_dtype!r}")
        if problems:
            raise ConfigError("invalid CLIPSeg training config:\n  " + "\n  ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """YAML/JSON-safe nested dict."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def rank_batch_size(config: CLIPSegTrainConfig, world_size: int) -> int:
    """Samples per step of each of ``world_size`` processes (pure arithmetic).

    Raises:
        DistributedConfigError: ``batch_size`` is not a multiple of ``world_size`` (one line with the fix).
    """
    return split_over_ranks("batch_size", config.batch_size, world_size, "samples per step")


def load_clipseg_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> CLIPSegTrainConfig:
    """Defaults <- YAML file <- ``--key=value`` overrides (sections dotted: ``--slicing.image_size=96``)."""
    return load_dataclass_config(CLIPSegTrainConfig, path, overrides)
