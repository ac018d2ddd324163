"""Fine-tune CLIPSeg on 2D slice samples: :func:`train_clipseg`, as one process or under torchrun.

The loop shares the 3D trainer's parts (``TextGuidedSegLib.training``): the configuration machinery
(``clipseg.config``), the pure learning-rate schedule ``get_lr`` (linear warm-up, cosine decay), and the
:class:`~TextGuidedSegLib.training.run.Run`: run folder, ``train.log``, ``metrics.jsonl`` and TensorBoard on
rank 0, atomic ``weights_only`` checkpoints with generator states (``best_metric`` is ``VAL_LOSS``, lower is
better), DDP from ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` and its teardown. It differs where
2D slices differ: the data are memory-mapped arrays (no MONAI pipeline), an epoch is one pass over the
samples in a seeded order, and training stops early when the validation loss has not improved for
``patience`` epochs (the best epoch's weights are kept).

One optimizer step, timed in four parts (``torch.cuda.synchronize`` between them on a GPU): *data* (gather
the batch from the slice set, or the encoder cache), *forward* (logits and loss), *backward*, *optimizer*
(clip, AdamW step, zero grad). The benchmark reads these to explain which strategy is fastest and why.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from TextGuidedSegLib.training.checkpoint import BEST_NAME, load_checkpoint, seed_generators
from TextGuidedSegLib.training.config import ConfigError
from TextGuidedSegLib.training.run import MEAN_DICE, VAL_LOSS, BestMetric, Run
from TextGuidedSegLib.training.trainer import get_lr

from .cache import EncoderCache
from .config import CLIPSegDataConfig, CLIPSegTrainConfig, load_clipseg_config, rank_batch_size
from .data import SliceSet, build_slice_set, cases_from_lists
from .measure import PeakMemory, StepTimes
from .model import CLIPSegNet, ParameterCount, PixelSpec, apply_strategy

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
    run = Run.from_config(config, monitor(config), kind="clipseg")
    per_rank = rank_batch_size(
        config, run.context.world_size
    )  # DistributedConfigError before anything starts
    with run:
        return _train_clipseg(run, config, per_rank, net, train_set, val_set, resume)


def monitor(config: CLIPSegTrainConfig) -> BestMetric:
    """The checkpoints' ``best_metric``: ``VAL_LOSS`` or ``MEAN_DICE`` (``config.early_stopping``)."""
    return MEAN_DICE if config.early_stopping == "val_dice" else VAL_LOSS


@dataclass
class _State:
    """The run's counters and record; ``best_loss`` is the checkpoints' ``best_metric`` (see :func:`monitor`:
    the validation loss or Dice)."""

    step: int = 0
    first_epoch: int = 0
    best_loss: float = VAL_LOSS.initial
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[EpochRecord] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


@dataclass
class _Parts:
    """What the steps work with; ``model`` is the DDP wrapper of the training ``_Forward`` (or it)."""

    net: CLIPSegNet
    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: SliceLoss
    autocast: Any
    train_set: SliceSet
    cached: bool
    per_rank: int
    steps_per_epoch: int
    max_steps: int
    times: StepTimes = field(default_factory=StepTimes)


