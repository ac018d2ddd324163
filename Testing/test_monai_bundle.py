"""MONAI model-zoo bundles as our bundles: configs read as data, weights checked, and the Segmenter's label
map equal voxel for voxel to MONAI's own bundle pipeline (``monai.bundle.ConfigParser``, a trusted reference).

The reference runs the bundle's ``preprocessing``, ``inferer`` and ``postprocessing`` (without ``SaveImaged``)
by hand on CPU, with the network ``ConfigParser`` builds from the same ``inference.json`` and seeded random
weights (final layer scaled so that many classes appear). Both pipelines call networks with identical weights
(checked tensor by tensor); a shared memo returns the reference network's output for a window batch the
Segmenter already ran bit for bit, so the network runs once per window in all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path

from TextGuidedSegLib.bundle import BundleError, load_bundle
from TextGuidedSegLib.importers.monai_bundle import (
    SHIPPED_TRANSLATIONS,
    build_bundle_from_weights,
    import_monai_bundle,
    shipped_translation,
    translate_monai_bundle,
)
from TextGuidedSegLib.importers.monai_config import MonaiConfigError, MonaiConfigReader
from TextGuidedSegLib.inference import Segmenter
from TextGuidedSegLib.io import load_volume
from TextGuidedSegLib.taxonomy import StructureQuery

ZOO = ("monai_model_zoo",)
pytestmark = pytest.mark.filterwarnings("ignore:.*Orientationd.__init__")


class Memo(torch.nn.Module):
    """Wrap a network; outputs are memoised on disk (``folder``) by the exact bytes of the input batch."""

    def __init__(self, net: torch.nn.Module, folder: Path) -> None:
        super().__init__()
        self.net, self.folder, self.calls = net, folder, 0
        folder.mkdir(exist_ok=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        digest = hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest()
        path = self.folder / f"{'x'.join(map(str, x.shape))}_{digest}.pt"
        if not path.exists():
            self.calls += 1
            torch.save(self.net(x), path)
        return torch.load(path, weights_only=True)


def _reference_parser(bundle: Path, overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    for key, value in overrides.items():
        parser[key] = value
    for step in parser["preprocessing"]["transforms"]:
        # BTCV names ITKReader, which needs the optional `itk` package; MONAI's default NIfTI reader instead
        if step["_target_"] == "LoadImaged" and step.get("reader") == "ITKReader":
            step.pop("reader")
    network = parser["network_def"]
    network.pop("img_size", None)  # SwinUNETR's img_size was removed in MONAI 1.5
    parser["network_def"] = network
    return parser


def _vivid(net: torch.nn.Module, seed: int) -> None:
    """Seeded random weights whose argmax varies: the final layer scaled up, its bias randomised."""
    torch.manual_seed(seed)
    final = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)][-1]
    with torch.no_grad():
        final.weight.mul_(20.0)
        if final.bias is not None:
            final.bias.copy_(torch.randn_like(final.bias))


def _monai_pipeline(parser, net: torch.nn.Module, image: Path) -> np.ndarray:
    """MONAI's own bundle pipeline by hand: preprocessing, inferer, postprocessing (no SaveImaged)."""
    from monai.data import decollate_batch, list_data_collate
    from monai.transforms import Compose

    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    steps = parser["postprocessing"]["transforms"]
    post = Compose(
        [
            parser.get_parsed_content(f"postprocessing#transforms#{i}")
            for i, step in enumerate(steps)
            if step["_target_"] != "SaveImaged"
        ]
    )
    batch = list_data_collate([preprocessing({"image": str(image)})])
    with torch.no_grad():
        batch["pred"] = inferer(batch["image"], net)
    item = post(decollate_batch(batch)[0])
    return np.asarray(item["pred"][0]).round().astype(np.int64)


