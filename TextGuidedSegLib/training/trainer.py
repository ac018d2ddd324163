"""The training loop: :func:`train` runs as one process or under torchrun (one process per GPU, or per CPU
slot with gloo); the run folder, logs, metrics, TensorBoard, checkpoints and teardown are the
:class:`~.run.Run`'s, so this module holds the 3D trainer's set-up, step and validation.

Order of one optimizer step (:func:`_loop`): learning rate from the pure :func:`get_lr` -> ``grad_accum /
world_size`` micro-steps (gradients synchronised across ranks only on the last, via ``no_sync``) -> unscale,
clip -> ``scaler.step`` -> ``zero_grad(set_to_none=True)`` -> log (rank 0, :func:`_log_step`) -> validate (all
ranks, every ``val_every``) -> checkpoint (rank 0 writes, every ``ckpt_every``, and ``best.pt`` when the mean
validation Dice improves: ``MEAN_DICE``, higher is better).

Seeds: the model is built right after ``torch.manual_seed(config.seed)`` (identical on every rank; DDP also
broadcasts rank 0's weights); afterwards each rank's global generators are seeded with ``seed + rank``. Data
order and augmentation come from the resumable sampler (see ``training.data``), not from global generators;
the loop reads its :class:`DataPosition` (epoch, draws) with every batch and checkpoints it.

``grad_accum`` counts micro-steps over all processes, so the global batch is the config's at any world size;
``batch_plan`` derives each process's share before anything starts and refuses a world size that does not
divide it (``DistributedConfigError``, one line with the fix).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from TextGuidedSegLib.models import ModelConfig, build_model, load_pretrained_swinunetr
from TextGuidedSegLib.taxonomy import get_taxonomy

from .checkpoint import seed_generators
from .config import TRAINING_TAXONOMY, BatchPlan, TrainConfig, batch_plan
from .data import TrainData, build_train_loader, build_val_loader, list_datasets
from .embeddings import GlobalConditioning, conditioning_prompts, load_embeddings
from .loss import SegmentationLoss
from .run import MEAN_DICE, Run
from .validation import validate

__all__ = ["DataPosition", "NonFiniteLossError", "TrainResult", "batch_inputs", "get_lr", "train"]

logger = logging.getLogger(__name__)

#: Keys of the config that define the weights: on resume they are taken from the checkpoint.
WEIGHT_KEYS = ("model", "structures", "text")


class NonFiniteLossError(RuntimeError):
    """A step's loss was NaN or infinite and ``nonfinite_loss`` is ``"stop"``; the message names the step."""


