"""CLI vs server (issue 11): the same segmentation by ``textguidedseg segment`` and through ``textguidedseg
serve`` from a client; target: the server path within 1.1x of the CLI (no GIL starvation out of process).

Both sides are one process doing the work with torch's default threads: the CLI a fresh process per run (as a
user runs it), the server one process started once (as the Slicer module starts it on first use); the client
(this process) reads the CT, uploads it, submits the prompt, waits, fetches the label map and writes it as
the CLI does. Every run sends the volume again, so every run encodes it (no re-prompt shortcut). Registered
in ``benchmarks.py`` as ``server_vs_cli``::

    .venv/bin/python Testing/bench/run_all.py --only server_vs_cli
    .venv/bin/python Testing/bench/bench_server.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import CT, CT_SMALL, REPO, alternate, film_bundle, load_ct  # noqa: I001  (Testing/bench on sys.path)

PROMPT = "liver, spleen and both kidneys"
STRUCTURES = ["liver", "spleen", "right_kidney", "left_kidney"]
TARGET = 1.1


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "textguidedseg"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "TextGuidedSegLib.cli"]


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``; 0 elsewhere)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    """A ``textguidedseg serve`` process on 127.0.0.1 (a free port); the process and its URL."""
    command = _cli() + ["--log-level", "WARNING", "serve", "--device", "cpu", "--max-volume-mb", "2048"]
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO)
    line = process.stdout.readline().decode().strip()
    match = re.match(r"Serving on (http://\S+)$", line)
    if match is None:
        process.kill()
        raise RuntimeError(
            f"textguidedseg serve did not start (first line {line!r}): {log.read_text()[-800:]}"
        )
    return process, match.group(1)


def server_vs_cli(p: dict[str, Any]) -> dict[str, Any]:
    """Median wall time through the server (client included) over the CLI's, alternated after a warm-up."""
    import nibabel as nib

    sys.path.insert(0, str(REPO / "TextGuidedSeg" / "TextGuidedSegLogic"))
    import service  # the Slicer module's stdlib client

    from TextGuidedSegLib.io import load_volume

    ct = CT_SMALL if p["ct"] == "small" else CT
    load_ct(ct)  # a clear error when ../shared/data is absent
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        folder = Path(tmp)
        bundle = film_bundle(folder, STRUCTURES, p["fs"], p["roi"], p["model_spacing"])
        bundle_path = folder / bundle.config.name
        process, url = start_server(folder / "server.log")
        client = service.ServiceClient(url, timeout=600)
        cpu: dict[str, float] = {}

        def by_cli() -> np.ndarray:
            output = folder / "cli.nii.gz"
            words = _cli() + [
                "segment",
                str(ct),
                "-p",
                PROMPT,
                "--bundle",
                str(bundle_path),
                "-o",
                str(output),
            ]
            done = subprocess.run(
                [*words, "--device", "cpu", "--no-progress", "--overwrite"],
                capture_output=True,
                text=True,
                cwd=folder,
            )
            if done.returncode != 0:
                raise RuntimeError(f"textguidedseg segment failed: {done.stderr[-800:]}")
            return np.asarray(nib.load(str(output)).dataobj)

        def by_server() -> np.ndarray:
            volume = load_volume(ct)
            volume_id = client.upload_volume(volume.array, volume.affine, ct.name)
            status = client.submit(str(bundle_path), volume_id, PROMPT, {"device": "cpu"})
            service.wait_for_job(client, status["job_id"], lambda *a: None, None, ct.name)
            result, _summary = client.result(status["job_id"], volume)
            client.forget(status["job_id"])
            output = folder / "server.nii.gz"
            nib.save(nib.Nifti1Image(result.labels.astype(np.uint8), volume.affine), str(output))
            return result.labels

        def timed_cpu(name, call, measure):
            def wrapped():
                before = measure()
                out = call()
                cpu.setdefault(name, 0.0)
                cpu[name] += measure() - before
                return out

            return wrapped

        try:
            timing = alternate(
                {
                    "server": timed_cpu("server", by_server, lambda: _process_cpu(process.pid)),
                    "cli": timed_cpu("cli", by_cli, _children_cpu),
                },
                p["repeats"],
            )
            health = client.health()
        finally:
            process.terminate()
            process.wait(30)
    server, cli = timing["server"], timing["cli"]
    agree = float(np.mean(np.asarray(server["result"]) == np.asarray(cli["result"])))
    runs = 1 + p["repeats"]
    return {
        "ratio": server["median_s"] / cli["median_s"],
        "candidate": {
            "median_s": server["median_s"],
            "median_cpu_s": cpu["server"] / runs,
            "what": "client -> textguidedseg serve (upload, segment, fetch, write)",
        },
        "reference": {
            "median_s": cli["median_s"],
            "median_cpu_s": cpu["cli"] / runs,
            "what": "textguidedseg segment (a fresh process)",
        },
        "details": {
            "ct": ct.name,
            "bundle": f"film_v1 fs {p['fs']}, roi {p['roi']}, {p['model_spacing']} mm, random weights",
            "server_wall_s": server["wall"],
            "cli_wall_s": cli["wall"],
            "label_voxels_equal": round(agree, 6),
            "server_encode_count": health["encode_count"],
            "note": "cpu s: mean per run of the server process / of the CLI process (the client excluded)",
        },
    }


#: What ``benchmarks.py`` registers: name -> (title, op, target, function of the size's parameters).
BENCHMARKS = {
    "server_vs_cli": ("same run through textguidedseg serve vs the CLI", "<=", TARGET, server_vs_cli)
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (default: 3)")
    parser.add_argument("--ct", choices=("small", "full"), default="small")
    parser.add_argument("--spacing", type=float, default=3.0, help="the bundle's spacing, mm (default: 3)")
    args = parser.parse_args(argv)
    params = {"fs": 12, "roi": 64, "model_spacing": args.spacing, "repeats": args.repeats, "ct": args.ct}
    result = server_vs_cli(params)
    print(json.dumps({k: v for k, v in result.items()}, indent=2, default=str))
    verdict = "ok" if result["ratio"] <= TARGET else "MISSED"
    print(f"server / CLI: {result['ratio']:.3f}x (target <= {TARGET}) {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