def _central_crop(source: Path, output: Path, size: int) -> Path:
    """The central ``size``³ voxels of a NIfTI, its affine kept right (nibabel's ``slicer``)."""
    import nibabel as nib

    image = nib.load(source)
    starts = [(n - size) // 2 for n in image.shape[:3]]
    nib.save(image.slicer[tuple(slice(s, s + size) for s in starts)], output)
    return output


def _compare_with_monai(
    tmp_path: Path, folder: str, overrides: dict, weights_name: str, seed: int, crop: int | None = None
) -> dict:
    """Import with random weights, segment five present structures, compare with MONAI's pipeline.

    ``crop`` takes the central ``crop``³ voxels of the 3 mm CT: a 105-channel window output is 371 MB, so the
    memo of the whole CT at 1.5 mm would be 13 GB on disk; 80³ at 3 mm is 8 windows of 96³ at 1.5 mm.
    """
    zoo = shared_path(*ZOO, folder)
    ct = shared_path("totalseg", "example_ct.nii.gz")
    if crop is not None:
        ct = _central_crop(ct, tmp_path / "ct.nii.gz", crop)
    source = tmp_path / folder
    shutil.copytree(zoo, source)
    parser = _reference_parser(source, overrides)
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def").eval()
    _vivid(net, seed)
    (source / "models").mkdir()
    torch.save(net.state_dict(), source / "models" / weights_name)
    output = import_monai_bundle(source, source / "models" / weights_name, tmp_path / "ours")
    bundle = load_bundle(output)
    ours_state, ref_state = bundle.model.net.state_dict(), net.state_dict()
    assert ours_state.keys() == ref_state.keys()
    assert all(torch.equal(ours_state[k], ref_state[k]) for k in ref_state)

    memo = tmp_path / "memo"
    try:
        return _segment_and_compare(bundle, net, parser, ct, memo, folder, overrides)
    finally:
        shutil.rmtree(memo, ignore_errors=True)  # window outputs: up to 3 GB


def _segment_and_compare(bundle, net, parser, ct: Path, memo: Path, folder: str, overrides: dict) -> dict:
    """Both pipelines on ``ct`` through one memo of window outputs; asserts the five labels agree."""
    bundle.model.net = Memo(bundle.model.net, memo)
    segmenter = Segmenter(bundle, device="cpu", progress=False)
    volume = load_volume(ct)
    started = time.perf_counter()
    prepared = segmenter.prepare(volume)
    # the full label map first (all structures), then five present ones from the cached map
    everything = segmenter.segment(volume, segmenter.queries(""), prepared=prepared)
    seconds_ours = time.perf_counter() - started
    counts = np.bincount(everything.labels.ravel(), minlength=len(bundle.vocabulary) + 1)[1:]
    chosen = [int(c) for c in np.argsort(-counts, kind="stable")[:5] if counts[c] > 0]
    taxonomy = bundle.config.taxonomy
    queries = [StructureQuery(s.name, s.prompt, s) for s in (taxonomy.structures[c] for c in chosen)]
    result = segmenter.segment(volume, queries, prepared=prepared)
    assert bundle.model.net.calls == len(list(memo.iterdir())), "the second prompt ran no window again"

    reference_net = Memo(net, memo)
    started = time.perf_counter()
    reference = _monai_pipeline(parser, reference_net, ct)
    seconds_reference = time.perf_counter() - started
    assert reference.shape == result.labels.shape == volume.shape
    lookup = np.zeros(bundle.model.config.num_classes, dtype=np.int64)
    for q, channel in enumerate(chosen):
        lookup[channel + 1] = q + 1
    expected = lookup[reference]
    present = set(np.unique(expected)) - {0}
    assert present == set(range(1, len(chosen) + 1)), (
        f"every compared label occurs in the reference: {present}"
    )
    if len(bundle.vocabulary) > len(chosen):
        assert len(np.unique(reference)) > len(chosen) + 1, "other classes occur too (mapped to 0)"
    agreement = float((result.labels == expected).mean())
    full_agreement = float((everything.labels.astype(np.int64) == reference).mean())
    print(
        f"{folder} {overrides}: agreement {agreement:.6%} on {[bundle.vocabulary[c] for c in chosen]}, "
        f"all classes {full_agreement:.6%}; ours {seconds_ours:.1f} s, MONAI {seconds_reference:.1f} s, "
        f"{reference_net.calls} reference window batches not run by ours"
    )
    assert agreement == 1.0
    return {"agreement": agreement, "full": full_agreement}


def test_wholebody_lowres_equals_monai_pipeline(tmp_path) -> None:
    """wholeBody 3 mm (SegResNet, 105 channels), weights named model_lowres.pt: no override needed."""
    _compare_with_monai(
        tmp_path,
        "wholeBody_ct_segmentation",
        {"displayable_configs#highres": False},
        "model_lowres.pt",
        seed=0,
    )


@pytest.mark.slow
def test_spleen_equals_monai_pipeline(tmp_path) -> None:
    """spleen_ct_segmentation (UNet, 2 channels): probabilities inverted bilinearly, then argmax."""
    _compare_with_monai(tmp_path, "spleen_ct_segmentation", {}, "model.pt", seed=1)


@pytest.mark.slow
def test_wholebody_highres_equals_monai_pipeline(tmp_path) -> None:
    _compare_with_monai(tmp_path, "wholeBody_ct_segmentation", {}, "model.pt", seed=2, crop=80)


@pytest.mark.slow
def test_swin_unetr_btcv_equals_monai_pipeline(tmp_path) -> None:
    """BTCV (SwinUNETR fs 48, 14 channels; img_size dropped): probabilities inverted, then argmax."""
    _compare_with_monai(tmp_path, "swin_unetr_btcv_segmentation", {}, "model.pt", seed=3, crop=80)


# -- a tiny MONAI bundle (small UNet, 6 mm) for the fast behaviour tests -----------------------------------


def _tiny_config(invert_labels: bool = True, activation: str = "softmax") -> dict:
    post = [{"_target_": "Activationsd", "keys": "pred", activation: True}]
    invert = {
        "_target_": "Invertd",
        "keys": "pred",
        "transform": "@preprocessing",
        "orig_keys": "@image_key",
        "nearest_interp": invert_labels,
        "to_tensor": True,
    }
    discrete = (
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}
        if activation == "softmax"
        else {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.4}
    )
    post += [discrete, invert] if invert_labels else [invert, discrete]
    post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"})
    return {
        "imports": ["$import glob"],
        "bundle_root": ".",
        "image_key": "image",
        "displayable_configs": {"coarse": True},
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "pixdim": "$[6.0, 6.0, 6.0] if @displayable_configs#coarse else [4.5, 4.5, 4.5]",
        "modelname": "$'model.pt' if @displayable_configs#coarse else 'model_fine.pt'",
        "datalist": "$list(sorted(glob.glob(@bundle_root + '/*.nii.gz')))",
        "network_def": {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 4 if activation == "softmax" else 3,
            "channels": [4, 8],
            "strides": [2],
            "num_res_units": 1,
            "norm": "batch",
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "@image_key"},
                {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
                {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
                {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True},
                {"_target_": "ScaleIntensityd", "keys": "@image_key", "minv": -1.0, "maxv": 1.0},
                {"_target_": "EnsureTyped", "keys": "@image_key"},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [32, 32, 32],
            "sw_batch_size": 2,
            "overlap": 0.25,
            "mode": "gaussian",
            "padding_mode": "replicate",
            "device": "@device",
        },
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "evaluator": {"_target_": "SupervisedEvaluator", "network": "@network"},
    }


def _tiny_metadata(activation: str = "softmax") -> dict:
    names = ["liver", "spleen", "kidney_left"]
    channels = (["background"] if activation == "softmax" else []) + names
    return {
        "version": "0.1.0",
        "name": "Tiny test bundle",
        "description": "a tiny UNet",
        "network_data_format": {
            "outputs": {"pred": {"channel_def": {str(i): n for i, n in enumerate(channels)}}}
        },
    }


def _tiny_bundle(folder: Path, seed: int = 0, weights: str | None = "model.pt", **options) -> Path:
    from monai.networks.nets import UNet

    activation = options.get("activation", "softmax")
    config = _tiny_config(**options)
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps(_tiny_metadata(activation)))
    (folder / "LICENSE").write_text("Apache License\n   Version 2.0, January 2004\n")
    if weights:
        torch.manual_seed(seed)
        kwargs = {k: v for k, v in config["network_def"].items() if k != "_target_"}
        net = UNet(**kwargs).eval()
        _vivid(net, seed)
        (folder / "models").mkdir()
        torch.save(net.state_dict(), folder / "models" / weights)
    return folder


