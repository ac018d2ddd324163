"""DDP configuration: the global batch of every shipped config on 1, 2, 4 and 8 processes (pure arithmetic,
no process launched), and the one-line refusal (rank 0 only, exit status 2) when a world size cannot divide
it. The real 2-process torchrun run is in ``test_training.py`` (``test_torchrun_refuses_once_then_...``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from TextGuidedSegLib.clipseg.train import load_clipseg_config, rank_batch_size
from TextGuidedSegLib.training.config import ConfigError, DistributedConfigError, batch_plan, load_config
from TextGuidedSegLib.training.distributed import DistributedContext, split_over_ranks

CONFIGS = REPO_ROOT / "Training" / "configs"
WORLD_SIZES = (1, 2, 4, 8)
#: The process counts each shipped 3D config runs on (grad_accum counts micro-steps over all processes).
RUNS_ON = {
    # grad_accum 8: the seed's 8 GPUs x 1 image x 2 crops = 16 crops per step
    "seed_film_v1": (1, 2, 4, 8),
    "film_v1": (1, 2, 4, 8),
    "film_v2": (1, 2, 4, 8),
    "swinunetr": (1, 2, 4, 8),
    "unetr": (1, 2, 4, 8),
    "universal": (1, 2, 4, 8),
    "demo_phantom": (1,),  # the recipe of the shipped demo bundle: batch 1 on one process
}
GRAD_ACCUM_4_ON_8 = (
    "grad_accum=4 cannot be split over 8 processes (grad_accum counts micro-steps over all processes): set "
    "grad_accum to a multiple of 8 (e.g. --grad_accum=8) or run with 1, 2 or 4 processes"
)


def _load(name: str):
    return load_config(CONFIGS / f"{name}.yaml")


def test_every_shipped_config_has_its_global_batch_on_1_2_4_8_processes():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(RUNS_ON)
    for name, runs_on in RUNS_ON.items():
        config = _load(name)
        global_crops = config.batch_size * config.data.num_samples * config.grad_accum
        for world_size in WORLD_SIZES:
            if world_size in runs_on:
                plan = batch_plan(config, world_size)
                assert plan.micro_steps * world_size == config.grad_accum, (name, world_size)
                assert plan.micro_steps * plan.crops * world_size == plan.global_crops == global_crops
            else:
                with pytest.raises(DistributedConfigError) as error:
                    batch_plan(config, world_size)
                message = str(error.value)
                assert message.startswith(f"grad_accum={config.grad_accum} cannot be split over {world_size}")
                assert "\n" not in message


def test_the_seed_setup_8_gpus_1_image_2_crops_is_seed_film_v1():
    plan = batch_plan(_load("seed_film_v1"), 8)
    assert (plan.micro_steps, plan.images, plan.crops, plan.global_crops) == (1, 1, 2, 16)
    assert plan.describe() == "16 crops per step = 8 process(es) x 1 micro-step(s) x 1 image(s) x 2 crop(s)"
    # the same 16 crops on one GPU: 8 micro-steps
    assert batch_plan(_load("seed_film_v1"), 1).micro_steps == 8
    # a 4-accumulation run on the seed's 8 GPUs: one line saying what to set
    with pytest.raises(DistributedConfigError, match=r"^grad_accum=4 cannot") as error:
        batch_plan(load_config(CONFIGS / "film_v1.yaml", ["--grad_accum=4"]), 8)
    assert str(error.value) == GRAD_ACCUM_4_ON_8
    assert batch_plan(_load("film_v1"), 8).global_crops == 16


def test_clipseg_configs_split_their_batch_on_1_2_4_8_processes():
    for path in sorted((CONFIGS / "clipseg").glob("*.yaml")):
        config = load_clipseg_config(path)
        for world_size in WORLD_SIZES:
            assert rank_batch_size(config, world_size) * world_size == config.batch_size, path.name
    config = load_clipseg_config(CONFIGS / "clipseg" / "totalseg_tiny.yaml", ["--batch_size=12"])
    with pytest.raises(DistributedConfigError) as error:
        rank_batch_size(config, 8)
    assert str(error.value) == (
        "batch_size=12 cannot be split over 8 processes (batch_size counts samples per step over all "
        "processes): set batch_size to a multiple of 8 (e.g. --batch_size=16) or run with 1, 2, 3, 4 or 6 "
        "processes"
    )


def test_split_over_ranks_messages():
    assert split_over_ranks("grad_accum", 8, 4, "micro-steps") == 2
    with pytest.raises(DistributedConfigError, match=r"or run with 1 process$"):
        split_over_ranks("grad_accum", 1, 2, "micro-steps")
    error = DistributedConfigError("x")
    assert isinstance(error, ConfigError) and isinstance(error, RuntimeError)  # CLI: exit status 2


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"RANK": "2", "LOCAL_RANK": "2", "WORLD_SIZE": "2"}, "RANK=2, LOCAL_RANK=2, WORLD_SIZE=2 are"),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE='two' must be an integer"),
    ],
)
def test_inconsistent_torchrun_variables_are_config_errors(monkeypatch, variables, message):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DistributedConfigError, match=message):
        DistributedContext.from_environment("cpu")


def _entry_point(script: str, argv: list[str], rank: int, world_size: int, monkeypatch, capsys):
    """Run ``Training/<script>``'s ``main`` as rank ``rank`` of ``world_size``; returns (status, stderr)."""
    for name, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", world_size)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.syspath_prepend(str(REPO_ROOT / "Training"))
    module = __import__(Path(script).stem)
    status = module.main(argv)
    captured = capsys.readouterr()
    return status, captured.err + captured.out


@pytest.mark.parametrize("rank", [0, 5])
def test_train_refuses_before_training_once_from_rank_0(tmp_path, monkeypatch, capsys, rank):
    argv = ["--config", str(CONFIGS / "film_v1.yaml"), "--grad_accum=4", f"--run_dir={tmp_path / 'run'}"]
    status, output = _entry_point("train.py", [*argv, "--device=cpu"], rank, 8, monkeypatch, capsys)
    assert status == 2
    assert output == (f"error: {GRAD_ACCUM_4_ON_8}\n" if rank == 0 else "")
    assert not (tmp_path / "run").exists(), "nothing may start before the check"


@pytest.mark.parametrize("rank", [0, 1])
def test_train_clipseg_refuses_before_training_once_from_rank_0(tmp_path, monkeypatch, capsys, rank):
    config = CONFIGS / "clipseg" / "totalseg_tiny.yaml"
    argv = ["--config", str(config), "--batch_size=15", f"--run_dir={tmp_path / 'run'}", "--device=cpu"]
    status, output = _entry_point("train_clipseg.py", argv, rank, 2, monkeypatch, capsys)
    assert status == 2
    expected = (
        "error: batch_size=15 cannot be split over 2 processes (batch_size counts samples per step over all "
        "processes): set batch_size to a multiple of 2 (e.g. --batch_size=16) or run with 1 process\n"
    )
    assert output == (expected if rank == 0 else "")
    assert not (tmp_path / "run").exists()


def test_train_script_exit_status_in_a_subprocess(tmp_path):
    """The real process: exit status 2 and exactly one stderr line, no traceback."""
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "8", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        str(REPO_ROOT / "Training" / "train.py"),
        "--config",
        str(CONFIGS / "film_v1.yaml"),
        "--grad_accum=4",
        f"--run_dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {GRAD_ACCUM_4_ON_8}"] and result.stdout == ""
