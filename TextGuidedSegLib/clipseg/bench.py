"""``textguidedseg clipseg-bench``: every strategy on the same slices and seed, measured, and explained.

For each strategy :func:`run_bench` starts from the same base weights, trains with :func:`train_clipseg`
(same split, seed, schedule and early stopping), then scores the best epoch's weights:

- Dice per (slice, prompt) on the training and the validation samples (``logits > 0``; two empty masks
  score 1);
- 3D Dice per validation case and structure: every slice of the case is predicted and the slices are
  stacked back into a volume (on the slice set's ``S x S`` grid) before scoring against the stacked
  reference (``evaluation.metrics.dice_score``, the library's empty-mask policy);
- wall time (cache, training, validation), the step split into data / forward / backward / optimizer,
  samples per second of step time, peak memory (CUDA ``max_memory_allocated`` or sampled CPU RSS) and
  trainable parameters.

:func:`write_report` writes ``report.md`` (the table, 3D Dice per structure, and :func:`explain`'s account
of why the fastest strategy is fastest, derived from the measured split), ``dice_vs_time.png`` and
``results.json``.

Without validation volumes :func:`run_bench` holds out part of the training set first
(:func:`~TextGuidedSegLib.clipseg.split.holdout_split`: whole volumes when there are 2+, else one contiguous
block of slices, with a warning that slice-level validation from one patient flatters Dice); the report
says which. A value that cannot be computed is written ``n/a (<why>)``, never ``nan``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from TextGuidedSegLib.evaluation.metrics import dice_score

from .data import SliceSet
from .model import CLIPSegNet
from .split import VAL_FRACTION, holdout_split
from .train import (
    CLIPSegTrainConfig,
    CLIPSegTrainResult,
    SliceLoss,
    _Forward,
    evaluate_samples,
    train_clipseg,
)

__all__ = ["BenchReport", "StrategyReport", "explain", "run_bench", "volume_dice", "write_report"]

#: Table cells of values that do not exist, and why.
NO_VAL_SAMPLES = "n/a (no validation samples)"
NO_VAL_STRUCTURES = "n/a (no annotated structure in validation)"

logger = logging.getLogger(__name__)

PARTS = ("data", "forward", "backward", "optimizer")
#: What each part of a step is, for the explanation.
_PART_MEANING = {
    "data": "gathering batches",
    "forward": "the forward pass",
    "backward": "the backward pass",
    "optimizer": "the AdamW update",
}


@dataclass
class StrategyReport:
    """The measurements of one strategy (see the module docstring).

    Attributes:
        strategy: its name.
        trainable, total: parameters; ``trainable_tensors`` parameter tensors that train.
        epochs: epochs run; ``best_epoch`` the one kept; ``stopped_early`` by early stopping.
        steps: optimizer steps.
        train_dice, val_dice: mean Dice per (slice, prompt).
        val_dice_3d: mean 3D Dice over (validation case, structure).
        dice_3d: ``{"case", "structure", "dice"}`` rows.
        wall_seconds: the whole run; ``cache_seconds`` of it building the encoder cache.
        step_seconds: mean seconds per step of each part and of the step (``per_step()``).
        samples_per_s: training samples per second of step time.
        peak_memory_mib: peak memory; ``memory_kind`` ``cuda`` or ``cpu_rss``.
        cached: the steps read the frozen-encoder cache.
    """

    strategy: str
    trainable: int
    total: int
    trainable_tensors: int
    epochs: int
    best_epoch: int
    stopped_early: bool
    steps: int
    train_dice: float
    val_dice: float
    val_dice_3d: float
    dice_3d: list[dict[str, Any]]
    wall_seconds: float
    cache_seconds: float
    step_seconds: dict[str, float]
    samples_per_s: float
    peak_memory_mib: float
    memory_kind: str
    cached: bool

    @property
    def step_total(self) -> float:
        """Seconds in optimizer steps over the run."""
        return self.step_seconds["step"] * self.steps

    @property
    def other_seconds(self) -> float:
        """Seconds outside the steps (cache, validation, checkpoints)."""
        return max(0.0, self.wall_seconds - self.step_total)


@dataclass
class BenchReport:
    """All strategies' measurements, the settings they ran with, the explanation, and notes (the validation
    split, warnings) that the report prints above the table."""

    strategies: list[StrategyReport]
    device: str
    settings: dict[str, Any]
    explanation: str = ""
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@torch.no_grad()
def volume_dice(net: CLIPSegNet, slice_set: SliceSet, batch_size: int = 16) -> list[dict[str, Any]]:
    """3D Dice per (case, annotated structure) after stacking a case's slice predictions (``logits > 0``)."""
    net.eval()
    rows = []
    for case_index, case in enumerate(slice_set.cases):
        structures = list(case["annotated"])
        if not structures:
            continue
        conditional = net.encode_prompts([slice_set.prompt(s) for s in structures])
        images = torch.from_numpy(np.array(slice_set.images[slice_set.case_slices(case_index)]))
        logits = net.predict_slices(images, conditional, batch_size=batch_size)  # (Z, Q, S, S)
        for q, structure in enumerate(structures):
            prediction = (logits[:, q] > 0).numpy()
            reference = slice_set.reference_volume(case_index, structure)
            rows.append(
                {
                    "case": case["name"],
                    "structure": slice_set.structures[structure],
                    "dice": dice_score(prediction, reference),
                }
            )
    return rows