def _train_clipseg(
    run: Run,
    config: CLIPSegTrainConfig,
    per_rank: int,
    net: CLIPSegNet | None,
    train_set: SliceSet | None,
    val_set: SliceSet | None,
    resume: str | Path | None,
) -> CLIPSegTrainResult:
    """Set up, then train epoch by epoch with validation, early stopping and checkpoints."""
    import yaml

    context, device = run.context, run.context.device
    checkpoint = run.resume(resume, refuse_existing=False)
    run.open(yaml.safe_dump(config.to_dict(), sort_keys=False))
    progress = run.master and config.progress
    if train_set is None:
        train_set, val_set = build_sets(config, progress)
    if net is None:
        net = CLIPSegNet.from_pretrained(config.model)
    if net.pixel.image_size != train_set.config.image_size:  # CLIPSeg interpolates its position embeddings
        net.pixel = PixelSpec(train_set.config.image_size, net.pixel.mean, net.pixel.std)
    torch.manual_seed(config.seed)  # adapter / LoRA initialisation: identical on every rank
    parameters = apply_strategy(net, config.strategy, config.options)
    net.to(device).train()
    optimizer = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    bf16 = context.use_cuda and config.amp == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    criterion = SliceLoss(config.dice_weight)

    with PeakMemory(device) as memory:
        wall_start = time.perf_counter()
        cache, val_cache, cache_seconds = _encoder_caches(config, net, train_set, val_set, device, progress)
        model: nn.Module = _Forward(net, cache)
        if context.ddp:
            model = DistributedDataParallel(
                model, device_ids=[context.local_rank] if context.use_cuda else None
            )
        val_forward = _Forward(net, val_cache)
        steps_per_epoch = _steps_per_epoch(config, len(train_set), context.world_size)
        parts = _Parts(
            net=net,
            model=model,
            optimizer=optimizer,
            criterion=criterion,
            autocast=autocast,
            train_set=train_set,
            cached=cache is not None,
            per_rank=per_rank,
            steps_per_epoch=steps_per_epoch,
            max_steps=config.epochs * steps_per_epoch,
        )
        state = _start(run, config, net, optimizer, checkpoint)
        del checkpoint
        desc = f"train {config.strategy}"
        bar = tqdm(total=parts.max_steps, initial=state.step, desc=desc, unit="step", disable=not progress)
        stopped_early = False
        for epoch in range(state.first_epoch, config.epochs):
            epoch_start = time.perf_counter()
            epoch_losses = _train_epoch(run, config, parts, state, epoch, bar)

            # ---- validation and early stopping ------------------------------------------------------------
            val_loss = val_dice = float("nan")
            improved = False
            if val_set is not None:
                val_loss, val_dice = evaluate_samples(
                    val_forward,
                    val_set,
                    criterion,
                    config.eval_batch_size,
                    device,
                    context.rank,
                    context.world_size,
                    autocast,
                )
                score = val_dice if config.early_stopping == "val_dice" else val_loss
                improved = monitor(config).improves(score, state.best_loss)
                if improved:
                    state.best_loss, state.best_epoch, state.bad_epochs = score, epoch, 0
                    state.best_state = _trainable_state(net)
                else:
                    state.bad_epochs += 1
            else:
                state.best_epoch, improved = epoch, True
            seconds = time.perf_counter() - epoch_start
            record = EpochRecord(
                epoch, steps_per_epoch, float(np.mean(epoch_losses)), val_loss, val_dice, seconds
            )
            _log_epoch(run, state, record)
            stop = config.patience > 0 and val_set is not None and state.bad_epochs >= config.patience
            if config.checkpoints:
                build_state = partial(_checkpoint_state, config, parts, state, epoch)
                run.save(state.step, build_state, periodic=True, best=improved)
            if stop:
                stopped_early = True
                if run.master:
                    logger.info(
                        "early stopping: no better %s for %d epochs", config.early_stopping, config.patience
                    )
                break
        bar.close()
        if state.best_state is not None:
            _load_trainable(net, state.best_state)
        _sync(device)
        wall = time.perf_counter() - wall_start
    net.eval()
    bundle = None
    if config.export_bundle and run.master:
        from .volume import save_clipseg_bundle

        bundle = save_clipseg_bundle(  # the slice settings the net was trained with
            run.run_dir / "bundle", net, train_set.config, name=f"clipseg_{config.strategy}", overwrite=True
        )
    times = parts.times
    result = CLIPSegTrainResult(
        net=net,
        strategy=config.strategy,
        parameters=parameters,
        losses=state.losses,
        history=state.history,
        best_epoch=state.best_epoch,
        stopped_early=stopped_early,
        times=times,
        cache_seconds=cache_seconds,
        wall_seconds=wall,
        samples_per_s=times.samples / max(times.total, 1e-12),
        peak_memory_mib=memory.peak_mib,
        memory_kind=memory.kind,
        cached=cache is not None,
        bundle=bundle,
        run_dir=run.run_dir,
    )
    if run.master:
        logger.info(
            "%s: %d steps in %.1f s (%.1f samples/s), best epoch %d%s, peak %s %.0f MiB",
            config.strategy,
            times.steps,
            wall,
            result.samples_per_s,
            state.best_epoch,
            " (stopped early)" if stopped_early else "",
            memory.kind,
            memory.peak_mib,
        )
    return result


