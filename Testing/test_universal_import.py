"""Import of CLIP-Driven Universal Model checkpoints (TextGuidedSegLib.importers.universal).

Checkpoints are written here in the published layout from our own ``universal`` model with seeded random
weights: DDP ``module.`` prefixes, ``GAP.*`` for our ``image_pool.*``, the ``organ_embedding`` buffer, the
Swin relative-position index tables, and the backbone either at the top level (the released file) or under
``backbone.`` (what the training script writes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from TextGuidedSegLib.bundle import load_bundle
from TextGuidedSegLib.importers.universal import (
    UNIVERSAL_EMBEDDING_ID,
    UNIVERSAL_LICENSE,
    UniversalCheckpointError,
    import_universal_checkpoint,
)
from TextGuidedSegLib.models import ModelConfig, build_model
from TextGuidedSegLib.models.universal import UNIVERSAL_MERGE_OFFSETS, UniversalPatchMerging
from TextGuidedSegLib.taxonomy import get_taxonomy

N_CLASSES = 32
TEXT_DIM = 512


def _model(feature_size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(architecture="universal", feature_size=feature_size)).eval()
    with torch.no_grad():  # GroupNorm/LayerNorm start at 1/0: randomise them too, so every weight is pinned
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model


def _their_state(model: torch.nn.Module, embedding: torch.Tensor, layout: str) -> dict[str, torch.Tensor]:
    """``model``'s weights under the Universal Model's key names, as DistributedDataParallel saves them."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("image_pool."):
            name = "GAP." + key.removeprefix("image_pool.")
        elif key.startswith("backbone.") and layout == "released":
            name = key.removeprefix("backbone.")
        else:
            name = key
        state[f"module.{name}"] = value.clone()
    state["module.organ_embedding"] = embedding.clone()
    return state


def _optimizer_state() -> dict:
    """A real AdamW state dict (tensors, floats, tuples, None), as the published file carries beside "net"."""
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=1e-4, weight_decay=1e-5)
    param.sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def _write(path: Path, net: dict, **extra) -> Path:
    torch.save({"net": net, "optimizer": _optimizer_state(), "epoch": 0, **extra}, path)
    return path


@pytest.fixture(scope="module")
def small():
    """(model, organ embeddings (32, 512)) at feature_size 12."""
    model = _model(12)
    embedding = torch.randn(N_CLASSES, TEXT_DIM, generator=torch.Generator().manual_seed(1))
    return model, embedding