def _score(
    result: CLIPSegTrainResult, train_set: SliceSet, val_set: SliceSet | None, config: CLIPSegTrainConfig
) -> StrategyReport:
    net = result.net
    device = next(net.parameters()).device
    criterion = SliceLoss(config.dice_weight)
    _, train_dice = evaluate_samples(
        _Forward(net, None), train_set, criterion, config.eval_batch_size, device
    )
    val_dice = val_3d = float("nan")
    rows: list[dict[str, Any]] = []
    if val_set is not None:
        _, val_dice = evaluate_samples(
            _Forward(net, None), val_set, criterion, config.eval_batch_size, device
        )
        rows = volume_dice(net, val_set, config.eval_batch_size)
        val_3d = float(np.mean([r["dice"] for r in rows])) if rows else float("nan")
    return StrategyReport(
        strategy=result.strategy,
        trainable=result.parameters.trainable,
        total=result.parameters.total,
        trainable_tensors=sum(1 for p in net.parameters() if p.requires_grad),
        epochs=len(result.history),
        best_epoch=result.best_epoch,
        stopped_early=result.stopped_early,
        steps=result.times.steps,
        train_dice=train_dice,
        val_dice=val_dice,
        val_dice_3d=val_3d,
        dice_3d=rows,
        wall_seconds=result.wall_seconds,
        cache_seconds=result.cache_seconds,
        step_seconds=result.times.per_step(),
        samples_per_s=result.samples_per_s,
        peak_memory_mib=result.peak_memory_mib,
        memory_kind=result.memory_kind,
        cached=result.cached,
    )


