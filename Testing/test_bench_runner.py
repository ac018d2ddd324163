"""The ``make bench`` runner's verdicts, table and files, on fake results (no benchmark runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))

from run_all import rows, verdict, write_results  # noqa: E402

META = {
    "date": "2026-01-01 00:00 UTC",
    "machine": "test CPU, 2 cores",
    "torch": "x",
    "monai": "y",
    "threads": 2,
    "size": "quick",
    "library": "precision",
}


def _fake() -> list[dict]:
    timed = {"candidate": {"median_s": 1.0, "median_cpu_s": 1.5}, "reference": {"median_s": 4.0}}
    return [
        {"name": "five_prompts", "title": "5 vs 5", "op": "<=", "target": 0.40, "ratio": 0.25, **timed},
        {"name": "reprompt_film", "title": "re-prompt", "op": "<=", "target": 0.30, "ratio": 0.5, **timed},
        {
            "name": "fastest_cpu_path",
            "title": "fast",
            "op": "<=",
            "target": 0.5,
            "ratio": 0.4,
            **timed,
            "condition": {"what": "min Dice per structure", "value": 0.95, "target": 0.99},
        },
        {"name": "rss_fs48_1", "title": "rss", "op": "report", "target": None, "value": 3.2, "unit": "GiB"},
        {
            "name": "postprocess_25",
            "title": "share",
            "op": "<=",
            "target": 0.10,
            "ratio": 0.05,
            **timed,
            "extra_rows": [{"name": "postprocess_25_peak_rss", "value": 5.0, "unit": "GiB"}],
        },
        {"name": "clipseg_cache", "title": "cache", "op": ">=", "target": 5.0, "error": "exit status 1"},
    ]


def test_verdicts_follow_target_direction_and_conditions() -> None:
    assert [verdict(r) for r in _fake()] == ["ok", "MISSED", "MISSED", "reported", "ok", "ERROR"]
    assert verdict({"op": ">=", "target": 5.0, "value": 7.0}) == "ok"


def test_table_and_files(tmp_path: Path) -> None:
    table = rows(_fake())
    names = [r["benchmark"] for r in table]
    assert names[-3:] == ["postprocess_25", "postprocess_25_peak_rss", "clipseg_cache"]
    assert table[0]["result"] == "0.250 x" and table[0]["target"] == "<= 0.40"
    assert table[0]["candidate s"] == "1.00" and table[0]["reference s"] == "4.00"
    assert table[5]["verdict"] == "MISSED"  # 5.0 GiB > 4 GiB
    json_path, md_path = write_results(_fake(), META, tmp_path / "results")
    saved = json.loads(json_path.read_text())
    assert saved["meta"]["machine"] == "test CPU, 2 cores" and len(saved["results"]) == 6
    text = md_path.read_text()
    assert "| five_prompts | 5 vs 5 | 1.00 | 4.00 | 1.5/- | 0.250 x | <= 0.40 | ok |  |" in text
    assert "min Dice per structure 0.9500 (>= 0.99)" in text
    assert text.count("\n|") == len(table) + 2  # header, rule, one line per row