def _assert_faithful(bundle, model: torch.nn.Module, embedding: torch.Tensor) -> None:
    """Every weight equal, the cache holds the 32 embeddings, and the logits are identical."""
    ours, theirs = bundle.model.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    unequal = [key for key in theirs if not torch.equal(ours[key], theirs[key])]
    assert unequal == []
    prompts = get_taxonomy("universal32").prompts
    assert bundle.cache.prompts == prompts and len(prompts) == N_CLASSES
    assert bundle.cache.encoder_id == UNIVERSAL_EMBEDDING_ID
    assert torch.equal(bundle.cache.get(prompts), embedding)
    image = torch.rand(1, 1, 32, 32, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(image, embedding[None])
        got = bundle.model(image, bundle.cache.get(prompts)[None])
    assert got.shape == (1, N_CLASSES, 32, 32, 64)
    assert expected.std() > 0
    assert torch.equal(got, expected)


@pytest.mark.parametrize(("layout", "suffix"), [("released", ""), ("training", ".zip")])
def test_import_small_checkpoint_gives_identical_weights_and_logits(tmp_path, small, layout, suffix):
    model, embedding = small
    checkpoint = _write(tmp_path / "universal.pth", _their_state(model, embedding, layout))
    output = import_universal_checkpoint(checkpoint, tmp_path / f"bundle{suffix}")
    assert output == tmp_path / f"bundle{suffix}"
    bundle = load_bundle(output)
    _assert_faithful(bundle, model, embedding)
    config = bundle.config
    assert config.name == "universal_swinunetr"
    assert config.license == UNIVERSAL_LICENSE == "CC BY-NC-ND 4.0"
    assert "non-commercial" in config.description and "CLIP-Driven-Universal-Model" in config.description
    assert config.text_encoder is None
    assert config.model.architecture == "universal" and config.model.feature_size == 12
    assert [s.name for s in config.taxonomy] == [s.name for s in get_taxonomy("universal32")]
    assert config.preprocessing.spacing == (1.5, 1.5, 1.5)
    assert config.preprocessing.hu_window == (-175.0, 250.0)
    assert config.preprocessing.crop_foreground is True
    assert config.inference.roi_size == (96, 96, 96)
    assert (config.inference.overlap, config.inference.blend_mode) == (0.5, "gaussian")
    assert config.inference.threshold == 0.5


def test_import_bare_state_dict_without_module_prefix(tmp_path, small):
    model, embedding = small
    state = {k.removeprefix("module."): v for k, v in _their_state(model, embedding, "released").items()}
    checkpoint = tmp_path / "bare.pth"
    torch.save(state, checkpoint)
    bundle = load_bundle(import_universal_checkpoint(checkpoint, tmp_path / "bundle"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in bundle.model.state_dict().items())


def test_existing_output_needs_overwrite(tmp_path, small):
    model, embedding = small
    checkpoint = _write(tmp_path / "universal.pth", _their_state(model, embedding, "released"))
    output = tmp_path / "bundle"
    output.mkdir()
    (output / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        import_universal_checkpoint(checkpoint, output)
    assert (output / "keep.txt").exists()
    import_universal_checkpoint(checkpoint, output, overwrite=True)
    assert not (output / "keep.txt").exists()
    assert json.loads((output / "config.json").read_text())["license"] == UNIVERSAL_LICENSE


def _drop(state, key):
    del state[key]


def _rejections():
    """(id, mutation of the released-layout state dict, extra top-level entries, text the error must hold)."""
    return [
        ("missing", lambda s: _drop(s, "module.GAP.3.bias"), {}, "missing key 'GAP.3.bias'"),
        ("missing-backbone", lambda s: _drop(s, "module.decoder2.transp_conv.conv.weight"), {}, "decoder2"),
        ("extra", lambda s: s.update({"module.out.conv.conv.weight": torch.zeros(32, 12, 1, 1, 1)}), {},
         "unexpected key 'out.conv.conv.weight'"),
        ("shape", lambda s: s.update({"module.text_to_vision.weight": torch.zeros(256, 256)}), {},
         "'text_to_vision.weight' has shape (256, 256)"),
        ("embedding-shape", lambda s: s.update({"module.organ_embedding": torch.zeros(31, 512)}), {},
         "'organ_embedding' has shape (31, 512)"),
        ("no-embedding", lambda s: _drop(s, "module.organ_embedding"), {}, "missing key 'organ_embedding'"),
        ("duplicate", lambda s: s.update({"module.backbone.encoder1.layer.conv1.conv.weight":
                                          s["module.encoder1.layer.conv1.conv.weight"]}), {}, "same weight"),
        ("integer", lambda s: s.update({"module.controller.bias": torch.zeros(153, dtype=torch.int64)}), {},
         "'controller.bias' has dtype torch.int64"),
        ("pickled", lambda s: None, {"args": argparse.Namespace(lr=1e-4)}, "pickled argparse.Namespace"),
    ]  # fmt: skip


@pytest.mark.parametrize(("mutate", "extra", "message"), [r[1:] for r in _rejections()],
                         ids=[r[0] for r in _rejections()])  # fmt: skip
def test_bad_checkpoints_are_rejected_naming_file_and_key(tmp_path, small, mutate, extra, message):
    model, embedding = small
    state = _their_state(model, embedding, "released")
    mutate(state)
    checkpoint = _write(tmp_path / "universal.pth", state, **extra)
    with pytest.raises(UniversalCheckpointError) as info:
        import_universal_checkpoint(checkpoint, tmp_path / "bundle")
    assert str(checkpoint) in str(info.value)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not (tmp_path / "bundle").exists()


def test_unreadable_inputs_are_rejected(tmp_path):
    with pytest.raises(UniversalCheckpointError, match="does not exist"):
        import_universal_checkpoint(tmp_path / "absent.pth", tmp_path / "bundle")
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(UniversalCheckpointError, match="holds a Tensor, expected a dict"):
        import_universal_checkpoint(tensor_file, tmp_path / "bundle")
    text_file = tmp_path / "text.pth"
    text_file.write_text("not a checkpoint")
    with pytest.raises(UniversalCheckpointError, match="not a readable PyTorch checkpoint"):
        import_universal_checkpoint(text_file, tmp_path / "bundle")
    unet = tmp_path / "unet.pth"
    torch.save({"net": {"module.backbone.down_tr64.ops.0.conv1.weight": torch.zeros(1)}}, unet)
    with pytest.raises(UniversalCheckpointError, match="not a Swin UNETR"):
        import_universal_checkpoint(unet, tmp_path / "bundle")


def test_universal_model_merges_patches_in_the_published_order():
    """The published Swin transformer concatenates (0,1,0) and (0,0,1) twice and never (1,1,0), (0,1,1)."""
    model = build_model(ModelConfig(architecture="universal", feature_size=12))
    mergings = [getattr(model.backbone.swinViT, f"layers{i}")[0].downsample for i in range(1, 5)]
    assert all(type(m) is UniversalPatchMerging for m in mergings)
    merging = mergings[0]
    merging.norm, merging.reduction = torch.nn.Identity(), torch.nn.Identity()
    d, h, w = torch.meshgrid(torch.arange(4), torch.arange(4), torch.arange(4), indexing="ij")
    x = (100 * d + 10 * h + w).float()[None, ..., None]  # (1, D, H, W, 1): each voxel holds its position
    out = merging(x)
    assert out.shape == (1, 2, 2, 2, 8)
    assert out[0, 1, 0, 1].tolist() == [202, 302, 212, 203, 303, 212, 203, 313]
    assert UNIVERSAL_MERGE_OFFSETS.count((0, 1, 0)) == UNIVERSAL_MERGE_OFFSETS.count((0, 0, 1)) == 2


@pytest.mark.slow
def test_import_full_size_checkpoint(tmp_path):
    """The real size (feature_size 48): 62,595,315 parameters, identical weights and logits."""
    model = _model(48)
    assert sum(p.numel() for p in model.parameters()) == 62_595_315  # seed_spec: "Full Swin model ~ 62.60M"
    embedding = torch.randn(N_CLASSES, TEXT_DIM, generator=torch.Generator().manual_seed(1)).half().float()
    checkpoint = _write(
        tmp_path / "clip_driven_universal_swin_unetr.pth", _their_state(model, embedding, "released")
    )
    bundle = load_bundle(import_universal_checkpoint(checkpoint, tmp_path / "bundle"))
    _assert_faithful(bundle, model, embedding)
