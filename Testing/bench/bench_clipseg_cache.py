"""Frozen-encoder cache benchmark: decoder-only CLIPSeg steps per second, cached vs uncached, same batch.

Both runs train the ``decoder`` strategy with the same seed, data order and batch through
``train_clipseg``; one recomputes CLIP's vision activations and text features every step (``cache: off``),
the other reads them from the :class:`~TextGuidedSegLib.clipseg.cache.EncoderCache` built once before
training (``cache: memory``). Printed: seconds per step (mean of the timed steps: data + forward + backward +
optimizer), steps per second, their ratio (target >= 5x), the largest difference between the two loss
trajectories (target <= 1e-4), and the cache's build time with the number of steps that pay it back.

Sizes (random-init CLIPSeg, no download; ``--model`` loads real weights instead):

- ``tiny``: the test model (width 32, 64 px): the decoder is as large as the encoder, so little to gain;
- ``moderate`` (default): ViT width 384, 10 layers, 224 px, decoder of rd64 (reduce 64): a CPU-sized run;
- ``rd64``: the shapes of CIDAS/clipseg-rd64-refined (ViT-B/16 width 768, 12 layers, 352 px, text 512).

Run::

    OMP_NUM_THREADS=2 .venv/bin/python Testing/bench/bench_clipseg_cache.py --size moderate --steps 8
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from TextGuidedSegLib.clipseg.data import SliceConfig, build_slice_set, cases_from_lists
from TextGuidedSegLib.clipseg.model import IMAGENET_MEAN, IMAGENET_STD, CLIPSegNet
from TextGuidedSegLib.clipseg.testing import make_tiny_clipseg
from TextGuidedSegLib.clipseg.train import CLIPSegTrainConfig, train_clipseg
from TextGuidedSegLib.data.phantom import PhantomConfig, write_phantoms
from TextGuidedSegLib.text.tokenizer import load_clip_tokenizer, write_clip_tokenizer_files

STRUCTURES = ["liver", "spleen", "right_kidney", "left_kidney", "stomach"]
SIZES = {
    "moderate": {"vision": (384, 10, 6, 1536), "text": (256, 4, 4, 1024), "image": 224, "projection": 256},
    "rd64": {"vision": (768, 12, 12, 3072), "text": (512, 12, 8, 2048), "image": 352, "projection": 512},
}


def make_model(folder: Path, size: str) -> Path:
    """Save a random-init CLIPSeg of ``size`` (decoder as rd64: reduce 64, layers 3/6/9, refined convs)."""
    if size == "tiny":
        return make_tiny_clipseg(folder)
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    spec = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer_files(tmp, [], model_max_length=77)
        tokenizer = load_clip_tokenizer(tmp)
    (v_width, v_layers, v_heads, v_mlp), (t_width, t_layers, t_heads, t_mlp) = spec["vision"], spec["text"]
    config = CLIPSegConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": t_width,
            "num_hidden_layers": t_layers,
            "num_attention_heads": t_heads,
            "intermediate_size": t_mlp,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": v_width,
            "num_hidden_layers": v_layers,
            "num_attention_heads": v_heads,
            "intermediate_size": v_mlp,
            "image_size": spec["image"],
            "patch_size": 16,
        },
        projection_dim=spec["projection"],
        reduce_dim=64,
        extract_layers=[3, 6, 9],
        use_complex_transposed_convolution=True,
    )
    torch.manual_seed(0)
    CLIPSegForImageSegmentation(config).save_pretrained(folder)
    processor = ViTImageProcessor(
        size={"height": spec["image"], "width": spec["image"]},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    CLIPSegProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "moderate", "rd64"], default="moderate")
    parser.add_argument("--model", help="a CLIPSeg hub id or folder instead of a random-init one")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--phantoms", type=int, default=2, help="phantom volumes sliced for the data")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench_clipseg_cache_") as tmp:
        root = Path(tmp)
        model = args.model or str(make_model(root / "model", args.size))
        net = CLIPSegNet.from_pretrained(model)
        size = net.pixel.image_size
        phantoms = write_phantoms(
            root / "phantoms",
            args.phantoms,
            PhantomConfig(shape=(96, 96, 24), spacing=(4.0, 4.0, 5.0)),
            seed=0,
            progress=False,
        )
        slicing = SliceConfig(structures=STRUCTURES, spacing=(4.0, 4.0, 5.0), image_size=size)
        train_set = build_slice_set(cases_from_lists([phantoms]), slicing, root / "slices", progress=False)
        results = {}
        for cache in ("off", "memory"):
            config = CLIPSegTrainConfig(
                run_dir=str(root / f"run_{cache}"),
                model=model,
                strategy="decoder",
                epochs=1,
                batch_size=args.batch_size,
                max_steps_per_epoch=args.steps,
                cache=cache,
                device=args.device,
                threads=args.threads,
                tensorboard=False,
                progress=False,
                checkpoints=False,
                export_bundle=False,
                eval_batch_size=args.batch_size,
                slicing=slicing,
            )
            results[cache] = train_clipseg(config, net=CLIPSegNet.from_pretrained(model), train_set=train_set)

    off, on = results["off"], results["memory"]
    step_off, step_on = off.times.per_step()["step"], on.times.per_step()["step"]
    ratio = step_off / step_on
    diff = float(np.max(np.abs(np.asarray(off.losses) - np.asarray(on.losses))))
    break_even = on.cache_seconds / max(step_off - step_on, 1e-12)
    vision = net.hf.config.vision_config
    device = next(on.net.parameters()).device
    print(
        f"CLIPSeg decoder-only, {args.model or args.size}: vision width {vision.hidden_size}, "
        f"{vision.num_hidden_layers} layers, {size} px; batch {args.batch_size}, "
        f"{off.times.steps} timed steps, {len(train_set)} samples on {train_set.images.shape[0]} slices, "
        f"device {device}, "
        f"{args.threads or torch.get_num_threads()} thread(s)"
    )
    print("| run | s/step | steps/s | forward s/step | backward s/step | optimizer s/step | data s/step |")
    print("|---|---|---|---|---|---|---|")
    for name, result in (("uncached", off), ("cached", on)):
        s = result.times.per_step()
        print(
            f"| {name} | {s['step']:.4f} | {1 / s['step']:.2f} | {s['forward']:.4f} | {s['backward']:.4f} | "
            f"{s['optimizer']:.4f} | {s['data']:.4f} |"
        )
    print(f"speed-up (cached / uncached steps per second): {ratio:.1f}x  (target >= 5x)")
    print(f"largest loss difference over {len(off.losses)} steps: {diff:.2e}  (target <= 1e-4)")
    print(
        f"cache build: {on.cache_seconds:.2f} s for {train_set.images.shape[0]} slices, paid back after "
        f"{break_even:.1f} steps"
    )
    return 0 if ratio >= 5 and diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