@pytest.mark.parametrize("invert_labels", [True, False], ids=["labels-nearest", "probabilities-bilinear"])
def test_tiny_bundle_equals_monai_pipeline_both_inversions(tmp_path, invert_labels) -> None:
    """Both Invertd orders, fast (NormalizeIntensity nonzero, ScaleIntensity, gaussian, replicate padding)."""
    ct = shared_path("totalseg", "example_ct_sm.nii.gz")
    source = _tiny_bundle(tmp_path / "tiny", invert_labels=invert_labels)
    bundle = load_bundle(import_monai_bundle(source, output=tmp_path / "ours"))
    assert bundle.model.config.invert == ("labels" if invert_labels else "probabilities")
    parser = _reference_parser(source, {})
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(source / "models" / "model.pt", weights_only=True))
    reference = _monai_pipeline(parser, net, ct)
    result = Segmenter(bundle, device="cpu", progress=False).segment(load_volume(ct), "spleen, liver")
    expected = np.select([reference == 2, reference == 1], [1, 2], 0)
    assert {1, 2} <= set(np.unique(expected)) and len(np.unique(reference)) == 4
    np.testing.assert_array_equal(result.labels, expected)


def test_reprompting_a_volume_runs_the_network_once(tmp_path) -> None:
    ct = load_volume(shared_path("totalseg", "example_ct_sm.nii.gz"))
    bundle = load_bundle(import_monai_bundle(_tiny_bundle(tmp_path / "tiny"), output=tmp_path / "ours"))
    calls = []
    bundle.model.net.register_forward_hook(lambda *args: calls.append(1))
    segmenter = Segmenter(bundle, device="cpu", progress=False)
    first = segmenter.segment(ct, "liver and spleen")
    windows = len(calls)
    assert windows > 0
    second = segmenter.segment(ct, "spleen")  # same volume, no PreparedVolume passed
    assert len(calls) == windows
    np.testing.assert_array_equal(second.labels == 1, first.labels == 2)
    prepared = segmenter.prepare(ct)
    again = Segmenter(bundle, device="cpu", progress=False)  # a new Segmenter, as the Slicer logic makes
    again.segment(ct, "left kidney", prepared=prepared)
    again.segment(ct, "liver", prepared=prepared)
    assert len(calls) == 2 * windows
    shifted = load_volume(shared_path("totalseg", "example_ct_sm.nii.gz"))
    shifted.array[0, 0, 0] += 1.0  # other voxels: computed again
    segmenter.segment(shifted, "liver")
    assert len(calls) == 3 * windows
    with pytest.raises(ValueError, match="flip_tta"):
        Segmenter(bundle, device="cpu", progress=False, flip_tta=True).segment(ct, "liver")
    with_probabilities = Segmenter(bundle, device="cpu", progress=False, probabilities=True).segment(
        ct, "liver"
    )
    assert with_probabilities.probabilities.shape == (1, *ct.shape)
    assert np.all((with_probabilities.probabilities >= 0) & (with_probabilities.probabilities <= 1))


