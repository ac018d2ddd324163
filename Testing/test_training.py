"""The trainer: config, schedule, loss, partial-label queries, DDP, exact resume after SIGKILL, export.

Every run is tiny (feature size 12, 64x32x32 crops of 64x64x32 phantoms at 5 mm, one thread per process) so
the file runs in a few minutes on two CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from TextGuidedSegLib.bundle import load_bundle
from TextGuidedSegLib.data.phantom import PhantomConfig, write_phantoms
from TextGuidedSegLib.models import ModelConfig, build_model
from TextGuidedSegLib.taxonomy import get_taxonomy
from TextGuidedSegLib.training.checkpoint import load_checkpoint
from TextGuidedSegLib.training.config import ConfigError, TrainConfig, load_config
from TextGuidedSegLib.training.data import (
    ResumableSampler,
    SampleQueriesd,
    TransferLabelsd,
    structure_channels,
)
from TextGuidedSegLib.training.embeddings import SYNTHETIC_ENCODER_ID, synthetic_text_cache
from TextGuidedSegLib.training.export import export_bundle
from TextGuidedSegLib.training.loss import SegmentationLoss
from TextGuidedSegLib.training.queries import sample_queries
from TextGuidedSegLib.training.trainer import get_lr, train

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO_ROOT / "Training" / "train.py"
STRUCTURES = ["liver", "spleen", "right_kidney", "left_kidney"]
ROI = [64, 32, 32]
SUBPROCESS_TIMEOUT = 240


# ----------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def phantom_lists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three training phantoms and one validation phantom, 64x64x32 at 5 mm."""
    folder = tmp_path_factory.mktemp("phantoms")
    config = PhantomConfig(shape=(64, 64, 32), spacing=(5.0, 5.0, 5.0))
    return {
        "train": write_phantoms(folder / "train", 3, config, seed=0, progress=False),
        "val": write_phantoms(folder / "val", 1, config, seed=1, progress=False),
    }


def tiny_config(lists: dict[str, Path], run_dir: Path, **changes) -> dict:
    """A nested config dict of a tiny run; ``changes`` set dotted keys (``model__mode="global"``)."""
    config = {
        "run_dir": str(run_dir),
        "structures": STRUCTURES,
        "queries_per_sample": 2,
        "max_steps": 2,
        "seed": 7,
        "threads": 1,
        "ckpt_every": 2,
        "val_every": 0,
        "log_every": 1,
        "tensorboard": False,
        "progress": False,
        "model": {"architecture": "film_v1", "feature_size": 12},
        "data": {
            "train_lists": [str(lists["train"])],
            "val_lists": [],
            "spacing": [5.0, 5.0, 5.0],
            "roi_size": ROI,
            "num_samples": 1,
            "num_workers": 0,
        },
        "text": {"source": "synthetic", "dim": 16},
        "optim": {"warmup_steps": 1, "lr": 1e-3},
    }
    for key, value in changes.items():
        section = config
        *parents, leaf = key.split("__")
        for part in parents:
            section = section[part]
        section[leaf] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def subprocess_env() -> dict[str, str]:
    # PYTHONFAULTHANDLER: the SIGABRT sent on a timeout makes every process print its Python stack
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}


def run_checked(command: list[str]) -> str:
    """Run ``command``; fail with its output (and on a timeout every process's stack) unless it succeeds."""
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        time.sleep(3)
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(command)} timed out after {SUBPROCESS_TIMEOUT} s:\n{output[-20000:]}")
    assert process.returncode == 0, f"{' '.join(command)} failed:\n{output[-8000:]}"
    return output


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


# ----------------------------------------------------------------------------------------------------------
# 1. torchrun, 2 ranks on CPU (gloo): identical weights, checkpoint, exact resume
# ----------------------------------------------------------------------------------------------------------


