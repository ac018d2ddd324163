"""Training faults: a checkpoint write that fails half-way (a full disk), a NaN loss (stop or skip, as
configured), a list file with missing paths. Each leaves what is on disk usable and says what happened.

The run-level tests use test_training's tiny runs (64x64x32 phantoms at 5 mm, feature size 12).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from test_training import phantom_lists, tiny_config  # noqa: F401  (phantom_lists is a fixture)

from TextGuidedSegLib.data.datasets import DatasetListError
from TextGuidedSegLib.training import checkpoint as checkpoint_module
from TextGuidedSegLib.training import trainer as trainer_module
from TextGuidedSegLib.training.checkpoint import (
    CheckpointWriteError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from TextGuidedSegLib.training.config import ConfigError, TrainConfig
from TextGuidedSegLib.training.trainer import NonFiniteLossError, train


def _full_disk_after(
    monkeypatch: pytest.MonkeyPatch, good_writes: int, partial_bytes: int = 4096
) -> list[int]:
    """Make ``torch.save`` in the checkpoint module succeed ``good_writes`` times, then write
    ``partial_bytes`` and fail with ENOSPC, as a full disk does. Returns the call counter."""
    real_save = torch.save
    calls = [0]

    def save(state, handle, *args, **kwargs):
        calls[0] += 1
        if calls[0] <= good_writes:
            return real_save(state, handle, *args, **kwargs)
        handle.write(b"\0" * partial_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    return calls


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------------------------------------
# Checkpoint writes
# ----------------------------------------------------------------------------------------------------------


def test_failed_checkpoint_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run" / "best.pt"
    first = {"format_version": 1, "model": {"w": torch.arange(6.0)}, "step": 1}
    save_checkpoint(first, path)
    before = path.read_bytes()
    _full_disk_after(monkeypatch, good_writes=0)
    second = {"format_version": 1, "model": {"w": torch.zeros(6)}, "step": 2}
    with pytest.raises(CheckpointWriteError) as caught:
        save_checkpoint(second, path)
    message = str(caught.value)
    assert message.startswith(
        f"cannot write checkpoint {path}: No space left on device; the previous file is"
    )
    assert "--resume auto" in message and caught.value.errno == errno.ENOSPC
    assert isinstance(caught.value, OSError)
    assert path.read_bytes() == before  # byte for byte
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(6.0))
    assert _leftovers(path.parent) == []  # the partial temporary file is gone


def test_failed_first_checkpoint_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _full_disk_after(monkeypatch, good_writes=0)
    path = tmp_path / "ckpt_0000001.pt"
    with pytest.raises(CheckpointWriteError, match="nothing was written there"):
        save_checkpoint({"format_version": 1, "model": {}}, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_full_disk_mid_run_stops_then_resume_finishes(
    phantom_lists,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ckpt_every=1, max_steps=2: step 1's checkpoint is written, step 2's write fails half-way. The run stops
    naming the file; step 1's checkpoint is intact and ``resume="auto"`` continues from it to the end."""
    run_dir = tmp_path / "run"
    config = TrainConfig.from_dict(tiny_config(phantom_lists, run_dir, ckpt_every=1))
    _full_disk_after(monkeypatch, good_writes=1)
    target = run_dir / "ckpt_0000002.pt"
    with pytest.raises(CheckpointWriteError, match=rf"^cannot write checkpoint {target}: No space left"):
        train(config)
    assert [step for step, _ in list_checkpoints(run_dir)] == [1]
    assert load_checkpoint(run_dir / "ckpt_0000001.pt")["step"] == 1
    assert _leftovers(run_dir) == []
    monkeypatch.undo()  # space freed
    result = train(config, resume="auto")
    assert result.step == 2 and result.checkpoint == target
    assert load_checkpoint(target)["step"] == 2


# ----------------------------------------------------------------------------------------------------------
# Non-finite loss
# ----------------------------------------------------------------------------------------------------------


