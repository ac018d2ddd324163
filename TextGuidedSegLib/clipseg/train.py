"""Fine-tune CLIPSeg on 2D slice samples: :func:`train_clipseg`, as one process or under torchrun.

The loop shares the 3D trainer's parts (``TextGuidedSegLib.training``): the configuration machinery (YAML
file + ``--key=value`` overrides, type-checked, unknown keys rejected), the pure learning-rate schedule
``get_lr`` (linear warm-up, cosine decay), atomic ``weights_only`` checkpoints with generator states,
``metrics.jsonl`` and TensorBoard on rank 0, DDP from ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``. It differs where
2D slices differ: the data are memory-mapped arrays (no MONAI pipeline), an epoch is one pass over the
samples in a seeded order, and training stops early when the validation loss has not improved for
``patience`` epochs (the best epoch's weights are kept).

One optimizer step, timed in four parts (``torch.cuda.synchronize`` between them on a GPU): *data* (gather
the batch from the slice set, or the encoder cache), *forward* (logits and loss), *backward*, *optimizer*
(clip, AdamW step, zero grad). The benchmark reads these to explain which strategy is fastest and why.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import resource
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from TextGuidedSegLib import __version__
from TextGuidedSegLib.training.checkpoint import (
    BEST_NAME,
    CHECKPOINT_FORMAT_VERSION,
    checkpoint_name,
    find_latest,
    get_rng_state,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    seed_generators,
    set_rng_state,
)
from TextGuidedSegLib.training.config import (
    ConfigError,
    load_dataclass_config,
    split_over_ranks,
)
from TextGuidedSegLib.training.distributed import DistributedContext
from TextGuidedSegLib.training.logs import close_run_log, open_run_log
from TextGuidedSegLib.training.trainer import get_lr

from .cache import CACHE_DTYPES, EncoderCache
from .data import SliceConfig, SliceSet, build_slice_set, cases_from_lists
from .model import (
    DEFAULT_CLIPSEG,
    STRATEGIES,
    CLIPSegNet,
    ParameterCount,
    PixelSpec,
    StrategyOptions,
    apply_strategy,
)

__all__ = [
    "CLIPSegDataConfig",
    "CLIPSegTrainConfig",
    "CLIPSegTrainResult",
    "EpochRecord",
    "PeakMemory",
    "StepTimes",
    "load_clipseg_config",
    "rank_batch_size",
    "sample_dice",
    "train_clipseg",
]

logger = logging.getLogger(__name__)

CACHE_MODES = ("auto", "off", "memory", "disk")


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
        patience: stop after this many epochs without a lower validation loss; 0 = never stop early.
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


# ----------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------


@dataclass
class StepTimes:
    """Seconds spent in each part of the optimizer steps of a run (summed over steps).

    Attributes:
        data: gathering the batch (slice set or encoder cache) and moving it to the device.
        forward: logits and loss.
        backward: ``loss.backward()``.
        optimizer: gradient clipping, ``AdamW.step``, ``zero_grad``.
        steps: optimizer steps timed.
        samples: training samples in those steps (all ranks).
    """

    data: float = 0.0
    forward: float = 0.0
    backward: float = 0.0
    optimizer: float = 0.0
    steps: int = 0
    samples: int = 0

    @property
    def total(self) -> float:
        """Seconds of all four parts."""
        return self.data + self.forward + self.backward + self.optimizer

    def per_step(self) -> dict[str, float]:
        """Mean seconds per step of each part and of the step."""
        n = max(1, self.steps)
        return {
            "data": self.data / n,
            "forward": self.forward / n,
            "backward": self.backward / n,
            "optimizer": self.optimizer / n,
            "step": self.total / n,
        }


class PeakMemory:
    """Peak memory of a block: CUDA ``max_memory_allocated``, or the process RSS sampled every 10 ms on CPU.

    ``ru_maxrss`` only grows over the process's life, so runs after the first would all report the same
    peak; sampling ``/proc/self/statm`` gives each block its own (falls back to ``ru_maxrss`` elsewhere).

    Attributes:
        kind: ``"cuda"`` or ``"cpu_rss"``.
        peak_mib: the peak, MiB.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda" if device.type == "cuda" else "cpu_rss"
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss_mib() -> float:
        try:
            with open("/proc/self/statm", encoding="ascii") as handle:
                pages = int(handle.read().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mib = max(self.peak_mib, self._rss_mib())

    def __enter__(self) -> PeakMemory:
        if self.kind == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_mib = self._rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_mib = max(self.peak_mib, self._rss_mib())


@dataclass
class EpochRecord:
    """One epoch: steps, mean training loss, validation loss and Dice per (slice, prompt), seconds."""

    epoch: int
    steps: int
    train_loss: float
    val_loss: float
    val_dice: float
    seconds: float


@dataclass
class CLIPSegTrainResult:
    """What a run produced and measured.

    Attributes:
        net: the trained net, holding the best epoch's weights, in ``eval()`` mode.
        strategy: the strategy.
        parameters: trainable and total parameters.
        losses: training loss of every step (mean over the ranks).
        history: one record per epoch.
        best_epoch: epoch of the lowest validation loss (the last epoch without validation).
        stopped_early: training ended by early stopping.
        times: the step split (data / forward / backward / optimizer).
        cache_seconds: building the encoder cache (0 without one).
        wall_seconds: everything: model set-up excluded, cache, training, validation, checkpoints.
        samples_per_s: training samples per second of step time.
        peak_memory_mib: peak memory of the run (``memory_kind``: ``cuda`` or ``cpu_rss``).
        memory_kind: what ``peak_memory_mib`` measures.
        cached: whether steps read the encoder cache.
        bundle: the exported bundle, or None.
        run_dir: the run folder.
    """

    net: CLIPSegNet
    strategy: str
    parameters: ParameterCount
    losses: list[float]
    history: list[EpochRecord]
    best_epoch: int
    stopped_early: bool
    times: StepTimes
    cache_seconds: float
    wall_seconds: float
    samples_per_s: float
    peak_memory_mib: float
    memory_kind: str
    cached: bool
    bundle: Path | None
    run_dir: Path


# ----------------------------------------------------------------------------------------------------------
# Loss and metrics
# ----------------------------------------------------------------------------------------------------------


class SliceLoss(nn.Module):
    """BCE-with-logits over pixels, plus ``dice_weight`` x MONAI ``DiceLoss(sigmoid=True)`` per sample.

    ``forward(logits (B, S, S), target (B, S, S) float in {0, 1}) -> scalar``.
    """

    def __init__(self, dice_weight: float = 0.0) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.dice = None
        if dice_weight > 0:
            from monai.losses import DiceLoss

            self.dice = DiceLoss(sigmoid=True, reduction="none")  # (B, 1, 1, 1): one value per sample

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits, target)
        if self.dice is not None:
            loss = loss + self.dice_weight * self.dice(logits[:, None], target[:, None]).mean()
        return loss

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of each sample ``(B,)``; its mean is :meth:`forward`'s value."""
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
        if self.dice is not None:
            loss = loss + self.dice_weight * self.dice(logits[:, None], target[:, None]).flatten()
        return loss


