"""The benchmarks of ``make bench`` (issue 10's targets), each a function ``(sizes) -> result dict``.

Each runs in its own process (``run_all.py`` starts it), so its peak RSS is its own. A result holds the
candidate's and the reference's median seconds (wall and process CPU), their ratio beside the target, and
the details (Dice, window counts, sizes). Sizes come from ``SIZES[size][name]``; ``quick`` fits
``make bench``'s 20 minutes on a 2-core CPU, ``full`` is the issue's clinical sizes.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_server import BENCHMARKS as SERVER_BENCHMARKS  # issue 11: textguidedseg serve vs the CLI
from bench_startup import BENCHMARKS as STARTUP_BENCHMARKS  # issue 16: --help, errors, info under 1 s
from common import (  # noqa: I001  (Testing/bench on sys.path)
    CT,
    CT_SMALL,
    DEMO_BUNDLE,
    ModelClock,
    alternate,
    dice_per_label,
    film_bundle,
    load_ct,
    model_space_volume,
    monai_bundle,
    resampled_ct,
    segmenter,
)

#: The setting recommended by the CPU-path exploration (``explore_cpu_path.py``); the candidate of
#: ``fastest_cpu_path``.
#: bf16 + sw 4 measured 0.83x but right kidney Dice 0.988 on example_ct_sm; overlap 0.25 ~0.5x but Dice 0.977.
FASTEST_CPU = {"overlap": 0.5, "precision": "float32", "sw_batch_size": 4}
REFERENCE_CPU = {"overlap": 0.5, "precision": "float32"}

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "postprocess_25": {
            "shape": (512, 512, 321),
            "spacing": (0.72, 0.59, 1.05),
            "fs": 12,
            "roi": 64,
            "model_spacing": 3.0,
            "structures": 25,
        },
        "reprompt_film": {"fs": 12, "roi": 64, "model_spacing": 3.0, "repeats": 2, "ct": "small"},
        "reprompt_channel": {"entry": "wholebody_ct_lowres", "repeats": 2, "ct": "small"},
        "fastest_cpu_path": {"repeats": 1, "ct": "small"},
        "forward_vs_monai": {"fs": 48, "roi": 64, "repeats": 3},
        "five_prompts": {"fs": 12, "roi": 64, "grid": (64, 64, 64), "repeats": 2},
        "rss_fs48": {"grid": (244, 202, 64), "overlap": 0.0},
        "clipseg_cache": {"size": "moderate", "steps": 8},
        "startup": {"repeats": 5},
        "server_vs_cli": {"fs": 12, "roi": 64, "model_spacing": 3.0, "repeats": 2, "ct": "small"},
    },
    "full": {
        "postprocess_25": {
            "shape": (512, 512, 321),
            "spacing": (0.72, 0.59, 1.05),
            "fs": 12,
            "roi": 96,
            "model_spacing": 1.5,
            "structures": 25,
        },
        "reprompt_film": {"fs": 48, "roi": 96, "model_spacing": 1.5, "repeats": 3, "ct": "full"},
        "reprompt_channel": {"entry": "wholebody_ct_lowres", "repeats": 3, "ct": "full"},
        "fastest_cpu_path": {"repeats": 3, "ct": "full"},
        "forward_vs_monai": {"fs": 48, "roi": 96, "repeats": 5},
        "five_prompts": {"fs": 48, "roi": 96, "grid": (96, 96, 96), "repeats": 3},
        "rss_fs48": {"grid": (244, 202, 224), "overlap": 0.0},
        "clipseg_cache": {"size": "moderate", "steps": 8},
        "startup": {"repeats": 11},
        "server_vs_cli": {"fs": 48, "roi": 96, "model_spacing": 1.5, "repeats": 3, "ct": "full"},
    },
}


def peak_rss_gib() -> float:
    """This process's peak resident set so far, GiB (Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _timing(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "result"}


def _queries(seg, names: list[str]) -> list:
    """One query per class name (the taxonomy's display name parsed as a prompt)."""
    taxonomy = seg.bundle.config.taxonomy
    return [seg.queries(taxonomy[name].name)[0] for name in names]


