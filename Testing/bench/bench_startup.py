"""Start-up of the ``textguidedseg`` command (issue 16): ``--help``, a bad argument, a missing input and
``info`` must answer in under 1 s, measured against a bare ``python -c pass``.

Each command runs as a user runs it (the installed console script, a fresh process every time), alternated
with ``python -c pass`` after a warm-up; the result is the command's median wall time (target <= 1 s) and
the ratio to the bare interpreter is reported beside it. Registered in ``benchmarks.py`` as
``startup_help``, ``startup_bad_argument``, ``startup_missing_input`` and ``startup_info``::

    .venv/bin/python Testing/bench/run_all.py --only startup_help startup_bad_argument \\
        startup_missing_input startup_info
    .venv/bin/python Testing/bench/bench_startup.py --repeats 7       # all four, a table with the ratios
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import DEMO_BUNDLE, REPO, alternate  # noqa: I001  (Testing/bench on sys.path)

#: name -> (title, arguments after ``textguidedseg``, exit status, text the output must hold). ``{tmp}`` is an
#: empty temporary folder.
COMMANDS: dict[str, tuple[str, list[str], int, str]] = {
    "help": ("textguidedseg --help", ["--help"], 0, "usage: textguidedseg"),
    "bad_argument": (
        "segment -o seg.png (bad suffix)",
        ["segment", "{tmp}/ct.nii.gz", "-p", "liver", "-o", "{tmp}/seg.png"],
        2,
        "-o/--output",
    ),
    "missing_input": (
        "segment with a missing input",
        ["segment", "{tmp}/missing.nii.gz", "-p", "liver", "-o", "{tmp}/seg.nii.gz"],
        2,
        "missing.nii.gz: no such file",
    ),
    "info": ("info on the demo bundle", ["info", str(DEMO_BUNDLE)], 0, "checksums verified"),
}
#: The answer every command must beat, in seconds.
TARGET_S = 1.0


def command_line() -> list[str]:
    """The installed ``textguidedseg`` console script beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "textguidedseg"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "TextGuidedSegLib.cli"]


def _runner(words: list[str], status: int, expected: str, cwd: Path):
    """A call that runs ``words`` in a fresh process and checks its exit status and output."""

    def call() -> None:
        done = subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=120)
        if done.returncode != status or expected not in done.stdout + done.stderr:
            raise RuntimeError(
                f"{' '.join(words)}: exit {done.returncode} (expected {status}), output lacks {expected!r}: "
                f"{(done.stdout + done.stderr)[-500:]}"
            )

    return call


def startup(name: str, p: dict[str, Any]) -> dict[str, Any]:
    """Median wall time of one command (fresh process) vs ``python -c pass``, alternated."""
    title, argv, status, expected = COMMANDS[name]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        words = command_line() + [word.format(tmp=tmp) for word in argv]
        timing = alternate(
            {
                "command": _runner(words, status, expected.format(tmp=tmp), Path(tmp)),
                "python -c pass": _runner([sys.executable, "-c", "pass"], 0, "", Path(tmp)),
            },
            p["repeats"],
        )
    command, bare = timing["command"], timing["python -c pass"]
    return {
        "value": command["median_s"],
        "unit": "s",
        "candidate": {"median_s": command["median_s"], "what": title},
        "reference": {"median_s": bare["median_s"], "what": "python -c pass"},
        "details": {
            "command": " ".join(["textguidedseg", *argv]).replace("{tmp}", "<tmp>"),
            "ratio_to_python_pass": round(command["median_s"] / bare["median_s"], 2),
            "wall_s": command["wall"],
            "python_pass_wall_s": bare["wall"],
            "repo": str(REPO),
        },
    }


#: What ``benchmarks.py`` registers: name -> (title, op, target, function of the size's parameters).
BENCHMARKS = {
    f"startup_{name}": (f"{title}: wall time (target < 1 s)", "<=", TARGET_S, lambda p, n=name: startup(n, p))
    for name, (title, *_) in COMMANDS.items()
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (default: 5)")
    args = parser.parse_args(argv)
    print(f"{'command':<40} {'median s':>9} {'python -c pass s':>17} {'ratio':>6}  verdict")
    for name in COMMANDS:
        result = startup(name, {"repeats": args.repeats})
        verdict = "ok" if result["value"] <= TARGET_S else "MISSED"
        print(
            f"{result['details']['command'][:40]:<40} {result['value']:>9.3f} "
            f"{result['reference']['median_s']:>17.3f} {result['details']['ratio_to_python_pass']:>6.1f}  "
            f"{verdict}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