def run_bench(
    load_net: Callable[[], CLIPSegNet],
    train_set: SliceSet,
    val_set: SliceSet | None,
    config: CLIPSegTrainConfig,
    strategies: Sequence[str],
    out_dir: str | Path,
    val_fraction: float = VAL_FRACTION,
) -> BenchReport:
    """Train and score every strategy on the same slices, seed and schedule.

    Args:
        load_net: returns a fresh net with the base weights (called once per strategy).
        train_set, val_set: the split; ``val_set`` None: ``holdout_split(train_set, val_fraction,
            config.seed)`` makes one (by volume, or by slices with a warning), unless ``val_fraction`` is 0.
        config: the shared settings (its ``strategy`` and ``run_dir`` are replaced per strategy).
        strategies: strategy names, in report order.
        out_dir: ``<out_dir>/<strategy>/`` holds each run's logs.
        val_fraction: share held out when ``val_set`` is None; 0: no validation (the report says n/a).

    Returns:
        The :class:`BenchReport` (not yet written; see :func:`write_report`).

    Raises:
        SplitError: no validation set and too few volumes / slices to make one (says how many are needed).
        ValueError: ``val_set`` holds no sample.
    """
    out_dir = Path(out_dir)
    notes: list[str] = []
    validation = "given"
    if val_set is not None and len(val_set) == 0:
        raise ValueError(
            f"the validation volumes ({', '.join(c['name'] for c in val_set.cases)}) hold no sample of the "
            f"structures {train_set.structures}: choose validation volumes that annotate them"
        )
    if val_set is None and val_fraction > 0:
        split = holdout_split(train_set, val_fraction, config.seed)
        train_set, val_set, validation = split.train, split.val, f"held out by {split.kind}"
        notes.append(f"Validation: {split.description}.")
        logger.info("validation: %s", split.description)
        if split.warning:
            notes.append(f"**WARNING: {split.warning}.**")
            logger.warning("%s", split.warning)
    elif val_set is None:
        validation = "none"
        notes.append("Validation: none (val_fraction 0 and no validation volumes): validation Dice is n/a.")
    reports = []
    device = "cpu"
    for strategy in strategies:
        run_config = dataclasses.replace(
            copy.deepcopy(config),
            strategy=strategy,
            run_dir=str(out_dir / strategy),
            export_bundle=False,
            checkpoints=False,
        )
        net = load_net()  # train_clipseg resizes its pixel spec to the slice set's image size
        started = time.perf_counter()
        result = train_clipseg(run_config, net=net, train_set=train_set, val_set=val_set)
        report = _score(result, train_set, val_set, run_config)
        device = str(next(result.net.parameters()).device)
        logger.info(
            "%s: val Dice %.3f (3D %.3f) in %.1f s (%.1f s with scoring)",
            strategy,
            report.val_dice,
            report.val_dice_3d,
            report.wall_seconds,
            time.perf_counter() - started,
        )
        reports.append(report)
        del result, net
    settings = {
        "model": config.model,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "patience": config.patience,
        "seed": config.seed,
        "cache": config.cache,
        "max_steps_per_epoch": config.max_steps_per_epoch,
        "image_size": train_set.config.image_size,
        "intensity": train_set.config.intensity,
        "train_samples": len(train_set),
        "train_slices": int(train_set.images.shape[0]),
        "val_samples": len(val_set) if val_set is not None else 0,
        "val_cases": len(val_set.cases) if val_set is not None else 0,
    }
    settings["validation"] = validation
    report = BenchReport(strategies=reports, device=device, settings=settings, notes=notes)
    report.explanation = explain(reports)
    return report


# ----------------------------------------------------------------------------------------------------------
# The explanation, derived from the measurements
# ----------------------------------------------------------------------------------------------------------


def _split(r: StrategyReport) -> str:
    s = r.step_seconds
    return (
        f"{r.steps} steps x {s['step']:.4f} s (forward {s['forward']:.4f}, backward {s['backward']:.4f}, "
        f"optimizer {s['optimizer']:.4f}, data {s['data']:.4f}) + {r.other_seconds:.2f} s outside the steps"
        + (f" (encoder cache {r.cache_seconds:.2f} s)" if r.cached else "")
    )


def _early(r: StrategyReport) -> str:
    return ", stopped early" if r.stopped_early else ""


def _why_part(part: str, slow: StrategyReport, fast: StrategyReport) -> str:
    """A reason for a per-step difference in ``part``, from what the two strategies are."""
    if part == "forward":
        if fast.cached and not slow.cached:
            return (
                f"{fast.strategy} reads CLIP's activations from the cache; {slow.strategy} runs the encoder"
            )
        if not fast.cached and slow.cached:
            return f"{slow.strategy}'s cached forward pass still costs more than {fast.strategy}'s"
        return "the two forward passes run different amounts of trainable code (adapters / LoRA branches)"
    if part == "backward":
        return (
            f"the backward pass reaches {slow.trainable:,} trainable parameters in {slow.strategy} "
            f"against {fast.trainable:,} in {fast.strategy}"
            + (" and has to traverse CLIP's layers" if not slow.cached and fast.cached else "")
        )
    if part == "optimizer":
        text = (
            f"AdamW updates {slow.trainable:,} parameters in {slow.trainable_tensors} tensors in "
            f"{slow.strategy} against {fast.trainable:,} in {fast.trainable_tensors}"
        )
        if slow.trainable <= fast.trainable and slow.trainable_tensors > fast.trainable_tensors:
            text += ": at this size the per-tensor cost, not the parameter count, decides"
        return text
    return "batches are gathered from different stores (slice images vs cached activations)"