def get_lr(step: int, lr: float, warmup_steps: int, max_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine decay to ``min_lr``.

    ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (``lr`` at the last warm-up step), then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` with ``t = (step - warmup_steps) / (max_steps -
    warmup_steps)``, and ``min_lr`` from ``max_steps`` on.

    Examples::

        >>> get_lr(0, 1e-3, 10, 110)
        0.0001
        >>> get_lr(60, 1e-3, 10, 110)   # half-way through the decay
        0.0005
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def batch_inputs(
    batch: dict[str, Any],
    output: str,
    query_text: torch.Tensor | None,
    global_text: GlobalConditioning | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Model inputs, targets and loss mask of a training batch.

    Args:
        batch: a collated batch (see ``training.data``): ``image`` ``(N, 1, D, H, W)``, ``label``
            ``(N, S, D, H, W)``, ``annotated`` ``(N, S)``, ``class_indices`` / ``query_mask`` ``(N, Q)``.
        output: the model's ``output``: ``"query"`` or ``"channels"``.
        query_text: ``(S, E)`` embeddings of the structures' prompts (text models), on ``device``.
        global_text: the conditioning of a global-mode model (vectors on ``device``): each crop gets the
            vector of its dataset (``batch["dataset"]``), or the fixed prompt's.

    Returns:
        ``(image, text, target, mask)``: query models get text ``(N, q, E)``, target ``(N, q, D, H, W)`` and
        the query mask ``(N, q)``, with ``q`` the largest number of valid queries of a crop in the batch;
        channel models get text ``(N, 1, E)`` (global mode, one vector per crop) or None, target
        ``(N, S, D, H, W)`` and the annotated mask ``(N, S)``.
    """
    image = batch["image"].to(device, non_blocking=True)
    label = batch["label"]
    if output == "query":
        mask = batch["query_mask"]
        q = max(1, int(mask.sum(1).max()))
        indices, mask = batch["class_indices"][:, :q], mask[:, :q]
        target = label[torch.arange(label.shape[0])[:, None], indices]
        text = query_text[indices.to(device)]
    else:
        mask = batch["annotated"]
        target = label
        text = None if global_text is None else global_text.for_datasets(list(batch["dataset"]))
    return image, text, target.to(device, non_blocking=True), mask.to(device, non_blocking=True)


@dataclass
class TrainResult:
    """What a finished run left behind.

    Attributes:
        run_dir: the run folder.
        step: optimizer steps done.
        checkpoint: the last checkpoint written.
        best_metric: best mean validation Dice (``MEAN_DICE``: higher is better; -1 without validation).
        loss: the last step's loss (mean over the ranks).
    """

    run_dir: Path
    step: int
    checkpoint: Path | None
    best_metric: float
    loss: float


@dataclass(frozen=True)
class DataPosition:
    """Where a rank stands in the training data: the epoch, and the images it drew in that epoch."""

    epoch: int
    draws: int


def _batch_stream(
    data: TrainData, position: DataPosition, num_samples: int
) -> Iterator[tuple[dict, DataPosition]]:
    """``next()`` gives the next batch and the data position after it (the next epoch starts at an end)."""
    epoch, draws = position.epoch, position.draws
    data.sampler.set_epoch(epoch, start=draws)
    while True:
        for batch in data.loader:
            draws += len(batch["name"]) // num_samples
            yield batch, DataPosition(epoch, draws)
        epoch, draws = epoch + 1, 0
        data.sampler.set_epoch(epoch)


@dataclass
class _Parts:
    """What the loop works with; ``model`` is the DDP / ``torch.compile`` wrapper of ``raw_model`` (or it)."""

    model: torch.nn.Module
    raw_model: torch.nn.Module
    model_config: ModelConfig
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Any
    text_state: dict[str, Any] | None
    query_text: torch.Tensor | None
    global_text: GlobalConditioning | None
    data: TrainData
    val_loader: Any

    def conditioning(self, n: int, dataset: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Validation inputs for ``n`` windows of a case of ``dataset``: every structure, in order (global
        mode: the case's own dataset prompt, as the seed tested)."""
        if self.raw_model.output == "query":
            return self.query_text[None].expand(n, -1, -1), None
        return (None if self.global_text is None else self.global_text.for_datasets([dataset] * n)), None


@dataclass
class _Progress:
    """The loop's counters: steps done, the data position, the best validation Dice and its step."""

    step: int
    position: DataPosition
    best_metric: float
    best_step: int


def _param_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _resumed_config(config: TrainConfig, checkpoint: dict[str, Any]) -> TrainConfig:
    """``config`` with the weight-defining keys (model, structures, text) of the checkpoint's config."""
    saved = checkpoint["config"]
    if isinstance(saved.get("text"), dict):  # a checkpoint from before dataset prompts: the fixed prompt
        saved["text"].setdefault("global_conditioning", "fixed")
    data = config.to_dict()
    for key in WEIGHT_KEYS:
        if data[key] != saved[key]:
            logger.warning("resume: %s differs from the checkpoint's; using the checkpoint's", key)
        data[key] = saved[key]
    return TrainConfig.from_dict(data, source="checkpoint")


@contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms (cuDNN, cuBLAS) while the run lasts, or cuDNN benchmarking; restored after."""
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        if enabled:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(enabled, warn_only=True)
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = not enabled
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def train(config: TrainConfig, resume: str | Path | None = None) -> TrainResult:
    """Run (or continue) a training run; the module docstring gives the order of things.

    Args:
        config: the resolved configuration.
        resume: ``"auto"`` (the latest checkpoint in ``config.run_dir``, or a fresh start when there is
            none), a checkpoint path, or None (a fresh start; refused when ``run_dir`` already holds
            checkpoints, so a run is never overwritten by accident).

    Returns:
        a :class:`TrainResult`.
    """
    run = Run.from_config(config, MEAN_DICE)
    plan = batch_plan(config, run.context.world_size)  # DistributedConfigError before anything starts
    with run, _determinism(config.deterministic):
        return _train(run, config, plan, resume)


def _train(run: Run, config: TrainConfig, plan: BatchPlan, resume: str | Path | None) -> TrainResult:
    """Set up from ``config`` (or the checkpoint ``resume`` names) and run the loop."""
    checkpoint = run.resume(resume, refuse_existing=True)
    if checkpoint is not None:
        config = _resumed_config(config, checkpoint)
    run.open(config.to_yaml())
    if run.master:
        logger.info("global batch: %s", plan.describe())
    parts = _build(config, checkpoint, run)
    progress = _start(config, checkpoint, run)
    del checkpoint  # free the host copy of the weights
    return _loop(run, config, parts, progress, plan.micro_steps)


def _prompt_embeddings(
    config: TrainConfig, checkpoint: dict[str, Any] | None, prompts: list[str], device: torch.device
) -> tuple[dict[str, Any] | None, torch.Tensor | None, GlobalConditioning | None]:
    """``(text_state, query_text (S, E), global conditioning or None)``; all None for text-free models.

    In global mode with dataset prompts the datasets are those of the training and validation lists; the
    text state records each one's prompts (``dataset_prompts``), which the exported bundle carries."""
    if not config.model.uses_text:
        return None, None, None
    if checkpoint is not None and checkpoint.get("text") is not None:
        text_state = checkpoint["text"]  # exactly the vectors the weights were trained with
    else:
        extra: dict[str, list[str]] = {}
        mode = config.text.global_conditioning if config.model.mode == "global" else "fixed"
        if config.model.mode == "global":
            lists = [*config.data.train_lists, *config.data.val_lists]
            datasets = list_datasets(lists, config.data, config.structures)
            extra = conditioning_prompts(mode, datasets, config.text.global_prompt)
            wanted = [p for group in extra.values() for p in group] if extra else [config.text.global_prompt]
            prompts = prompts + [p for p in dict.fromkeys(wanted) if p not in prompts]
        vectors, encoder_id = load_embeddings(
            config.text.source, prompts, config.text.cache_dir, config.text.dim
        )
        text_state = {"encoder_id": encoder_id, "prompts": prompts, "embeddings": vectors}
        if config.model.mode == "global":
            text_state.update(global_conditioning=mode, dataset_prompts=extra)
            logger.info("global mode conditioned on %s: %s", mode, extra or config.text.global_prompt)
    vectors = text_state["embeddings"].to(device)
    count = len(config.structures)
    conditioning = None
    if config.model.mode == "global":
        conditioning = GlobalConditioning.from_text_state(text_state, config.text.global_prompt, device)
    return text_state, vectors[:count], conditioning


def _build(config: TrainConfig, checkpoint: dict[str, Any] | None, run: Run) -> _Parts:
    """Prompt embeddings, model (seeded alike on every rank), AdamW, mixed precision, DDP, data loaders."""
    context, device = run.context, run.context.device
    taxonomy = get_taxonomy(TRAINING_TAXONOMY).subset(config.structures)
    num_structures = len(taxonomy)
    text_state, query_text, global_text = _prompt_embeddings(config, checkpoint, taxonomy.prompts, device)
    if checkpoint is not None:
        model_config = ModelConfig.from_dict(checkpoint["model_config"])
    else:
        model_config = dataclasses.replace(
            config.model,
            num_classes=num_structures if config.model.output == "channels" else config.model.num_classes,
            text_dim=query_text.shape[1] if query_text is not None else config.model.text_dim,
            img_size=config.data.roi_size,
        )
    torch.manual_seed(config.seed)
    model = raw_model = build_model(model_config)  # raw_model: the unwrapped module, what checkpoints hold
    if config.pretrained and checkpoint is None:
        load_pretrained_swinunetr(model, config.pretrained)
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.optim.lr,
        betas=config.optim.betas,
        weight_decay=config.optim.weight_decay,
    )
    amp_dtype = None
    if context.use_cuda and config.amp != "off":
        bf16 = config.amp == "bf16" or (config.amp == "auto" and torch.cuda.is_bf16_supported())
        amp_dtype = torch.bfloat16 if bf16 else torch.float16
    elif config.amp in ("bf16", "fp16"):
        logger.warning("amp=%s ignored: mixed precision is only used on a GPU", config.amp)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if checkpoint is not None:
        raw_model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
    if config.compile:
        model = torch.compile(model)
    if context.ddp:
        model = DistributedDataParallel(model, device_ids=[context.local_rank] if context.use_cuda else None)
    logger.info(
        "model %s (%s output), %.2f M parameters, %d structure(s), amp %s",
        model_config.architecture,
        raw_model.output,
        sum(p.numel() for p in raw_model.parameters()) / 1e6,
        num_structures,
        amp_dtype or "off",
    )
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else run.run_dir / "cache"
    rank, world_size, master = context.rank, context.world_size, context.is_master
    train_data = build_train_loader(
        config.data,
        config.structures,
        config.queries_per_sample,
        config.negative_fraction,
        config.batch_size,
        config.seed,
        rank,
        world_size,
        cache_dir,
        progress=master,
        pin_memory=context.use_cuda,
    )
    val_loader = build_val_loader(config.data, config.structures, rank, world_size, cache_dir, master)
    return _Parts(
        model=model,
        raw_model=raw_model,
        model_config=model_config,
        optimizer=optimizer,
        scaler=scaler,
        autocast=autocast,
        text_state=text_state,
        query_text=query_text,
        global_text=global_text,
        data=train_data,
        val_loader=val_loader,
    )


def _start(config: TrainConfig, checkpoint: dict[str, Any] | None, run: Run) -> _Progress:
    """Fresh counters and generators seeded ``seed + rank``, or exactly where the checkpoint left off."""
    rank, world_size = run.context.rank, run.context.world_size
    if checkpoint is None:
        seed_generators(config.seed + rank)
        return _Progress(0, DataPosition(0, 0), MEAN_DICE.initial, -1)
    step, draws = checkpoint["step"], checkpoint["epoch_draws"]
    if not run.restore_generators(checkpoint):
        draws = draws * checkpoint["world_size"] // world_size
        logger.warning(
            "resuming a %d-rank run on %d rank(s): data position approximated, generators re-seeded",
            checkpoint["world_size"],
            world_size,
        )
        torch.manual_seed(config.seed + rank + step)
    position = DataPosition(checkpoint["epoch"], draws)
    return _Progress(step, position, checkpoint["best_metric"], checkpoint["best_step"])


def _loop(run: Run, config: TrainConfig, parts: _Parts, state: _Progress, grad_accum: int) -> TrainResult:
    """The optimizer steps, validation and checkpoints, from ``state`` to ``config.max_steps``."""
    context, device, model, raw_model = run.context, run.context.device, parts.model, parts.raw_model
    optimizer, scaler, criterion = parts.optimizer, parts.scaler, SegmentationLoss()
    batches = _batch_stream(parts.data, state.position, config.data.num_samples)
    shown = run.master and config.progress
    bar = tqdm(total=config.max_steps, initial=state.step, desc="train", unit="step", disable=not shown)
    last_checkpoint: Path | None = None
    totals = torch.full((3,), float("nan"))
    model.train()
    step_start = time.perf_counter()
    while state.step < config.max_steps:
        lr = get_lr(
            state.step, config.optim.lr, config.optim.warmup_steps, config.max_steps, config.optim.min_lr
        )
        for group in optimizer.param_groups:
            group["lr"] = lr

        totals = torch.zeros(3, device=device)  # loss, bce, dice (mean over micro-steps)
        for micro_step in range(grad_accum):
            batch, state.position = next(batches)
            image, text, target, mask = batch_inputs(
                batch, raw_model.output, parts.query_text, parts.global_text, device
            )
            sync = not context.ddp or micro_step == grad_accum - 1
            with nullcontext() if sync else model.no_sync():
                with parts.autocast:
                    logits = model(image, text)
                out = criterion(logits, target, mask)
                scaler.scale(out.loss / grad_accum).backward()
            totals += torch.stack([out.loss, out.bce, out.dice]).detach() / grad_accum
        context.mean_(totals)  # the mean over the ranks: a NaN on one rank is seen by all
        finite = bool(torch.isfinite(totals).all())
        if not finite:  # raises for nonfinite_loss "stop"; "skip": no update from this step's gradients
            _nonfinite_loss(run, config, state, totals.tolist(), last_checkpoint or run.resumed_from)
        grad_norm = torch.zeros((), device=device)
        if finite and config.optim.grad_clip > 0:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config.optim.grad_clip)
        if finite:
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1

        now = time.perf_counter()
        if finite:
            _log_step(run, config, bar, state, totals.tolist(), lr, float(grad_norm), now - step_start)
        step_start = now

        # validate (every rank takes its share of the cases), then checkpoint (rank 0 writes)
        last = state.step == config.max_steps
        improved = False
        if config.data.val_lists and ((config.val_every and state.step % config.val_every == 0) or last):
            improved = _validate(run, config, parts, state)
        periodic = bool(config.ckpt_every and state.step % config.ckpt_every == 0) or last
        if periodic or improved:
            build_state = partial(_checkpoint_state, config, parts, state)
            written = run.save(state.step, build_state, periodic=periodic, best=improved)
            last_checkpoint = written or last_checkpoint

    # ---- end: every rank must hold the same weights ------------------------------------------------------
    bar.close()
    digests = context.gather(_param_digest(raw_model))
    run.log({"step": state.step, "event": "end", "param_digests": digests})
    if len(set(digests)) != 1:
        raise RuntimeError(f"the ranks' weights diverged at the end of training: digests {digests}")
    return TrainResult(run.run_dir, state.step, last_checkpoint, state.best_metric, float(totals[0]))


def _nonfinite_loss(
    run: Run, config: TrainConfig, state: _Progress, totals: list[float], last_checkpoint: Path | None
) -> None:
    """Step ``state.step + 1`` has a NaN/inf loss: raise (``nonfinite_loss: stop``) or log the skip."""
    step = state.step + 1
    loss, bce, dice = totals
    if config.nonfinite_loss == "stop":
        kept = f"the last checkpoint, {last_checkpoint}, is intact" if last_checkpoint else "no checkpoint"
        raise NonFiniteLossError(
            f"step {step}: the loss is {loss} (bce {bce}, dice {dice}), not a finite number; stopping "
            f"(nonfinite_loss: stop); {kept}. Lower optim.lr, check the data of this epoch, or set "
            "nonfinite_loss: skip"
        )
    logger.warning("step %d: the loss is %s; the step is skipped (nonfinite_loss: skip)", step, loss)
    run.log({"step": step, "event": "skipped", "reason": "nonfinite_loss", "loss": str(loss)})


def _log_step(
    run: Run,
    config: TrainConfig,
    bar: tqdm,
    state: _Progress,
    totals: list[float],
    lr: float,
    grad_norm: float,
    step_time: float,
) -> None:
    """Rank 0: the step's record in ``metrics.jsonl``, the progress bar; every ``log_every`` steps the log
    line and TensorBoard (loss, lr, grad norm, throughput, peak memory)."""
    if not run.master:
        return
    step, device = state.step, run.context.device
    loss, bce, dice = totals
    crops_per_step = config.batch_size * config.data.num_samples * config.grad_accum
    record = {
        "step": step,
        "epoch": state.position.epoch,
        "loss": loss,
        "bce": bce,
        "dice": dice,
        "lr": lr,
        "grad_norm": grad_norm,
        "step_time": step_time,
        "samples_per_s": crops_per_step / step_time,
    }
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
    if not (step % config.log_every == 0 or step == config.max_steps):
        run.log(record)
        return
    cpu_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mib = torch.cuda.max_memory_allocated(device) / 2**20 if run.context.use_cuda else None
    logger.info(
        "step %d/%d epoch %d: loss %.4f (bce %.4f, dice %.4f) lr %.3e, %.2f crops/s, max RSS %.0f MiB%s",
        step,
        config.max_steps,
        state.position.epoch,
        loss,
        bce,
        dice,
        lr,
        record["samples_per_s"],
        cpu_mib,
        "" if gpu_mib is None else f", GPU {gpu_mib:.0f} MiB",
    )
    scalars = {f"train/{key}": record[key] for key in ("loss", "bce", "dice", "lr", "grad_norm")}
    scalars.update({"perf/samples_per_s": record["samples_per_s"], "perf/step_time_s": step_time})
    scalars["memory/cpu_max_rss_mib"] = cpu_mib
    if gpu_mib is not None:
        scalars["memory/gpu_max_allocated_mib"] = gpu_mib
    run.log(record, scalars)


def _validate(run: Run, config: TrainConfig, parts: _Parts, state: _Progress) -> bool:
    """Sliding-window Dice of every structure over the validation cases (each rank its share); logs it,
    updates the best; returns whether the mean improved."""
    sums, counts = validate(  # the unwrapped module: ranks may validate different case counts
        parts.raw_model,
        parts.val_loader,
        parts.conditioning,
        len(config.structures),
        config.data.roi_size,
        config.val_overlap,
        config.val_sw_batch_size,
        run.context.device,
        parts.autocast,
        distributed=run.context.ddp,
    )
    seen = counts > 0
    per_structure = {name: float(sums[i] / counts[i]) for i, name in enumerate(config.structures) if seen[i]}
    mean_dice = float((sums[seen] / counts[seen]).mean()) if bool(seen.any()) else float("nan")
    improved = MEAN_DICE.improves(mean_dice, state.best_metric)
    if improved:
        state.best_metric, state.best_step = mean_dice, state.step
    if run.master:
        logger.info(
            "step %d validation: mean Dice %.4f (best %.4f at step %d); %s",
            state.step,
            mean_dice,
            state.best_metric,
            state.best_step,
            ", ".join(f"{k} {v:.3f}" for k, v in per_structure.items()),
        )
    scalars = {"val/dice_mean": mean_dice, **{f"val/dice/{k}": v for k, v in per_structure.items()}}
    run.log({"step": state.step, "val_dice_mean": mean_dice, "val_dice": per_structure}, scalars)
    return improved


def _checkpoint_state(config: TrainConfig, parts: _Parts, state: _Progress) -> dict[str, Any]:
    """The 3D trainer's part of a checkpoint (``training.checkpoint`` lists every key)."""
    return {
        "model": parts.raw_model.state_dict(),
        "model_config": parts.model_config.to_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "step": state.step,
        "epoch": state.position.epoch,
        "epoch_draws": state.position.draws,
        "config": config.to_dict(),
        "best_metric": state.best_metric,
        "best_step": state.best_step,
        "text": parts.text_state,
        "structures": list(config.structures),
    }