def _encoder_caches(
    config: CLIPSegTrainConfig,
    net: CLIPSegNet,
    train_set: SliceSet,
    val_set: SliceSet | None,
    device: torch.device,
    progress: bool,
) -> tuple[EncoderCache | None, EncoderCache | None, float]:
    """``(train cache, validation cache, seconds)`` of the frozen encoder; Nones and 0 without a cache."""
    if not (config.cache in ("memory", "disk") or (config.cache == "auto" and net.cacheable)):
        return None, None, 0.0
    start = time.perf_counter()
    common = {
        "storage": "disk" if config.cache == "disk" else "memory",
        "dtype": config.cache_dtype,
        "folder": _slices_dir(config),
        "batch_size": config.eval_batch_size,
        "device": device,
        "progress": progress,
    }
    prompts = sorted({p for s in range(len(train_set.structures)) for p in train_set.prompts(s)})
    cache = EncoderCache.build(net, train_set, prompts, **common)
    val_cache = None
    if val_set is not None:
        val_prompts = [val_set.prompt(s) for s in range(len(val_set.structures))]
        val_cache = EncoderCache.build(net, val_set, val_prompts, **common)
    _sync(device)
    return cache, val_cache, time.perf_counter() - start


def _steps_per_epoch(config: CLIPSegTrainConfig, n_train: int, world_size: int) -> int:
    """Optimizer steps of one epoch (full batches only under DDP), capped by ``max_steps_per_epoch``."""
    steps = n_train // config.batch_size if world_size > 1 else math.ceil(n_train / config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    if steps < 1:
        raise ConfigError(f"{n_train} training samples make no batch of {config.batch_size}")
    return steps


