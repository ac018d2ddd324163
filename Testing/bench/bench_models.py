"""CPU wall time and peak memory of the Segmenter on ``example_ct.nii.gz`` for each translated MONAI bundle.

Usage::

    .venv/bin/python Testing/bench/bench_models.py                      # every shipped translation
    .venv/bin/python Testing/bench/bench_models.py --entry spleen_ct --threads 2

Each bundle runs in its own process (so peak RSS is its own): a bundle is built from the shipped translation
(``TextGuidedSegLib/resources/monai/<entry>.json``) and seeded random weights of the same architecture, then
the Segmenter (CPU) prepares the volume and segments every structure of the bundle. Times are wall-clock
seconds of ``prepare`` + ``segment`` (not the bundle build); peak RSS is the process's maximum resident set.
The network's speed does not depend on its weights, so the numbers stand for the published models.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
CT = REPO.parent / "shared" / "data" / "totalseg" / "example_ct.nii.gz"


def run_one(entry: str, threads: int) -> dict:
    """Build ``entry`` with random weights and time one Segmenter run on the example CT."""
    import torch

    from TextGuidedSegLib.bundle import BundleConfig, load_bundle
    from TextGuidedSegLib.importers.monai_bundle import build_bundle_from_weights, shipped_translation
    from TextGuidedSegLib.inference import Segmenter
    from TextGuidedSegLib.io import load_volume
    from TextGuidedSegLib.models.monai_network import MonaiNetworkModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = shipped_translation(entry)
    net = MonaiNetworkModel(BundleConfig.from_dict(config).model).net
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(net.state_dict(), Path(tmp) / "model.pt")
        bundle = load_bundle(build_bundle_from_weights(config, Path(tmp) / "model.pt", Path(tmp) / "bundle"))
    del net
    volume = load_volume(CT)
    segmenter = Segmenter(bundle, device="cpu", progress=False)
    started = time.perf_counter()
    prepared = segmenter.prepare(volume)
    result = segmenter.segment(volume, segmenter.queries(""), prepared=prepared)
    seconds = time.perf_counter() - started
    again = time.perf_counter()
    segmenter.segment(volume, segmenter.queries("")[:1], prepared=prepared)
    reprompt = time.perf_counter() - again
    return {
        "entry": entry,
        "network": bundle.config.model.network,
        "structures": len(bundle.vocabulary),
        "spacing_mm": list(bundle.config.preprocessing.spacing),
        "model_grid": list(prepared.image.shape[2:]),
        "parameters": sum(p.numel() for p in bundle.model.parameters()),
        "seconds": round(seconds, 1),
        "reprompt_seconds": round(reprompt, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": threads,
        "labels_shape": list(result.labels.shape),
    }


def main() -> None:
    from TextGuidedSegLib.importers.monai_bundle import SHIPPED_TRANSLATIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", choices=sorted(SHIPPED_TRANSLATIONS), help="one bundle, in this process")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    if args.entry:
        print(json.dumps(run_one(args.entry, args.threads)))
        return
    for entry in SHIPPED_TRANSLATIONS:
        command = [sys.executable, __file__, "--entry", entry, "--threads", str(args.threads)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        print(output.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
