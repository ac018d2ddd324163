"""The contracts the code relies on, declared: ``BundleModel``, class-declared capabilities and the registry
derived from them, one unknown-key check, ``config.json`` migration, and the Slicer shared Qt module."""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from TextGuidedSegLib.bundle import (
    BUNDLE_FORMAT_VERSION,
    EXTERNAL_ARCHITECTURES,
    BundleConfig,
    BundleError,
    PreprocessConfig,
    load_bundle,
    save_bundle,
)
from TextGuidedSegLib.configs import dataclass_from_dict, to_jsonable
from TextGuidedSegLib.files import sha256_file
from TextGuidedSegLib.models import (
    MODEL_CLASSES,
    OUTPUT_KINDS,
    BundleModel,
    ModelConfig,
    build_model,
    factory,
)
from TextGuidedSegLib.models.monai_network import (
    MonaiNetworkConfig,
    MonaiNetworkModel,
    model_config_from_dict,
)
from TextGuidedSegLib.training.config import ConfigError, TrainConfig

#: The capability tables as they were spelt by hand before the classes declared them (the reference).
EXPECTED = {
    "ARCHITECTURES": ("film_v1", "film_v2", "universal", "swinunetr", "unetr"),
    "TEXT_ARCHITECTURES": ("film_v1", "film_v2", "universal"),
    "SWIN_ARCHITECTURES": ("film_v1", "film_v2", "universal", "swinunetr"),
    "GLOBAL_MODE_ARCHITECTURES": ("film_v1", "film_v2"),
}


def _tiny_config(architecture: str, mode: str = "query") -> ModelConfig:
    extra = (
        {"img_size": (32, 32, 32), "feature_size": 16} if architecture == "unetr" else {"feature_size": 12}
    )
    return ModelConfig(architecture=architecture, mode=mode, num_classes=3, text_dim=8, **extra)


def _check_protocol(model: object, architecture: str, uses_text: bool, output: str, volume: bool) -> None:
    assert isinstance(model, BundleModel)
    assert type(model).architecture == architecture
    assert model.uses_text is uses_text and model.output == output and model.predicts_volume is volume
    assert model.output in OUTPUT_KINDS


# -- BundleModel and the registry --------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", EXPECTED["ARCHITECTURES"])
def test_every_registered_architecture_builds_a_bundle_model(architecture: str) -> None:
    query = build_model(_tiny_config(architecture))
    text = architecture in EXPECTED["TEXT_ARCHITECTURES"]
    _check_protocol(query, architecture, text, "query" if text else "channels", False)
    assert query.config.uses_text is text and query.config.model_class is MODEL_CLASSES[architecture]
    if architecture in EXPECTED["GLOBAL_MODE_ARCHITECTURES"]:
        _check_protocol(
            build_model(_tiny_config(architecture, "global")), architecture, True, "channels", False
        )


def test_registry_and_capability_tuples_are_derived_from_the_classes() -> None:
    assert {name: getattr(factory, name) for name in EXPECTED} == EXPECTED
    assert all(cls.architecture == name for name, cls in MODEL_CLASSES.items())
    assert tuple(MODEL_CLASSES) == EXPECTED["ARCHITECTURES"]


def test_a_model_class_refuses_another_architectures_config() -> None:
    with pytest.raises(ValueError, match=r"UniversalModel builds architecture 'universal', got .*'film_v1'"):
        MODEL_CLASSES["universal"](_tiny_config("film_v1"))


def test_the_monai_network_wrapper_is_a_bundle_model() -> None:
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2]}
    softmax = MonaiNetworkModel(MonaiNetworkConfig(network="UNet", kwargs=kwargs))
    _check_protocol(softmax, "monai", False, "classes", False)
    sigmoid = MonaiNetworkModel(MonaiNetworkConfig(network="UNet", kwargs=kwargs, activation="sigmoid"))
    _check_protocol(sigmoid, "monai", False, "channels", False)
    assert softmax(torch.rand(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_the_clipseg_volume_model_is_a_bundle_model(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from TextGuidedSegLib.clipseg.model import CLIPSegNet
    from TextGuidedSegLib.clipseg.testing import make_tiny_clipseg
    from TextGuidedSegLib.clipseg.volume import CLIPSegModelConfig, CLIPSegVolumeModel

    net = CLIPSegNet.from_pretrained(str(make_tiny_clipseg(tmp_path / "tiny")))
    config = CLIPSegModelConfig(strategy="none", image_size=64, text_dim=net.projection_dim, reduce_dim=16)
    _check_protocol(CLIPSegVolumeModel(net, config), "clipseg", True, "query", True)


@pytest.mark.parametrize("architecture", sorted(EXTERNAL_ARCHITECTURES))
def test_every_external_architecture_module_serves_its_name(architecture: str) -> None:
    import importlib

    module = importlib.import_module(EXTERNAL_ARCHITECTURES[architecture])
    assert callable(module.model_config_from_dict) and callable(module.load_bundle_model)
    served = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, torch.nn.Module)
        and value.__module__ == module.__name__
    ]
    assert [cls.architecture for cls in served if hasattr(cls, "save_bundle_weights")] == [architecture]


def test_save_bundle_refuses_a_model_that_is_not_a_bundle_model(tmp_path: Path, make_bundle) -> None:
    bundle = load_bundle(make_bundle())
    with pytest.raises(TypeError, match="needs a models.BundleModel, got Linear"):
        save_bundle(tmp_path / "b", torch.nn.Linear(2, 2), bundle.config, bundle.cache)  # type: ignore[arg-type]


# -- one unknown-key check, to_dict from the fields --------------------------------------------------------


def test_the_unknown_key_checks_are_worded_alike(make_bundle) -> None:
    valid = "valid keys are: "
    with pytest.raises(ValueError, match=f"unknown ModelConfig key 'featuresize'; {valid}architecture, mode"):
        ModelConfig.from_dict({"featuresize": 48})
    with pytest.raises(
        BundleError, match=f"config.json: unknown model keys 'netwrk', 'x'; {valid}architecture"
    ):
        model_config_from_dict({"netwrk": "UNet", "x": 1})
    with pytest.raises(ConfigError, match=f"c.yaml: unknown config key 'optim.lrr'; {valid}"):
        TrainConfig.from_dict({"optim": {"lrr": 1.0}}, source="c.yaml")
    path = make_bundle()
    data = json.loads((path / "config.json").read_text())
    data["preprocessing"]["spacng"] = 2.0
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=f"config.json: unknown preprocessing key 'spacng'; {valid}spacing"):
        load_bundle(path)