def explain(reports: Sequence[StrategyReport]) -> str:
    """Why the fastest strategy (least wall time) is the fastest, computed from the measured split.

    For each other strategy, the wall-time gap is split into: more (or fewer) steps at the fastest
    strategy's step time (epochs run, early stopping), slower steps (split by data / forward / backward /
    optimizer, the largest part named with its reason), and time outside the steps (encoder cache,
    validation).
    """
    if not reports:
        return ""
    fast = min(reports, key=lambda r: r.wall_seconds)
    lines = [
        f"**{fast.strategy} is the fastest: {fast.wall_seconds:.2f} s** = {_split(fast)}.",
        "",
    ]
    fast_steps = fast.step_seconds
    for slow in sorted(reports, key=lambda r: r.wall_seconds):
        if slow is fast:
            continue
        gap = slow.wall_seconds - fast.wall_seconds
        extra_steps = (slow.steps - fast.steps) * fast_steps["step"]
        per_step = {p: slow.steps * (slow.step_seconds[p] - fast_steps[p]) for p in PARTS}
        slower_steps = sum(per_step.values())
        outside = slow.other_seconds - fast.other_seconds
        part = max(PARTS, key=lambda p: per_step[p])
        ratio = slow.step_seconds["step"] / max(fast_steps["step"], 1e-12)
        text = [
            f"- **{slow.strategy}**: {slow.wall_seconds:.2f} s = {_split(slow)}; {gap:.2f} s more than "
            f"{fast.strategy}:"
        ]
        if slow.steps != fast.steps:
            text.append(
                f"{extra_steps:+.2f} s from running {slow.steps} steps instead of {fast.steps} "
                f"({slow.epochs} epochs, best {slow.best_epoch}{_early(slow)} "
                f"vs {fast.epochs} epochs{_early(fast)});"
            )
        text.append(
            f"{slower_steps:+.2f} s from its steps being {ratio:.2f}x as long, "
            f"of which {per_step[part]:+.2f} s in {_PART_MEANING[part]} "
            f"({slow.step_seconds[part]:.4f} vs {fast_steps[part]:.4f} s per step: "
            f"{_why_part(part, slow, fast)});"
        )
        text.append(f"{outside:+.2f} s outside the steps (cache, validation).")
        lines.append(" ".join(text))
    shares = {r.strategy: r.step_seconds["backward"] / max(r.step_seconds["step"], 1e-12) for r in reports}
    lines += [
        "",
        "Backward share of a step: "
        + ", ".join(f"{name} {100 * share:.0f} %" for name, share in shares.items())
        + ". A strategy is fast per step when little of the network needs gradients and the frozen part's "
        "outputs come from the cache; it is fast overall when it also needs fewer steps (epochs before early "
        "stopping). The numbers above say which of these held in this run.",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def _missing(value: float) -> bool:
    return value is None or not np.isfinite(value)


def _cell(value: float, why: str) -> str:
    """``0.123``, or ``why`` (``n/a (...)``) when the value does not exist."""
    return why if _missing(value) else f"{value:.3f}"


def _plain(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (valid JSON, no ``NaN``)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _table(report: BenchReport) -> list[str]:
    header = (
        "| strategy | trainable / total params | epochs (best) | steps | train Dice | val Dice | val 3D Dice "
        "| wall s | cache s | s/step | forward | backward | optimizer | data | samples/s | peak MiB |"
    )
    lines = [header, "|" + "---|" * 16]
    for r in report.strategies:
        s = r.step_seconds
        train = _cell(r.train_dice, "n/a (no training samples)")
        val = _cell(r.val_dice, NO_VAL_SAMPLES)
        val_3d = _cell(r.val_dice_3d, NO_VAL_SAMPLES if _missing(r.val_dice) else NO_VAL_STRUCTURES)
        lines.append(
            f"| {r.strategy} | {r.trainable:,} / {r.total:,} | {r.epochs} ({r.best_epoch})"
            f"{'*' if r.stopped_early else ''} | {r.steps} | {train} | {val} | {val_3d} | "
            f"{r.wall_seconds:.2f} | {r.cache_seconds:.2f} | {s['step']:.4f} | "
            f"{s['forward']:.4f} | {s['backward']:.4f} | {s['optimizer']:.4f} | {s['data']:.4f} | "
            f"{r.samples_per_s:.1f} | {r.peak_memory_mib:.0f} ({r.memory_kind}) |"
        )
    return lines


def _structure_table(report: BenchReport) -> list[str]:
    names = sorted({row["structure"] for r in report.strategies for row in r.dice_3d})
    if not names:
        return []
    lines = [
        "| structure | " + " | ".join(r.strategy for r in report.strategies) + " |",
        "|---|" + "---|" * len(report.strategies),
    ]
    for name in names:
        cells = []
        for r in report.strategies:
            values = [row["dice"] for row in r.dice_3d if row["structure"] == name]
            cells.append(f"{np.mean(values):.3f}" if values else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: BenchReport) -> str:
    """The Markdown report: settings, the table, 3D Dice per structure, the explanation."""
    settings = ", ".join(f"{k} {v}" for k, v in report.settings.items())
    lines = [
        "# CLIPSeg fine-tuning strategies",
        "",
        f"Device {report.device}; {settings}.",
        "",
        *[line for note in report.notes for line in (note, "")],
        *_table(report),
        "",
        "Dice per (slice, prompt) on the samples; 3D Dice per (validation case, structure) after stacking "
        "the slice predictions; times per optimizer step in seconds; `*` = stopped early.",
        "",
    ]
    per_structure = _structure_table(report)
    if per_structure:
        lines += ["## 3D Dice per structure (validation)", "", *per_structure, ""]
    lines += ["## Why the fastest strategy is the fastest", "", report.explanation, ""]
    return "\n".join(lines)


def plot(report: BenchReport, path: str | Path) -> Path:
    """``dice_vs_time.png``: validation Dice (per slice and 3D) against wall time, one point per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    no_val = all(_missing(r.val_dice) for r in report.strategies)
    for r in report.strategies:
        dice = r.train_dice if no_val else r.val_dice
        if _missing(dice):
            continue
        ax.scatter(r.wall_seconds, dice, marker="s" if no_val else "o", s=50)
        ax.annotate(r.strategy, (r.wall_seconds, dice), textcoords="offset points", xytext=(6, 4))
        if not _missing(r.val_dice_3d):
            ax.scatter(r.wall_seconds, r.val_dice_3d, marker="^", s=40, color="grey")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("training Dice (no validation samples)" if no_val else "validation Dice")
    title = "CLIPSeg strategies: Dice against time\n(o per slice and prompt, ^ 3D after stacking)"
    if report.settings.get("validation") == "held out by slices":
        title += "\nvalidation: held-out slices of the training patient (flatters Dice)"
    ax.set_title(title, fontsize=10)
    if no_val:
        ax.text(
            0.5,
            0.5,
            "no validation samples: training Dice shown\n(give --val-volumes for validation Dice)",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="firebrick",
        )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: BenchReport, out_dir: str | Path) -> BenchReport:
    """Write ``report.md``, ``dice_vs_time.png`` and ``results.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "report": out_dir / "report.md",
        "plot": out_dir / "dice_vs_time.png",
        "results": out_dir / "results.json",
    }
    plot(report, files["plot"])
    report.files = {k: str(v) for k, v in files.items()}
    files["report"].write_text(markdown(report), encoding="utf-8")
    payload = {
        "device": report.device,
        "settings": report.settings,
        "notes": report.notes,
        "strategies": [dataclasses.asdict(r) for r in report.strategies],
        "explanation": report.explanation,
    }
    text = json.dumps(_plain(payload), indent=1, default=float, allow_nan=False)  # n/a values are null
    files["results"].write_text(text + "\n", encoding="utf-8")
    return report
