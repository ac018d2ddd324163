"""Time a single-prompt forward pass of the text-conditioned models against MONAI's SwinUNETR.

Usage::

    .venv/bin/python Testing/bench/bench_forward.py --feature-size 48 --roi 96 --repeats 3

Each model runs in eval mode under ``torch.no_grad()`` on one random ``(1, 1, roi, roi, roi)`` image and
one text embedding (query mode, one output mask); MONAI's ``SwinUNETR(out_channels=1)`` is the reference.
Models are timed round-robin (one call of each per round), ``--warmup`` untimed rounds first. The table
gives the best and median wall-clock seconds over ``--repeats`` timed rounds, the median process CPU
seconds, each median's ratio to the reference's, and parameter counts.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.networks.nets import SwinUNETR

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from TextGuidedSegLib.models import ModelConfig, build_model  # noqa: E402

logger = logging.getLogger("bench_forward")


def time_round_robin(
    calls: list[Callable[[], torch.Tensor]], repeats: int, warmup: int, device: torch.device
) -> tuple[list[list[float]], list[list[float]]]:
    """Time each call ``repeats`` times, interleaved (call 1, call 2, ..., call 1, ...) so that a change in
    machine load during the run affects every model alike; ``warmup`` untimed rounds come first.

    Returns:
        wall-clock seconds and process CPU seconds per call, each ``[call][repeat]``. On a shared machine the
        CPU time (all threads of this process) is the steadier measure; wall time is what a user waits.
    """

    def run(call: Callable[[], torch.Tensor]) -> None:
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    wall: list[list[float]] = [[] for _ in calls]
    cpu: list[list[float]] = [[] for _ in calls]
    with torch.no_grad():
        for round_index in range(warmup + repeats):
            for i, call in enumerate(calls):
                start, start_cpu = time.perf_counter(), time.process_time()
                run(call)
                if round_index >= warmup:
                    wall[i].append(time.perf_counter() - start)
                    cpu[i].append(time.process_time() - start_cpu)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feature-size", type=int, default=48, help="feature_size (multiple of 12)")
    parser.add_argument("--roi", type=int, default=96, help="cubic input side (multiple of 32, >= 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes before timing")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    image = torch.rand(1, 1, args.roi, args.roi, args.roi, device=device)
    text = torch.randn(1, 1, 512, device=device)
    logger.info(
        "feature_size=%d roi=%d^3 repeats=%d warmup=%d device=%s threads=%d torch=%s",
        args.feature_size,
        args.roi,
        args.repeats,
        args.warmup,
        device,
        torch.get_num_threads(),
        torch.__version__,
    )

    reference = SwinUNETR(in_channels=1, out_channels=1, feature_size=args.feature_size).to(device).eval()
    models: list[tuple[str, torch.nn.Module, Callable[[], torch.Tensor]]] = [
        ("monai_swinunetr", reference, lambda: reference(image))
    ]
    for architecture in ("film_v1", "film_v2", "universal"):
        model = build_model(ModelConfig(architecture=architecture, feature_size=args.feature_size))
        model = model.to(device).eval()
        models.append((architecture, model, lambda m=model: m(image, text)))

    wall, cpu = time_round_robin([call for _, _, call in models], args.repeats, args.warmup, device)
    rows = []
    for (name, model, _), seconds, cpu_seconds in zip(models, wall, cpu, strict=True):
        n_params = sum(p.numel() for p in model.parameters())
        rows.append(
            (name, min(seconds), statistics.median(seconds), statistics.median(cpu_seconds), n_params)
        )
        logger.info(
            "%s: wall %s s, cpu %s s",
            name,
            ", ".join(f"{s:.2f}" for s in seconds),
            ", ".join(f"{s:.2f}" for s in cpu_seconds),
        )

    ref_wall, ref_cpu = rows[0][2], rows[0][3]
    columns = ("best s", "median s", "x MONAI", "cpu s", "x MONAI", "parameters")
    widths = (8, 9, 8, 8, 8, 12)
    print("\n" + f"{'model':<16} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for name, best, median, median_cpu, n_params in rows:
        print(
            f"{name:<16} {best:>8.2f} {median:>9.2f} {median / ref_wall:>8.2f} "
            f"{median_cpu:>8.2f} {median_cpu / ref_cpu:>8.2f} {n_params:>12,}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
