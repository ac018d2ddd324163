"""Tests for TextGuidedSegLib.text: CLIP tokenizer, frozen text encoder, prompt -> embedding cache.

No download happens: the encoder tests build tiny random-init CLIP text towers (hidden size 32, projection 16)
with ``make_tiny_clip_text_model``; tests that need OpenAI's BPE merges use the ``shared_data`` fixture and
skip when ``../shared/data`` is absent.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from TextGuidedSegLib.text import (
    CLIPTextEncoder,
    EmbeddingCache,
    EmbeddingCacheError,
    PromptNotCachedError,
    TextEncoderSpec,
    TextEncoderUnavailableError,
    build_clip_tokenizer,
)
from TextGuidedSegLib.text import cache as cache_module
from TextGuidedSegLib.text.testing import make_tiny_clip_text_model
from TextGuidedSegLib.text.tokenizer import bytes_to_unicode, clip_vocab

PROMPTS = ["liver", "left kidney", "a computerized tomography of the spleen", "aorta", ""]


@pytest.fixture(scope="module")
def bpe_path(shared_data: Path) -> Path:
    path = shared_data / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        pytest.skip(f"{path} is absent (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny text tower with the byte-level tokenizer (no data file needed)."""
    return make_tiny_clip_text_model(tmp_path_factory.mktemp("tiny_clip"), seed=0)


