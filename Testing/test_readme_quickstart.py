"""The README's Python quick start runs as written: its ``python`` block(s), in a fresh interpreter, in a
folder holding ``ct.nii.gz`` (TotalSegmentator's 30-slice example CT) and an empty bundle cache, so the
built-in demo bundle is all there is. The files it writes are then checked against the CT and each other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO_ROOT, shared_path

README = REPO_ROOT / "README.md"
HEADING = "## Python quick start"


def quick_start_code() -> str:
    """The ``python`` blocks of the README's quick-start section, joined."""
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    section = re.split(r"^## ", text.split(HEADING, 1)[1], flags=re.M)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.M | re.S)
    assert blocks, f"README.md's {HEADING!r} section has no python block"
    return "\n".join(blocks)


def test_quick_start_is_the_documented_api():
    code = quick_start_code()
    compile(code, "README quick start", "exec")
    for name in ("load_bundle", "load_volume", "Segmenter", ".save("):
        assert name in code, f"the quick start no longer shows {name}"


@pytest.mark.slow
def test_readme_quick_start_runs_as_written(tmp_path):
    ct = shared_path("totalseg", "example_ct_sm.nii.gz")
    work = tmp_path / "quickstart"
    work.mkdir()
    shutil.copy(ct, work / "ct.nii.gz")
    env = {
        **os.environ,
        "TEXTGUIDEDSEG_HOME": str(tmp_path / "home"),  # an empty cache: no bundle but the built-in demo
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-c", quick_start_code()]
    run = subprocess.run(
        command, cwd=work, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600
    )
    assert run.returncode == 0, f"the README's quick start failed:\n{run.stderr[-4000:]}"
    # the demo bundle on a real CT: a Python user is told too (logging's last-resort handler, no setup needed)
    assert "phantoms only" in run.stderr, run.stderr[-2000:]

    image = nib.load(work / "ct.nii.gz")
    labels = nib.load(work / "ct_seg.nii.gz")
    assert labels.shape == image.shape
    np.testing.assert_allclose(labels.affine, image.affine, atol=1e-5)
    sidecar = json.loads((work / "ct_seg.json").read_text(encoding="utf-8"))
    segments = sidecar["segments"]
    assert [s["name"] for s in segments] == ["Liver", "Right Kidney", "Left Kidney"]
    values = np.asarray(labels.dataobj)
    assert set(np.unique(values)) <= {0, 1, 2, 3}
    for segment in segments:  # the sidecar describes the label map that was written beside it
        assert int((values == segment["label_id"]).sum()) == segment["voxels"], segment["name"]
    printed = [line.split() for line in run.stdout.splitlines() if line.strip()]
    assert [(int(p[0]), " ".join(p[1:-2])) for p in printed] == [(s["label_id"], s["name"]) for s in segments]
    for line, segment in zip(printed, segments, strict=True):
        assert float(line[-2]) == pytest.approx(segment["volume_ml"], abs=0.051)
