"""The ``textguidedseg`` command on real CT: outputs on the input grid, sidecars, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_path

from TextGuidedSegLib.cli import main
from TextGuidedSegLib.io import load_volume
from TextGuidedSegLib.registry import HOME_ENV


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch) -> None:
    """Bundle names resolve against an empty per-test cache, never the user's."""
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))


def test_segment_writes_label_map_on_the_input_grid(tmp_path: Path, make_bundle, caplog) -> None:
    ct = shared_path("totalseg", "example_ct_sm.nii.gz")
    bundle = make_bundle()
    out = tmp_path / "out" / "seg.nii.gz"
    code = main(
        [
            "segment",
            str(ct),
            "--prompt",
            "liver, spleen and both kidneys",
            "--bundle",
            str(bundle),
            "-o",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--probabilities",
        ]
    )
    assert code == 0
    reference, written = nib.load(ct), nib.load(out)
    assert written.shape == reference.shape
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-6)
    assert int(written.header["qform_code"]) == int(reference.header["qform_code"])
    assert int(written.header["sform_code"]) == int(reference.header["sform_code"])
    labels = np.asarray(written.dataobj)
    assert labels.dtype == np.uint8 and labels.max() <= 4

    sidecar = json.loads((tmp_path / "out" / "seg.json").read_text())
    names = [s["name"] for s in sidecar["segments"]]
    assert names == ["Liver", "Spleen", "Right Kidney", "Left Kidney"]
    liver = sidecar["segments"][0]
    assert liver["label_id"] == 1 and liver["class_name"] == "liver"
    assert "SCT^10200004^Liver" in liver["terminology"]
    assert liver["voxels"] == int((labels == 1).sum())
    for segment in sidecar["segments"]:
        probability = nib.load(tmp_path / "out" / segment["probability_map"])
        assert probability.shape == reference.shape
        values = np.asarray(probability.dataobj)
        assert 0.0 <= values.min() and values.max() <= 1.0


def test_segment_with_flip_tta_writes_uncertainty_maps(tmp_path: Path, make_bundle) -> None:
    ct = shared_path("totalseg", "example_ct_sm.nii.gz")
    out = tmp_path / "seg.nii.gz"
    bundle = str(make_bundle(spacing=6.0))
    args = ["segment", str(ct), "-p", "liver, spleen", "-b", bundle, "-o", str(out), "--no-progress"]
    assert main([*args, "--flip-tta"]) == 0
    sidecar = json.loads((tmp_path / "seg.json").read_text())
    reference = nib.load(ct)
    spreads = []
    for segment in sidecar["segments"]:
        assert "probability_map" not in segment
        image = nib.load(tmp_path / segment["uncertainty_map"])
        assert image.shape == reference.shape
        spreads.append(np.asarray(image.dataobj))
    # a random-weight network is not flip-equivariant: its flipped passes disagree somewhere
    assert all(0.0 <= s.min() and s.max() <= 0.5 and s.max() > 0.0 for s in spreads)


def test_segment_lps_three_slice_ct_comes_back_in_its_own_orientation(tmp_path: Path, make_bundle) -> None:
    ct = shared_path("dcmqi_ct3slice", "ct.nii.gz")
    reference = load_volume(ct)
    out = tmp_path / "seg.nii.gz"
    assert (
        main(["segment", str(ct), "-p", "liver", "-b", str(make_bundle()), "-o", str(out), "--no-progress"])
        == 0
    )
    written = load_volume(out)
    assert min(reference.shape) == 3  # thinner than one ROI: padded for the window, cropped back
    assert written.shape == reference.shape
    assert written.orientation == reference.orientation
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-5)


def test_segment_dicom_series_to_nrrd(tmp_path: Path, make_bundle) -> None:
    series = shared_path("dcmqi_ct3slice", "ct_dicom")
    reference = load_volume(series)
    out = tmp_path / "seg.nrrd"
    assert (
        main(
            ["segment", str(series), "-p", "liver", "-b", str(make_bundle()), "-o", str(out), "--no-progress"]
        )
        == 0
    )
    written = load_volume(out)
    assert written.shape == reference.shape
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-4)


