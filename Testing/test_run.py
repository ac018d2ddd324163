"""The run context both trainers share (``training.run``): files, checkpoints, what ``best_metric`` means."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from TextGuidedSegLib.training.checkpoint import load_checkpoint, save_checkpoint
from TextGuidedSegLib.training.distributed import DistributedContext
from TextGuidedSegLib.training.run import MEAN_DICE, VAL_LOSS, BestMetric, Run, checkpoint_metric


@pytest.fixture
def context(monkeypatch: pytest.MonkeyPatch) -> DistributedContext:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return DistributedContext.from_environment("cpu")


def library_file_handlers(run_dir: Path) -> list[logging.Handler]:
    return [
        h
        for h in logging.getLogger("TextGuidedSegLib").handlers
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == run_dir
    ]


def test_best_metric_directions():
    assert MEAN_DICE.improves(0.41, best=0.4) and not MEAN_DICE.improves(0.39, best=0.4)
    assert VAL_LOSS.improves(0.39, best=0.4) and not VAL_LOSS.improves(0.41, best=0.4)
    assert VAL_LOSS.improves(5.0, best=math.inf)
    assert not MEAN_DICE.improves(float("nan"), best=-1.0) and not VAL_LOSS.improves(float("nan"), math.inf)
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        BestMetric("x", "up", 0.0)


def test_old_checkpoints_get_their_trainers_metric():
    assert checkpoint_metric({"model": {}}) is MEAN_DICE  # the 3D trainer's files have no kind
    assert checkpoint_metric({"model": {}, "kind": "clipseg"}) is VAL_LOSS
    recorded = checkpoint_metric(
        {"best_metric_name": "val_loss", "best_metric_mode": "min", "kind": "clipseg"}
    )
    assert recorded is VAL_LOSS
    other = checkpoint_metric({"best_metric_name": "val_iou", "best_metric_mode": "max"})
    assert (other.name, other.mode) == ("val_iou", "max")


def test_a_failing_run_closes_its_files_and_removes_its_log_handler(context, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with Run(context, run_dir, MEAN_DICE, keep_last=1) as run:
            run.open("seed: 7\n")
            assert len(library_file_handlers(run_dir)) == 1
            run.log({"step": 1, "loss": 0.5}, flush=False)  # left in the buffer: only closing writes it
            logging.getLogger("TextGuidedSegLib.training").warning("inside the run")
            raise RuntimeError("boom")
    assert library_file_handlers(run_dir) == []
    assert [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 1, "loss": 0.5}
    ]
    assert (run_dir / "config.yaml").read_text() == "seed: 7\n"
    assert "inside the run" in (run_dir / "train.log").read_text()


def test_save_records_the_metric_prunes_and_writes_best(context, tmp_path):
    with Run(context, tmp_path, VAL_LOSS, keep_last=2, kind="clipseg") as run:
        run.open("{}\n")
        for step, best in ((1, True), (2, False), (3, True)):
            state = {"model": {"w": torch.full((2,), float(step))}, "step": step, "best_metric": 1.0 / step}
            written = run.save(step, lambda state=state: state, periodic=True, best=best)
            assert written == tmp_path / f"ckpt_{step:07d}.pt"
        assert run.save(4, lambda: {}, periodic=False, best=False) is None
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["best.pt", "ckpt_0000002.pt", "ckpt_0000003.pt"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == 3 and torch.equal(best["model"]["w"], torch.full((2,), 3.0))
    assert (best["best_metric_name"], best["best_metric_mode"], best["kind"]) == (
        "val_loss",
        "min",
        "clipseg",
    )
    assert best["world_size"] == 1 and len(best["rng"]) == 1 and best["best_metric"] == pytest.approx(1 / 3)


def test_resume_refuses_a_fresh_start_over_checkpoints_and_another_trainers_file(context, tmp_path):
    save_checkpoint({"format_version": 1, "model": {}, "kind": "clipseg"}, tmp_path / "ckpt_0000004.pt")
    run = Run(context, tmp_path, MEAN_DICE, keep_last=1)
    with pytest.raises(FileExistsError, match="already holds checkpoints; pass --resume auto"):
        run.resume(None, refuse_existing=True)
    assert run.resume(None, refuse_existing=False) is None
    with pytest.raises(ValueError, match=r"ckpt_0000004.pt: its best_metric is val_loss \(lower is better\)"):
        run.resume("auto", refuse_existing=True)
    clipseg = Run(context, tmp_path, VAL_LOSS, keep_last=1, kind="clipseg")
    assert clipseg.resume("auto", refuse_existing=False)["kind"] == "clipseg"
    assert clipseg.resumed_from == tmp_path / "ckpt_0000004.pt"
    assert (
        Run(context, tmp_path / "empty", MEAN_DICE, keep_last=1).resume("auto", refuse_existing=True) is None
    )