def postprocess_25(p: dict[str, Any]) -> dict[str, Any]:
    """Post-processing share of a whole-volume run (25 structures, clinical CT grid) and its peak RSS."""
    volume = resampled_ct(p["shape"], p["spacing"])
    with tempfile.TemporaryDirectory() as tmp:
        bundle = film_bundle(Path(tmp), p["structures"], p["fs"], p["roi"], p["model_spacing"], overlap=0.0)
    seg = segmenter(bundle, overlap=0.0)
    queries = _queries(seg, bundle.config.taxonomy.class_names)
    start = time.perf_counter()
    prepared = seg.prepare(volume)
    prepare_s = time.perf_counter() - start
    windows = list(prepared.image.shape[2:])
    del prepared
    clock = ModelClock(seg)
    before = peak_rss_gib()
    start, start_cpu = time.perf_counter(), time.process_time()
    result = seg.segment(volume, queries)
    total = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    post = total - clock.seconds - prepare_s
    return {
        "ratio": post / total,
        "candidate": {"median_s": post, "what": "post-processing (segment - prepare - network)"},
        "reference": {"median_s": total, "median_cpu_s": cpu, "what": "whole segment() call"},
        "details": {
            "input_grid": list(volume.shape),
            "model_grid_cropped": windows,
            "structures": len(queries),
            "network_s": round(clock.seconds, 2),
            "prepare_s": round(prepare_s, 2),
            "labelled_voxels": int(np.count_nonzero(result.labels)),
            "rss_before_segment_gib": round(before, 2),
        },
        "extra_rows": [{"name": "postprocess_25_peak_rss", "value": peak_rss_gib(), "unit": "GiB"}],
    }


def reprompt_film(p: dict[str, Any]) -> dict[str, Any]:
    """A new prompt on a kept PreparedVolume vs a full single-prompt run (film_v1, random weights)."""
    volume = load_ct(CT_SMALL if p["ct"] == "small" else CT)
    names = ["liver", "spleen", "right_kidney", "left_kidney", "stomach", "aorta", "gallbladder", "pancreas"]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = film_bundle(Path(tmp), names, p["fs"], p["roi"], p["model_spacing"])
    seg = segmenter(bundle)
    queries = _queries(seg, names)
    prepared = seg.prepare(volume)
    seg.segment(volume, queries[1:2], prepared=prepared)  # the first prompt fills what a kept volume keeps
    fresh = iter(queries[2:] * 4)
    timing = alternate(
        {
            "new prompt, prepared": lambda: seg.segment(volume, [next(fresh)], prepared=prepared),
            "full run": lambda: seg.segment(volume, queries[:1]),
        },
        p["repeats"],
    )
    cached = seg.segment(volume, queries[:1], prepared=prepared).labels
    full = timing["full run"]["result"].labels
    return {
        "ratio": timing["new prompt, prepared"]["median_s"] / timing["full run"]["median_s"],
        "candidate": _timing(timing["new prompt, prepared"]),
        "reference": _timing(timing["full run"]),
        "details": {
            "model_grid": list(prepared.image.shape[2:]),
            "fs": p["fs"],
            "dice_same_prompt": dice_per_label(cached, full, 1)[0],
        },
    }


def reprompt_channel(p: dict[str, Any]) -> dict[str, Any]:
    """A new prompt on a channel (softmax) model already run on the volume vs a first run."""
    volume = load_ct(CT_SMALL if p["ct"] == "small" else CT)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = monai_bundle(Path(tmp), p["entry"])
    seg = segmenter(bundle)
    names = bundle.config.taxonomy.class_names
    prepared = seg.prepare(volume)
    seg.segment(volume, _queries(seg, names[:1]), prepared=prepared)
    fresh = iter([[q] for q in _queries(seg, names[1:12])] * 4)
    timing = alternate(
        {
            "new prompt, already run": lambda: seg.segment(volume, next(fresh), prepared=prepared),
            "first run": lambda: seg.segment(volume, _queries(seg, names[:1]), prepared=seg.prepare(volume)),
        },
        p["repeats"],
    )
    return {
        "ratio": timing["new prompt, already run"]["median_s"] / timing["first run"]["median_s"],
        "candidate": _timing(timing["new prompt, already run"]),
        "reference": _timing(timing["first run"]),
        "details": {"bundle": p["entry"], "model_grid": list(prepared.image.shape[2:])},
    }


