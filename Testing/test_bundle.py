"""Bundles: save -> load gives identical outputs; tampered, mismatched or malformed bundles fail clearly."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from TextGuidedSegLib.bundle import BundleError, load_bundle, save_bundle


def _outputs(bundle, seed: int = 1) -> torch.Tensor:
    """Logits of the bundle's model on a fixed random 32^3 image for its first two cached prompts."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 1, 64, 32, 32, generator=generator)
    prompts = bundle.config.taxonomy.prompts[:2]
    text = bundle.cache.get(prompts)[None]
    with torch.no_grad():
        if bundle.model.output == "query":
            return bundle.model(image, text)
        return bundle.model(image, None, torch.tensor([[0, 1]]))


@pytest.mark.parametrize(
    "model_args",
    [
        {"architecture": "film_v1"},
        {"architecture": "film_v2"},
        {"architecture": "universal"},
        {"architecture": "swinunetr"},
        {"architecture": "film_v1", "mode": "global"},
    ],
    ids=["film_v1", "film_v2", "universal", "swinunetr", "film_v1-global"],
)
def test_save_load_identical_outputs(make_bundle, model_args) -> None:
    path = make_bundle(**model_args)
    first = load_bundle(path)
    second = load_bundle(path)
    assert first.config.to_dict() == second.config.to_dict()
    if first.model.output == "channels" and first.model.uses_text:
        text = first.cache.get([first.config.global_prompt])[None]
        image = torch.rand(1, 1, 64, 32, 32, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            a = first.model(image, text, torch.tensor([[0, 1]]))
            b = second.model(image, text, torch.tensor([[0, 1]]))
    else:
        a, b = _outputs(first), _outputs(second)
    assert torch.equal(a, b)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key


def test_derived_buffers_are_not_stored_and_come_back_on_load(tmp_path: Path, make_bundle) -> None:
    """Swin relative-position index tables are rebuilt by the model, so bundles leave them out."""
    from safetensors import safe_open

    bundle = load_bundle(make_bundle(architecture="film_v1"))
    original = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    path = tmp_path / "resaved"
    save_bundle(path, bundle.model, bundle.config, bundle.cache)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    derived = {k for k in original if k.endswith("relative_position_index")}
    assert derived, "the Swin backbone has relative-position index buffers"
    assert stored == set(original) - derived
    reloaded = load_bundle(path)
    for key, value in original.items():
        assert torch.equal(value, reloaded.model.state_dict()[key]), key
    assert torch.equal(_outputs(bundle), _outputs(reloaded))


def test_zip_bundle_matches_folder_bundle(make_bundle) -> None:
    folder = load_bundle(make_bundle(seed=5))
    archive_path = make_bundle(seed=5, zip_file=True)
    assert zipfile.is_zipfile(archive_path)
    archived = load_bundle(archive_path)
    assert torch.equal(_outputs(folder), _outputs(archived))
    assert archived.cache.prompts == folder.cache.prompts


def test_tampered_weights_fail_with_file_named(make_bundle) -> None:
    path = make_bundle()
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch for model.safetensors"):
        load_bundle(path)


def test_tampered_cache_fails(make_bundle) -> None:
    path = make_bundle()
    cache_file = path / "text_cache" / "embeddings.safetensors"
    data = bytearray(cache_file.read_bytes())
    data[-3] ^= 0x01
    cache_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="text_cache/embeddings.safetensors"):
        load_bundle(path)


def test_config_that_does_not_match_weights_names_the_key(make_bundle) -> None:
    path = make_bundle()
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["feature_size"] = 24
    config_path.write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"weight '.*' has shape .* expects"):
        load_bundle(path)


def test_config_with_other_architecture_names_missing_keys(make_bundle) -> None:
    path = make_bundle()
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["architecture"] = "film_v2"
    config_path.write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"does not match the architecture .*(missing|unexpected) \d+ key"):
        load_bundle(path)


def test_unknown_config_key_and_bad_json(make_bundle) -> None:
    path = make_bundle()
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config["learning_rate"] = 1e-4
    config_path.write_text(json.dumps(config))
    with pytest.raises(BundleError, match="unknown key.*learning_rate"):
        load_bundle(path)
    config_path.write_text("{not json")
    with pytest.raises(BundleError, match="config.json: not valid JSON"):
        load_bundle(path)


def test_missing_bundle_and_missing_file(tmp_path: Path, make_bundle) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
    path = make_bundle()
    (path / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="model.safetensors listed in config.json is missing"):
        load_bundle(path)


def test_zip_with_unsafe_member_is_refused(tmp_path: Path) -> None:
    archive_path = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("../outside.txt", "x")
    with pytest.raises(BundleError, match="unsafe member path"):
        load_bundle(archive_path)
    assert not (tmp_path.parent / "outside.txt").exists()


def test_save_does_not_clobber_existing_bundle(make_bundle) -> None:
    path = make_bundle(seed=1)
    bundle = load_bundle(path)
    before = (path / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        save_bundle(path, bundle.model, bundle.config, bundle.cache)
    assert (path / "model.safetensors").read_bytes() == before
    save_bundle(path, bundle.model, bundle.config, bundle.cache, overwrite=True)
    assert torch.equal(_outputs(load_bundle(path)), _outputs(bundle))


def test_channel_model_needs_one_channel_per_structure(make_bundle) -> None:
    from TextGuidedSegLib.bundle import BundleConfig

    bundle = load_bundle(make_bundle(architecture="swinunetr"))
    data = bundle.config.to_dict()
    data["model"]["num_classes"] = 7
    with pytest.raises(BundleError, match="num_classes is 7 but the taxonomy has 4"):
        BundleConfig.from_dict(data)
