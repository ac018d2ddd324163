"""Shared pytest fixtures: where the read-only test data lives, and skips when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


class StandInModel:
    """Base of the tests' stand-in query models (a ``torch.nn.Module`` subclass with this mixed in): what the
    Segmenter reads from a model besides ``forward``. Subclasses define ``forward(image, text, indices)``."""

    output = "query"
    uses_text = True
    predicts_volume = False

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.calls = 0


def shared_path(*parts: str) -> Path:
    """Return a path under ``../shared/data``, skipping the calling test with a clear reason when absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"test data {path} is absent: these tests need the project's shared data folder "
            "beside the checkout (../shared/data, see its README.md)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder (skips the test when it is missing)."""
    return shared_path()


@pytest.fixture
def make_bundle(tmp_path_factory: pytest.TempPathFactory):
    """Factory: save a small random-weight bundle and return its path.

    Keyword arguments override the model config (architecture, mode, feature_size, ...); ``structures``
    picks a taxonomy subset; ``spacing`` and ``roi_size`` set pre-processing and the sliding window; the
    text side is a cache of seeded random embeddings over the taxonomy's prompts (no text encoder), or
    ``text_encoder`` (a TextEncoderSpec) with ``encoder`` (a loaded CLIPTextEncoder) to cache real vectors.
    """
    import torch

    from TextGuidedSegLib.bundle import (
        BundleConfig,
        InferenceConfig,
        PreprocessConfig,
        save_bundle,
    )
    from TextGuidedSegLib.models import ModelConfig, build_model
    from TextGuidedSegLib.taxonomy import get_taxonomy
    from TextGuidedSegLib.text import EmbeddingCache

    def factory(
        name: str = "tiny",
        structures: tuple[str, ...] = ("liver", "spleen", "right_kidney", "left_kidney"),
        spacing: float = 3.0,
        roi_size: int = 64,
        text_encoder=None,
        encoder=None,
        zip_file: bool = False,
        seed: int = 0,
        **model_args,
    ) -> Path:
        taxonomy = get_taxonomy().subset(list(structures))
        model_args.setdefault("feature_size", 12)
        model_args.setdefault("text_dim", encoder.dim if encoder is not None else 16)
        probe = ModelConfig(**model_args)
        if probe.output == "channels":
            model_args["num_classes"] = len(taxonomy)
        model_config = ModelConfig(**model_args)
        torch.manual_seed(seed)
        model = build_model(model_config)
        prompts = taxonomy.prompts + ["A Computed Tomography of abdomen organ"]
        if encoder is not None:
            cache = EmbeddingCache(encoder.identity, encoder.dim).build(prompts, encoder, progress=False)
        else:
            generator = torch.Generator().manual_seed(seed)
            cache = EmbeddingCache("random-test-vectors", model_config.text_dim)
            cache.add(prompts, torch.randn(len(prompts), model_config.text_dim, generator=generator))
        config = BundleConfig(
            name=name,
            model=model_config,
            taxonomy=taxonomy,
            text_encoder=text_encoder,
            preprocessing=PreprocessConfig(spacing=(spacing,) * 3),
            inference=InferenceConfig(roi_size=(roi_size,) * 3),
        )
        folder = tmp_path_factory.mktemp("bundles")
        return save_bundle(folder / (f"{name}.zip" if zip_file else name), model, config, cache)

    return factory


@pytest.fixture
def spleen_weights(tmp_path: Path) -> Path:
    """Seeded random weights of MONAI's spleen_ct_segmentation UNet, saved as MONAI saves them (``model.pt``);
    the network is built by ``monai.bundle.ConfigParser`` from the published ``inference.json`` (a trusted
    test fixture)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(shared_path("monai_model_zoo", "spleen_ct_segmentation", "configs", "inference.json"))
    torch.manual_seed(0)
    weights = tmp_path / "published" / "model.pt"
    weights.parent.mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    return weights
