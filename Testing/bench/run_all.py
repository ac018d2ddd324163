"""``make bench``: run every benchmark of issue 10 in its own process and write a table of ratios vs targets.

Usage::

    .venv/bin/python Testing/bench/run_all.py                      # all, quick sizes (< 20 min on 2 cores)
    .venv/bin/python Testing/bench/run_all.py --size full          # the issue's clinical sizes (long)
    .venv/bin/python Testing/bench/run_all.py --only five_prompts reprompt_film

Each benchmark runs in a child process (its peak RSS is its own; a watchdog kills it above
``--max-rss-gib``), alternates candidate and reference after a warm-up and reports both medians (wall and
process CPU seconds) and their ratio beside the target. Results go to ``Testing/bench/results/bench.json``
and ``bench.md`` (the folder is git-ignored: results belong to a machine and a date).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
MARKER = "BENCH-RESULT "


def verdict(result: dict[str, Any]) -> str:
    """ "ok", "MISSED", "reported", or "ERROR" for one result."""
    if "error" in result:
        return "ERROR"
    op, target = result.get("op"), result.get("target")
    value = result.get("ratio", result.get("value"))
    if op == "report" or target is None:
        return "reported"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "ERROR"
    ok = value <= target if op == "<=" else value >= target
    condition = result.get("condition")
    if condition is not None:
        ok = ok and condition["value"] >= condition["target"]
    return "ok" if ok else "MISSED"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def rows(results: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One table row per result (and per ``extra_rows`` entry)."""
    table = []
    for r in results:
        cand, ref = r.get("candidate") or {}, r.get("reference") or {}
        value = r.get("ratio", r.get("value"))
        unit = "x" if "ratio" in r else r.get("unit", "")
        target = "reported" if r.get("op") == "report" else f"{r.get('op')} {_fmt(r.get('target'))}"
        condition = r.get("condition")
        note = r.get("error", "")
        if condition is not None:
            note = f"{condition['what']} {condition['value']:.4f} (>= {condition['target']})"
        table.append(
            {
                "benchmark": r["name"],
                "what": r.get("title", ""),
                "candidate s": _fmt(cand.get("median_s")),
                "reference s": _fmt(ref.get("median_s")),
                "cpu s cand/ref": f"{_fmt(cand.get('median_cpu_s'), 1)}/{_fmt(ref.get('median_cpu_s'), 1)}",
                "result": f"{_fmt(value, 3)} {unit}".strip(),
                "target": target,
                "verdict": verdict(r),
                "note": note,
            }
        )
        for extra in r.get("extra_rows", []):
            table.append(
                {
                    "benchmark": extra["name"],
                    "what": f"peak RSS of {r['name']}",
                    "candidate s": "-",
                    "reference s": "-",
                    "cpu s cand/ref": "-",
                    "result": f"{extra['value']:.2f} {extra['unit']}",
                    "target": "<= 4.00",
                    "verdict": "ok" if extra["value"] <= 4.0 else "MISSED",
                    "note": "",
                }
            )
    return table


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The Markdown report: machine line, then the table."""
    table = rows(results)
    lines = [
        f"# make bench - {meta['date']}",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}, MONAI {meta['monai']}, "
        f"threads {meta['threads']}; "
        f"size {meta['size']}; library changes present: {meta['library']}.",
        "",
    ]
    if table:
        header = list(table[0])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row[h] for h in header) + " |" for row in table]
    return "\n".join(lines) + "\n"


def write_results(results: list[dict[str, Any]], meta: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write ``bench.json`` (results and meta) and ``bench.md`` into ``folder``; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "bench.json", folder / "bench.md"
    clean = [{k: v for k, v in r.items() if k != "result"} for r in results]
    json_path.write_text(json.dumps({"meta": meta, "results": clean}, indent=2, default=str) + "\n")
    md_path.write_text(markdown(results, meta))
    return json_path, md_path


def machine_meta(size: str) -> dict[str, Any]:
    """Date, CPU, versions, threads and which library changes the run measured."""
    import monai
    import torch
    from common import library_features

    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "threads": torch.get_num_threads(),
        "size": size,
        "library": ", ".join(k for k, v in library_features().items() if v) or "none",
    }


def run_child(name: str, size: str, max_rss_gib: float, timeout: float) -> dict[str, Any]:
    """Run one benchmark in a child process under an RSS watchdog; its result dict (or an error)."""
    import psutil

    command = [sys.executable, __file__, "--child", name, "--size", size]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None, text=True)
    watched = psutil.Process(process.pid)
    killed = ""
    while process.poll() is None:
        try:
            rss = watched.memory_info().rss / 2**30
        except psutil.NoSuchProcess:
            break
        if rss > max_rss_gib:
            killed = f"killed: RSS {rss:.1f} GiB > --max-rss-gib {max_rss_gib}"
        elif time.perf_counter() - start > timeout:
            killed = f"killed: ran over {timeout:.0f} s"
        if killed:
            process.kill()
            break
        time.sleep(0.5)
    output = process.communicate()[0]
    for line in reversed(output.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    from benchmarks import BENCHMARKS

    title, op, target, _ = BENCHMARKS[name]
    return {
        "name": name,
        "title": title,
        "op": op,
        "target": target,
        "error": killed or f"exit status {process.returncode}",
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks import BENCHMARKS, SIZES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run these benchmarks only")
    parser.add_argument("--skip", nargs="+", choices=sorted(BENCHMARKS), default=[], help="leave these out")
    parser.add_argument("--size", choices=sorted(SIZES), default="quick", help="sizes (default quick)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for bench.json and bench.md")
    parser.add_argument("--max-rss-gib", type=float, default=14.0, help="kill a benchmark above this RSS")
    parser.add_argument("--timeout", type=float, default=900.0, help="kill a benchmark after this many s")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("TextGuidedSegLib").setLevel(logging.WARNING)
    if args.child:
        from benchmarks import run

        result = run(args.child, args.size)
        print(MARKER + json.dumps(result, default=str), flush=True)
        return 0

    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    meta = machine_meta(args.size)
    results = []
    started = time.perf_counter()
    for name in names:
        print(f"== {name} ({BENCHMARKS[name][0]})", flush=True)
        result = run_child(name, args.size, args.max_rss_gib, args.timeout)
        results.append(result)
        row = rows([result])[0]
        print(
            f"   candidate {row['candidate s']} s, reference {row['reference s']} s -> {row['result']} "
            f"(target {row['target']}): {row['verdict']} {row['note']}",
            flush=True,
        )
        write_results(results, meta, args.output)  # keep what finished if a later one is interrupted
    meta["total_s"] = round(time.perf_counter() - started, 1)
    json_path, md_path = write_results(results, meta, args.output)
    print("\n" + md_path.read_text())
    print(f"written: {json_path}, {md_path} ({meta['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