def _demo_cases(ct: str | bool) -> list[tuple[str, Any]]:
    """The demo phantom, and a shared CT: ``"small"`` example_ct_sm, ``"full"`` / True example_ct."""
    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.data.phantom import make_phantom
    from TextGuidedSegLib.demo import demo_phantom_config
    from TextGuidedSegLib.io import Volume

    spacing = load_bundle(DEMO_BUNDLE).config.preprocessing.spacing
    phantom = make_phantom(demo_phantom_config(spacing))
    cases = [("phantom", Volume(array=phantom.image, affine=phantom.affine, source="demo phantom"))]
    if ct:
        path = CT_SMALL if ct == "small" else CT
        cases.append((path.name.split(".")[0], load_ct(path)))
    return cases


def fastest_cpu_path(p: dict[str, Any], candidate: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recommended CPU setting vs MONAI's default sliding window (overlap 0.5, float32), trained demo
    bundle, on its phantom and a real CT: time ratio and Dice per structure between the two label maps."""
    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.demo import DEFAULT_PROMPT

    candidate = dict(FASTEST_CPU if candidate is None else candidate)
    bundle = load_bundle(DEMO_BUNDLE)
    fast, reference = segmenter(bundle, **candidate), segmenter(bundle, **REFERENCE_CPU)
    queries = reference.queries(DEFAULT_PROMPT)
    totals = {"candidate": 0.0, "reference": 0.0, "candidate_cpu": 0.0, "reference_cpu": 0.0}
    details: dict[str, Any] = {"candidate": candidate, "reference": REFERENCE_CPU}
    for name, volume in _demo_cases(p["ct"]):
        timing = alternate(
            {
                "candidate": lambda v=volume: fast.segment(v, queries),
                "reference": lambda v=volume: reference.segment(v, queries),
            },
            p["repeats"],
        )
        dice = dice_per_label(
            timing["candidate"]["result"].labels, timing["reference"]["result"].labels, len(queries)
        )
        for key in ("candidate", "reference"):
            totals[key] += timing[key]["median_s"]
            totals[key + "_cpu"] += timing[key]["median_cpu_s"]
        details[name] = {
            "ratio": round(timing["candidate"]["median_s"] / timing["reference"]["median_s"], 3),
            "dice": {q.class_name: round(d, 4) for q, d in zip(queries, dice, strict=True)},
            "candidate_s": round(timing["candidate"]["median_s"], 2),
            "reference_s": round(timing["reference"]["median_s"], 2),
        }
    min_dice = min(min(v["dice"].values()) for k, v in details.items() if isinstance(v, dict) and "dice" in v)
    return {
        "ratio": totals["candidate"] / totals["reference"],
        "candidate": {"median_s": totals["candidate"], "median_cpu_s": totals["candidate_cpu"]},
        "reference": {"median_s": totals["reference"], "median_cpu_s": totals["reference_cpu"]},
        "condition": {"what": "min Dice per structure", "value": min_dice, "target": 0.99},
        "details": details,
    }


def forward_vs_monai(p: dict[str, Any]) -> dict[str, Any]:
    """One 96^3 forward of film_v1 (one prompt) vs MONAI SwinUNETR of the same feature size."""
    import torch
    from monai.networks.nets import SwinUNETR

    from TextGuidedSegLib.models import ModelConfig, build_model

    torch.manual_seed(0)
    image = torch.rand(1, 1, p["roi"], p["roi"], p["roi"])
    text = torch.randn(1, 1, 512)
    monai_net = SwinUNETR(in_channels=1, out_channels=1, feature_size=p["fs"]).eval()
    film = build_model(ModelConfig(architecture="film_v1", feature_size=p["fs"], text_dim=512)).eval()
    with torch.inference_mode():
        calls = {"film_v1": lambda: film(image, text), "monai": lambda: monai_net(image)}
        timing = alternate(calls, p["repeats"])
    return {
        "ratio": timing["film_v1"]["median_s"] / timing["monai"]["median_s"],
        "candidate": _timing(timing["film_v1"]),
        "reference": _timing(timing["monai"]),
        "details": {
            "fs": p["fs"],
            "roi": p["roi"],
            "cpu_ratio": timing["film_v1"]["median_cpu_s"] / timing["monai"]["median_cpu_s"],
        },
    }


def five_prompts(p: dict[str, Any]) -> dict[str, Any]:
    """One request for 5 structures vs 5 single-structure requests (film_v1, no kept PreparedVolume)."""
    volume = model_space_volume(p["grid"], 3.0, CT)
    names = ["liver", "spleen", "right_kidney", "left_kidney", "stomach"]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = film_bundle(Path(tmp), names, p["fs"], p["roi"], 3.0)
    seg = segmenter(bundle)
    queries = _queries(seg, names)
    timing = alternate(
        {
            "5 prompts, one request": lambda: seg.segment(volume, queries),
            "5 single requests": lambda: [seg.segment(volume, [q]) for q in queries],
        },
        p["repeats"],
    )
    return {
        "ratio": timing["5 prompts, one request"]["median_s"] / timing["5 single requests"]["median_s"],
        "candidate": _timing(timing["5 prompts, one request"]),
        "reference": _timing(timing["5 single requests"]),
        "details": {"fs": p["fs"], "input_grid": list(volume.shape)},
    }


def rss_fs48(p: dict[str, Any], prompts: int = 1) -> dict[str, Any]:
    """Peak RSS of a whole-volume run, fs 48, ``prompts`` structures, model space about ``grid``."""
    names = ["liver", "spleen", "right_kidney", "left_kidney", "stomach"][:prompts]
    volume = model_space_volume(p["grid"], 1.5)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = film_bundle(Path(tmp), names, 48, 96, 1.5, overlap=p["overlap"])
    seg = segmenter(bundle)
    queries = _queries(seg, names)
    before = peak_rss_gib()
    start = time.perf_counter()
    seg.segment(volume, queries)
    seconds = time.perf_counter() - start
    return {
        "value": peak_rss_gib(),
        "unit": "GiB",
        "details": {
            "grid": list(p["grid"]),
            "overlap": p["overlap"],
            "prompts": prompts,
            "seconds": round(seconds, 1),
            "rss_before_gib": round(before, 2),
        },
    }


def clipseg_cache(p: dict[str, Any]) -> dict[str, Any]:
    """The CLIPSeg frozen-encoder cache: decoder-only training steps, cached vs uncached."""
    import io
    import re
    from contextlib import redirect_stdout

    import bench_clipseg_cache

    out = io.StringIO()
    with redirect_stdout(out):
        bench_clipseg_cache.main(["--size", p["size"], "--steps", str(p["steps"])])
    text = out.getvalue()
    numbers = re.findall(r"speed-up[^:]*: ([0-9.]+)x", text)
    speedup = float(numbers[0]) if numbers else float("nan")
    return {"value": speedup, "unit": "x", "details": {"output": text.strip().splitlines()[-8:]}}


BENCHMARKS = {
    "postprocess_25": ("post-processing share, 25 structures, 512x512x321 CT", "<=", 0.10, postprocess_25),
    "reprompt_film": ("new prompt on a prepared volume vs full run (film_v1)", "<=", 0.30, reprompt_film),
    "reprompt_channel": ("new prompt on a channel model already run", "<=", 0.05, reprompt_channel),
    "fastest_cpu_path": ("fastest CPU path vs overlap 0.5 fp32 (Dice >= 0.99)", "<=", 0.50, fastest_cpu_path),
    "forward_vs_monai": ("FiLM v1 forward vs MONAI SwinUNETR, one prompt", "<=", 1.05, forward_vs_monai),
    "five_prompts": ("5-prompt request vs 5 single-prompt requests", "<=", 0.40, five_prompts),
    "rss_fs48_1": ("peak RSS, whole volume, fs 48, 1 prompt", "report", None, lambda p: rss_fs48(p, 1)),
    "rss_fs48_5": ("peak RSS, whole volume, fs 48, 5 prompts", "report", None, lambda p: rss_fs48(p, 5)),
    "clipseg_cache": ("CLIPSeg frozen-encoder cache, steps/s cached vs uncached", ">=", 5.0, clipseg_cache),
    **STARTUP_BENCHMARKS,
    **SERVER_BENCHMARKS,
}
SIZE_KEY = {
    "rss_fs48_1": "rss_fs48",
    "rss_fs48_5": "rss_fs48",
    **dict.fromkeys(STARTUP_BENCHMARKS, "startup"),
}


def run(name: str, size: str) -> dict[str, Any]:
    """Run benchmark ``name`` at ``size`` in this process; the result dict (without timings of setup)."""
    title, op, target, function = BENCHMARKS[name]
    params = SIZES[size][SIZE_KEY.get(name, name)]
    start = time.perf_counter()
    result = function(params)
    result.update(
        name=name,
        title=title,
        op=op,
        target=target,
        params=params,
        seconds=round(time.perf_counter() - start, 1),
        peak_rss_gib=round(peak_rss_gib(), 2),
    )
    return result


def median(values: list[float]) -> float:
    return statistics.median(values)