def test_torchrun_two_ranks_agree_and_resume_exactly(phantom_lists, tmp_path):
    config = tiny_config(
        phantom_lists,
        tmp_path / "a",
        grad_accum=2,
        max_steps=3,
        tensorboard=True,
        data__val_lists=[str(phantom_lists["val"])],
    )
    config_file = write_config(tmp_path / "config.yaml", config)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(TRAIN_SCRIPT),
    ]
    run_checked([*torchrun, "--config", str(config_file)])

    run_a = tmp_path / "a"
    end = read_metrics(run_a)[-1]
    assert end["event"] == "end" and len(end["param_digests"]) == 2
    assert end["param_digests"][0] == end["param_digests"][1], "ranks hold different weights"
    checkpoint = load_checkpoint(run_a / "ckpt_0000002.pt")
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    assert checkpoint["step"] == 2 and checkpoint["config"]["grad_accum"] == 2
    assert yaml.safe_load((run_a / "config.yaml").read_text()) == checkpoint["config"]
    assert any(r.get("val_dice") for r in read_metrics(run_a)), "validation did not run"
    assert list((run_a / "tensorboard").iterdir()), "no TensorBoard events"

    # resume the 2-rank run from step 2 in another folder: step 3 must be the same step
    run_checked(
        [
            *torchrun,
            "--config",
            str(config_file),
            f"--run_dir={tmp_path / 'b'}",
            "--resume",
            str(run_a / "ckpt_0000002.pt"),
        ]
    )
    losses_a, losses_b = step_losses(run_a), step_losses(tmp_path / "b")
    assert set(losses_b) == {3}
    assert abs(losses_b[3] - losses_a[3]) <= 1e-6
    assert read_metrics(tmp_path / "b")[-1]["param_digests"] == end["param_digests"]


@pytest.mark.slow
def test_torchrun_refuses_once_then_splits_the_global_batch(phantom_lists, tmp_path):
    """grad_accum counts micro-steps over all processes: an odd one is refused on 2 processes before training
    (one line, from rank 0); grad_accum=2 on 2 processes (1 micro-step each) takes the first step of one
    process with 2 micro-steps (same draws, same loss)."""
    config = tiny_config(phantom_lists, tmp_path / "ddp", grad_accum=1, max_steps=2)
    config_file = write_config(tmp_path / "config.yaml", config)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*torchrun, str(TRAIN_SCRIPT), "--config", str(config_file)]
    env = subprocess_env()
    refused = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    output = refused.stdout + refused.stderr
    line = (
        "error: grad_accum=1 cannot be split over 2 processes (grad_accum counts micro-steps over all "
        "processes): set grad_accum to a multiple of 2 (e.g. --grad_accum=2) or run with 1 process"
    )
    assert refused.returncode != 0 and output.count(line) == 1, output[-4000:]
    assert f'{TRAIN_SCRIPT}", line' not in output, "a worker printed a traceback"
    assert "exitcode  : 2" in output  # torchrun's own summary of the workers' exit status
    assert not (tmp_path / "ddp").exists(), "nothing may start before the check"

    run_checked([*command, "--grad_accum=2"])
    records = read_metrics(tmp_path / "ddp")
    assert records[-1]["param_digests"][0] == records[-1]["param_digests"][1]
    log = (tmp_path / "ddp" / "train.log").read_text()
    assert "global batch: 2 crops per step = 2 process(es) x 1 micro-step(s) x 1 image(s) x 1 crop(s)" in log
    single = tiny_config(phantom_lists, tmp_path / "single", grad_accum=2, max_steps=1)
    train(TrainConfig.from_dict(single))
    assert step_losses(tmp_path / "ddp")[1] == pytest.approx(step_losses(tmp_path / "single")[1], abs=1e-5)