def sample_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice per sample ``(B,)`` of ``logits > 0`` against ``target`` ``(B, S, S)``; two empty masks: 1."""
    prediction = logits > 0
    reference = target > 0.5
    inter = (prediction & reference).flatten(1).sum(1).float()
    sizes = prediction.flatten(1).sum(1).float() + reference.flatten(1).sum(1).float()
    return torch.where(sizes > 0, 2 * inter / sizes.clamp_min(1), torch.ones_like(sizes))


# ----------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------


class _Forward(nn.Module):
    """``forward(batch) -> logits (B, S, S)``: the part of a step DDP wraps (from the cache, or pixels)."""

    def __init__(self, net: CLIPSegNet, cache: EncoderCache | None) -> None:
        super().__init__()
        self.net = net
        self.cache = cache

    def forward(self, images: torch.Tensor | None, slices: np.ndarray, prompts: list[str]) -> torch.Tensor:
        unique = list(dict.fromkeys(prompts))
        inverse = torch.tensor([unique.index(p) for p in prompts])
        if self.cache is not None:
            activations = self.cache.activations(slices)
            features = self.cache.text_features(unique)
        else:
            assert images is not None
            activations = self.net.vision_activations(self.net.pixel.normalize(images))
            features = self.net.text_features(unique)
        conditional = self.net.conditional_embeddings(features)
        return self.net.decode(activations, conditional[inverse.to(conditional.device)])


def _gather(slice_set: SliceSet, rows: np.ndarray, with_images: bool, device: torch.device) -> dict[str, Any]:
    """The samples ``rows``: slice indices, structure indices, masks ``(B, S, S)`` float, images (uint8)."""
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    masks = np.empty((rows.size, *slice_set.masks.shape[1:]), dtype=np.uint8)
    masks[order] = slice_set.masks[sorted_rows]
    samples = slice_set.samples[rows]
    batch: dict[str, Any] = {
        "slices": samples[:, 0],
        "structures": samples[:, 1],
        "masks": torch.from_numpy(masks).to(device, torch.float32),
        "images": None,
    }
    if with_images:
        slices = samples[:, 0]
        unique, inverse = np.unique(slices, return_inverse=True)
        images = np.ascontiguousarray(slice_set.images[unique])[inverse]
        batch["images"] = torch.from_numpy(images).to(device)
    return batch


def _prompts(
    slice_set: SliceSet, structures: np.ndarray, synonym_prob: float, rng: np.random.Generator
) -> list[str]:
    """One prompt per sample: the canonical one, or with ``synonym_prob`` a random synonym."""
    out = []
    for s in structures.tolist():
        options = slice_set.prompts(int(s))
        if synonym_prob > 0 and len(options) > 1 and rng.random() < synonym_prob:
            out.append(options[int(rng.integers(1, len(options)))])
        else:
            out.append(options[0])
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate_samples(
    forward: _Forward,
    slice_set: SliceSet,
    criterion: SliceLoss,
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    autocast: Any = None,
) -> tuple[float, float]:
    """Mean loss and mean Dice per (slice, prompt) over a slice set's samples (canonical prompts).

    Returns:
        ``(loss, dice)``; with DDP each rank scores its share and the means are global.
    """
    forward.net.eval()
    rows_all = np.arange(len(slice_set))[rank::world_size]
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for start in range(0, rows_all.size, batch_size):
        rows = rows_all[start : start + batch_size]
        batch = _gather(slice_set, rows, forward.cache is None, device)
        prompts = [slice_set.prompt(int(s)) for s in batch["structures"]]
        with autocast or nullcontext():
            logits = forward(batch["images"], batch["slices"], prompts).float()
        loss = criterion.per_sample(logits, batch["masks"])
        dice = sample_dice(logits, batch["masks"])
        sums += torch.stack(
            [loss.sum().double(), dice.sum().double(), torch.tensor(len(rows), device=device).double()]
        )
    if world_size > 1:
        dist.all_reduce(sums)
    forward.net.train()
    loss_sum, dice_sum, count = sums.tolist()
    return loss_sum / max(count, 1.0), dice_sum / max(count, 1.0)


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------


def _trainable_state(net: CLIPSegNet) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}


def _load_trainable(net: CLIPSegNet, state: dict[str, torch.Tensor]) -> None:
    params = dict(net.named_parameters())
    missing = sorted(set(n for n, p in params.items() if p.requires_grad) - set(state))
    if missing:
        raise ValueError(f"checkpoint lacks trainable parameters {missing[:3]} of strategy {net.strategy!r}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _slices_dir(config: CLIPSegTrainConfig) -> Path:
    """Parent folder of slice sets and disk encoder caches: ``data.slices_dir``, else ``<run_dir>/slices``."""
    return Path(config.data.slices_dir or Path(config.run_dir) / "slices")


def build_sets(config: CLIPSegTrainConfig, progress: bool) -> tuple[SliceSet, SliceSet | None]:
    """The training and validation slice sets of a config (built once into ``data.slices_dir``)."""
    data = config.data
    if not data.train_lists:
        raise ConfigError("data.train_lists is empty: name at least one list file of training cases")
    root = _slices_dir(config)
    kwargs = {"data_root": data.data_root or None, "default_dataset": data.default_dataset or None}
    train_set = build_slice_set(cases_from_lists(data.train_lists, **kwargs), config.slicing, root, progress)
    val_set = None
    if data.val_lists:
        val_set = build_slice_set(cases_from_lists(data.val_lists, **kwargs), config.slicing, root, progress)
    return train_set, val_set


def train_clipseg(
    config: CLIPSegTrainConfig,
    net: CLIPSegNet | None = None,
    train_set: SliceSet | None = None,
    val_set: SliceSet | None = None,
    resume: str | Path | None = None,
) -> CLIPSegTrainResult:
    """Fine-tune CLIPSeg with ``config.strategy`` (see the module docstring for the step).

    Args:
        config: the run.
        net: a fresh :class:`CLIPSegNet` (no strategy yet); default: loaded from ``config.model``.
        train_set: training slices; default: built from ``config.data.train_lists``.
        val_set: validation slices; default: from ``config.data.val_lists`` (None: no validation).
        resume: ``"auto"`` (latest checkpoint in ``run_dir``, if any) or a checkpoint path; continues after
            the checkpoint's epoch with its weights, optimizer and generator states.

    Returns:
        A :class:`CLIPSegTrainResult`; its net holds the best epoch's weights.
    """
    context = DistributedContext.from_environment(config.device)
    ddp, rank, local_rank, world_size = context.ddp, context.rank, context.local_rank, context.world_size
    device, use_cuda, master = context.device, context.use_cuda, context.is_master
    per_rank = rank_batch_size(config, world_size)  # DistributedConfigError before anything starts
    context.start(config.threads)
    run_dir = Path(config.run_dir)
    file_handler: logging.Handler | None = None
    writer = None
    metrics_file = None
    finished = False
    try:
        if master:
            file_handler = open_run_log(run_dir)
            import yaml

            (run_dir / "config.yaml").write_text(
                yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8"
            )
        progress = master and config.progress
        if train_set is None:
            train_set, val_set = build_sets(config, progress)
        if net is None:
            net = CLIPSegNet.from_pretrained(config.model)
        if (
            net.pixel.image_size != train_set.config.image_size
        ):  # CLIPSeg interpolates its position embeddings
            net.pixel = PixelSpec(train_set.config.image_size, net.pixel.mean, net.pixel.std)
        torch.manual_seed(config.seed)  # adapter / LoRA initialisation: identical on every rank
        parameters = apply_strategy(net, config.strategy, config.options)
        net.to(device).train()
        checkpoint = None
        if resume is not None:
            path = find_latest(run_dir) if resume == "auto" else Path(resume)
            if path is not None:
                checkpoint = load_checkpoint(path)
                logger.info("resuming from %s (epoch %d)", path, checkpoint["epoch"])
        optimizer = torch.optim.AdamW(
            [p for p in net.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
        )
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if (use_cuda and config.amp == "bf16")
            else nullcontext()
        )
        criterion = SliceLoss(config.dice_weight)
        if master:
            metrics_file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            if config.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

        with PeakMemory(device) as memory:
            wall_start = time.perf_counter()
            # ---- the frozen-encoder cache -------------------------------------------------------------
            use_cache = config.cache in ("memory", "disk") or (config.cache == "auto" and net.cacheable)
            cache = val_cache = None
            cache_seconds = 0.0
            if use_cache:
                start = time.perf_counter()
                storage = "disk" if config.cache == "disk" else "memory"
                folder = _slices_dir(config)
                prompts = sorted({p for s in range(len(train_set.structures)) for p in train_set.prompts(s)})
                common = {
                    "storage": storage,
                    "dtype": config.cache_dtype,
                    "folder": folder,
                    "batch_size": config.eval_batch_size,
                    "device": device,
                    "progress": progress,
                }
                cache = EncoderCache.build(net, train_set, prompts, **common)
                if val_set is not None:
                    val_prompts = [val_set.prompt(s) for s in range(len(val_set.structures))]
                    val_cache = EncoderCache.build(net, val_set, val_prompts, **common)
                _sync(device)
                cache_seconds = time.perf_counter() - start
            forward = _Forward(net, cache)
            model: nn.Module = forward
            if ddp:
                model = DistributedDataParallel(
                    forward,
                    device_ids=[local_rank] if use_cuda else None,
                )
            val_forward = _Forward(net, val_cache)

            # ---- state ----------------------------------------------------------------------------------
            n_train = len(train_set)
            steps_per_epoch = (
                n_train // config.batch_size if world_size > 1 else math.ceil(n_train / config.batch_size)
            )
            if config.max_steps_per_epoch:
                steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
            if steps_per_epoch < 1:
                raise ConfigError(f"{n_train} training samples make no batch of {config.batch_size}")
            max_steps = config.epochs * steps_per_epoch
            step, first_epoch = 0, 0
            best_loss, best_epoch, bad_epochs = math.inf, -1, 0
            best_state: dict[str, torch.Tensor] | None = None
            history: list[EpochRecord] = []
            losses: list[float] = []
            if checkpoint is not None:
                _load_trainable(net, checkpoint["model"])
                optimizer.load_state_dict(checkpoint["optimizer"])
                step, first_epoch = checkpoint["step"], checkpoint["epoch"] + 1
                best_loss, best_epoch = checkpoint["best_metric"], checkpoint["best_epoch"]
                bad_epochs = checkpoint["bad_epochs"]
                history = [EpochRecord(**r) for r in checkpoint["history"]]
                losses = list(checkpoint["losses"])
                if checkpoint["world_size"] == world_size:
                    set_rng_state(checkpoint["rng"][rank])
                if best_epoch == checkpoint["epoch"]:
                    best_state = _trainable_state(net)
                elif (run_dir / BEST_NAME).is_file():
                    best_state = load_checkpoint(run_dir / BEST_NAME)["model"]
                del checkpoint
            else:
                seed_generators(config.seed + rank)
            times = StepTimes()
            stopped_early = False
            bar = tqdm(
                total=max_steps,
                initial=step,
                desc=f"train {config.strategy}",
                unit="step",
                disable=not progress,
            )
            for epoch in range(first_epoch, config.epochs):
                epoch_start = time.perf_counter()
                order = np.random.default_rng([config.seed, epoch]).permutation(n_train)
                prompt_rng = np.random.default_rng([config.seed, epoch, rank, 1])
                epoch_losses = []
                for index in range(steps_per_epoch):
                    lr = get_lr(step, config.lr, config.warmup_steps, max_steps, config.min_lr)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    _sync(device)
                    t0 = time.perf_counter()
                    rows = order[index * config.batch_size : (index + 1) * config.batch_size]
                    rows = rows[rank::world_size][:per_rank] if world_size > 1 else rows
                    batch = _gather(train_set, rows, cache is None, device)
                    prompts = _prompts(train_set, batch["structures"], config.synonym_prob, prompt_rng)
                    _sync(device)
                    t1 = time.perf_counter()
                    with autocast:
                        logits = model(batch["images"], batch["slices"], prompts)
                    loss = criterion(logits.float(), batch["masks"])
                    _sync(device)
                    t2 = time.perf_counter()
                    loss.backward()
                    _sync(device)
                    t3 = time.perf_counter()
                    if config.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(
                            [p for p in net.parameters() if p.requires_grad], config.grad_clip
                        )
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    _sync(device)
                    t4 = time.perf_counter()
                    times.data += t1 - t0
                    times.forward += t2 - t1
                    times.backward += t3 - t2
                    times.optimizer += t4 - t3
                    times.steps += 1
                    times.samples += len(rows) * world_size
                    step += 1
                    loss_value = float(context.mean_(loss.detach()))
                    losses.append(loss_value)
                    epoch_losses.append(loss_value)
                    if master:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss_value:.4f}")
                        record = {
                            "step": step,
                            "epoch": epoch,
                            "loss": loss_value,
                            "lr": lr,
                            "step_time": t4 - t0,
                        }
                        metrics_file.write(json.dumps(record) + "\n")
                        if step % config.log_every == 0:
                            logger.info(
                                "step %d/%d epoch %d: loss %.4f lr %.2e",
                                step,
                                max_steps,
                                epoch,
                                loss_value,
                                lr,
                            )
                            if writer is not None:
                                writer.add_scalar("train/loss", loss_value, step)
                                writer.add_scalar("train/lr", lr, step)
                                writer.add_scalar("perf/step_time_s", t4 - t0, step)

                # ---- validation and early stopping ------------------------------------------------------
                val_loss = val_dice = float("nan")
                improved = False
                if val_set is not None:
                    val_loss, val_dice = evaluate_samples(
                        val_forward,
                        val_set,
                        criterion,
                        config.eval_batch_size,
                        device,
                        rank,
                        world_size,
                        autocast,
                    )
                    improved = val_loss < best_loss
                    if improved:
                        best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
                        best_state = _trainable_state(net)
                    else:
                        bad_epochs += 1
                else:
                    best_epoch, improved = epoch, True
                record_epoch = EpochRecord(
                    epoch=epoch,
                    steps=steps_per_epoch,
                    train_loss=float(np.mean(epoch_losses)),
                    val_loss=val_loss,
                    val_dice=val_dice,
                    seconds=time.perf_counter() - epoch_start,
                )
                history.append(record_epoch)
                if master:
                    logger.info(
                        "epoch %d: train loss %.4f, val loss %.4f, val Dice %.4f (best epoch %d)",
                        epoch,
                        record_epoch.train_loss,
                        val_loss,
                        val_dice,
                        best_epoch,
                    )
                    metrics_file.write(json.dumps({"event": "epoch", **record_epoch.__dict__}) + "\n")
                    metrics_file.flush()
                    if writer is not None:
                        writer.add_scalar("val/loss", val_loss, step)
                        writer.add_scalar("val/dice", val_dice, step)
                stop = config.patience > 0 and val_set is not None and bad_epochs >= config.patience
                if config.checkpoints:
                    rng_states = context.gather(get_rng_state())
                    if master:
                        state = {
                            "format_version": CHECKPOINT_FORMAT_VERSION,
                            "kind": "clipseg",
                            "model": _trainable_state(net),
                            "optimizer": optimizer.state_dict(),
                            "step": step,
                            "epoch": epoch,
                            "world_size": world_size,
                            "rng": rng_states,
                            "config": config.to_dict(),
                            "best_metric": best_loss,
                            "best_epoch": best_epoch,
                            "bad_epochs": bad_epochs,
                            "history": [r.__dict__ for r in history],
                            "losses": losses,
                            "library_version": __version__,
                        }
                        save_checkpoint(state, run_dir / checkpoint_name(step))
                        prune_checkpoints(run_dir, config.keep_last)
                        if improved:
                            save_checkpoint(state, run_dir / BEST_NAME)
                if stop:
                    stopped_early = True
                    if master:
                        logger.info("early stopping: no lower validation loss for %d epochs", config.patience)
                    break
            bar.close()
            if best_state is not None:
                _load_trainable(net, best_state)
            _sync(device)
            wall = time.perf_counter() - wall_start
        net.eval()
        bundle = None
        if config.export_bundle and master:
            from .volume import save_clipseg_bundle

            bundle = save_clipseg_bundle(  # the slice settings the net was trained with
                run_dir / "bundle", net, train_set.config, name=f"clipseg_{config.strategy}", overwrite=True
            )
        samples = times.samples
        result = CLIPSegTrainResult(
            net=net,
            strategy=config.strategy,
            parameters=parameters,
            losses=losses,
            history=history,
            best_epoch=best_epoch,
            stopped_early=stopped_early,
            times=times,
            cache_seconds=cache_seconds,
            wall_seconds=wall,
            samples_per_s=samples / max(times.total, 1e-12),
            peak_memory_mib=memory.peak_mib,
            memory_kind=memory.kind,
            cached=cache is not None,
            bundle=bundle,
            run_dir=run_dir,
        )
        if master:
            logger.info(
                "%s: %d steps in %.1f s (%.1f samples/s), best epoch %d%s, peak %s %.0f MiB",
                config.strategy,
                times.steps,
                wall,
                result.samples_per_s,
                best_epoch,
                " (stopped early)" if stopped_early else "",
                memory.kind,
                memory.peak_mib,
            )
        finished = True
        return result
    finally:
        if writer is not None:
            writer.close()
        if metrics_file is not None:
            metrics_file.close()
        if file_handler is not None:
            close_run_log(file_handler)
        if ddp:
            # as the 3D trainer: free the DDP wrapper while every rank is connected, and wait for the others
            # only after a run that finished (a rank that failed alone must not hang in a barrier)
            model = optimizer = None
            gc.collect()
        context.stop(barrier=finished)
