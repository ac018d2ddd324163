"""CLIPSeg as the tuning benchmark ran it (pranzalkhadka/clipseg-tuning-benchmark): base CIDAS/clipseg-rd16,
adapters 512 wide at the benchmark's places (~4.2 M trainable parameters), batch 64, AdamW's default weight
decay, early stopping on the validation Dice; our earlier compact adapters stay a named option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from TextGuidedSegLib.clipseg.config import load_clipseg_config
from TextGuidedSegLib.clipseg.model import BENCHMARK_CLIPSEG, CLIPSegNet, StrategyOptions, apply_strategy
from TextGuidedSegLib.clipseg.testing import make_tiny_clipseg
from TextGuidedSegLib.clipseg.train import monitor
from TextGuidedSegLib.training.run import MEAN_DICE, VAL_LOSS

REPO_ROOT = Path(__file__).resolve().parents[1]
FLARE22 = REPO_ROOT / "Training" / "configs" / "clipseg" / "flare22.yaml"
BENCHMARK = StrategyOptions(adapter_bottleneck=512, adapter_layout="benchmark")


def _rd16_net() -> CLIPSegNet:
    """CIDAS/clipseg-rd16's architecture (its config.json values), random weights on the meta device."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    config = CLIPSegConfig(
        vision_config={"patch_size": 16, "image_size": 224},
        extract_layers=[3, 6, 9],
        reduce_dim=16,
        projection_dim=512,
        use_complex_transposed_convolution=False,
    )
    with torch.device("meta"):
        model = CLIPSegForImageSegmentation(config)
    return CLIPSegNet(model, tokenizer=None, pixel=None, source=BENCHMARK_CLIPSEG)  # type: ignore[arg-type]


@pytest.mark.slow
def test_rd16_parameter_counts_match_the_benchmark():
    decoder = apply_strategy(_rd16_net(), "decoder", log=False)
    # the benchmark's decoder notebook prints: 263,681 trainable of 149,884,418
    assert (decoder.trainable, decoder.total) == (263_681, 149_884_418)
    adapter = apply_strategy(_rd16_net(), "adapter", BENCHMARK, log=False)
    # 3 x (768-512-768) vision + 3 x (512-512-512) text + (512-256-512) conditional
    vision, text, conditional = (
        3 * (2 * 768 * 512 + 768 + 512),
        3 * (2 * 512 * 512 + 1024),
        2 * 512 * 256 + 768,
    )
    assert adapter.trainable == vision + text + conditional == 4_201_984
    compact = apply_strategy(_rd16_net(), "adapter", StrategyOptions(adapter_bottleneck=64), log=False)
    assert compact.trainable == 3 * (2 * 768 * 64 + 832) + 2 * (2 * 512 * 64 + 576)


@pytest.fixture(scope="module")
def deep_text_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIPSeg whose text tower reaches the extracted layers (0, 1, 2)."""
    return make_tiny_clipseg(tmp_path_factory.mktemp("clipseg_bench") / "tiny", hidden_size=16, text_layers=3)


def test_benchmark_adapters_add_each_layer_eot_state_to_the_conditional_embedding(deep_text_folder, tmp_path):
    net = CLIPSegNet.from_pretrained(str(deep_text_folder))
    torch.manual_seed(0)
    apply_strategy(
        net, "adapter", StrategyOptions(adapter_bottleneck=8, adapter_layout="benchmark"), log=False
    )
    assert sorted(net.adapters) == [
        "conditional",
        "text_0",
        "text_1",
        "text_2",
        "vision_0",
        "vision_1",
        "vision_2",
    ]
    assert net.adapters["conditional"].down.out_features == 256
    assert net.adapters["text_0"].down.out_features == 8 and net.adapters["vision_0"].down.in_features == 16
    prompts = ["liver", "left kidney"]
    with torch.no_grad():
        ours = net.encode_prompts(prompts)
        # the benchmark's forward, written out on transformers' text tower
        tokens = net.tokenizer(prompts, padding=True, return_tensors="pt")
        out = net.hf.clip.text_model(**tokens, output_hidden_states=True)
        expected = net.adapters["conditional"](net.hf.clip.text_projection(out.pooler_output))
        eot = tokens["input_ids"].argmax(-1)
        for layer in (0, 1, 2):
            expected = expected + net.adapters[f"text_{layer}"](
                out.hidden_states[layer + 1][torch.arange(2), eot]
            )
    torch.testing.assert_close(ours, expected)
    net.save(tmp_path / "net")
    loaded = CLIPSegNet.load(tmp_path / "net")
    assert loaded.options.adapter_layout == "benchmark"
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_prompts(prompts), ours)


def test_benchmark_layout_refuses_a_text_tower_too_shallow(tmp_path):
    net = CLIPSegNet.from_pretrained(str(make_tiny_clipseg(tmp_path / "tiny", hidden_size=16)))
    apply_strategy(
        net, "adapter", StrategyOptions(adapter_bottleneck=8, adapter_layout="benchmark"), log=False
    )
    with pytest.raises(ValueError, match="the text tower has 2 layers.*adapter_layout=compact"):
        net.encode_prompts(["liver"])  # 2 text layers, extract_layers 0-2
    wide = CLIPSegNet.from_pretrained(str(make_tiny_clipseg(tmp_path / "wide")))  # text 32, projection 16
    with pytest.raises(ValueError, match=r"text hidden states \(32\) to the conditional embedding \(16\)"):
        apply_strategy(wide, "adapter", BENCHMARK, log=False)
    with pytest.raises(ValueError, match="adapter_layout must be one of"):
        apply_strategy(
            CLIPSegNet.from_pretrained(str(tmp_path / "tiny")),
            "adapter",
            StrategyOptions(adapter_layout="wide"),
            log=False,
        )


def test_flare22_config_holds_the_benchmark_settings():
    config = load_clipseg_config(FLARE22)
    assert config.model == BENCHMARK_CLIPSEG == "CIDAS/clipseg-rd16"
    assert (config.batch_size, config.lr, config.epochs, config.patience) == (64, 1e-3, 20, 3)
    assert (
        config.weight_decay
        == torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults["weight_decay"]
    )
    assert config.early_stopping == "val_dice" and monitor(config) is MEAN_DICE
    assert (config.options.adapter_bottleneck, config.options.adapter_layout) == (512, "benchmark")
    assert config.dice_weight == 0.0  # BCE-with-logits only
    assert monitor(load_clipseg_config(None)) is VAL_LOSS
    compact = load_clipseg_config(FLARE22, ["--options.adapter_layout=compact"])
    assert compact.options.adapter_layout == "compact"
