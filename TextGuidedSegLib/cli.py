"""The ``textguidedseg`` command: segment CTs from text prompts, evaluate bundles, run the demo, and more.

Examples::

    textguidedseg bundles pull wholebody_ct_highres
    textguidedseg segment ct.nii.gz --prompt "liver and both kidneys" -b wholebody_ct_highres -o seg.nii.gz
    textguidedseg bundles list
    textguidedseg evaluate --bundle demo_bundle --list phantoms/phantom.txt -o eval_report
    textguidedseg demo -o demo_out
    textguidedseg encode-prompts --encoder openai/clip-vit-base-patch32 -o text_cache
    textguidedseg info demo_bundle
    textguidedseg clipseg-bench --tiny --volumes ct.nii.gz,seg.nii.gz --val-volumes ct2.nii.gz,seg2.nii.gz

``--bundle`` takes a registry name, an installed bundle's name or a bundle folder/.zip; ``segment`` without it
uses the first installed of ``wholebody_ct_highres``, ``wholebody_ct_lowres``, ``swin_unetr_btcv``, else the
built-in phantom demo (with a warning). Every error names the file or argument at fault and exits with
status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from TextGuidedSegLib import __version__
from TextGuidedSegLib.cli_bundles import (
    BUNDLE_HELP,
    DEFAULT_BUNDLE_HELP,
    add_bundles_parser,
    default_bundle,
    resolve_bundle,
)

logger = logging.getLogger("textguidedseg")


def _label_map_stem(path: Path) -> tuple[Path, str]:
    """Split an output path into (path without suffix, suffix); raise naming -o/--output when unsupported."""
    from TextGuidedSegLib.inference.outputs import label_map_stem

    try:
        return label_map_stem(path)
    except ValueError as err:
        raise ValueError(f"-o/--output {err}") from None


def _cmd_segment(args: argparse.Namespace) -> int:
    """Segment one CT and write the label map, its JSON sidecar and optional probability maps."""
    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.inference import Segmenter
    from TextGuidedSegLib.inference.outputs import write_segmentation
    from TextGuidedSegLib.io import load_volume

    output = Path(args.output)
    _label_map_stem(output)  # fail on a bad suffix before any work
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"-o/--output {output} already exists; pass --overwrite to replace it")
    bundle_path = resolve_bundle(args.bundle) if args.bundle is not None else default_bundle()
    volume = load_volume(args.input)
    bundle = load_bundle(bundle_path)
    segmenter = Segmenter(
        bundle,
        device=args.device,
        overlap=args.overlap,
        precision=args.precision,
        threshold=args.threshold,
        sw_batch_size=args.sw_batch_size,
        largest_component=args.largest_component,
        split_laterality=args.split_laterality,
        progress=not args.no_progress,
        flip_tta=args.flip_tta,
    )
    result = segmenter.segment(volume, args.prompt, return_probabilities=args.probabilities)
    files = write_segmentation(
        output,
        result,
        volume,
        bundle,
        prompt=args.prompt,
        threshold=segmenter.threshold,
        input=Path(args.input),
    )
    for segment in result.segments:
        logger.info("%2d %-28s %10.1f mL", segment.label_id, segment.name, segment.volume_ml)
    logger.info("wrote %s and %s", files.label_map, files.sidecar)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Segment every case of a list file and score it against its labels (Dice, NSD); write a report."""
    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.evaluation import evaluate
    from TextGuidedSegLib.inference import Segmenter

    list_file = Path(args.list)
    if not list_file.is_file():
        raise FileNotFoundError(f"--list {list_file} does not exist")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise FileNotFoundError(f"--data-root {args.data_root} is not a folder")
    if args.nsd_tolerance < 0:
        raise ValueError(f"--nsd-tolerance must be a distance in mm >= 0, got {args.nsd_tolerance}")
    bundle = load_bundle(resolve_bundle(args.bundle))
    segmenter = Segmenter(
        bundle, device=args.device, overlap=args.overlap, precision=args.precision, progress=False
    )
    report = evaluate(
        bundle,
        list_file,
        args.output,
        data_root=args.data_root,
        dataset=args.dataset,
        structures=args.structures,
        save_predictions=args.save_predictions,
        device=args.device,
        overlap=args.overlap,
        nsd_tolerance_mm=args.nsd_tolerance,
        progress=not args.no_progress,
        segmenter=segmenter,
    )
    logger.info(
        "%d scores over %d structures: mean Dice %.3f, mean NSD %.3f (%g mm)",
        len(report.scores),
        len(report.summary),
        report.mean_dice,
        report.mean_nsd,
        report.nsd_tolerance_mm,
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Segment a phantom (or --input) with the demo bundle; write the label map, an overlay and volumes."""
    from TextGuidedSegLib.demo import DEFAULT_DEMO_BUNDLE, run_demo

    result = run_demo(
        args.output,
        bundle=resolve_bundle(args.bundle) if args.bundle is not None else DEFAULT_DEMO_BUNDLE,
        input=args.input,
        prompt=args.prompt,
        device=args.device,
        seed=args.seed,
        overlap=args.overlap,
        precision=args.precision,
        progress=not args.no_progress,
    )
    written = [result.segmentation, result.sidecar, result.overlay, result.volumes]
    if result.truth is not None:
        written[:0] = [result.input, result.truth]
    sys.stdout.write("\n".join(result.table) + "\n")
    sys.stdout.write(f"wrote {', '.join(str(p) for p in written)} in {result.seconds:.0f} s\n")
    return 0


def _cmd_encode_prompts(args: argparse.Namespace) -> int:
    """Encode prompts with a CLIP text encoder into an embedding cache folder (adds to an existing one)."""
    from TextGuidedSegLib.taxonomy import get_taxonomy
    from TextGuidedSegLib.text import CLIPTextEncoder, EmbeddingCache, TextEncoderSpec

    prompts = list(args.prompts)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts-file {path} does not exist")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        prompts = get_taxonomy(args.taxonomy).prompts
    encoder = CLIPTextEncoder(TextEncoderSpec(args.encoder, output=args.output_kind), device=args.device)
    output = Path(args.output)
    if (output / "embeddings.json").exists():
        cache = EmbeddingCache.load(output, expected_encoder_id=encoder.identity)
    else:
        cache = EmbeddingCache(encoder.identity, encoder.dim)
    before = len(cache)
    cache.build(prompts, encoder, batch_size=args.batch_size)
    cache.save(output)
    logger.info(
        "%s: %d prompts (%d new), %d-d, encoder %s",
        output,
        len(cache),
        len(cache) - before,
        cache.dim,
        encoder.identity,
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    """Verify a bundle and print what it is and what it understands."""
    from TextGuidedSegLib.bundle import bundle_summary, load_bundle

    summary = bundle_summary(load_bundle(resolve_bundle(args.bundle)))
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return 0
    encoder = summary["text_encoder"]
    preprocessing = summary["preprocessing"]
    steps = preprocessing.get("intensity")
    intensity = (
        f"HU window {preprocessing['hu_window']}"
        if steps is None
        else "intensity " + ", ".join(step["transform"] for step in steps)
    )
    network = summary.get("network")
    model = (
        f"MONAI {network}, {summary['parameters'] / 1e6:.2f} M parameters"
        if network
        else f"{summary['architecture']}, {summary['mode']} mode, feature size {summary['feature_size']}, "
        f"{summary['parameters'] / 1e6:.2f} M parameters"
    )
    lines = [
        f"bundle       {summary['name']} v{summary['version']} (checksums verified)",
        f"model        {model}",
        f"text         {encoder['name_or_path'] if encoder else 'none: cached vocabulary only'}, "
        f"{summary['cached_prompts']} cached prompts",
        f"spacing      {preprocessing['spacing']} mm, {intensity}",
        f"inference    ROI {summary['inference']['roi_size']}, overlap {summary['inference']['overlap']}, "
        f"threshold {summary['inference']['threshold']}",
        f"structures   {', '.join(summary['structures'])}",
    ]
    if summary["description"]:
        lines.append(f"description  {summary['description']}")
    if summary["license"]:
        lines.append(f"license      {summary['license']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _cmd_phantoms(args: argparse.Namespace) -> int:
    """Write procedural CT phantoms (images, label maps, list file) for training, evaluation and demos."""
    from TextGuidedSegLib.data.phantom import PhantomConfig, write_phantoms

    if args.count < 1:
        raise ValueError(f"-n/--count must be >= 1, got {args.count}")
    config = PhantomConfig(shape=tuple(args.shape), spacing=tuple(args.spacing), noise_hu=args.noise_hu)
    list_file = write_phantoms(args.output, args.count, config, seed=args.seed, progress=not args.no_progress)
    logger.info("wrote %d phantom(s) and %s", args.count, list_file)
    return 0


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


def _cmd_clipseg_bench(args: argparse.Namespace) -> int:
    """Train every CLIPSeg strategy on the same slices and seed; write report.md, dice_vs_time.png."""
    from TextGuidedSegLib.clipseg.bench import run_bench, write_report
    from TextGuidedSegLib.clipseg.data import SliceConfig, build_slice_set, cases_from_lists
    from TextGuidedSegLib.clipseg.model import STRATEGIES, CLIPSegNet
    from TextGuidedSegLib.clipseg.testing import make_tiny_clipseg
    from TextGuidedSegLib.clipseg.train import load_clipseg_config

    out = Path(args.out)
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
        model = str(make_tiny_clipseg(out / "tiny_clipseg", image_size=args.image_size or 64))
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
    slices_dir = Path(config.data.slices_dir) if config.data.slices_dir else out / "slices"
    progress = not args.no_progress
    train_set = build_slice_set(train_cases, slicing, slices_dir, progress)
    val_set = build_slice_set(val_cases, slicing, slices_dir, progress) if val_cases else None
    report = run_bench(lambda: CLIPSegNet.from_pretrained(model), train_set, val_set, config, strategies, out)
    write_report(report, out)
    sys.stdout.write((out / "report.md").read_text(encoding="utf-8"))
    sys.stdout.write(f"\nwrote {', '.join(report.files.values())}\n")
    return 0


def _add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command that runs a bundle shares: device, sliding-window overlap, precision,
    progress."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument(
        "--overlap", type=float, help="sliding-window overlap in [0, 1) (default: the bundle's; 0 is fastest)"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="network arithmetic: float32, bfloat16 autocast (CPU or CUDA), float16 autocast (CUDA only); "
        "auto (default): float16 on CUDA, float32 on the CPU",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``textguidedseg`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="textguidedseg", description="Text-guided CT segmentation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment a CT volume from a text prompt")
    segment.add_argument("input", help="CT volume: NIfTI (.nii/.nii.gz), NRRD, or a DICOM series folder")
    segment.add_argument(
        "--prompt", "-p", required=True, help='structures to segment, e.g. "liver and both kidneys"'
    )
    segment.add_argument("--bundle", "-b", help=DEFAULT_BUNDLE_HELP)
    segment.add_argument("--output", "-o", required=True, help="label map to write (.nii.gz, .nii or .nrrd)")
    _add_inference_arguments(segment)
    segment.add_argument("--threshold", type=float, help="probability threshold (default: the bundle's)")
    segment.add_argument("--sw-batch-size", type=int, help="windows per forward pass (default: the bundle's)")
    segment.add_argument(
        "--largest-component", action="store_true", help="keep each structure's largest component"
    )
    segment.add_argument(
        "--split-laterality",
        action="store_true",
        help="restrict left/right structures to their side of the body midline",
    )
    segment.add_argument(
        "--probabilities", action="store_true", help="also write one probability map per query"
    )
    segment.add_argument(
        "--flip-tta",
        action="store_true",
        help="test-time flips (4 passes): average the probabilities and write one uncertainty map (their "
        "standard deviation) per query",
    )
    segment.add_argument("--overwrite", action="store_true", help="replace existing output files")
    segment.set_defaults(func=_cmd_segment)

    evaluate = commands.add_parser(
        "evaluate", help="score a bundle on labelled CTs (Dice, surface Dice) and write a report"
    )
    evaluate.add_argument("--bundle", "-b", required=True, help=BUNDLE_HELP)
    evaluate.add_argument(
        "--list",
        "-l",
        required=True,
        help="list file, one 'image<TAB>label' case a line (the trainer's format)",
    )
    evaluate.add_argument(
        "--output", "-o", required=True, help="report folder: metrics.csv, summary.md, dice_boxplot.png"
    )
    evaluate.add_argument("--data-root", help="folder the list's paths are relative to (default: the list's)")
    evaluate.add_argument(
        "--dataset",
        help="dataset key of every case (phantom, totalseg, btcv, ...; default: from each image's folder)",
    )
    evaluate.add_argument(
        "--structures",
        help='what to score, e.g. "liver, spleen and kidneys" (default: every structure of the bundle); '
        "each case scores those its dataset annotates",
    )
    evaluate.add_argument(
        "--save-predictions", action="store_true", help="also write predictions/<case>.nii.gz with sidecars"
    )
    evaluate.add_argument(
        "--nsd-tolerance", type=float, default=3.0, help="surface Dice tolerance in mm (default: 3)"
    )
    _add_inference_arguments(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    demo = commands.add_parser("demo", help="segment a phantom (or --input) and write an overlay and volumes")
    demo.add_argument("--output", "-o", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument(
        "--input", "-i", help="a CT to segment instead of the phantom (NIfTI, NRRD, DICOM folder)"
    )
    demo.add_argument(
        "--prompt",
        "-p",
        default="liver, spleen and both kidneys",
        help="structures to segment (default: %(default)s)",
    )
    demo.add_argument("--bundle", "-b", help=f"{BUNDLE_HELP} (default: the shipped demo bundle)")
    demo.add_argument("--seed", type=int, default=0, help="the phantom's seed (default: 0)")
    _add_inference_arguments(demo)
    demo.set_defaults(func=_cmd_demo)

    phantoms = commands.add_parser("phantoms", help="write procedural abdominal CT phantoms and a list file")
    phantoms.add_argument("--output", "-o", required=True, help="folder for images/, labels/ and phantom.txt")
    phantoms.add_argument("--count", "-n", type=int, default=10, help="number of phantoms (default: 10)")
    phantoms.add_argument(
        "--seed", type=int, default=0, help="seed of the set (case i: a seed derived from it)"
    )
    phantoms.add_argument("--shape", type=int, nargs=3, default=(128, 128, 64), metavar=("I", "J", "K"))
    phantoms.add_argument("--spacing", type=float, nargs=3, default=(2.5, 2.5, 2.5), metavar=("X", "Y", "Z"))
    phantoms.add_argument("--noise-hu", type=float, default=15.0, help="Gaussian noise standard deviation")
    phantoms.add_argument("--no-progress", action="store_true", help="no progress bar")
    phantoms.set_defaults(func=_cmd_phantoms)

    encode = commands.add_parser(
        "encode-prompts", help="build or extend an embedding cache with a CLIP text encoder"
    )
    encode.add_argument(
        "prompts", nargs="*", help="prompts to encode (default: the taxonomy's canonical prompts)"
    )
    encode.add_argument("--output", "-o", required=True, help="cache folder (extended when it exists)")
    encode.add_argument(
        "--encoder",
        default="openai/clip-vit-base-patch32",
        help="Hugging Face id or local folder of a CLIP text model",
    )
    encode.add_argument(
        "--output-kind",
        default="pooler",
        choices=["pooler", "projected"],
        help="pooler_output (as the seed) or the projected text_embeds",
    )
    encode.add_argument("--prompts-file", help="text file with one prompt per line")
    encode.add_argument("--taxonomy", default="universal32", help="taxonomy whose prompts are the default")
    encode.add_argument("--batch-size", type=int, default=64)
    encode.add_argument("--device", default="cpu")
    encode.set_defaults(func=_cmd_encode_prompts)

    bench = commands.add_parser(
        "clipseg-bench",
        help="fine-tune CLIPSeg with every strategy on the same 2D slices; report Dice, time split, memory",
    )
    bench.add_argument("--out", "-o", default="clipseg_bench", help="output folder (default: clipseg_bench)")
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
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="training config overrides (lr=3e-4 ...)",
    )
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.set_defaults(func=_cmd_clipseg_bench)

    info = commands.add_parser("info", help="verify a bundle and describe it")
    info.add_argument("bundle", help=BUNDLE_HELP)
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.set_defaults(func=_cmd_info)

    add_bundles_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``textguidedseg`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    # The library's errors are ValueError subclasses (bad input, named in the message), OSError (files) and
    # TextEncoderUnavailableError; anything else is a bug and keeps its traceback.
    try:
        return args.func(args)
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        logger.debug("details", exc_info=True)
        command = " ".join(filter(None, (args.command, getattr(args, "verb", None))))
        sys.stderr.write(f"textguidedseg {command}: error: {message}\n")
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors reported as a message with exit status 2. TextEncoderUnavailableError is looked up only when its
    module was imported (it pulls in torch, which ``bundles list`` must not)."""
    errors: list[type[BaseException]] = [ValueError, OSError]
    encoder = sys.modules.get("TextGuidedSegLib.text.encoder")
    if encoder is not None:
        errors.append(encoder.TextEncoderUnavailableError)
    return tuple(errors)


if __name__ == "__main__":
    sys.exit(main())
