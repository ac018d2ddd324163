"""Fine-tune CLIPSeg on 2D axial CT slices with one strategy (full, decoder, adapter, lora).

One process (CPU, or one GPU):
    python Training/train_clipseg.py --config Training/configs/clipseg/flare22.yaml --strategy=decoder

Override any key with --key=value (dotted for sections; values parsed as YAML and type-checked):
    python Training/train_clipseg.py --config Training/configs/clipseg/flare22.yaml --strategy=lora \\
        --options.lora_rank=16 --slicing.intensity=window

One node, 4 GPUs (DDP; gloo on CPU); batch_size counts samples over ALL processes (the global batch), each of
N processes takes batch_size / N; a world size that does not divide it is refused before training starts:
    torchrun --standalone --nproc_per_node=4 Training/train_clipseg.py \
        --config Training/configs/clipseg/flare22.yaml

Continue a run (latest checkpoint in run_dir; a fresh start when there is none):
    python Training/train_clipseg.py --config Training/configs/clipseg/flare22.yaml --resume auto

The slice sets are written once into data.slices_dir (reused while the config and files match); the best
epoch's weights end up as a bundle in <run_dir>/bundle:
    textguidedseg segment ct.nii.gz -p "liver and spleen" -b runs/clipseg_flare22/bundle -o ct_seg.nii.gz

Every strategy on the same split, with the report and plot: textguidedseg clipseg-bench --config ...
"""

from __future__ import annotations

import logging
import sys

USAGE = __doc__


def main(argv: list[str]) -> int:
    from TextGuidedSegLib.clipseg.model import CLIPSegUnavailableError
    from TextGuidedSegLib.clipseg.train import load_clipseg_config, rank_batch_size, train_clipseg
    from TextGuidedSegLib.data.datasets import DatasetListError
    from TextGuidedSegLib.training.arguments import read_command_line, report_error
    from TextGuidedSegLib.training.config import ConfigError
    from TextGuidedSegLib.training.distributed import DistributedContext
    from TextGuidedSegLib.training.logs import configure_logging

    rank = configure_logging()
    arguments = read_command_line(argv, USAGE)
    if isinstance(arguments, int):
        return arguments
    try:  # the config, the processes and the global batch: checked before anything starts, reported once
        config = load_clipseg_config(arguments.config, arguments.overrides)
        rank_batch_size(config, DistributedContext.from_environment(config.device).world_size)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        return report_error(err, rank)
    try:
        result = train_clipseg(config, resume=arguments.resume)
    except (ConfigError, DatasetListError, CLIPSegUnavailableError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        last = result.history[-1] if result.history else None
        logging.getLogger("train_clipseg").info(
            "done: %s, %d steps, best epoch %d (val Dice %.4f), bundle %s",
            result.strategy,
            result.times.steps,
            result.best_epoch,
            result.history[result.best_epoch].val_dice if last and result.best_epoch >= 0 else float("nan"),
            result.bundle,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
