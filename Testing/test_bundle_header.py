"""``describe_bundle``: a bundle described from its files alone (what ``textguidedseg info`` prints), checked
against the loaded bundle (``load_bundle`` + ``bundle_summary``) and the weights read in full."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from TextGuidedSegLib.bundle import WEIGHTS_FILE, bundle_summary, load_bundle
from TextGuidedSegLib.bundle_header import describe_bundle, safetensors_header
from TextGuidedSegLib.files import sha256_file
from TextGuidedSegLib.registry import RegistryError

SHARED_KEYS = (
    "name",
    "version",
    "description",
    "license",
    "intended_use",
    "architecture",
    "mode",
    "feature_size",
    "cached_prompts",
    "structures",
    "preprocessing",
    "inference",
)


@pytest.mark.parametrize("zip_file", [False, True], ids=["folder", "zip"])
def test_description_matches_the_loaded_bundle(make_bundle, zip_file: bool) -> None:
    path = make_bundle(architecture="film_v2", zip_file=zip_file)
    summary = describe_bundle(path)
    bundle = load_bundle(path)
    loaded = bundle_summary(bundle)
    assert {key: summary[key] for key in SHARED_KEYS} == {key: loaded[key] for key in SHARED_KEYS}
    assert summary["sha256"] == bundle.sha256 and summary["checksums_verified"]
    assert summary["weights"] >= loaded["parameters"]  # the stored state dict holds buffers too
    json.dumps(summary)  # JSON-safe, as `info --json` prints it


def test_weights_are_counted_from_the_header_as_the_full_read_counts_them(make_bundle) -> None:
    path = make_bundle(architecture="film_v1")
    state = load_file(str(path / WEIGHTS_FILE))
    header = safetensors_header(path / WEIGHTS_FILE)
    assert {key: tuple(value.shape) for key, value in state.items()} == {k: s for k, (_, s) in header.items()}
    assert {dtype for dtype, _ in header.values()} == {"F32"}
    summary = describe_bundle(path)
    assert summary["weights"] == sum(value.numel() for value in state.values())
    assert summary["tensors"] == len(state)
    assert summary["files"][WEIGHTS_FILE] == (path / WEIGHTS_FILE).stat().st_size


def test_a_modified_file_is_named(make_bundle) -> None:
    path = make_bundle(name="modified")
    index = path / "text_cache" / "embeddings.json"
    index.write_text(index.read_text(encoding="utf-8") + " ", encoding="utf-8")
    with pytest.raises(RegistryError, match="checksum mismatch for text_cache/embeddings.json"):
        describe_bundle(path)
    assert describe_bundle(path, verify=False)["checksums_verified"] is False


def test_a_weight_file_that_is_no_safetensors_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(RegistryError, match="model.safetensors: not a readable safetensors file"):
        safetensors_header(broken)


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no config.json"):
        describe_bundle(tmp_path)


def test_the_shipped_demo_bundle() -> None:
    from TextGuidedSegLib.demo import DEFAULT_DEMO_BUNDLE

    summary = describe_bundle(DEFAULT_DEMO_BUNDLE)
    assert summary["name"] == "demo_phantom_film_v1" and summary["intended_use"] == "phantom"
    assert summary["structures"] == ["Liver", "Spleen", "Right Kidney", "Left Kidney"]
    assert summary["sha256"] == sha256_file(DEFAULT_DEMO_BUNDLE / "config.json")