@pytest.fixture(scope="module")
def tiny_encoder(tiny_folder: Path) -> CLIPTextEncoder:
    return CLIPTextEncoder(TextEncoderSpec(str(tiny_folder)))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[object]:
    """Offline mode, an empty HF_HOME, and sockets that record and refuse any connection attempt."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args[1:] if len(args) > 1 else args)
        raise OSError("network access is disabled in this test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


# ---------------------------------------------------------------- spec


def test_spec_defaults_and_dict_round_trip() -> None:
    spec = TextEncoderSpec()
    assert spec.to_dict() == {
        "name_or_path": "openai/clip-vit-base-patch32",
        "output": "pooler",
        "revision": None,
    }
    other = TextEncoderSpec("/models/clip", output="projected", revision="abc")
    assert TextEncoderSpec.from_dict(json.loads(json.dumps(other.to_dict()))) == other
    assert TextEncoderSpec.from_dict({"output": "projected"}) == TextEncoderSpec(output="projected")


def test_spec_rejects_unknown_key_and_bad_output() -> None:
    with pytest.raises(ValueError, match="'pooling'"):
        TextEncoderSpec.from_dict({"name_or_path": "x", "pooling": "cls"})
    with pytest.raises(ValueError, match="output must be one of"):
        TextEncoderSpec(output="cls")
    with pytest.raises(ValueError, match="name_or_path"):
        TextEncoderSpec("")


# ---------------------------------------------------------------- tokenizer


def test_clip_vocab_layout_without_merges() -> None:
    # 256 byte symbols, the same with </w>, one token per merge, then the two special tokens.
    symbols = bytes_to_unicode()
    assert len(symbols) == 256 and len(set(symbols.values())) == 256
    assert symbols[ord("a")] == "a" and symbols[ord(" ")] == "Ġ"  # space maps to U+0120 as in GPT-2
    vocab = clip_vocab([("a", "b</w>")])
    assert len(vocab) == 256 + 256 + 1 + 2
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["ab</w>"] == 512
    assert vocab["<|startoftext|>"] == 513 and vocab["<|endoftext|>"] == 514


def test_build_clip_tokenizer_matches_openai_ids(bpe_path: Path) -> None:
    tokenizer = build_clip_tokenizer(bpe_path)
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)
    # 256 bytes + 256 bytes</w> = 512 single symbols; "a</w>" = 256 + index of "a" (64) = 320; the rest are
    # OpenAI CLIP's well-known ids ("photo</w>" 1125, "of</w>" 539, "cat</w>" 2368).
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    prompt = "A computerized tomography of a liver"
    ids = tokenizer(prompt)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == prompt.lower()  # CLIP lower-cases its input
    batch = tokenizer(["liver", "word " * 100], padding="max_length", truncation=True, max_length=77)
    assert [len(row) for row in batch["input_ids"]] == [77, 77]
    assert batch["input_ids"][0][3:] == [49407] * 74  # padded with <|endoftext|>


def test_build_clip_tokenizer_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab"):
        build_clip_tokenizer(tmp_path / "bpe_simple_vocab_16e6.txt.gz")


# ---------------------------------------------------------------- encoder


def test_tiny_model_is_deterministic(tmp_path: Path, tiny_folder: Path) -> None:
    again = make_tiny_clip_text_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_folder / name).read_bytes(), name
    state = torch.random.get_rng_state()
    make_tiny_clip_text_model(tmp_path / "other", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone


@pytest.mark.parametrize("tokenizer_kind", ["byte_level", "clip_bpe"])
def test_encode_matches_transformers(
    tokenizer_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bpe = request.getfixturevalue("bpe_path") if tokenizer_kind == "clip_bpe" else None
    folder = make_tiny_clip_text_model(tmp_path / "clip", bpe_path=bpe, seed=1)
    encoder = CLIPTextEncoder(TextEncoderSpec(str(folder)))
    assert encoder.dim == 32 and encoder.max_length == 77
    embeddings = encoder.encode(PROMPTS)
    assert embeddings.shape == (len(PROMPTS), 32) and embeddings.dtype == torch.float32
    assert embeddings.device.type == "cpu" and not embeddings.requires_grad

    tokenizer = CLIPTokenizer.from_pretrained(folder)
    model = CLIPTextModel.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = model(
            **tokenizer(PROMPTS, padding=True, truncation=True, return_tensors="pt")
        ).pooler_output
    torch.testing.assert_close(embeddings, expected, atol=1e-6, rtol=0)


def test_batching_gives_identical_embeddings(tiny_encoder: CLIPTextEncoder) -> None:
    prompts = [*PROMPTS, "liver"]
    full = tiny_encoder.encode(prompts, batch_size=64)
    assert torch.equal(full, tiny_encoder.encode(prompts, batch_size=1))
    assert torch.equal(full[0], full[-1])  # a prompt's embedding does not depend on its batch


def test_projected_output(tiny_folder: Path, tiny_encoder: CLIPTextEncoder) -> None:
    projected = CLIPTextEncoder(TextEncoderSpec(str(tiny_folder), output="projected"))
    assert projected.dim == 16
    embeddings = projected.encode(PROMPTS)
    assert embeddings.shape == (len(PROMPTS), 16)
    expected = tiny_encoder.encode(PROMPTS) @ projected.model.text_projection.weight.T
    torch.testing.assert_close(embeddings, expected, atol=1e-6, rtol=0)
    assert projected.identity != tiny_encoder.identity
    assert projected.identity.endswith(":projected") and tiny_encoder.identity.endswith(":pooler")


def test_identity_stable_and_content_based(
    tmp_path: Path, tiny_folder: Path, tiny_encoder: CLIPTextEncoder
) -> None:
    assert tiny_encoder.identity.startswith("local-sha256:")
    assert CLIPTextEncoder(TextEncoderSpec(str(tiny_folder))).identity == tiny_encoder.identity
    moved = shutil.copytree(tiny_folder, tmp_path / "renamed_copy")
    assert CLIPTextEncoder(TextEncoderSpec(str(moved))).identity == tiny_encoder.identity
    # A re-save that only changes bookkeeping keys of config.json keeps the identity; a real change does not.
    resaved = shutil.copytree(tiny_folder, tmp_path / "resaved")
    config = json.loads((resaved / "config.json").read_text())
    (resaved / "config.json").write_text(json.dumps({**config, "transformers_version": "4.45.0"}, indent=4))
    assert CLIPTextEncoder(TextEncoderSpec(str(resaved))).identity == tiny_encoder.identity
    (resaved / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    assert CLIPTextEncoder(TextEncoderSpec(str(resaved))).identity != tiny_encoder.identity
    other = make_tiny_clip_text_model(tmp_path / "seed1", seed=1)
    other_encoder = CLIPTextEncoder(TextEncoderSpec(str(other)))
    assert other_encoder.identity != tiny_encoder.identity
    assert not torch.equal(other_encoder.encode(["liver"]), tiny_encoder.encode(["liver"]))


def test_encode_inputs_and_autograd_use(tiny_encoder: CLIPTextEncoder) -> None:
    assert tiny_encoder.encode([]).shape == (0, 32)
    with pytest.raises(TypeError, match="not one string"):
        tiny_encoder.encode("liver")
    with pytest.raises(ValueError, match="batch_size"):
        tiny_encoder.encode(["liver"], batch_size=0)
    long_prompt = "the left kidney and " * 40  # far beyond 77 tokens: truncated, not an error
    assert tiny_encoder.encode([long_prompt]).shape == (1, 32)
    assert all(not parameter.requires_grad for parameter in tiny_encoder.model.parameters())
    assert not tiny_encoder.model.training
    # Embeddings are ordinary tensors (not inference-mode tensors): they can feed a trainable layer.
    weight = torch.ones(32, requires_grad=True)
    (tiny_encoder.encode(["liver"]) * weight).sum().backward()
    assert weight.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_encode_on_gpu_returns_cpu_float32(tiny_folder: Path, tiny_encoder: CLIPTextEncoder) -> None:
    gpu = CLIPTextEncoder(TextEncoderSpec(str(tiny_folder)), device="cuda")
    embeddings = gpu.encode(PROMPTS)
    assert embeddings.device.type == "cpu" and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings, tiny_encoder.encode(PROMPTS), atol=1e-4, rtol=1e-4)
    assert gpu.identity == tiny_encoder.identity


def test_loads_text_tower_from_full_clip_checkpoint(tmp_path: Path, tiny_folder: Path) -> None:
    """openai/clip-vit-base-patch32 is a full CLIPModel (text + vision): mimic its layout with a tiny one."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

    text_config = CLIPTextConfig.from_pretrained(tiny_folder)
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=16,
    )
    config = CLIPConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=16
    )
    torch.manual_seed(0)
    full = CLIPModel(config).eval()
    folder = tmp_path / "full_clip"
    full.save_pretrained(folder)
    CLIPTokenizer.from_pretrained(tiny_folder).save_pretrained(folder)

    pooler = CLIPTextEncoder(TextEncoderSpec(str(folder)))
    projected = CLIPTextEncoder(TextEncoderSpec(str(folder), output="projected"))
    tokens = pooler.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        expected = full.text_model(**tokens).pooler_output
    torch.testing.assert_close(pooler.encode(PROMPTS), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(projected.encode(PROMPTS), full.text_projection(expected), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- unavailable


def test_missing_local_folder_is_unavailable(tmp_path: Path, no_network: list[object]) -> None:
    folder = tmp_path / "no_such_model"
    with pytest.raises(TextEncoderUnavailableError) as info:
        CLIPTextEncoder(TextEncoderSpec(str(folder)))
    message = str(info.value)
    assert str(folder) in message and "does not exist" in message
    assert "hf download openai/clip-vit-base-patch32" in message and "HF_HUB_OFFLINE=1" in message
    assert not no_network


def test_offline_hub_id_is_unavailable(tmp_path: Path, no_network: list[object]) -> None:
    name = "openai/clip-vit-base-patch32"
    with pytest.raises(TextEncoderUnavailableError) as info:
        CLIPTextEncoder(TextEncoderSpec(name), cache_dir=tmp_path / "empty_cache")
    message = str(info.value)
    assert repr(name) in message and "not in the local Hugging Face cache" in message
    assert f"hf download {name}" in message and "HF_HUB_OFFLINE" in message
    assert "CLIPTextModel.from_pretrained" in message
    assert info.value.__cause__ is not None  # the original exception is chained
    assert not no_network  # offline mode means no connection attempt at all


def test_hub_id_loads_from_the_cache_offline(
    tmp_path: Path, tiny_folder: Path, no_network: list[object]
) -> None:
    """A hub id found in the Hugging Face cache loads offline; its identity carries the snapshot's commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub_cache" / "models--openai--clip-vit-base-patch32"
    shutil.copytree(tiny_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    spec = TextEncoderSpec("openai/clip-vit-base-patch32")
    encoder = CLIPTextEncoder(spec, cache_dir=tmp_path / "hub_cache")
    assert encoder.identity == f"openai/clip-vit-base-patch32@{commit}:pooler"
    assert torch.equal(
        encoder.encode(["liver"]), CLIPTextEncoder(TextEncoderSpec(str(tiny_folder))).encode(["liver"])
    )
    pinned = TextEncoderSpec("openai/clip-vit-base-patch32", output="projected", revision=commit)
    assert CLIPTextEncoder(pinned, cache_dir=tmp_path / "hub_cache").identity.endswith(f"@{commit}:projected")
    with pytest.raises(TextEncoderUnavailableError, match="'v2'"):
        CLIPTextEncoder(TextEncoderSpec(spec.name_or_path, revision="v2"), cache_dir=tmp_path / "hub_cache")
    assert not no_network


def test_folder_without_weights_or_tokenizer_is_unavailable(tmp_path: Path, tiny_folder: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TextEncoderUnavailableError, match="no \\*.safetensors"):
        CLIPTextEncoder(TextEncoderSpec(str(empty)))
    # transformers 5.x quietly builds a 3-token tokenizer when the tokenizer files are missing: refused.
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_folder / name, no_tokenizer / name)
    with pytest.raises(TextEncoderUnavailableError, match="tokenizer") as info:
        CLIPTextEncoder(TextEncoderSpec(str(no_tokenizer)))
    assert str(no_tokenizer) in str(info.value)


def test_projected_needs_a_projection(tmp_path: Path, tiny_folder: Path) -> None:
    folder = tmp_path / "text_only"
    CLIPTextModel.from_pretrained(tiny_folder).save_pretrained(folder)
    CLIPTokenizer.from_pretrained(tiny_folder).save_pretrained(folder)
    assert CLIPTextEncoder(TextEncoderSpec(str(folder))).dim == 32
    with pytest.raises(TextEncoderUnavailableError, match="text_projection"):
        CLIPTextEncoder(TextEncoderSpec(str(folder), output="projected"))


# ---------------------------------------------------------------- cache


class FakeEncoder:
    """Counts what it encodes; embedding = a deterministic function of the prompt."""

    def __init__(self, identity: str = "fake@1:pooler", dim: int = 4) -> None:
        self.identity = identity
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode(self, prompts: list[str]) -> torch.Tensor:
        self.calls.append(list(prompts))
        return torch.stack(
            [torch.full((self.dim,), float(len(prompt))) + torch.arange(self.dim) for prompt in prompts]
        )


def _random_cache(count: int = 6, dim: int = 8, encoder_id: str = "enc@abc:pooler") -> EmbeddingCache:
    generator = torch.Generator().manual_seed(count)
    prompts = [f"prompt {index}" for index in range(count - 2)] + ["Leber – links", "肝臓"]
    return EmbeddingCache(encoder_id, dim).add(prompts, torch.randn(count, dim, generator=generator))


def test_cache_round_trip_is_bit_exact(tmp_path: Path) -> None:
    cache = _random_cache()
    assert cache.save(tmp_path / "cache") == tmp_path / "cache"
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == [
        "embeddings.json",
        "embeddings.safetensors",
    ]
    loaded = EmbeddingCache.load(tmp_path / "cache", expected_encoder_id="enc@abc:pooler")
    assert loaded.prompts == cache.prompts and loaded.encoder_id == cache.encoder_id and loaded.dim == 8
    assert torch.equal(loaded.get(loaded.prompts), cache.get(cache.prompts))
    index = json.loads((tmp_path / "cache" / "embeddings.json").read_text(encoding="utf-8"))
    assert index["format_version"] == 1 and index["count"] == 6 and len(index["sha256"]) == 64
    empty = EmbeddingCache("enc@abc:pooler", 8)
    assert len(EmbeddingCache.load(empty.save(tmp_path / "empty"))) == 0


def test_cache_lookup(caplog: pytest.LogCaptureFixture) -> None:
    cache = EmbeddingCache("fake@1:pooler", 3).add(
        ["liver", "spleen"], torch.tensor([[1.0, 2, 3], [4, 5, 6]])
    )
    assert len(cache) == 2 and "liver" in cache and "kidney" not in cache and 3 not in cache
    assert cache.get(["spleen", "liver", "spleen"]).tolist() == [[4, 5, 6], [1, 2, 3], [4, 5, 6]]
    assert cache.get([]).shape == (0, 3)
    with pytest.raises(PromptNotCachedError) as info:
        cache.get(["liver", "left kidney", "aorta"])
    assert isinstance(info.value, KeyError) and isinstance(info.value, EmbeddingCacheError)
    assert info.value.missing == ["left kidney", "aorta"]
    assert (
        "'left kidney'" in str(info.value) and "'aorta'" in str(info.value) and "'spleen'" in str(info.value)
    )
    with pytest.raises(EmbeddingCacheError, match=r"\(1, 3\)"):
        cache.add(["kidney"], torch.zeros(1, 4))
    with pytest.raises(EmbeddingCacheError, match="non-finite"):
        cache.add(["kidney"], torch.tensor([[0.0, float("nan"), 0.0]]))
    with caplog.at_level(logging.WARNING, logger="TextGuidedSegLib.text.cache"):
        cache.add(["liver"], torch.tensor([[1.0, 2, 3]]))  # same vector: silent
        assert not caplog.records
        cache.add(["liver"], torch.tensor([[1.0, 2, 4]]))
    assert "overwriting" in caplog.text and "'liver'" in caplog.text
    assert cache.get(["liver"]).tolist() == [[1, 2, 4]] and cache.prompts == ["liver", "spleen"]


def test_build_encodes_only_missing_prompts() -> None:
    encoder = FakeEncoder()
    cache = EmbeddingCache(encoder.identity, encoder.dim)
    cache.build(["a", "bb", "a", "ccc", "dddd", "eeeee"], encoder, batch_size=2, progress=False)
    assert encoder.calls == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]  # repeats encoded once, batches of 2
    cache.build(["bb", "ffffff", "a"], encoder, progress=False)
    assert encoder.calls[3:] == [["ffffff"]]
    cache.build(["a", "bb"], encoder, progress=False)
    assert len(encoder.calls) == 4
    assert cache.prompts == ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]
    assert torch.equal(cache.get(["ccc"]), encoder.encode(["ccc"]))


def test_build_refuses_another_encoder() -> None:
    cache = EmbeddingCache("fake@1:pooler", 4)
    with pytest.raises(EmbeddingCacheError, match="'fake@1:pooler'.*'fake@2:pooler'"):
        cache.build(["liver"], FakeEncoder(identity="fake@2:pooler"), progress=False)
    with pytest.raises(EmbeddingCacheError, match="dim 5"):
        cache.build(["liver"], FakeEncoder(dim=5), progress=False)


def test_cache_with_real_encoder(tmp_path: Path, tiny_encoder: CLIPTextEncoder) -> None:
    cache = EmbeddingCache(tiny_encoder.identity, tiny_encoder.dim).build(
        PROMPTS, tiny_encoder, progress=False
    )
    loaded = EmbeddingCache.load(cache.save(tmp_path / "text"), expected_encoder_id=tiny_encoder.identity)
    assert torch.equal(loaded.get(["aorta", "liver"]), tiny_encoder.encode(["aorta", "liver"]))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_failed_save_keeps_previous_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cache"
    old = _random_cache(count=4)
    old.save(folder)
    before = _snapshot(folder)
    new = _random_cache(count=7)

    def broken_save_file(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "save_file", broken_save_file)
        with pytest.raises(OSError, match="disk full"):
            new.save(folder)
    assert _snapshot(folder) == before  # no leftover temp files either

    real_replace = os.replace

    def replace_failing_on_index(source: object, target: object) -> None:
        if Path(str(target)).name == "embeddings.json":
            raise OSError("crash before the index rename")
        real_replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace_failing_on_index)
        with pytest.raises(OSError, match="index rename"):
            new.save(folder)
    assert _snapshot(folder) == before  # the old tensor file was put back
    assert torch.equal(EmbeddingCache.load(folder).get(old.prompts), old.get(old.prompts))


def test_tampered_tensor_file_fails_checksum(tmp_path: Path) -> None:
    folder = _random_cache().save(tmp_path / "cache")
    tensor_file = folder / "embeddings.safetensors"
    data = bytearray(tensor_file.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last float
    tensor_file.write_bytes(bytes(data))
    with pytest.raises(EmbeddingCacheError, match="checksum mismatch") as info:
        EmbeddingCache.load(folder)
    assert str(tensor_file) in str(info.value)


def test_load_refuses_other_encoder(tmp_path: Path) -> None:
    folder = _random_cache(encoder_id="enc@abc:pooler").save(tmp_path / "cache")
    with pytest.raises(EmbeddingCacheError, match="'enc@abc:pooler'.*'enc@def:pooler'") as info:
        EmbeddingCache.load(folder, expected_encoder_id="enc@def:pooler")
    assert str(folder / "embeddings.json") in str(info.value)


def _edit_index(folder: Path, **changes: object) -> None:
    path = folder / "embeddings.json"
    index = json.loads(path.read_text(encoding="utf-8"))
    index.update(changes)
    path.write_text(json.dumps(index), encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "file_name", "pattern"),
    [
        (lambda folder: (folder / "embeddings.json").unlink(), "embeddings.json", "no embedding cache index"),
        (lambda folder: (folder / "embeddings.safetensors").unlink(), "embeddings.safetensors", "is missing"),
        (lambda folder: _edit_index(folder, format_version=2), "embeddings.json", "format_version 2"),
        (
            lambda folder: (folder / "embeddings.json").write_text("{", encoding="utf-8"),
            "embeddings.json",
            "cannot",
        ),
        (
            lambda folder: _edit_index(folder, prompts=["a", "b"], count=2),
            "embeddings.safetensors",
            "holds 6 row",
        ),
    ],
    ids=["no-index", "no-tensors", "format-version", "bad-json", "row-count"],
)
def test_load_errors_name_the_file(
    tmp_path: Path, damage: Callable[[Path], object], file_name: str, pattern: str
) -> None:
    folder = _random_cache().save(tmp_path / "cache")
    damage(folder)
    with pytest.raises(EmbeddingCacheError, match=pattern) as info:
        EmbeddingCache.load(folder)
    assert str(folder / file_name) in str(info.value)