def test_sigmoid_bundle_goes_per_channel(tmp_path) -> None:
    ct = load_volume(shared_path("totalseg", "example_ct_sm.nii.gz"))
    source = _tiny_bundle(tmp_path / "tiny", activation="sigmoid")
    bundle = load_bundle(import_monai_bundle(source, output=tmp_path / "ours"))
    assert bundle.model.output == "channels" and bundle.config.inference.threshold == 0.4
    assert bundle.vocabulary == ["Liver", "Spleen", "Left Kidney"]
    result = Segmenter(bundle, device="cpu", progress=False).segment(ct, "left kidney")
    assert result.labels.shape == ct.shape and set(np.unique(result.labels)) <= {0, 1}


def test_config_reader_resolves_references_and_refuses_other_expressions() -> None:
    reader = MonaiConfigReader(_tiny_config(), overrides={"displayable_configs#coarse": False})
    assert reader.get("preprocessing#transforms#3#pixdim") == [4.5, 4.5, 4.5]
    assert reader.get("modelname") == "model_fine.pt"
    assert reader.get("inferer#roi_size") == [32, 32, 32]
    with pytest.raises(MonaiConfigError, match=r"inference.json: inferer#device -> @device: expression"):
        reader.get("inferer#device")
    config = _tiny_config()
    config["preprocessing"]["transforms"][3]["pixdim"] = "$numpy.array([1.5, 1.5, 1.5])"
    with pytest.raises(
        MonaiConfigError, match=r"preprocessing#transforms#3#pixdim: expression .* is not supported"
    ):
        MonaiConfigReader(config).get("preprocessing")
    config = {"a": "@b", "b": "@a", "c": "$'x' if @missing else 'y'"}
    with pytest.raises(MonaiConfigError, match="circular"):
        MonaiConfigReader(config).get("a")
    with pytest.raises(MonaiConfigError, match="names no entry"):
        MonaiConfigReader(config).get("c")
    with pytest.raises(MonaiConfigError, match="cannot override"):
        MonaiConfigReader(config, overrides={"a#b#c": 1})


def test_translation_refuses_what_it_cannot_honour(tmp_path) -> None:
    source = _tiny_bundle(tmp_path / "tiny", weights=None)
    path = source / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["preprocessing"]["transforms"].insert(
        4, {"_target_": "RandFlipd", "keys": "@image_key", "prob": 0.5}
    )
    path.write_text(json.dumps(config))
    with pytest.raises(
        MonaiConfigError, match=r"preprocessing#transforms#4: transform 'RandFlipd' is not supported"
    ):
        translate_monai_bundle(source)
    config["preprocessing"]["transforms"][4] = {
        "_target_": "Spacingd",
        "keys": "image",
        "pixdim": 2,
        "diagonal": True,
    }
    path.write_text(json.dumps(config))
    with pytest.raises(MonaiConfigError, match=r"preprocessing#transforms#4: argument\(s\) \['diagonal'\]"):
        translate_monai_bundle(source)
    config = _tiny_config()
    config["network_def"]["_target_"] = "VISTA3D"
    path.write_text(json.dumps(config))
    with pytest.raises(MonaiConfigError, match="network 'VISTA3D' is not supported"):
        translate_monai_bundle(source)


