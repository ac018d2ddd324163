"""Fine-tune CLIPSeg on 2D axial CT slices with one strategy (full, decoder, adapter, lora).

One process (CPU, or one GPU):
    python Training/train_clipseg.py --config Training/configs/clipseg/flare22.yaml --strategy=decoder

Override any key with --key=value (dotted for sections; values parsed as YAML and type-checked):
    python Training/train_clipseg.py --config Training/configs/clipseg/flare22.yaml --strategy=lora \\
        --options.lora_rank=16 --slicing.intensity=window

One node, 4 GPUs (DDP; gloo on CPU); batch_size counts samples over all ranks:
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
import os
import sys

USAGE = __doc__


def main(argv: list[str]) -> int:
    from TextGuidedSegLib.clipseg.model import CLIPSegUnavailableError
    from TextGuidedSegLib.clipseg.train import load_clipseg_config, train_clipseg
    from TextGuidedSegLib.data.datasets import DatasetListError
    from TextGuidedSegLib.training.config import ConfigError

    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    config_path: str | None = None
    resume: str | None = None
    overrides: list[str] = []
    arguments = list(argv)
    while arguments:
        argument = arguments.pop(0)
        if argument in ("-h", "--help"):
            print(USAGE)
            return 0
        if argument in ("--config", "--resume"):
            if not arguments:
                print(f"{argument} needs a value", file=sys.stderr)
                return 2
            value = arguments.pop(0)
        elif argument.startswith(("--config=", "--resume=")):
            argument, value = argument.split("=", 1)
        else:
            overrides.append(argument)
            continue
        if argument == "--config":
            config_path = value
        else:
            resume = value
    try:
        config = load_clipseg_config(config_path, overrides)
        result = train_clipseg(config, resume=resume)
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
