"""Tests of TextGuidedSegLib.models: the forward call, FiLM, configs, parameter counts, pretrained loading.

Tiny random-init models only (feature_size 12; fs=48 only to count parameters), no downloads. SwinUNETR
needs sides divisible by 32 and 64 voxels on at least one axis (a 32^3 input leaves a 1-voxel bottleneck that
MONAI's instance normalisation rejects): the forward-pass tests use a (64, 32, 32) image (4x cheaper
than 64^3 on CPU, and non-cubic so that axis mix-ups show).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from monai.networks.nets import SwinUNETR
from safetensors.torch import save_file

from TextGuidedSegLib.models import (
    FiLM,
    ModelConfig,
    PretrainedLoadReport,
    ResidualNormFiLM,
    TextSegModel,
    build_model,
    load_pretrained_swinunetr,
    select_channels,
)

logger = logging.getLogger(__name__)

FS = 12  # feature_size of the forward-pass tests
SIDE = 64  # smallest cube SwinUNETR accepts
SPATIAL = (64, 32, 32)  # (D, H, W) of the forward-pass tests
SHALLOW = (1, 1, 1, 1)  # one Swin block per stage (MONAI default: 2) where a test checks plumbing, not MONAI
NUM_CLASSES = 5
E = 512


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Run this module's forward passes on one intra-op thread, restoring the setting afterwards.

    The test machines share 2 cores between workers; OpenMP threads that wait on each other under contention
    cost 3-4x the CPU time of a single thread (measured: 25 s vs 83 s user time for this module).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(architecture: str = "film_v1", mode: str = "query", **kwargs) -> ModelConfig:
    kwargs.setdefault("feature_size", FS)
    return ModelConfig(architecture=architecture, mode=mode, num_classes=NUM_CLASSES, **kwargs)


def _build(architecture: str = "film_v1", mode: str = "query", seed: int = 0, **kwargs) -> TextSegModel:
    torch.manual_seed(seed)
    return build_model(_config(architecture, mode, **kwargs)).eval()


def _image(batch: int = 1, spatial: tuple[int, int, int] = (SIDE, SIDE, SIDE), seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *spatial, generator=generator)


def _text(batch: int, queries: int, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, queries, E, generator=generator)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _set_identity(film: FiLM) -> None:
    with torch.no_grad():
        film.gamma.weight.zero_()
        film.gamma.bias.fill_(1.0)
        film.beta.weight.zero_()
        film.beta.bias.zero_()


# --- FiLM blocks ----------------------------------------------------------------------------------


def test_film_hand_computed():
    film = FiLM(text_dim=2, channels=2)
    with torch.no_grad():
        film.gamma.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        film.gamma.bias.copy_(torch.tensor([0.5, 0.0]))
        film.beta.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
        film.beta.bias.copy_(torch.tensor([0.0, -1.0]))
    text = torch.tensor([[1.0, 2.0]])  # gamma = (1 + 0.5, 2*2) = (1.5, 4); beta = (2, 1 + 2 - 1) = (2, 2)
    features = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]])  # (N=1, C=2, 2 voxels)
    expected = torch.tensor([[[1.5 * 1 + 2, 1.5 * -2 + 2], [4 * 0.5 + 2, 4 * 3 + 2]]])  # [[3.5, -1], [4, 14]]
    torch.testing.assert_close(film(features, text), expected)


def test_film_init_xavier_zero_bias_and_broadcast():
    film = FiLM(text_dim=512, channels=96)
    bound = (6.0 / (512 + 96)) ** 0.5  # Xavier-uniform bound sqrt(6 / (fan_in + fan_out))
    for linear in (film.gamma, film.beta):
        assert linear.weight.abs().max() <= bound
        assert linear.weight.abs().max() > 0.9 * bound  # really uniform over the range, not zeros
        assert torch.count_nonzero(linear.bias) == 0
    features, text = torch.randn(2, 96, 3, 4, 5), torch.randn(2, 512)
    out = film(features, text)
    assert out.shape == (2, 96, 3, 4, 5)
    gamma, beta = film.gamma(text), film.beta(text)
    torch.testing.assert_close(out[1, 7, 2, 3, 4], gamma[1, 7] * features[1, 7, 2, 3, 4] + beta[1, 7])


def test_residual_norm_film_hand_computed():
    block = ResidualNormFiLM(text_dim=2, channels=2)
    with torch.no_grad():
        block.gamma.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        block.gamma.bias.copy_(torch.tensor([0.5, 0.0]))
        block.beta.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
        block.beta.bias.copy_(torch.tensor([0.0, -1.0]))
    text = torch.tensor([[1.0, 2.0]])
    features = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]])
    # FiLM (channel 0, channel 1): voxel 0 (3.5, 4), voxel 1 (-1, 14). LayerNorm over 2 channels maps any
    # pair (a < b) to (-1, 1) (up to eps; weight 1, bias 0 at init). Adding F back:
    # voxel 0: (-1 + 1, 1 + 0.5) = (0, 1.5); voxel 1: (-1 - 2, 1 + 3) = (-3, 4).
    expected = torch.tensor([[[0.0, -3.0], [1.5, 4.0]]])  # (N, C, voxel)
    torch.testing.assert_close(block(features, text), expected, atol=1e-4, rtol=0)


def test_residual_norm_film_matches_manual_layernorm():
    torch.manual_seed(0)
    block = ResidualNormFiLM(text_dim=8, channels=6)
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.5, 0.5)
    features, text = torch.randn(3, 6, 4, 5, 2), torch.randn(3, 8)
    gamma = block.gamma(text)[:, :, None, None, None]
    beta = block.beta(text)[:, :, None, None, None]
    modulated = gamma * features + beta
    mean = modulated.mean(dim=1, keepdim=True)
    var = modulated.var(dim=1, unbiased=False, keepdim=True)
    normed = (modulated - mean) / torch.sqrt(var + 1e-5)
    w = block.norm.weight[None, :, None, None, None]
    b = block.norm.bias[None, :, None, None, None]
    torch.testing.assert_close(block(features, text), normed * w + b + features, atol=1e-5, rtol=1e-5)


def test_film_rejects_bad_shapes():
    film = FiLM(text_dim=4, channels=3)
    with pytest.raises(ValueError, match=r"expects features \(N, 3, \*spatial\)"):
        film(torch.rand(2, 5, 2, 2), torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"expects text \(N, 4\)"):
        film(torch.rand(2, 3, 2, 2), torch.rand(3, 4))


# --- film_v1 equals MONAI SwinUNETR when FiLM is the identity -------------------------------------


@pytest.mark.parametrize("mode", ["global", "query"])
def test_film_v1_identity_film_equals_monai_swinunetr(mode):
    model = _build("film_v1", mode)
    for film in model.film.values():
        _set_identity(film)
    out_channels = NUM_CLASSES if mode == "global" else 1
    reference = SwinUNETR(in_channels=1, out_channels=out_channels, feature_size=FS).eval()
    reference.load_state_dict(model.backbone.state_dict())
    image = _image(1, SPATIAL)
    queries = 1 if mode == "global" else 2
    with torch.no_grad():
        expected = reference(image)  # (1, out_channels, 64, 32, 32)
        logits = model(image, _text(1, queries))
    if mode == "global":
        assert logits.shape == (1, NUM_CLASSES, *SPATIAL)
        assert (logits - expected).abs().max() <= 1e-5
    else:  # identity FiLM ignores the text: every query's mask is MONAI's output
        assert logits.shape == (1, 2, *SPATIAL)
        assert (logits - expected.expand(-1, 2, -1, -1, -1)).abs().max() <= 1e-5
    # and the test can fail: a non-identity FiLM changes the output
    with torch.no_grad():
        model.film["dec4"].gamma.bias.fill_(1.5)
        changed = model(image, _text(1, queries))
    assert (changed - logits).abs().max() > 1e-3


# --- query batching: encoder once, decoder for all B * Q prompts ----------------------------------


@pytest.mark.parametrize("architecture", ["film_v1", "film_v2", "universal"])
def test_query_batching_equals_one_by_one_and_encodes_once(architecture):
    model = _build(architecture, depths=SHALLOW)
    batch, queries = 2, 2
    image, text = _image(batch, SPATIAL), _text(batch, queries)
    calls: list[int] = []
    hook = model.backbone.swinViT.register_forward_hook(
        lambda module, args, out: calls.append(args[0].shape[0])
    )
    with torch.no_grad():
        batched = model(image, text)
        assert calls == [batch]  # swinViT ran once, on the B images (not B * Q)
        singles = [model(image, text[:, q : q + 1]) for q in range(queries)]
    hook.remove()
    assert batched.shape == (batch, queries, *SPATIAL)
    for q, single in enumerate(singles):
        assert single.shape == (batch, 1, *SPATIAL)
        assert (batched[:, q : q + 1] - single).abs().max() <= 1e-5
    # different prompts and different images give different masks (batch and query axes not mixed up)
    assert (batched[:, 0] - batched[:, 1]).abs().max() > 1e-4
    assert (batched[0] - batched[1]).abs().max() > 1e-4


# --- one call for every variant -------------------------------------------------------------------

VARIANTS = [
    ("film_v1", "query"),
    ("film_v1", "global"),
    ("film_v2", "query"),
    ("film_v2", "global"),
    ("universal", "query"),
    ("swinunetr", "query"),
    ("unetr", "query"),
]


@pytest.mark.parametrize(("architecture", "mode"), VARIANTS)
def test_every_variant_answers_the_same_call(architecture, mode):
    spatial = (32, 32, 32) if architecture == "unetr" else SPATIAL
    model = _build(architecture, mode, img_size=spatial, depths=SHALLOW)
    batch, queries = 2, 2
    text = _text(batch, 1 if mode == "global" else queries)
    class_indices = torch.tensor([[4, 0], [1, 1]])
    expected_output = (
        "query" if architecture in ("film_v1", "film_v2", "universal") and mode == "query" else "channels"
    )
    assert model.output == expected_output
    assert model.uses_text == (architecture in ("film_v1", "film_v2", "universal"))
    with torch.no_grad():
        logits = model(_image(batch, spatial), text, class_indices)
        assert logits.shape == (batch, queries, *spatial)
        assert torch.isfinite(logits).all()
        if architecture == "unetr":  # text-free: text may be None, and is ignored (cheap model: check both)
            torch.testing.assert_close(model(_image(batch, spatial), None, class_indices), logits)


def test_channel_outputs_gather_class_indices():
    model = _build("film_v1", "global", depths=SHALLOW)
    image, text = _image(2, SPATIAL), _text(2, 1)
    with torch.no_grad():
        every = model(image, text)
    assert every.shape == (2, NUM_CLASSES, *SPATIAL)
    picked = select_channels(every, torch.tensor([[4, 0, 2], [1, 1, 3]]))
    assert picked.shape == (2, 3, *SPATIAL)
    torch.testing.assert_close(picked[0, 0], every[0, 4])
    torch.testing.assert_close(picked[0, 2], every[0, 2])
    torch.testing.assert_close(picked[1], every[1, [1, 1, 3]])
    with torch.no_grad():  # forward(class_indices=...) returns exactly those channels
        torch.testing.assert_close(model(image, text, torch.tensor([[4, 0, 2], [1, 1, 3]])), picked)


# --- parameter counts at fs=48 (no forward pass) --------------------------------------------------


def test_parameter_counts_fs48():
    torch.manual_seed(0)
    # MONAI SwinUNETR(fs=48): 62,186,659 parameters with a 1-channel head, and each output channel adds
    # 48 + 1 = 49 (the 1x1x1 conv of UnetOutBlock): 14 channels (BTCV, the published "62.19 M") -> 62,187,296,
    # 32 (our taxonomy) -> 62,188,178. All round to 62.19 M, so the figure does not pin the seed's head.
    n_swin_1 = _n_params(SwinUNETR(in_channels=1, out_channels=1, feature_size=48))
    n_swin_14 = _n_params(SwinUNETR(in_channels=1, out_channels=14, feature_size=48))
    assert n_swin_1 == 62_186_659
    assert n_swin_14 == n_swin_1 + 13 * 49 == 62_187_296
    assert round(n_swin_14 / 1e6, 2) == 62.19

    film_v1 = build_model(ModelConfig(architecture="film_v1", feature_size=48))
    film_v2 = build_model(ModelConfig(architecture="film_v2", feature_size=48))
    universal = build_model(ModelConfig(architecture="universal", feature_size=48))
    counts = {
        name: _n_params(m)
        for name, m in [("film_v1", film_v1), ("film_v2", film_v2), ("universal", universal)]
    }
    logger.info("parameters at fs=48: SwinUNETR(out=1) %d, %s", n_swin_1, counts)
    print(
        f"SwinUNETR(out=1) {n_swin_1:,}  SwinUNETR(out=14) {n_swin_14:,}  "
        + "  ".join(f"{k} {v:,}" for k, v in counts.items())
    )

    assert _n_params(film_v1.backbone) == n_swin_1  # query mode: 1-channel head
    # film_v1: FiLM = 2 * (512 * C + C) on C = 768, 384, 192, 96: 2 * 513 * 1440 = 1,477,440
    assert counts["film_v1"] - n_swin_1 == 2 * 513 * (768 + 384 + 192 + 96) == 1_477_440
    # film_v2: FiLM + LayerNorm(C) on C = 48, 96, 192, 384, 768 (sum 1488): 2 * 513 * 1488 + 2 * 1488
    assert counts["film_v2"] - n_swin_1 == 1_526_688 + 2_976 == 1_529_664
    # universal: text_to_vision 512*256+256 = 131,328; image_pool GroupNorm(768) 1,536 + conv 768*256+256
    # = 198,400; controller 512*153+153 = 78,489; precls GroupNorm(48) 96 + conv 48*8+8 = 488;
    # minus the removed 1-channel output head (49).
    assert counts["universal"] - n_swin_1 == 131_328 + 198_400 + 78_489 + 488 - 49 == 408_656

    global_v1 = build_model(
        ModelConfig(architecture="film_v1", mode="global", feature_size=48, num_classes=32)
    )
    assert _n_params(global_v1) == counts["film_v1"] + 31 * 49  # 32-channel head


# --- errors ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def query_model() -> TextSegModel:
    return _build("film_v1", "query")


@pytest.fixture(scope="module")
def global_model() -> TextSegModel:
    return _build("film_v1", "global")


def test_error_wrong_channel_count(query_model):
    with pytest.raises(
        ValueError, match=r"expects image \(B, 1, D, H, W\) with 1 channel\(s\), got 2 channels"
    ):
        query_model(torch.rand(1, 2, SIDE, SIDE, SIDE), _text(1, 1))
    with pytest.raises(ValueError, match=r"expects image \(B, 1, D, H, W\), got \(1, 64, 64, 64\)"):
        query_model(torch.rand(1, SIDE, SIDE, SIDE), _text(1, 1))


def test_error_spatial_size_not_divisible_by_32(query_model):
    with pytest.raises(ValueError, match=r"must be divisible by 32 on every axis.*W=48 is not.*DivisiblePad"):
        query_model(torch.rand(1, 1, SIDE, SIDE, 48), _text(1, 1))
    with pytest.raises(ValueError, match="1-voxel bottleneck"):
        query_model(torch.rand(1, 1, 32, 32, 32), _text(1, 1))


def test_error_text_batch_mismatch(query_model):
    with pytest.raises(ValueError, match=r"text batch 3 != image batch 1"):
        query_model(_image(1), _text(3, 1))


def test_error_text_missing_or_wrong_dim(query_model):
    with pytest.raises(ValueError, match=r"is text-conditioned: pass text embeddings \(B, Q, 512\)"):
        query_model(_image(1))
    with pytest.raises(ValueError, match=r"text embedding size 256 != ModelConfig.text_dim 512"):
        query_model(_image(1), torch.rand(1, 1, 256))
    with pytest.raises(ValueError, match=r"expects text \(B, Q, 512\), got \(1, 512\).*text\[:, None\]"):
        query_model(_image(1), torch.rand(1, 512))


def test_error_global_mode_needs_one_embedding(global_model):
    with pytest.raises(ValueError, match=r"global mode .* text must be \(B, 1, 512\), got Q=3"):
        global_model(_image(1), _text(1, 3))


def test_error_class_index_out_of_range(global_model):
    with pytest.raises(ValueError, match=r"class index out of range \[0, 5\) \(got min 0, max 5\)"):
        global_model(_image(1), _text(1, 1), torch.tensor([[0, 5]]))
    with pytest.raises(TypeError, match="class_indices must be an integer tensor"):
        global_model(_image(1), _text(1, 1), torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"class_indices must be \(B, Q\) with B = image batch 1"):
        global_model(_image(1), _text(1, 1), torch.tensor([0, 1]))


def test_error_unetr_needs_img_size():
    model = _build("unetr", img_size=(32, 32, 32))
    with pytest.raises(ValueError, match=r"must equal ModelConfig.img_size=\(32, 32, 32\)"):
        model(torch.rand(1, 1, 64, 64, 64))


def test_config_errors():
    with pytest.raises(
        ValueError, match=r"unknown ModelConfig key 'featuresize'; valid keys are: .*\bfeature_size\b"
    ):
        ModelConfig.from_dict({"featuresize": 48})
    with pytest.raises(
        ValueError, match=r"architecture='film_v3' is not valid; use one of \['film_v1', 'film_v2'"
    ):
        ModelConfig(architecture="film_v3")
    with pytest.raises(
        ValueError, match=r"ModelConfig.mode='channels' is not valid; use one of \['query', 'global'\]"
    ):
        ModelConfig.from_dict({"mode": "channels"})
    with pytest.raises(ValueError, match=r"mode='global' is only valid for \['film_v1', 'film_v2'\]"):
        ModelConfig(architecture="universal", mode="global")
    with pytest.raises(ValueError, match="feature_size=40 must be divisible by 12"):
        ModelConfig(feature_size=40)
    with pytest.raises(ValueError, match=r"drop_rate must be a float in \[0, 1\]"):
        ModelConfig(drop_rate=1.5)
    with pytest.raises(ValueError, match=r"num_heads\[0\]=5 does not divide"):
        ModelConfig(num_heads=(5, 6, 12, 24))
    with pytest.raises(ValueError, match="img_size=.* must be multiples of 16"):
        ModelConfig(architecture="unetr", img_size=(96, 96, 40))
    with pytest.raises(TypeError, match="build_model expects a ModelConfig"):
        build_model({"architecture": "film_v1"})  # type: ignore[arg-type]


# --- config round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["film_v1", "film_v2", "universal", "swinunetr", "unetr"])
def test_config_round_trip_builds_identical_model(architecture):
    cfg = ModelConfig(
        architecture=architecture,
        mode="global" if architecture == "film_v2" else "query",
        feature_size=24 if architecture == "unetr" else 12,
        num_classes=7,
        text_dim=64,
        img_size=(32, 32, 32),
        depths=(1, 1, 2, 1),
        drop_rate=0.1,
        use_v2=architecture == "film_v1",
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["img_size"] == [32, 32, 32] and data["depths"] == [1, 1, 2, 1]
    again = ModelConfig.from_dict(data)
    assert again == cfg and again.img_size == (32, 32, 32)
    first, second = build_model(cfg).state_dict(), build_model(again).state_dict()
    assert list(first) == list(second)
    assert all(first[k].shape == second[k].shape for k in first)
    if architecture == "film_v1":  # use_v2 reached MONAI (residual conv blocks at each Swin stage)
        assert any(k.startswith("backbone.swinViT.layers1c") for k in first)


# --- pretrained loading ---------------------------------------------------------------------------


def _perturbed(state: dict[str, torch.Tensor], seed: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: (v + torch.rand(v.shape, generator=generator) + 1.0) if v.is_floating_point() else v.clone()
        for k, v in state.items()
    }


def test_load_full_network_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = _perturbed(SwinUNETR(in_channels=1, out_channels=14, feature_size=FS).state_dict())
    removed = "encoder1.layer.conv1.conv.weight"
    del source[removed]
    ckpt = {f"module.{k}": v for k, v in source.items()}  # saved from DataParallel
    ckpt["module.bogus.weight"] = torch.zeros(3)
    path = tmp_path / "swin_unetr.base_5000ep_f12_pretrained.pt"
    torch.save({"state_dict": ckpt, "epoch": 5000}, path)

    model = _build("film_v1", "query")  # 1-channel head: the 14-channel head must be skipped
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    report = load_pretrained_swinunetr(model, path)

    assert isinstance(report, PretrainedLoadReport) and report.format == "full"
    assert report.unexpected == ["module.bogus.weight"]
    assert report.missing == [removed]
    assert report.shape_mismatch == []
    assert sorted(report.skipped_head) == ["out.conv.conv.bias", "out.conv.conv.weight"]
    assert len(report.loaded) == len(before) - 3  # all but the removed key and the 2 head tensors
    after = model.backbone.state_dict()
    torch.testing.assert_close(
        after["swinViT.patch_embed.proj.weight"], source["swinViT.patch_embed.proj.weight"]
    )
    torch.testing.assert_close(
        after["decoder1.transp_conv.conv.weight"], source["decoder1.transp_conv.conv.weight"]
    )
    torch.testing.assert_close(after[removed], before[removed])  # not filled: unchanged
    torch.testing.assert_close(after["out.conv.conv.weight"], before["out.conv.conv.weight"])

    with pytest.raises(
        ValueError, match=r"1 missing backbone keys \(first: \['encoder1.layer.conv1.conv.weight'\]\)"
    ):
        load_pretrained_swinunetr(model, path, strict=True)


def test_load_full_checkpoint_into_matching_head_strict(tmp_path):
    torch.manual_seed(0)
    source = _perturbed(SwinUNETR(in_channels=1, out_channels=NUM_CLASSES, feature_size=FS).state_dict())
    path = tmp_path / "full.safetensors"
    save_file(source, str(path))
    model = _build("swinunetr")
    report = load_pretrained_swinunetr(model, path, strict=True)
    assert report.complete and report.skipped_head == []
    assert len(report.loaded) == len(source)
    torch.testing.assert_close(model.backbone.out.conv.conv.weight, source["out.conv.conv.weight"])


def test_load_full_checkpoint_into_universal_skips_the_absent_head():
    torch.manual_seed(0)
    source = _perturbed(SwinUNETR(in_channels=1, out_channels=14, feature_size=FS).state_dict())
    model = _build("universal")
    report = load_pretrained_swinunetr(model, {"state_dict": source}, strict=True)
    assert report.complete and sorted(report.skipped_head) == ["out.conv.conv.bias", "out.conv.conv.weight"]
    assert len(report.loaded) == len(source) - 2
    torch.testing.assert_close(
        model.backbone.encoder10.layer.conv1.conv.weight, source["encoder10.layer.conv1.conv.weight"]
    )


def test_load_self_supervised_swinvit_checkpoint(tmp_path, caplog):
    torch.manual_seed(0)
    vit = _perturbed(SwinUNETR(in_channels=1, out_channels=1, feature_size=FS).swinViT.state_dict(), seed=4)
    ckpt = {f"module.{k}": v for k, v in vit.items()}  # model_swinvit.pt layout: module.patch_embed.*, ...
    removed = "module.layers2.0.blocks.1.mlp.linear1.weight"
    del ckpt[removed]
    ckpt["module.rotation_head.weight"] = torch.zeros(4, 2)
    path = tmp_path / "model_swinvit.pt"
    torch.save({"state_dict": ckpt}, path)

    model = _build("film_v2")
    decoder_before = model.backbone.decoder5.transp_conv.conv.weight.clone()
    with caplog.at_level(logging.WARNING, logger="TextGuidedSegLib.models.pretrained"):
        report = load_pretrained_swinunetr(model, path)
    assert report.format == "swinvit"
    assert report.unexpected == ["module.rotation_head.weight"]
    assert report.missing == [
        "swinViT.layers2.0.blocks.1.mlp.linear1.weight"
    ]  # decoder keys are not expected
    assert len(report.loaded) == len(vit) - 1
    assert "unexpected keys (1)" in caplog.text  # never silent
    torch.testing.assert_close(
        model.backbone.swinViT.layers1[0].blocks[0].attn.qkv.weight, vit["layers1.0.blocks.0.attn.qkv.weight"]
    )
    torch.testing.assert_close(model.backbone.swinViT.patch_embed.proj.weight, vit["patch_embed.proj.weight"])
    torch.testing.assert_close(model.backbone.decoder5.transp_conv.conv.weight, decoder_before)
    with pytest.raises(
        ValueError, match=r"unexpected checkpoint keys \(first: \['module.rotation_head.weight'\]\)"
    ):
        load_pretrained_swinunetr(model, path, strict=True)


def test_load_disruptive_autoencoder_checkpoint_via_filter_swinunetr():
    torch.manual_seed(0)
    vit = _perturbed(SwinUNETR(in_channels=1, out_channels=1, feature_size=FS).swinViT.state_dict(), seed=5)
    # ssl_pretrained_weights.pth layout, inverse of MONAI's filter_swinunetr: "layers1.0." + "0." + rest
    ckpt = {}
    for key, value in vit.items():
        ckpt["encoder." + (key if key.startswith("patch_embed") else key[:10] + "0." + key[10:])] = value
    ckpt["encoder.mask_token"] = torch.zeros(1, 1, FS)  # dropped by filter_swinunetr
    model = _build("universal")
    report = load_pretrained_swinunetr(model, {"model": ckpt})
    assert report.format == "dae" and report.source == "<dict>"
    assert report.unexpected == ["encoder.mask_token"] and report.missing == []
    assert len(report.loaded) == len(vit)
    torch.testing.assert_close(
        model.backbone.swinViT.layers3[0].downsample.reduction.weight,
        vit["layers3.0.downsample.reduction.weight"],
    )


def test_load_pretrained_rejects_models_without_swin_backbone():
    with pytest.raises(TypeError, match="needs a MONAI SwinUNETR or a model with a SwinUNETR `backbone`"):
        load_pretrained_swinunetr(torch.nn.Linear(2, 2), {"state_dict": {"w": torch.zeros(1)}})