def test_info_describes_the_bundle(make_bundle, capsys) -> None:
    bundle = make_bundle(architecture="film_v2")
    assert main(["info", str(bundle)]) == 0
    text = capsys.readouterr().out
    assert "film_v2" in text and "checksums verified" in text and "Right Kidney" in text
    assert main(["info", str(bundle), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["structures"] == ["Liver", "Spleen", "Right Kidney", "Left Kidney"]
    assert summary["cached_prompts"] == 5


def test_info_load_builds_the_model_and_counts_its_parameters(make_bundle, capsys) -> None:
    from TextGuidedSegLib.bundle import load_bundle

    bundle = make_bundle(architecture="film_v1")
    assert main(["info", str(bundle), "--load"]) == 0
    assert "(checksums verified, model loaded)" in capsys.readouterr().out
    assert main(["info", str(bundle), "--load", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["loaded"] is True
    assert summary["parameters"] == sum(p.numel() for p in load_bundle(bundle).model.parameters())


def test_encode_prompts_builds_and_extends_a_cache(tmp_path: Path) -> None:
    from TextGuidedSegLib.text import CLIPTextEncoder, EmbeddingCache, TextEncoderSpec
    from TextGuidedSegLib.text.testing import make_tiny_clip_text_model

    clip = make_tiny_clip_text_model(tmp_path / "clip")
    cache_dir = tmp_path / "cache"
    assert main(["encode-prompts", "--encoder", str(clip), "-o", str(cache_dir), "liver", "spleen"]) == 0
    assert main(["encode-prompts", "--encoder", str(clip), "-o", str(cache_dir), "spleen", "aorta"]) == 0
    cache = EmbeddingCache.load(cache_dir)
    assert cache.prompts == ["liver", "spleen", "aorta"]
    encoder = CLIPTextEncoder(TextEncoderSpec(str(clip)))
    np.testing.assert_allclose(cache.get(["aorta"]).numpy(), encoder.encode(["aorta"]).numpy(), atol=1e-6)
    # Default prompts: the whole taxonomy.
    assert main(["encode-prompts", "--encoder", str(clip), "-o", str(tmp_path / "all")]) == 0
    assert len(EmbeddingCache.load(tmp_path / "all")) == 32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "{missing}", "-p", "liver", "-b", "{bundle}", "-o", "{out}"], "{missing}"),
        (["segment", "{ct}", "-p", "liver", "-b", "{tmp}/no_bundle", "-o", "{out}"], "no_bundle"),
        (["segment", "{ct}", "-p", "liver", "-b", "{bundle}", "-o", "{tmp}/seg.png"], "-o/--output"),
        (["segment", "{ct}", "-p", "   ", "-b", "{bundle}", "-o", "{out}"], "empty prompt"),
        (["segment", "{ct}", "-p", "pancreatic duct", "-b", "{bundle}", "-o", "{out}"], "pancreatic duct"),
        (["segment", "{ct}", "-p", "liver", "-b", "{bundle}", "-o", "{out}", "--overlap", "1.5"], "overlap"),
        (["encode-prompts", "--encoder", "{tmp}/no_clip", "-o", "{tmp}/cache"], "no_clip"),
    ],
    ids=[
        "missing-input",
        "missing-bundle",
        "bad-output",
        "empty-prompt",
        "unknown-words",
        "bad-overlap",
        "missing-encoder",
    ],
)
def test_errors_name_the_file_or_argument(tmp_path, make_bundle, capsys, monkeypatch, args, message) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    values = {
        "missing": str(tmp_path / "missing_ct.nii.gz"),
        "bundle": str(make_bundle()),
        "ct": str(shared_path("totalseg", "example_ct_sm.nii.gz")),
        "out": str(tmp_path / "seg.nii.gz"),
        "tmp": str(tmp_path),
    }
    code = main([a.format(**values) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert message.format(**values) in err
    assert "Traceback" not in err
    assert not (tmp_path / "seg.nii.gz").exists()


def test_existing_output_is_kept_without_overwrite(tmp_path: Path, make_bundle, capsys) -> None:
    ct = shared_path("totalseg", "example_ct_sm.nii.gz")
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"precious")
    assert main(["segment", str(ct), "-p", "liver", "-b", str(make_bundle()), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