def _nan_loss_at(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int]) -> None:
    """The trainer's loss returns NaN on the given (1-based) calls, one call per micro-step."""
    real = trainer_module.SegmentationLoss
    calls = [0]

    class NaNOnSomeCalls(real):
        def forward(self, logits, target, mask):
            out = real.forward(self, logits, target, mask)
            calls[0] += 1
            if calls[0] in bad_calls:
                out.loss = out.loss * float("nan")  # still connected to the graph: backward runs
            return out

    monkeypatch.setattr(trainer_module, "SegmentationLoss", NaNOnSomeCalls)


def test_nonfinite_loss_setting_is_checked(phantom_lists, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match=r"nonfinite_loss must be one of \['stop', 'skip'\], got 'ignore'"):
        TrainConfig.from_dict(tiny_config(phantom_lists, tmp_path / "run", nonfinite_loss="ignore"))
    assert TrainConfig.from_dict(tiny_config(phantom_lists, tmp_path / "run")).nonfinite_loss == "stop"


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_number(
    phantom_lists,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = tmp_path / "run"
    config = TrainConfig.from_dict(tiny_config(phantom_lists, run_dir, max_steps=3, ckpt_every=1))
    _nan_loss_at(monkeypatch, {2})
    with pytest.raises(NonFiniteLossError) as caught:
        train(config)
    message = str(caught.value)
    assert message.startswith("step 2: the loss is nan")
    assert f"the last checkpoint, {run_dir / 'ckpt_0000001.pt'}, is intact" in message
    assert "nonfinite_loss: skip" in message
    assert [step for step, _ in list_checkpoints(run_dir)] == [1]  # nothing written for the bad step
    assert torch.isfinite(
        torch.cat(
            [v.flatten().float() for v in load_checkpoint(run_dir / "ckpt_0000001.pt")["model"].values()]
        )
    ).all()


@pytest.mark.slow
def test_nan_loss_skip_leaves_the_weights_and_logs_it(
    phantom_lists,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = tmp_path / "run"
    changes = {"max_steps": 3, "ckpt_every": 1, "keep_last": 5, "nonfinite_loss": "skip"}
    config = TrainConfig.from_dict(tiny_config(phantom_lists, run_dir, **changes))
    _nan_loss_at(monkeypatch, {2})
    result = train(config)
    assert result.step == 3
    states = {step: load_checkpoint(path)["model"] for step, path in list_checkpoints(run_dir)}
    assert sorted(states) == [1, 2, 3]
    for key, value in states[1].items():  # step 2 skipped: no update, and nothing non-finite got in
        assert torch.equal(value, states[2][key]), key
    assert any(not torch.equal(value, states[3][key]) for key, value in states[2].items())  # step 3 trained
    assert all(bool(torch.isfinite(v.float()).all()) for v in states[3].values())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r.get("event") == "skipped"]
    assert skipped == [{"step": 2, "event": "skipped", "reason": "nonfinite_loss", "loss": "nan"}]
    assert [r["step"] for r in records if "lr" in r] == [1, 3]


# ----------------------------------------------------------------------------------------------------------
# List files
# ----------------------------------------------------------------------------------------------------------


def test_missing_paths_in_a_list_fail_before_training_with_line_numbers(
    phantom_lists,  # noqa: F811
    tmp_path: Path,
) -> None:
    folder = phantom_lists["train"].parent  # the list's paths are relative to it: data_root
    good = [line for line in phantom_lists["train"].read_text().splitlines() if line and line[0] != "#"]
    gone = "images/phantom_gone.nii.gz\tlabels/phantom_gone.nii.gz"
    list_file = tmp_path / "broken.txt"
    list_file.write_text("\n".join([good[0], "# a comment", gone]) + "\n")
    run_dir = tmp_path / "run"
    changes = {"data__train_lists": [str(list_file)], "data__data_root": str(folder)}
    config = TrainConfig.from_dict(tiny_config(phantom_lists, run_dir, **changes))
    with pytest.raises(DatasetListError) as caught:
        train(config)
    assert caught.value.problems == [
        f"{list_file}:3: missing image {folder / 'images/phantom_gone.nii.gz'}",
        f"{list_file}:3: missing label {folder / 'labels/phantom_gone.nii.gz'}",
    ]
    assert list_checkpoints(run_dir) == []
    assert not (run_dir / "metrics.jsonl").exists() or (run_dir / "metrics.jsonl").read_text() == ""
