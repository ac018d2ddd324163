"""``textguidedseg clipseg-bench``: fine-tune CLIPSeg with every strategy on the same 2D slices and seed;
report Dice, the time split and memory (report.md, dice_vs_time.png).

Example::

    textguidedseg clipseg-bench --tiny --volumes ct.nii.gz,seg.nii.gz --val-volumes ct2.nii.gz,seg2.nii.gz
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from TextGuidedSegLib.cli.arguments import (
    add_device_argument,
    add_output_argument,
    add_progress_argument,
    existing_path,
)

# The trainer places each torchrun rank on its own GPU, so it takes no device index (nor mps).
TRAINING_DEVICES = ("auto", "cpu", "cuda")


def _volume_cases(specs: Sequence[str], dataset: str | None, flag: str) -> list:
    """``IMAGE,LABEL[,K0:K1]`` arguments -> slice cases (the dataset from the path's folders or --dataset)."""
    from TextGuidedSegLib.clipseg.data import SliceCase, dataset_of
    from TextGuidedSegLib.data.datasets import case_name

    cases = []
    for spec in specs:
        parts = spec.split(",")
        if len(parts) not in (2, 3):
            raise ValueError(f"{flag} {spec!r}: expected IMAGE,LABEL or IMAGE,LABEL,K0:K1")
        image, label = Path(parts[0]), Path(parts[1])
        for path in (image, label):
            if not path.is_file():
                raise FileNotFoundError(f"{flag} {spec!r}: {path} does not exist")
        k_range = None
        if len(parts) == 3:
            try:
                k0, k1 = (int(v) for v in parts[2].split(":"))
            except ValueError:
                raise ValueError(f"{flag} {spec!r}: the slice range must be K0:K1 (integers)") from None
            k_range = (k0, k1)
        name = case_name(image) + (f"_k{k_range[0]}-{k_range[1]}" if k_range else "")
        cases.append(SliceCase(image, label, dataset or dataset_of(image), name, k_range))
    return cases


def run(args: argparse.Namespace) -> int:
    """Train every CLIPSeg strategy on the same slices and seed; write report.md, dice_vs_time.png."""
    if args.device not in TRAINING_DEVICES:  # the arguments torch is not needed for are checked first
        raise ValueError(
            f"--device {args.device}: training takes {', '.join(TRAINING_DEVICES)} (under torchrun each "
            "process uses its own GPU); use --device cuda with CUDA_VISIBLE_DEVICES to pick one"
        )
    if args.config is not None:
        existing_path(args.config, "--config", "file")
    for flag, specs in (("--volumes", args.volumes), ("--val-volumes", args.val_volumes)):
        for spec in specs or []:
            for part in spec.split(",")[:2]:
                existing_path(part, f"{flag} {spec!r}:", "file")
    for flag, lists in (("--train-list", args.train_list), ("--val-list", args.val_list)):
        for list_file in lists or []:
            existing_path(list_file, flag, "file")

    from TextGuidedSegLib.clipseg.bench import run_bench, write_report
    from TextGuidedSegLib.clipseg.data import SliceConfig, build_slice_set, cases_from_lists
    from TextGuidedSegLib.clipseg.model import STRATEGIES, CLIPSegNet
    from TextGuidedSegLib.clipseg.testing import make_tiny_clipseg
    from TextGuidedSegLib.clipseg.train import load_clipseg_config

    output = Path(args.output)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"--strategies: unknown {unknown}; choose from {sorted(STRATEGIES)}")
    overrides = list(args.override)
    if args.epochs is not None:
        overrides.append(f"--epochs={args.epochs}")
    if args.batch_size is not None:
        overrides.append(f"--batch_size={args.batch_size}")
    if args.max_steps_per_epoch is not None:
        overrides.append(f"--max_steps_per_epoch={args.max_steps_per_epoch}")
    overrides += [f"--device={args.device}", f"--seed={args.seed}", f"--progress={not args.no_progress}"]
    config = load_clipseg_config(args.config, overrides)
    model = args.model or config.model
    if args.tiny:
        model = str(make_tiny_clipseg(output / "tiny_clipseg", image_size=args.image_size or 64))
    slicing = config.slicing
    changes = {}
    if args.image_size is not None or args.tiny:
        changes["image_size"] = args.image_size or 64
    if args.spacing is not None:
        changes["spacing"] = tuple(args.spacing)
    if args.intensity is not None:
        changes["intensity"] = args.intensity
    if args.empty_ratio is not None:
        changes["empty_ratio"] = args.empty_ratio
    if args.structures is not None:
        changes["structures"] = [s.strip() for s in args.structures.split(",") if s.strip()]
    slicing = SliceConfig.from_dict({**slicing.to_dict(), **changes})
    config.slicing, config.model = slicing, model
    if args.volumes:
        train_cases = _volume_cases(args.volumes, args.dataset, "--volumes")
        val_cases = _volume_cases(args.val_volumes or [], args.dataset, "--val-volumes")
    elif args.train_list or config.data.train_lists:
        data_root = config.data.data_root or None
        default = args.dataset or config.data.default_dataset or None
        train_cases = cases_from_lists(args.train_list or config.data.train_lists, data_root, default)
        val_lists = args.val_list or config.data.val_lists
        val_cases = cases_from_lists(val_lists, data_root, default) if val_lists else []
    else:
        raise ValueError("name the data: --volumes IMAGE,LABEL[,K0:K1] ..., --train-list FILE, or a --config")
    slices_dir = Path(config.data.slices_dir) if config.data.slices_dir else output / "slices"
    progress = not args.no_progress
    train_set = build_slice_set(train_cases, slicing, slices_dir, progress)
    val_set = build_slice_set(val_cases, slicing, slices_dir, progress) if val_cases else None
    report = run_bench(
        lambda: CLIPSegNet.from_pretrained(model), train_set, val_set, config, strategies, output
    )
    write_report(report, output)
    sys.stdout.write((output / "report.md").read_text(encoding="utf-8"))
    sys.stdout.write(f"\nwrote {', '.join(report.files.values())}\n")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``clipseg-bench`` to the ``textguidedseg`` sub-commands."""
    bench = commands.add_parser(
        "clipseg-bench",
        help="fine-tune CLIPSeg with every strategy on the same 2D slices; report Dice, time split, memory",
    )
    add_output_argument(bench, "output folder (default: %(default)s)", default="clipseg_bench")
    bench.add_argument(
        "--model", help="CLIPSeg hub id or save_pretrained folder (default: CIDAS/clipseg-rd64-refined)"
    )
    bench.add_argument(
        "--tiny", action="store_true", help="a tiny random-init CLIPSeg (dry run, no download)"
    )
    bench.add_argument("--config", help="YAML CLIPSeg training config (Training/configs/clipseg/*.yaml)")
    bench.add_argument(
        "--volumes", nargs="+", metavar="IMAGE,LABEL[,K0:K1]", help="training volumes (K0:K1: voxel slices k)"
    )
    bench.add_argument(
        "--val-volumes",
        nargs="+",
        metavar="IMAGE,LABEL[,K0:K1]",
        help="validation volumes (default: hold out 20%% of --volumes: whole volumes when 2+, else one block "
        "of slices, with a warning)",
    )
    bench.add_argument("--train-list", nargs="+", help="training list files (image<TAB>label a line)")
    bench.add_argument("--val-list", nargs="+", help="validation list files")
    bench.add_argument("--dataset", help="dataset key of the volumes (default: from their folders)")
    bench.add_argument(
        "--strategies", default="full,decoder,adapter,lora", help="comma-separated (default: all)"
    )
    bench.add_argument("--epochs", type=int, help="maximum epochs (default: the config's, 20)")
    bench.add_argument("--batch-size", type=int, help="samples per step (default: the config's, 32)")
    bench.add_argument("--max-steps-per-epoch", type=int, help="cap on steps per epoch (0: none)")
    bench.add_argument("--image-size", type=int, help="slice side S (default: the model's; --tiny: 64)")
    bench.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="model spacing, mm")
    bench.add_argument("--intensity", choices=["minmax", "window"], help="slice intensity (default: minmax)")
    bench.add_argument("--empty-ratio", type=float, help="empty samples per present one (default: 0.5)")
    bench.add_argument("--structures", help="comma-separated class names (default: FLARE22's 13)")
    add_device_argument(bench)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="training config overrides (lr=3e-4 ...)",
    )
    add_progress_argument(bench, "no progress bars")
    bench.set_defaults(func=run)