def test_dataclass_from_dict_refuses_a_non_mapping_naming_the_section() -> None:
    with pytest.raises(BundleError, match="config.json: inference must be a mapping of keys, got list"):
        dataclass_from_dict(PreprocessConfig, [], "config.json", what="inference", error=BundleError)


def test_to_dict_follows_the_fields(make_bundle) -> None:
    config = load_bundle(make_bundle()).config
    written = config.to_dict()
    fields = [f.name for f in dataclasses.fields(BundleConfig)]
    assert sorted(written) == sorted([*fields, "library_version"])
    assert written["preprocessing"] == {
        "spacing": [3.0, 3.0, 3.0],
        "hu_window": [-175.0, 250.0],
        "crop_foreground": True,
        "intensity": None,
        "interpolation": "bilinear",
    }
    assert BundleConfig.from_dict(json.loads(json.dumps(written))) == config

    @dataclasses.dataclass
    class Wider(PreprocessConfig):
        extra: tuple[int, int] = (1, 2)

    assert to_jsonable(Wider())["extra"] == [1, 2]  # a new field needs no second line in to_dict


# -- config.json migration ---------------------------------------------------------------------------------


def _edit_config(path: Path, **changes) -> None:
    data = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    (path / "config.json").write_text(json.dumps(data))


def test_a_current_bundle_loads_without_a_warning(make_bundle, caplog: pytest.LogCaptureFixture) -> None:
    path = make_bundle()
    assert json.loads((path / "config.json").read_text())["format_version"] == BUNDLE_FORMAT_VERSION
    with caplog.at_level(logging.WARNING):
        bundle = load_bundle(path)
    assert bundle.config.format_version == BUNDLE_FORMAT_VERSION
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_an_older_format_is_migrated_with_a_warning(make_bundle, caplog: pytest.LogCaptureFixture) -> None:
    path = make_bundle()
    reference = load_bundle(path)
    _edit_config(path, format_version=None)  # format 0: no format_version key
    with caplog.at_level(logging.WARNING, logger="TextGuidedSegLib.bundle"):
        bundle = load_bundle(path)
    assert bundle.config == reference.config and bundle.config.format_version == BUNDLE_FORMAT_VERSION
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    current = f"the current {BUNDLE_FORMAT_VERSION}"
    assert f"{path}/config.json: bundle format 0 is older than {current}" in record.getMessage()


def test_a_newer_format_is_refused_naming_the_file_and_version(make_bundle) -> None:
    path = make_bundle()
    _edit_config(path, format_version=7)
    with pytest.raises(
        BundleError, match=rf"{path}/config.json: format_version 7 is not supported .* update"
    ):
        load_bundle(path)


def test_stored_derived_buffers_are_ignored_with_a_warning(make_bundle, caplog) -> None:
    from safetensors.torch import load_file, save_file

    path = make_bundle(architecture="film_v1")
    reference = load_bundle(path)
    weights = path / "model.safetensors"
    full = {k: v.contiguous() for k, v in reference.model.state_dict().items()}
    stored = load_file(str(weights))
    assert len(full) > len(stored)  # the relative-position index tables
    save_file(full, str(weights))
    data = json.loads((path / "config.json").read_text())
    data["checksums"]["model.safetensors"] = sha256_file(weights)
    (path / "config.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="TextGuidedSegLib.bundle"):
        bundle = load_bundle(path)
    assert any("rebuilds itself (relative_position_index)" in r.getMessage() for r in caplog.records)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[key], value), key


# -- Slicer: one place each for the installer and the prompt completer -------------------------------------


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_the_effect_no_longer_imports_the_panels_file() -> None:
    effect = REPO_ROOT / "TextGuidedSegEffect" / "TextGuidedSegEffectLib" / "SegmentEditorEffect.py"
    assert "TextGuidedSeg" not in _imports(effect) and "TextGuidedSegUI" in _imports(effect)
    panel = (REPO_ROOT / "TextGuidedSeg" / "TextGuidedSeg.py").read_text()
    assert "class PromptCompleter" not in panel and "_dependenciesReady" not in panel
    shared = REPO_ROOT / "TextGuidedSeg" / "TextGuidedSegUI"
    defined = {
        node.name
        for path in shared.glob("*.py")
        for node in ast.parse(path.read_text()).body
        if isinstance(node, (ast.ClassDef, ast.FunctionDef))
    }
    assert {"PromptCompleter", "ensureDependencies"} <= defined
