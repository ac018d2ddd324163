"""CPU-path exploration on the trained demo bundle: each setting vs the reference (overlap 0.5, float32).

Usage::

    .venv/bin/python Testing/bench/explore_cpu_path.py [--ct] [--repeats 1]

For each setting (precision, overlap, sw_batch_size, threads) the demo prompt is segmented on the demo
phantom (and with ``--ct`` on the shared ``example_ct.nii.gz``), alternating with the reference; printed:
median wall and CPU seconds, their ratios to the reference, and Dice per structure vs the reference labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks import REFERENCE_CPU, _demo_cases  # noqa: E402
from common import DEMO_BUNDLE, alternate, dice_per_label, segmenter  # noqa: E402

SETTINGS = {
    "bf16": {"overlap": 0.5, "precision": "bfloat16"},
    "ov0.25": {"overlap": 0.25, "precision": "float32"},
    "ov0.25+bf16": {"overlap": 0.25, "precision": "bfloat16"},
    "sw4": {"overlap": 0.5, "precision": "float32", "sw_batch_size": 4},
    "sw8": {"overlap": 0.5, "precision": "float32", "sw_batch_size": 8},
    "bf16+sw4": {"overlap": 0.5, "precision": "bfloat16", "sw_batch_size": 4},
    "bf16+sw8": {"overlap": 0.5, "precision": "bfloat16", "sw_batch_size": 8},
    "ov0.375+bf16+sw4": {"overlap": 0.375, "precision": "bfloat16", "sw_batch_size": 4},
    "ov0.25+bf16+sw4": {"overlap": 0.25, "precision": "bfloat16", "sw_batch_size": 4},
}


def main() -> None:
    import torch

    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.demo import DEFAULT_PROMPT

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", action="store_true", help="also the shared example_ct.nii.gz")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS)[:4], choices=list(SETTINGS))
    parser.add_argument("--no-phantom", action="store_true", help="only the CT (with --ct)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(DEMO_BUNDLE)
    reference = segmenter(bundle, **REFERENCE_CPU)
    queries = reference.queries(DEFAULT_PROMPT)
    for case, volume in _demo_cases(args.ct)[1 if args.no_phantom else 0 :]:
        calls = {"reference": lambda v=volume: reference.segment(v, queries)}
        for name in args.settings:
            seg = segmenter(bundle, **SETTINGS[name])
            calls[name] = lambda v=volume, s=seg: s.segment(v, queries)
        timing = alternate(calls, args.repeats)
        ref = timing["reference"]
        for name, entry in timing.items():
            dice = dice_per_label(entry["result"].labels, ref["result"].labels, len(queries))
            print(
                json.dumps(
                    {
                        "case": case,
                        "setting": name,
                        "threads": torch.get_num_threads(),
                        "wall_s": round(entry["median_s"], 2),
                        "cpu_s": round(entry["median_cpu_s"], 2),
                        "wall_ratio": round(entry["median_s"] / ref["median_s"], 3),
                        "cpu_ratio": round(entry["median_cpu_s"] / ref["median_cpu_s"], 3),
                        "dice": {q.class_name: round(d, 4) for q, d in zip(queries, dice, strict=True)},
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