def test_weights_are_checked_key_by_key_and_unwrapped(tmp_path) -> None:
    source = _tiny_bundle(tmp_path / "tiny")
    state = torch.load(source / "models" / "model.pt", weights_only=True)
    config = translate_monai_bundle(source)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    bundle = load_bundle(build_bundle_from_weights(config, wrapped, tmp_path / "a"))
    assert all(torch.equal(bundle.model.net.state_dict()[k], v) for k, v in state.items())
    renamed = dict(state)
    key = next(iter(renamed))
    renamed["model.0.wrong.weight"] = renamed.pop(key)
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(BundleError, match=rf"missing 1 key\(s\), first '{key}'.*'model.0.wrong.weight'"):
        build_bundle_from_weights(config, tmp_path / "renamed.pt", tmp_path / "b")
    reshaped = dict(state)
    reshaped[key] = torch.zeros(1, *state[key].shape)
    torch.save(reshaped, tmp_path / "reshaped.pt")
    with pytest.raises(BundleError, match=rf"weight '{key}' has shape"):
        build_bundle_from_weights(config, tmp_path / "reshaped.pt", tmp_path / "c")
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "other.pt")
    with pytest.raises(MonaiConfigError, match="not a state dict"):
        build_bundle_from_weights(config, tmp_path / "other.pt", tmp_path / "d")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_zip_input_overrides_and_weights_choose_the_branch(tmp_path) -> None:
    source = _tiny_bundle(tmp_path / "tiny", weights="model_fine.pt")
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in source.rglob("*"):
            zipped.write(file, Path("tiny") / file.relative_to(source))
    fine = load_bundle(import_monai_bundle(archive, source / "models" / "model_fine.pt", tmp_path / "fine"))
    assert fine.config.preprocessing.spacing == (4.5, 4.5, 4.5)  # model_fine.pt -> coarse = false
    assert fine.config.name == "tiny_fine" and fine.config.license == "Apache-2.0"
    overridden = translate_monai_bundle(source, overrides={"displayable_configs#coarse": False})
    assert overridden["preprocessing"]["spacing"] == [4.5, 4.5, 4.5]
    assert translate_monai_bundle(source)["preprocessing"]["spacing"] == [6.0, 6.0, 6.0]
    with pytest.raises(MonaiConfigError, match="no weights at models/model.pt"):
        import_monai_bundle(source, output=tmp_path / "coarse")


def test_shipped_translations_equal_a_fresh_translation() -> None:
    zoo = shared_path(*ZOO)
    for entry, (folder, overrides) in SHIPPED_TRANSLATIONS.items():
        fresh = json.loads(json.dumps(translate_monai_bundle(zoo / folder, overrides=overrides, name=entry)))
        assert shipped_translation(entry) == fresh, f"resources/monai/{entry}.json is stale; regenerate it"
    highres, lowres = shipped_translation("wholebody_ct_highres"), shipped_translation("wholebody_ct_lowres")
    assert (
        highres["preprocessing"]["spacing"] == [1.5] * 3 and lowres["preprocessing"]["spacing"] == [3.0] * 3
    )
    assert len(highres["taxonomy"]["structures"]) == 104
    btcv = shipped_translation("swin_unetr_btcv")
    assert "img_size" not in btcv["model"]["kwargs"] and btcv["model"]["invert"] == "probabilities"
    assert (
        highres["inference"]["padding_mode"] == "replicate" and btcv["inference"]["blend_mode"] == "constant"
    )


def test_build_bundle_from_a_shipped_translation(tmp_path) -> None:
    from TextGuidedSegLib.bundle import BundleConfig
    from TextGuidedSegLib.models.monai_network import MonaiNetworkModel

    config = shipped_translation("spleen_ct")
    net = MonaiNetworkModel(BundleConfig.from_dict(config).model).net
    torch.save(net.state_dict(), tmp_path / "model.pt")
    bundle = load_bundle(build_bundle_from_weights(config, tmp_path / "model.pt", tmp_path / "spleen.zip"))
    assert bundle.vocabulary == ["Spleen"] and bundle.model.output == "classes"
    assert bundle.config.license == "Apache-2.0" and bundle.config.version == "0.5.9"
