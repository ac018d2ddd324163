"""The training loop: one function, :func:`train`, that reads top to bottom and runs as one process or under
torchrun (one process per GPU, or per CPU slot with gloo).

Order of one optimizer step: learning rate from the pure :func:`get_lr` -> ``grad_accum / world_size``
micro-steps (gradients synchronised across ranks only on the last, via ``no_sync``) -> unscale, clip ->
``scaler.step`` -> ``zero_grad(set_to_none=True)`` -> log (rank 0) -> validate (all ranks, every
``val_every``) -> checkpoint (rank 0 writes, every ``ckpt_every``, and ``best.pt`` when validation improves).

Seeds: the model is built right after ``torch.manual_seed(config.seed)`` (identical on every rank; DDP also
broadcasts rank 0's weights); afterwards each rank's global generators are seeded with ``seed + rank``. Data
order and augmentation come from the resumable sampler (see ``training.data``), not from global generators.

``grad_accum`` counts micro-steps over all processes, so the global batch is the config's at any world size;
``batch_plan`` derives each process's share before anything starts and refuses a world size that does not
divide it (``DistributedConfigError``, one line with the fix).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from TextGuidedSegLib import __version__
from TextGuidedSegLib.models import ModelConfig, build_model, load_pretrained_swinunetr
from TextGuidedSegLib.taxonomy import get_taxonomy

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
    seed_generators,
    set_rng_state,
)
from .config import TRAINING_TAXONOMY, TrainConfig, batch_plan
from .data import build_train_loader, build_val_loader
from .distributed import DistributedContext
from .embeddings import load_embeddings
from .logs import close_run_log, open_run_log
from .loss import SegmentationLoss
from .validation import validate

__all__ = ["TrainResult", "batch_inputs", "get_lr", "train"]

logger = logging.getLogger(__name__)

#: Keys of the config that define the weights: on resume they are taken from the checkpoint.
WEIGHT_KEYS = ("model", "structures", "text")


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
    global_text: torch.Tensor | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Model inputs, targets and loss mask of a training batch.

    Args:
        batch: a collated batch (see ``training.data``): ``image`` ``(N, 1, D, H, W)``, ``label``
            ``(N, S, D, H, W)``, ``annotated`` ``(N, S)``, ``class_indices`` / ``query_mask`` ``(N, Q)``.
        output: the model's ``output``: ``"query"`` or ``"channels"``.
        query_text: ``(S, E)`` embeddings of the structures' prompts (text models), on ``device``.
        global_text: ``(1, E)`` embedding of the global prompt (global mode), on ``device``.

    Returns:
        ``(image, text, target, mask)``: query models get text ``(N, q, E)``, target ``(N, q, D, H, W)`` and
        the query mask ``(N, q)``, with ``q`` the largest number of valid queries of a crop in the batch;
        channel models get text ``(N, 1, E)`` (global mode) or None, target ``(N, S, D, H, W)`` and the
        annotated mask ``(N, S)``.
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
        text = None if global_text is None else global_text.expand(image.shape[0], 1, -1)
    return image, text, target.to(device, non_blocking=True), mask.to(device, non_blocking=True)


@dataclass
class TrainResult:
    """What a finished run left behind.

    Attributes:
        run_dir: the run folder.
        step: optimizer steps done.
        checkpoint: the last checkpoint written.
        best_metric: best mean validation Dice (-1 without validation).
        loss: the last step's loss (mean over the ranks).
    """

    run_dir: Path
    step: int
    checkpoint: Path | None
    best_metric: float
    loss: float


def _param_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _resumed_config(config: TrainConfig, checkpoint: dict[str, Any]) -> TrainConfig:
    """``config`` with the weight-defining keys (model, structures, text) of the checkpoint's config."""
    saved = checkpoint["config"]
    data = config.to_dict()
    for key in WEIGHT_KEYS:
        if data[key] != saved[key]:
            logger.warning("resume: %s differs from the checkpoint's; using the checkpoint's", key)
        data[key] = saved[key]
    return TrainConfig.from_dict(data, source="checkpoint")


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
    # ---- processes: one, or one per device under torchrun ------------------------------------------------
    context = DistributedContext.from_environment(config.device)
    ddp, rank, local_rank, world_size = context.ddp, context.rank, context.local_rank, context.world_size
    device, use_cuda, master_process = context.device, context.use_cuda, context.is_master
    plan = batch_plan(config, world_size)  # DistributedConfigError before anything starts
    grad_accum = plan.micro_steps
    context.start(config.threads)

    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    file_handler: logging.Handler | None = None
    writer = None
    model = optimizer = None
    finished = False
    try:
        # ---- determinism -------------------------------------------------------------------------------
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(config.deterministic, warn_only=True)
        torch.backends.cudnn.deterministic = config.deterministic
        torch.backends.cudnn.benchmark = not config.deterministic

        # ---- run folder, resume target, config snapshot ------------------------------------------------
        run_dir = Path(config.run_dir)
        checkpoint = None
        if resume == "auto":
            resume_path = find_latest(run_dir)
            if resume_path is None:
                logger.info("--resume auto: no checkpoint in %s, starting a new run", run_dir)
        elif resume:
            resume_path = Path(resume)
        else:
            resume_path = None
            if list_checkpoints(run_dir):
                raise FileExistsError(
                    f"{run_dir} already holds checkpoints; pass --resume auto to continue that run, "
                    "or choose another run_dir"
                )
        if resume_path is not None:
            checkpoint = load_checkpoint(resume_path)
            config = _resumed_config(config, checkpoint)
        if master_process:
            file_handler = open_run_log(run_dir)
            (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
            logger.info(
                "TextGuidedSegLib %s, %d rank(s) on %s; config:\n%s",
                __version__,
                world_size,
                device.type,
                config.to_yaml(),
            )
            if checkpoint is not None:
                logger.info("resuming from %s (step %d)", resume_path, checkpoint["step"])
            logger.info("global batch: %s", plan.describe())

        # ---- structures and prompt embeddings ----------------------------------------------------------
        taxonomy = get_taxonomy(TRAINING_TAXONOMY).subset(config.structures)
        num_structures = len(taxonomy)
        channels = config.model.output == "channels"
        text_state = None
        query_text = global_text = None
        if config.model.uses_text:
            if checkpoint is not None and checkpoint.get("text") is not None:
                text_state = checkpoint["text"]  # exactly the vectors the weights were trained with
            else:
                prompts = taxonomy.prompts + (
                    [config.text.global_prompt] if config.model.mode == "global" else []
                )
                vectors, encoder_id = load_embeddings(
                    config.text.source, prompts, config.text.cache_dir, config.text.dim
                )
                text_state = {"encoder_id": encoder_id, "prompts": prompts, "embeddings": vectors}
            vectors = text_state["embeddings"].to(device)
            query_text = vectors[:num_structures]
            global_text = vectors[num_structures:] if config.model.mode == "global" else None

        # ---- model, optimizer, mixed precision ---------------------------------------------------------
        if checkpoint is not None:
            model_config = ModelConfig.from_dict(checkpoint["model_config"])
        else:
            model_config = dataclasses.replace(
                config.model,
                num_classes=num_structures if channels else config.model.num_classes,
                text_dim=query_text.shape[1] if query_text is not None else config.model.text_dim,
                img_size=config.data.roi_size,
            )
        torch.manual_seed(config.seed)
        model = build_model(model_config)
        if config.pretrained and checkpoint is None:
            load_pretrained_swinunetr(model, config.pretrained)
        model.to(device)
        raw_model = model  # the unwrapped module: what checkpoints hold
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=config.optim.lr,
            betas=config.optim.betas,
            weight_decay=config.optim.weight_decay,
        )
        amp_dtype = None
        if use_cuda and config.amp != "off":
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
        if ddp:
            model = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
        criterion = SegmentationLoss()
        logger.info(
            "model %s (%s output), %.2f M parameters, %d structure(s), amp %s",
            model_config.architecture,
            raw_model.output,
            sum(p.numel() for p in raw_model.parameters()) / 1e6,
            num_structures,
            amp_dtype or "off",
        )

        # ---- data --------------------------------------------------------------------------------------
        cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else run_dir / "cache"
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
            progress=master_process,
            pin_memory=use_cuda,
        )
        val_loader = build_val_loader(
            config.data, config.structures, rank, world_size, cache_dir, master_process
        )
        crops_per_step = config.batch_size * config.data.num_samples * config.grad_accum

        # ---- state: fresh, or exactly where the checkpoint left off ----------------------------------
        step, epoch, epoch_draws = 0, 0, 0
        best_metric, best_step = -1.0, -1
        if checkpoint is not None:
            step, epoch, epoch_draws = checkpoint["step"], checkpoint["epoch"], checkpoint["epoch_draws"]
            best_metric, best_step = checkpoint["best_metric"], checkpoint["best_step"]
            if checkpoint["world_size"] == world_size:
                set_rng_state(checkpoint["rng"][rank])
            else:
                epoch_draws = epoch_draws * checkpoint["world_size"] // world_size
                logger.warning(
                    "resuming a %d-rank run on %d rank(s): data position approximated, generators re-seeded",
                    checkpoint["world_size"],
                    world_size,
                )
                torch.manual_seed(config.seed + rank + step)
            del checkpoint  # free the host copy of the weights
        else:
            seed_generators(config.seed + rank)
        sampler, loader = train_data.sampler, train_data.loader
        sampler.set_epoch(epoch, start=epoch_draws)
        batches = iter(loader)

        def next_batch() -> dict[str, Any]:
            """The next batch, moving on to the next epoch when one ends."""
            nonlocal batches, epoch, epoch_draws
            batch = next(batches, None)
            while batch is None:
                epoch, epoch_draws = epoch + 1, 0
                sampler.set_epoch(epoch)
                batches = iter(loader)
                batch = next(batches, None)
            epoch_draws += len(batch["name"]) // config.data.num_samples
            return batch

        def conditioning(n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            """Validation inputs for ``n`` windows: every structure, in order."""
            if raw_model.output == "query":
                return query_text[None].expand(n, -1, -1), None
            return (None if global_text is None else global_text.expand(n, 1, -1)), None

        if master_process:
            metrics_file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            if config.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        progress = tqdm(
            total=config.max_steps,
            initial=step,
            desc="train",
            unit="step",
            disable=not (master_process and config.progress),
        )

        # ---- the loop ----------------------------------------------------------------------------------
        last_checkpoint: Path | None = None
        loss_value = float("nan")
        model.train()
        step_start = time.perf_counter()
        while step < config.max_steps:
            lr = get_lr(
                step, config.optim.lr, config.optim.warmup_steps, config.max_steps, config.optim.min_lr
            )
            for group in optimizer.param_groups:
                group["lr"] = lr

            totals = torch.zeros(3, device=device)  # loss, bce, dice (mean over micro-steps)
            for micro_step in range(grad_accum):
                batch = next_batch()
                image, text, target, mask = batch_inputs(
                    batch, raw_model.output, query_text, global_text, device
                )
                sync = not ddp or micro_step == grad_accum - 1
                with nullcontext() if sync else model.no_sync():
                    with autocast:
                        logits = model(image, text)
                    out = criterion(logits, target, mask)
                    scaler.scale(out.loss / grad_accum).backward()
                totals += torch.stack([out.loss, out.bce, out.dice]).detach() / grad_accum
            grad_norm = torch.zeros((), device=device)
            if config.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            # ---- log (the mean over the ranks) --------------------------------------------------------
            context.mean_(totals)
            loss_value, bce_value, dice_value = totals.tolist()
            now = time.perf_counter()
            step_time, step_start = now - step_start, now
            if master_process:
                record = {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss_value,
                    "bce": bce_value,
                    "dice": dice_value,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "step_time": step_time,
                    "samples_per_s": crops_per_step / step_time,
                }
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                progress.update(1)
                progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                if step % config.log_every == 0 or step == config.max_steps:
                    cpu_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                    gpu_mib = torch.cuda.max_memory_allocated(device) / 2**20 if use_cuda else 0.0
                    logger.info(
                        "step %d/%d epoch %d: loss %.4f (bce %.4f, dice %.4f) lr %.3e, %.2f crops/s, "
                        "max RSS %.0f MiB%s",
                        step,
                        config.max_steps,
                        epoch,
                        loss_value,
                        bce_value,
                        dice_value,
                        lr,
                        record["samples_per_s"],
                        cpu_mib,
                        f", GPU {gpu_mib:.0f} MiB" if use_cuda else "",
                    )
                    if writer is not None:
                        for key in ("loss", "bce", "dice", "lr", "grad_norm"):
                            writer.add_scalar(f"train/{key}", record[key], step)
                        writer.add_scalar("perf/samples_per_s", record["samples_per_s"], step)
                        writer.add_scalar("perf/step_time_s", step_time, step)
                        writer.add_scalar("memory/cpu_max_rss_mib", cpu_mib, step)
                        if use_cuda:
                            writer.add_scalar("memory/gpu_max_allocated_mib", gpu_mib, step)

            # ---- validate (every rank takes its share of the cases) ----------------------------------
            last = step == config.max_steps
            improved = False
            if config.data.val_lists and ((config.val_every and step % config.val_every == 0) or last):
                sums, counts = validate(  # the unwrapped module: ranks may validate different case counts
                    raw_model,
                    val_loader,
                    conditioning,
                    num_structures,
                    config.data.roi_size,
                    config.val_overlap,
                    config.val_sw_batch_size,
                    device,
                    autocast,
                    distributed=ddp,
                )
                seen = counts > 0
                per_structure = {
                    name: float(sums[i] / counts[i]) for i, name in enumerate(config.structures) if seen[i]
                }
                mean_dice = float((sums[seen] / counts[seen]).mean()) if bool(seen.any()) else float("nan")
                improved = not math.isnan(mean_dice) and mean_dice > best_metric
                if improved:
                    best_metric, best_step = mean_dice, step
                if master_process:
                    logger.info(
                        "step %d validation: mean Dice %.4f (best %.4f at step %d); %s",
                        step,
                        mean_dice,
                        best_metric,
                        best_step,
                        ", ".join(f"{k} {v:.3f}" for k, v in per_structure.items()),
                    )
                    metrics_file.write(
                        json.dumps({"step": step, "val_dice_mean": mean_dice, "val_dice": per_structure})
                        + "\n"
                    )
                    metrics_file.flush()
                    if writer is not None:
                        writer.add_scalar("val/dice_mean", mean_dice, step)
                        for name, value in per_structure.items():
                            writer.add_scalar(f"val/dice/{name}", value, step)

            # ---- checkpoint (every rank gives its generator states, rank 0 writes) --------------------
            periodic = (config.ckpt_every and step % config.ckpt_every == 0) or last
            if periodic or improved:
                rng_states = context.gather(get_rng_state())
                if master_process:
                    state = {
                        "format_version": CHECKPOINT_FORMAT_VERSION,
                        "model": raw_model.state_dict(),
                        "model_config": model_config.to_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "step": step,
                        "epoch": epoch,
                        "epoch_draws": epoch_draws,
                        "world_size": world_size,
                        "rng": rng_states,
                        "config": config.to_dict(),
                        "best_metric": best_metric,
                        "best_step": best_step,
                        "text": text_state,
                        "structures": list(config.structures),
                        "library_version": __version__,
                    }
                    if periodic:
                        last_checkpoint = save_checkpoint(state, run_dir / checkpoint_name(step))
                        prune_checkpoints(run_dir, config.keep_last)
                        logger.info("saved %s", last_checkpoint)
                    if improved:
                        save_checkpoint(state, run_dir / BEST_NAME)
                        logger.info("saved %s (mean Dice %.4f)", run_dir / BEST_NAME, best_metric)

        # ---- end: every rank must hold the same weights ----------------------------------------------
        progress.close()
        digests = context.gather(_param_digest(raw_model))
        if master_process:
            metrics_file.write(json.dumps({"step": step, "event": "end", "param_digests": digests}) + "\n")
            metrics_file.close()
        if len(set(digests)) != 1:
            raise RuntimeError(f"the ranks' weights diverged at the end of training: digests {digests}")
        finished = True
        return TrainResult(
            run_dir=run_dir, step=step, checkpoint=last_checkpoint, best_metric=best_metric, loss=loss_value
        )
    finally:
        if writer is not None:
            writer.close()
        if file_handler is not None:
            close_run_log(file_handler)
        torch.use_deterministic_algorithms(previous_deterministic)
        if ddp and dist.is_initialized():
            # Free the DDP wrapper (it holds the process group) while every rank is still connected, then
            # leave together: a process group torn down after a peer has exited can wait for it forever.
            model = optimizer = None
            gc.collect()
        context.stop(barrier=finished)
