"""Where the text modulates the SwinUNETR: film_v2 on enc1, enc2, enc3, hs3, dec4 (not enc0), film_v1 on
the four deepest decoder inputs (dec4, dec3, dec2, dec1), as the seed's SwinUNETR_DEEP_FILM_2 / _DEEP_FILM.

Each test perturbs one FiLM block's output through a forward hook and checks that the logits change, and
records which tensor each block receives and which tensors the decoder consumes, so that a FiLM moved to
another site (or a site left unmodulated) fails here.
"""

from __future__ import annotations

import pytest
import torch

from TextGuidedSegLib.models import ModelConfig, build_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

V2_SITES = ("enc1", "enc2", "enc3", "hs3", "dec4")
V1_SITES = ("dec4", "dec3", "dec2", "dec1")


@pytest.fixture(scope="module", params=["film_v1", "film_v2"])
def setup(request):
    """``(model, features, text, reference logits)``: the encoder runs once per architecture."""
    torch.manual_seed(0)
    config = ModelConfig(architecture=request.param, mode="query", feature_size=12, text_dim=16)
    model = build_model(config).eval()
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 1, 32, 32, 64, generator=generator)
    text = torch.randn(1, 1, 16, generator=generator)
    with torch.no_grad():
        features = model.encode(image)
        reference = model.logits_from_features(features, text)
        torch.testing.assert_close(reference, model(image, text))  # the split path is the model's forward
    return model, features, text, reference


def _perturbed_output(model: torch.nn.Module, site: str, features, text: torch.Tensor) -> torch.Tensor:
    """Logits with ``model.film[site]``'s output shifted by 1 (everything else untouched)."""
    handle = model.film[site].register_forward_hook(lambda module, args, out: out + 1.0)
    try:
        with torch.no_grad():
            return model.logits_from_features(features, text)
    finally:
        handle.remove()


def _record_inputs(model: torch.nn.Module, names: list[str]) -> tuple[dict[str, tuple], list]:
    """Forward pre-hooks that store the positional inputs of ``model.film[*]`` and ``backbone.<names>``."""
    seen: dict[str, tuple] = {}
    handles = []
    for site, module in model.film.items():
        handles.append(
            module.register_forward_pre_hook(lambda m, args, site=site: seen.__setitem__(site, args))
        )
    for name in names:
        module = getattr(model.backbone, name)
        handles.append(
            module.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args))
        )
    return seen, handles


def test_each_film_site_changes_the_output(setup):
    model, features, text, reference = setup
    architecture = model.architecture
    sites = V2_SITES if architecture == "film_v2" else V1_SITES
    assert tuple(model.film.keys()) == sites
    for site in sites:
        changed = _perturbed_output(model, site, features, text)
        assert changed.shape == reference.shape
        assert (changed - reference).abs().max() > 1e-4, (
            f"{architecture}: FiLM at {site} does not reach the output"
        )


def test_film_v2_modulates_the_encoder_skips_and_bottleneck_not_enc0(setup):
    model, features, text, _ = setup
    if model.architecture != "film_v2":
        pytest.skip("checked on the other architecture's parameter")
    seen, handles = _record_inputs(model, ["decoder1", "decoder2", "decoder3", "decoder4", "decoder5"])
    try:
        with torch.no_grad():
            model.logits_from_features(features, text)
    finally:
        for handle in handles:
            handle.remove()
    # each block receives the raw encoder map of its site
    for site in V2_SITES:
        torch.testing.assert_close(seen[site][0], getattr(features, site))
    # the decoder consumes the modulated maps ...
    for decoder, argument, site in [
        ("decoder5", 0, "dec4"),
        ("decoder5", 1, "hs3"),
        ("decoder4", 1, "enc3"),
        ("decoder3", 1, "enc2"),
        ("decoder2", 1, "enc1"),
    ]:
        consumed = seen[decoder][argument]
        assert not torch.allclose(consumed, getattr(features, site)), f"{decoder} gets an unmodulated {site}"
        with torch.no_grad():
            torch.testing.assert_close(consumed, model.film[site](getattr(features, site), text[:, 0]))
    # ... and enc0 as it left the encoder
    torch.testing.assert_close(seen["decoder1"][1], features.enc0)


def test_film_v1_modulates_the_decoder_inputs_not_the_skips(setup):
    model, features, text, _ = setup
    if model.architecture != "film_v1":
        pytest.skip("checked on the other architecture's parameter")
    seen, handles = _record_inputs(model, ["decoder1", "decoder2", "decoder3", "decoder4", "decoder5"])
    try:
        with torch.no_grad():
            model.logits_from_features(features, text)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(seen["dec4"][0], features.dec4)
    # FiLM before decoder5, decoder4, decoder3, decoder2 (decoder k's first input is film output)
    for decoder, site in [
        ("decoder5", "dec4"),
        ("decoder4", "dec3"),
        ("decoder3", "dec2"),
        ("decoder2", "dec1"),
    ]:
        with torch.no_grad():
            expected = model.film[site](seen[site][0], text[:, 0])
        torch.testing.assert_close(seen[decoder][0], expected)
    # the block inputs are the previous decoder outputs: dec3 = decoder5(...) etc. (shapes 8fs, 4fs, 2fs)
    assert [seen[s][0].shape[1] for s in V1_SITES] == [192, 96, 48, 24]
    # skips, dec0 and decoder1 are not modulated
    for decoder, skip in [
        ("decoder5", "hs3"),
        ("decoder4", "enc3"),
        ("decoder3", "enc2"),
        ("decoder2", "enc1"),
    ]:
        torch.testing.assert_close(seen[decoder][1], getattr(features, skip))
    torch.testing.assert_close(seen["decoder1"][1], features.enc0)