def _start(
    run: Run,
    config: CLIPSegTrainConfig,
    net: CLIPSegNet,
    optimizer: torch.optim.Optimizer,
    checkpoint: dict[str, Any] | None,
) -> _State:
    """Fresh counters and generators seeded ``seed + rank``, or the checkpoint's weights, optimizer,
    counters and generators (and the best epoch's weights, to end with)."""
    if checkpoint is None:
        seed_generators(config.seed + run.context.rank)
        return _State(best_loss=monitor(config).initial)
    _load_trainable(net, checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    state = _State(
        step=checkpoint["step"],
        first_epoch=checkpoint["epoch"] + 1,
        best_loss=checkpoint["best_metric"],
        best_epoch=checkpoint["best_epoch"],
        bad_epochs=checkpoint["bad_epochs"],
        history=[EpochRecord(**r) for r in checkpoint["history"]],
        losses=list(checkpoint["losses"]),
    )
    run.restore_generators(checkpoint)
    if state.best_epoch == checkpoint["epoch"]:
        state.best_state = _trainable_state(net)
    elif (run.run_dir / BEST_NAME).is_file():
        state.best_state = load_checkpoint(run.run_dir / BEST_NAME)["model"]
    return state


def _train_epoch(
    run: Run, config: CLIPSegTrainConfig, parts: _Parts, state: _State, epoch: int, bar: tqdm
) -> list[float]:
    """The optimizer steps of ``epoch``, each timed in four parts; returns their losses."""
    device, rank, world_size = run.context.device, run.context.rank, run.context.world_size
    times, train_set = parts.times, parts.train_set
    order = np.random.default_rng([config.seed, epoch]).permutation(len(train_set))
    prompt_rng = np.random.default_rng([config.seed, epoch, rank, 1])
    trainable = [p for p in parts.net.parameters() if p.requires_grad]
    epoch_losses = []
    for index in range(parts.steps_per_epoch):
        lr = get_lr(state.step, config.lr, config.warmup_steps, parts.max_steps, config.min_lr)
        for group in parts.optimizer.param_groups:
            group["lr"] = lr
        _sync(device)
        t0 = time.perf_counter()
        rows = order[index * config.batch_size : (index + 1) * config.batch_size]
        rows = rows[rank::world_size][: parts.per_rank] if world_size > 1 else rows
        batch = _gather(train_set, rows, not parts.cached, device)
        prompts = _prompts(train_set, batch["structures"], config.synonym_prob, prompt_rng)
        _sync(device)
        t1 = time.perf_counter()
        with parts.autocast:
            logits = parts.model(batch["images"], batch["slices"], prompts)
        loss = parts.criterion(logits.float(), batch["masks"])
        _sync(device)
        t2 = time.perf_counter()
        loss.backward()
        _sync(device)
        t3 = time.perf_counter()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t4 = time.perf_counter()
        times.data, times.forward = times.data + t1 - t0, times.forward + t2 - t1
        times.backward, times.optimizer = times.backward + t3 - t2, times.optimizer + t4 - t3
        times.steps, times.samples = times.steps + 1, times.samples + len(rows) * world_size
        state.step += 1
        loss_value = float(run.context.mean_(loss.detach()))
        state.losses.append(loss_value)
        epoch_losses.append(loss_value)
        _log_step(run, config, bar, state, epoch, loss_value, lr, t4 - t0, parts.max_steps)
    return epoch_losses


def _log_step(
    run: Run,
    config: CLIPSegTrainConfig,
    bar: tqdm,
    state: _State,
    epoch: int,
    loss: float,
    lr: float,
    seconds: float,
    max_steps: int,
) -> None:
    """Rank 0: the step's record and progress bar; every ``log_every`` steps the log line and TensorBoard."""
    if not run.master:
        return
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}")
    record = {"step": state.step, "epoch": epoch, "loss": loss, "lr": lr, "step_time": seconds}
    scalars = None
    if state.step % config.log_every == 0:
        logger.info("step %d/%d epoch %d: loss %.4f lr %.2e", state.step, max_steps, epoch, loss, lr)
        scalars = {"train/loss": loss, "train/lr": lr, "perf/step_time_s": seconds}
    run.log(record, scalars, flush=False)


def _log_epoch(run: Run, state: _State, record: EpochRecord) -> None:
    """Append ``record`` to the history; rank 0 logs it, writes it to ``metrics.jsonl`` and TensorBoard."""
    state.history.append(record)
    if run.master:
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, val Dice %.4f (best epoch %d)",
            record.epoch,
            record.train_loss,
            record.val_loss,
            record.val_dice,
            state.best_epoch,
        )
    scalars = {"val/loss": record.val_loss, "val/dice": record.val_dice}
    run.log({"event": "epoch", **record.__dict__}, scalars, step=state.step)


def _checkpoint_state(config: CLIPSegTrainConfig, parts: _Parts, state: _State, epoch: int) -> dict[str, Any]:
    """The CLIPSeg trainer's part of a checkpoint: trainable weights, optimizer, counters, history."""
    return {
        "model": _trainable_state(parts.net),
        "optimizer": parts.optimizer.state_dict(),
        "step": state.step,
        "epoch": epoch,
        "config": config.to_dict(),
        "best_metric": state.best_loss,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "history": [r.__dict__ for r in state.history],
        "losses": state.losses,
    }
