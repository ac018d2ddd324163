"""Train a text-guided segmentation model (every architecture, query or global mode).

One process (CPU, or one GPU):
    python Training/train.py --config Training/configs/demo_phantom.yaml

Override any key with --key=value (dotted for sections; values parsed as YAML and type-checked):
    python Training/train.py --config Training/configs/seed_film_v1.yaml --optim.lr=2e-4 --data.num_workers=8

One node, 8 GPUs (DDP, NCCL; gloo on CPU). grad_accum counts micro-steps over ALL processes, so the global
batch (batch_size * data.num_samples * grad_accum crops) is the config's at any world size: each of N
processes runs grad_accum / N micro-steps. seed_film_v1.yaml (grad_accum 8, 1 image x 2 crops) is the seed's
16 crops per step: 8 GPUs x 1 micro-step, 4 x 2, 2 x 4 or 1 x 8. A world size that does not divide
grad_accum is refused before training starts, in one line saying what to set:
    torchrun --standalone --nproc_per_node=8 Training/train.py --config Training/configs/seed_film_v1.yaml

Continue a run exactly (latest checkpoint in run_dir, or a fresh start when there is none; or a given file):
    python Training/train.py --config Training/configs/demo_phantom.yaml --resume auto
    python Training/train.py --resume runs/demo_phantom/ckpt_0000200.pt     (the checkpoint's own config)

SLURM (one or more nodes, requeue-safe through --resume auto):
    sbatch Training/slurm/train.sbatch Training/configs/seed_film_v1.yaml [--key=value ...]

Then export a bundle for inference:
    python Training/export_bundle.py --checkpoint runs/demo_phantom/best.pt --output demo_bundle
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

USAGE = __doc__


def main(argv: list[str]) -> int:
    from TextGuidedSegLib.data.datasets import DatasetListError
    from TextGuidedSegLib.text import EmbeddingCacheError
    from TextGuidedSegLib.training.arguments import read_command_line, report_error
    from TextGuidedSegLib.training.checkpoint import CheckpointWriteError, load_checkpoint
    from TextGuidedSegLib.training.config import (
        ConfigError,
        TrainConfig,
        apply_overrides,
        batch_plan,
        load_config,
    )
    from TextGuidedSegLib.training.distributed import DistributedContext
    from TextGuidedSegLib.training.logs import configure_logging
    from TextGuidedSegLib.training.trainer import NonFiniteLossError, train

    rank = configure_logging()
    arguments = read_command_line(argv, USAGE)
    if isinstance(arguments, int):
        return arguments
    resume = arguments.resume
    try:
        if arguments.config is None and resume not in (None, "auto"):
            # the checkpoint's own config, with the overrides on top
            config = TrainConfig.from_dict(load_checkpoint(resume)["config"], source=resume)
            config = apply_overrides(config, arguments.overrides)
        elif arguments.config is None:
            return report_error("pass --config FILE (or --resume CHECKPOINT); see --help", rank)
        else:
            config = load_config(Path(arguments.config), arguments.overrides)
        # the processes and the global batch: checked before anything starts, reported once
        context = DistributedContext.from_environment(config.device)
        batch_plan(config, context.world_size)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        return report_error(err, rank)
    try:
        result = train(config, resume=resume)
    except (ConfigError, DatasetListError, EmbeddingCacheError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (CheckpointWriteError, NonFiniteLossError) as err:  # the run stopped; its checkpoints are intact
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        logging.getLogger("train").info(
            "done: %d steps, last checkpoint %s, best mean Dice %.4f",
            result.step,
            result.checkpoint,
            result.best_metric,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