# ----------------------------------------------------------------------------------------------------------
# 2. SIGKILL mid-epoch, --resume auto: bit-identical final weights
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_and_resumed(phantom_lists, tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted 4-step run and a run SIGKILLed after its step-2 checkpoint, then resumed."""
    root = tmp_path_factory.mktemp("sigkill")
    changes = {"max_steps": 4, "deterministic": True, "data__num_workers": 1}
    full = write_config(root / "full.yaml", tiny_config(phantom_lists, root / "full", **changes))
    killed = write_config(root / "killed.yaml", tiny_config(phantom_lists, root / "killed", **changes))
    command = [sys.executable, str(TRAIN_SCRIPT), "--config"]
    uninterrupted = subprocess.Popen(
        [*command, str(full)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    victim = subprocess.Popen(
        [*command, str(killed)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = root / "killed" / "ckpt_0000002.pt"
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not target.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert target.exists(), "the run never wrote its step-2 checkpoint"
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (root / "killed" / "ckpt_0000004.pt").exists()

    run_checked([*command, str(killed), "--resume", "auto"])
    _, stderr = uninterrupted.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert uninterrupted.returncode == 0, stderr.decode()[-5000:]
    return {"full": root / "full", "killed": root / "killed"}


def test_sigkill_mid_epoch_then_resume_auto_is_bit_identical(killed_and_resumed):
    killed_at = load_checkpoint(killed_and_resumed["killed"] / "ckpt_0000002.pt")
    # 3 cases, 1 image per step: step 2 ends in the middle of epoch 0
    assert (killed_at["epoch"], killed_at["epoch_draws"]) == (0, 2)
    full = load_checkpoint(killed_and_resumed["full"] / "ckpt_0000004.pt")
    resumed = load_checkpoint(killed_and_resumed["killed"] / "ckpt_0000004.pt")
    assert full["model"].keys() == resumed["model"].keys()
    for key, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), f"weight {key} differs after resume"
    for key, state in full["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], resumed["optimizer"]["state"][key]["exp_avg_sq"])
    assert step_losses(killed_and_resumed["full"])[4] == step_losses(killed_and_resumed["killed"])[4]


# ----------------------------------------------------------------------------------------------------------
# 3. Partial labels: queries only from annotated structures
# ----------------------------------------------------------------------------------------------------------


def test_sample_queries_never_asks_for_unannotated_structures():
    rng = np.random.RandomState(0)
    annotated = np.array([True, False, False, False])  # a liver-only dataset
    for _ in range(200):
        present = rng.rand(4) < 0.5  # even "present" unannotated structures must not be queried
        indices, mask = sample_queries(present, annotated, 3, 0.25, rng)
        assert indices.shape == mask.shape == (3,)
        assert mask.sum() == 1 and indices[0] == 0
        assert not mask[1:].any()


def test_sample_queries_negatives_are_annotated_and_absent():
    rng = np.random.RandomState(1)
    present = np.array([True, False, True, False, False, True])
    annotated = np.array([True, True, True, False, True, False])
    seen = set()
    for _ in range(200):
        indices, mask = sample_queries(present, annotated, 3, 0.34, rng)
        chosen = indices[mask]
        assert mask.all() and len(set(chosen)) == 3, "queries must be distinct and fill the slots"
        assert set(chosen) <= {0, 1, 2, 4}, "only annotated structures"
        negatives = [i for i in chosen if not present[i]]
        assert set(negatives) <= {1, 4} and len(negatives) >= 1, "one slot is reserved for a negative"
        assert list(chosen[: 3 - len(negatives)]) == [i for i in chosen if present[i]], "positives first"
        seen.update(chosen)
    assert seen == {0, 1, 2, 4}


def test_liver_only_dataset_yields_only_liver_queries():
    from monai.data import MetaTensor

    affine = torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0], dtype=torch.float64))
    raw = torch.zeros(1, 16, 16, 8)
    raw[0, 2:6, 2:6, 2:4] = 1  # CHAOS raw 1 = liver
    raw[0, 10:14, 10:14, 2:4] = 2  # a raw value CHAOS does not define: dropped, never a query
    data = {"label": MetaTensor(raw, affine=affine), "dataset": "chaos", "name": "case"}
    transferred = TransferLabelsd(structure_channels(STRUCTURES))(data)
    assert transferred["label"].shape == (4, 16, 16, 8)
    assert transferred["annotated"].tolist() == [True, False, False, False]
    assert int(transferred["label"][0].sum()) == 32 and int(transferred["label"][1:].sum()) == 0
    sampler = SampleQueriesd(num_queries=3, negative_fraction=0.5)
    for seed in range(20):
        sampler.set_random_state(seed=seed)
        crop = dict(transferred, label=transferred["label"][:, 8:, 8:])  # a crop without liver: a negative
        for item in (transferred, crop):
            out = sampler(item)
            assert out["class_indices"][out["query_mask"]].tolist() == [0]


def test_resumable_sampler_is_a_function_of_seed_epoch_and_rank():
    groups = ["btcv"] * 5 + ["chaos"] * 2
    one = ResumableSampler(groups, seed=3)
    one.set_epoch(4)
    order = list(one)
    one.set_epoch(4, start=3)
    assert list(one) == order[3:]
    assert sorted(i for i, _ in order) == list(range(7))
    ranks = [ResumableSampler(groups, seed=3, rank=r, world_size=2) for r in (0, 1)]
    shards = [s.epoch_keys(4) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 4  # padded to a multiple of the world size
    assert {i for shard in shards for i, _ in shard} == set(range(7))
    uniform = ResumableSampler(groups, seed=3, uniform=True)
    picks = [groups[i] for i, _ in uniform.epoch_keys(0)]
    assert abs(picks.count("btcv") - picks.count("chaos")) <= 1  # round-robin over the datasets


# ----------------------------------------------------------------------------------------------------------
# 4. Loss
# ----------------------------------------------------------------------------------------------------------


def _hand_bce(logits: list[float], target: list[float]) -> float:
    total = 0.0
    for x, t in zip(logits, target, strict=True):
        p = 1 / (1 + math.exp(-x))
        total -= t * math.log(p) + (1 - t) * math.log(1 - p)
    return total / len(logits)


def _hand_dice(logits: list[float], target: list[float], smooth: float = 1e-5) -> float:
    p = [1 / (1 + math.exp(-x)) for x in logits]
    intersection = sum(a * b for a, b in zip(p, target, strict=True))
    return 1 - (2 * intersection + smooth) / (sum(p) + sum(target) + smooth)


def test_loss_is_bce_plus_dice_over_valid_queries():
    logits = torch.tensor([[[2.0, -1.0, 0.5, -3.0], [0.3, 0.1, -0.2, 1.5]]]).reshape(1, 2, 4, 1, 1)
    target = torch.tensor([[[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]).reshape(1, 2, 4, 1, 1)
    rows = [(logits[0, q].flatten().tolist(), target[0, q].flatten().tolist()) for q in range(2)]
    criterion = SegmentationLoss()

    both = criterion(logits, target, torch.tensor([[True, True]]))
    bce = sum(_hand_bce(*row) for row in rows) / 2
    dice = sum(_hand_dice(*row) for row in rows) / 2
    assert both.count == 2
    assert both.bce.item() == pytest.approx(bce, abs=1e-6)
    assert both.dice.item() == pytest.approx(dice, abs=1e-6)
    assert both.loss.item() == pytest.approx(bce + dice, abs=1e-6)

    first = criterion(logits, target, torch.tensor([[True, False]]))
    assert first.loss.item() == pytest.approx(_hand_bce(*rows[0]) + _hand_dice(*rows[0]), abs=1e-6)


def test_masked_channels_contribute_nothing():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    target = (torch.rand(2, 3, 4, 4, 4) > 0.5).float()
    annotated = torch.tensor([[True, False, True], [False, False, True]])
    criterion = SegmentationLoss()
    out = criterion(logits, target, annotated)
    out.loss.backward()
    assert torch.all(logits.grad[~annotated] == 0), "an unannotated channel got a gradient"
    assert torch.all(logits.grad[annotated].abs().sum((1, 2, 3)) > 0)
    changed = logits.detach().clone()
    changed[~annotated] = 100.0
    wrong_target = target.clone()
    wrong_target[~annotated] = 1 - wrong_target[~annotated]
    assert criterion(changed, wrong_target, annotated).loss.item() == pytest.approx(out.loss.item(), abs=1e-7)
    none = criterion(logits, target, torch.zeros(2, 3, dtype=torch.bool))
    assert none.loss.item() == 0.0 and none.count == 0


# ----------------------------------------------------------------------------------------------------------
# 5. Config
# ----------------------------------------------------------------------------------------------------------


def test_config_yaml_and_overrides(tmp_path):
    path = write_config(
        tmp_path / "c.yaml",
        {"max_steps": 50, "model": {"architecture": "film_v2"}, "data": {"roi_size": [64, 64, 32]}},
    )
    config = load_config(
        path,
        [
            "--optim.lr=1",
            "--data.spacing=[2, 2, 3]",
            "--structures=[liver, spleen]",
            "--deterministic=true",
            "max_steps=70",
        ],
    )
    assert config.max_steps == 70 and config.model.architecture == "film_v2"
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.data.roi_size == (64, 64, 32) and config.data.spacing == (2.0, 2.0, 3.0)
    assert config.structures == ["liver", "spleen"] and config.deterministic is True
    assert config.optim.weight_decay == 1e-5 and config.model.feature_size == 48  # the seed's defaults
    assert TrainConfig.from_dict(config.to_dict()) == config
    again = load_config(write_config(tmp_path / "again.yaml", yaml.safe_load(config.to_yaml())))
    assert again == config


def test_config_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'.*optim\.lr,") as error:
        load_config(None, ["--optim.lrr=1"])
    assert "data.roi_size" in str(error.value) and "model.feature_size" in str(error.value)
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown config key 'data\.rois'"):
        load_config(write_config(tmp_path / "c.yaml", {"data": {"rois": 3}}))
    with pytest.raises(ConfigError, match="'optim' is a section"):
        load_config(None, ["--optim=3"])


def test_config_type_errors_name_key_type_and_source():
    with pytest.raises(ConfigError, match=r"--max_steps='abc'.*'max_steps' expects int, got str 'abc'"):
        load_config(None, ["--max_steps=abc"])
    with pytest.raises(ConfigError, match="'deterministic' expects bool, got int"):
        load_config(None, ["--deterministic=1"])
    with pytest.raises(ConfigError, match=r"'data\.roi_size' expects a list of 3 ints"):
        load_config(None, ["--data.roi_size=[64, 64]"])
    with pytest.raises(ConfigError, match="divisible by 12"):
        load_config(None, ["--model.feature_size=10"])
    with pytest.raises(ConfigError, match="unknown class names"):
        load_config(None, ["--structures=[livr]"])
    with pytest.raises(ConfigError, match="--no-equals-sign"):
        load_config(None, ["--no-equals-sign"])


def test_train_arguments_split_config_resume_and_overrides():
    from TextGuidedSegLib.training.arguments import ArgumentsError, parse_train_arguments, read_command_line

    parsed = parse_train_arguments(["--config", "c.yaml", "--optim.lr=1", "--resume=auto", "--max_steps=3"])
    assert parsed == ("c.yaml", "auto", ["--optim.lr=1", "--max_steps=3"], False)
    assert parse_train_arguments(["--config=a.yaml", "--resume", "ckpt.pt"])[:2] == ("a.yaml", "ckpt.pt")
    assert parse_train_arguments(["--config", "-h"]).config == "-h"  # a value is taken as it is
    assert parse_train_arguments(["--x=1", "-h", "--config"]).help  # help stops parsing
    with pytest.raises(ArgumentsError, match="^--resume needs a value$"):
        parse_train_arguments(["--config", "c.yaml", "--resume"])
    assert read_command_line(["--help"], "usage text") == 0
    assert read_command_line(["--config"], "usage text") == 2
    assert read_command_line([], "usage text") == (None, None, [], False)


def test_distributed_context_of_one_process(monkeypatch):
    from TextGuidedSegLib.training.distributed import DistributedContext

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    context = DistributedContext.from_environment("cpu")
    assert (context.ddp, context.rank, context.world_size, context.is_master) == (False, 0, 1, True)
    assert context.device == torch.device("cpu") and not context.use_cuda
    threads = torch.get_num_threads()
    context.start(threads=1)
    try:
        assert torch.get_num_threads() == 1
        assert context.gather("state") == ["state"]
        values = torch.tensor([1.0, 3.0])
        assert context.mean_(values) is values and values.tolist() == [1.0, 3.0]
    finally:
        context.stop()
    assert torch.get_num_threads() == threads
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    context = DistributedContext.from_environment("cpu")
    assert (context.ddp, context.rank, context.local_rank, context.world_size) == (True, 3, 1, 4)
    assert not context.is_master
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device=cuda but CUDA is not available"):
            DistributedContext.from_environment("cuda")


# ----------------------------------------------------------------------------------------------------------
# 6. Learning-rate schedule
# ----------------------------------------------------------------------------------------------------------


def test_get_lr_warmup_then_cosine():
    lr, low = 1e-3, 1e-5
    assert get_lr(0, lr, 10, 110, low) == pytest.approx(1e-4)
    assert get_lr(4, lr, 10, 110, low) == pytest.approx(5e-4)
    assert get_lr(9, lr, 10, 110, low) == pytest.approx(lr)
    assert get_lr(10, lr, 10, 110, low) == pytest.approx(lr)
    assert get_lr(60, lr, 10, 110, low) == pytest.approx((lr + low) / 2)
    assert get_lr(35, lr, 10, 110, low) == pytest.approx(low + (lr - low) * (1 + math.cos(math.pi / 4)) / 2)
    assert get_lr(110, lr, 10, 110, low) == low and get_lr(500, lr, 10, 110, low) == low
    decay = [get_lr(s, lr, 10, 110, low) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert get_lr(0, lr, 0, 100) == lr  # no warm-up


def test_synthetic_text_cache_is_deterministic_unit_vectors():
    prompts = get_taxonomy().subset(STRUCTURES).prompts
    cache = synthetic_text_cache(prompts, 16)
    assert cache.encoder_id == SYNTHETIC_ENCODER_ID and cache.prompts == prompts
    vectors = cache.get(prompts)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(4))
    assert torch.equal(synthetic_text_cache(prompts[::-1], 16).get(prompts), vectors)
    assert not torch.allclose(synthetic_text_cache(prompts, 16, seed=1).get(prompts), vectors)


# ----------------------------------------------------------------------------------------------------------
# 7. Export: checkpoint -> bundle -> load_bundle -> the trained model's logits
# ----------------------------------------------------------------------------------------------------------


def test_export_bundle_reproduces_the_trained_model(killed_and_resumed, tmp_path):
    checkpoint_path = killed_and_resumed["full"] / "ckpt_0000004.pt"
    bundle_path = export_bundle(checkpoint_path, tmp_path / "bundle", name="tiny", version="1.2.3")
    bundle = load_bundle(bundle_path)
    config = bundle.config
    assert config.name == "tiny" and config.version == "1.2.3"
    assert config.taxonomy.class_names == STRUCTURES
    assert config.preprocessing.spacing == (5.0, 5.0, 5.0)
    assert config.preprocessing.hu_window == (-175.0, 250.0)
    assert config.inference.roi_size == tuple(ROI)
    assert config.text_encoder is None and "synthetic" in config.description
    assert bundle.cache.prompts == config.taxonomy.prompts and bundle.cache.encoder_id == SYNTHETIC_ENCODER_ID

    state = load_checkpoint(checkpoint_path)
    trained = build_model(ModelConfig.from_dict(state["model_config"]))
    trained.load_state_dict(state["model"])
    trained.eval()
    torch.manual_seed(0)
    image = torch.rand(1, 1, *ROI)
    with torch.no_grad():
        expected = trained(image, state["text"]["embeddings"][None])
        actual = bundle.model(image, bundle.cache.get(config.taxonomy.prompts)[None])
    assert torch.equal(actual, expected)


# ----------------------------------------------------------------------------------------------------------
# 8. Every architecture trains (one step, validation, export)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "mode"),
    [
        ("film_v1", "query"),
        ("film_v1", "global"),
        ("film_v2", "query"),
        ("film_v2", "global"),
        ("universal", "query"),
        ("swinunetr", "query"),
        ("unetr", "query"),
    ],
)
def test_every_architecture_trains_one_step(phantom_lists, tmp_path, architecture, mode):
    config = TrainConfig.from_dict(
        tiny_config(
            phantom_lists,
            tmp_path / "run",
            max_steps=1,
            model__architecture=architecture,
            model__mode=mode,
            data__val_lists=[str(phantom_lists["val"])],
        )
    )
    result = train(config)
    assert result.step == 1 and math.isfinite(result.loss) and result.loss > 0
    assert result.best_metric >= 0, "validation did not produce a Dice"
    state = load_checkpoint(result.checkpoint)
    model_config = ModelConfig.from_dict(state["model_config"])
    assert model_config.architecture == architecture and model_config.img_size == tuple(ROI)
    torch.manual_seed(config.seed)  # the trainer builds the model right after this seed
    initial = build_model(model_config).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in state["model"].items()), "the step changed nothing"

    channels = architecture in ("swinunetr", "unetr") or mode == "global"
    assert model_config.num_classes == (len(STRUCTURES) if channels else 32)
    bundle = load_bundle(export_bundle(result.checkpoint, tmp_path / "bundle"))
    if mode == "global":  # the phantom dataset's sentence, the seed's conditioning
        (prompt,) = bundle.config.conditioning_prompts()
        assert prompt.startswith("a computerized tomography of Spleen, ") and prompt in bundle.cache
    if architecture in ("swinunetr", "unetr"):
        assert state["text"] is None and len(bundle.cache) == 0


def test_checkpoints_say_what_best_metric_is_and_old_ones_still_resume(phantom_lists, tmp_path):
    """A checkpoint records its metric (mean Dice, higher is better); one written before it did (no such keys)
    resumes to the same step as the uninterrupted run."""
    changes = {
        "max_steps": 2,
        "ckpt_every": 1,
        "keep_last": 5,
        "data__val_lists": [str(phantom_lists["val"])],
    }
    whole = train(TrainConfig.from_dict(tiny_config(phantom_lists, tmp_path / "whole", **changes)))
    first = load_checkpoint(tmp_path / "whole" / "ckpt_0000001.pt")
    assert (first["best_metric_name"], first["best_metric_mode"]) == ("val_dice_mean", "max")
    assert first["best_metric"] == -1.0 and "kind" not in first  # no validation before the last step
    old = {k: v for k, v in first.items() if k not in ("best_metric_name", "best_metric_mode")}
    torch.save(old, tmp_path / "old.pt")
    resumed_config = TrainConfig.from_dict(tiny_config(phantom_lists, tmp_path / "resumed", **changes))
    resumed = train(resumed_config, resume=tmp_path / "old.pt")
    assert resumed.step == 2 and resumed.loss == pytest.approx(whole.loss, abs=1e-6)
    assert resumed.best_metric == pytest.approx(whole.best_metric, abs=1e-6)
    assert step_losses(tmp_path / "resumed")[2] == pytest.approx(step_losses(tmp_path / "whole")[2], abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# 9. The SLURM script parses
# ----------------------------------------------------------------------------------------------------------


def test_sbatch_scripts_parse():
    scripts = sorted((REPO_ROOT / "Training" / "slurm").glob("*.sbatch"))
    assert scripts, "no SLURM script"
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"


def test_example_configs_load():
    configs = sorted((REPO_ROOT / "Training" / "configs").glob("*.yaml"))
    names = {path.stem for path in configs}
    assert {"seed_film_v1", "demo_phantom", "film_v1", "film_v2", "universal", "swinunetr", "unetr"} <= names
    for path in configs:
        config = load_config(path)
        assert config.data.train_lists, f"{path.name} names no training list"
    seed = load_config(REPO_ROOT / "Training" / "configs" / "seed_film_v1.yaml")
    assert seed.model.feature_size == 48 and seed.data.roi_size == (96, 96, 96)
    assert seed.data.spacing == (1.5, 1.5, 1.5) and seed.optim.lr == 1e-4 and seed.optim.weight_decay == 1e-5
