"""Training details as the seed's pipeline: BTCV's second template (01_2), the per-dataset zoom and
class-balanced tumour crops, and what an empty target contributes to the Dice term (excluded: BCE only)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from TextGuidedSegLib.bundle import BundleConfig, BundleError, load_bundle
from TextGuidedSegLib.data.dataset_prompts import (
    SEED_DATASET_KEYS,
    dataset_prompts,
    dataset_sentence,
    organ_sentences,
)
from TextGuidedSegLib.data.datasets import get_dataset
from TextGuidedSegLib.data.label_transfer import transfer_labels
from TextGuidedSegLib.data.phantom import PhantomConfig, write_phantoms
from TextGuidedSegLib.inference import Segmenter
from TextGuidedSegLib.models import ModelConfig
from TextGuidedSegLib.taxonomy import get_taxonomy
from TextGuidedSegLib.text import EmbeddingCache
from TextGuidedSegLib.text.encoder import CLIPTextEncoder, TextEncoderSpec
from TextGuidedSegLib.text.testing import make_tiny_clip_text_model
from TextGuidedSegLib.training.checkpoint import load_checkpoint
from TextGuidedSegLib.training.config import ConfigError, DataConfig, TrainConfig
from TextGuidedSegLib.training.data import DatasetCropd
from TextGuidedSegLib.training.embeddings import GlobalConditioning, synthetic_embedding
from TextGuidedSegLib.training.export import export_bundle
from TextGuidedSegLib.training.loss import SegmentationLoss
from TextGuidedSegLib.training.trainer import _prompt_embeddings, batch_inputs, train
from TextGuidedSegLib.training.validation import validate


def test_empty_targets_are_left_out_of_the_dice_term():
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    target = torch.zeros(1, 2, 4, 4, 4)
    target[0, 0, :2] = 1.0  # query 0 has voxels, query 1 is empty
    out = SegmentationLoss()(logits, target, torch.tensor([[True, True]]))
    p = logits[0, 0].sigmoid()
    dice0 = 1 - (2 * (p * target[0, 0]).sum() + 1e-5) / (p.sum() + target[0, 0].sum() + 1e-5)
    assert (out.count, out.dice_count) == (2, 1)
    assert out.dice.item() == pytest.approx(dice0.item(), abs=1e-6)  # not (dice0 + ~1) / 2
    out.loss.backward()
    bce_only = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, 1], target[0, 1]) / 2
    (expected,) = torch.autograd.grad(bce_only, logits)
    torch.testing.assert_close(logits.grad[0, 1], expected[0, 1])  # the empty query learns from BCE alone
    empty = SegmentationLoss()(logits, torch.zeros_like(target), torch.tensor([[True, True]]))
    assert empty.dice.item() == 0.0 and empty.dice_count == 0 and empty.bce.item() > 0


def _btcv_label() -> np.ndarray:
    raw = np.zeros((14, 4, 4), dtype=np.uint8)
    for value in range(1, 15):
        raw[value - 1] = value
    return raw


def test_btcv_cases_from_60_use_the_second_template():
    early = transfer_labels(_btcv_label(), "btcv", case="label0040")
    assert early.annotated == tuple(range(1, 15))
    later = transfer_labels(_btcv_label(), "btcv", case="label0061")
    assert later.annotated == (1, 3, 4, 5, 6, 7, 11, 14)  # the Universal Model's TEMPLATE['01_2']
    for missing in (2, 8, 9, 10, 12, 13):  # unknown there, so masked out of the loss, never "absent"
        assert not later.mask(missing).any()
    assert later.mask(3).sum() == early.mask(3).sum() == 16
    assert transfer_labels(_btcv_label(), "btcv").annotated == early.annotated  # no name: whole template


def _case(dataset: str) -> dict:
    label = torch.zeros(3, 32, 32, 32, dtype=torch.uint8)  # liver, liver tumour, spleen
    label[0, 4:28, 4:28, 4:28] = 1
    label[1, 24:27, 24:27, 24:27] = 1
    label[2, 2:5, 2:5, 2:5] = 1
    image = torch.rand(1, 32, 32, 32)
    return {"image": image, "label": label, "dataset": dataset, "name": "case"}


def test_tumour_datasets_crop_by_label_classes_and_msd_cases_zoom():
    data = DataConfig(roi_size=(8, 8, 8), num_samples=6, class_crop_ratios=(0.0, 0.0, 1.0), zoom_prob=1.0)
    crop = DatasetCropd(data, label_ids=[6, 27, 1])
    crop.set_random_state(seed=0)
    crops = crop(_case("msd_task03"))
    assert len(crops) == 6 and all(c["image"].shape == (1, 8, 8, 8) for c in crops)
    assert all(c["label"][1].any() for c in crops), "a tumour-ratio-only crop missed the tumour"
    assert all("crop_classes" not in c for c in crops)
    assert crop.zooms("msd_task03") and crop.zooms("msd_task09") and not crop.zooms("btcv")
    classes = crop.crop_classes(_case("lits")["label"])
    assert classes[0, 25, 25, 25] == 2 and classes[0, 10, 10, 10] == 1 and classes[0, 0, 0, 0] == 0
    # pos:neg elsewhere: with pos only every crop centre is labelled, but the tumour is rarely reached
    posneg = DatasetCropd(DataConfig(roi_size=(8, 8, 8), num_samples=6, pos=1.0, neg=0.0), [6, 27, 1])
    posneg.set_random_state(seed=0)
    assert all(c["label"].any() for c in posneg(_case("btcv")))


# ----------------------------------------------------------------------------------------------------------
# Global mode conditioned on the dataset's prompt (the seed's embeddings_template / _template_mean)
# ----------------------------------------------------------------------------------------------------------

KITS_SENTENCE = (
    "a computerized tomography of Right Kidney, Left Kidney, Kidney Tumor, Kidney Cyst"  # seed's 05
)
GLOBAL_STRUCTURES = ["liver", "right_kidney", "left_kidney", "liver_tumor", "kidney_tumor"]


def _two_dataset_lists(tmp_path: Path) -> Path:
    """A list file with one LiTS and one KiTS case (empty files: only the names and folders are read)."""
    lines = []
    for folder in ("04_LiTS", "05_KiTS"):
        for kind in ("img", "label"):
            (tmp_path / folder / kind).mkdir(parents=True)
            (tmp_path / folder / kind / "case_00001.nii.gz").touch()
        lines.append(f"{folder}/img/case_00001.nii.gz\t{folder}/label/case_00001.nii.gz")
    list_file = tmp_path / "two.txt"
    list_file.write_text("\n".join(lines) + "\n")
    return list_file


def _global_config(tmp_path: Path, conditioning: str, **text) -> TrainConfig:
    list_file = _two_dataset_lists(tmp_path)
    return TrainConfig.from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "structures": GLOBAL_STRUCTURES,
            "model": {"architecture": "film_v1", "mode": "global", "feature_size": 12},
            "data": {"train_lists": [str(list_file)], "roi_size": [64, 32, 32]},
            "text": {"source": "synthetic", "dim": 16, "global_conditioning": conditioning, **text},
        }
    )


def _batch(datasets: list[str]) -> dict:
    n = len(datasets)
    return {
        "image": torch.zeros(n, 1, 4, 4, 4),
        "label": torch.zeros(n, len(GLOBAL_STRUCTURES), 4, 4, 4, dtype=torch.uint8),
        "annotated": torch.ones(n, len(GLOBAL_STRUCTURES), dtype=torch.bool),
        "dataset": datasets,
    }


def test_dataset_sentence_is_the_seeds_template_text():
    assert dataset_sentence("kits") == KITS_SENTENCE
    assert dataset_sentence("lits") == "a computerized tomography of Liver, Liver Tumor"
    assert dataset_sentence("msd_task07") == "a computerized tomography of Pancreas, Pancreas Tumor"
    assert organ_sentences("lits") == [
        "a computerized tomography of Liver",
        "a computerized tomography of Liver Tumor",
    ]
    # the seed's key order (WORD's TEMPLATE['07'] starts with liver, spleen) and spelling ("Arota")
    assert dataset_sentence("word").startswith("a computerized tomography of Liver, Spleen, Left Kidney, ")
    assert "Arota" in dataset_sentence("btcv") and "Celiac Truck" in dataset_sentence("abdomenct12organ")
    for key, (_seed_key, template) in SEED_DATASET_KEYS.items():  # every seed organ our dataset can annotate
        spec = get_dataset(key)
        reachable = set(spec.channels_of(list(spec.table)))
        assert set(template) - reachable <= ({22} if key == "amos" else set()), key


def test_global_mode_samples_of_different_datasets_get_their_own_conditioning(tmp_path):
    config = _global_config(tmp_path, "dataset_sentence")
    prompts = [f"prompt {s}" for s in GLOBAL_STRUCTURES]
    state, _query, conditioning = _prompt_embeddings(config, None, prompts, torch.device("cpu"))
    assert state["dataset_prompts"] == {
        "kits": [KITS_SENTENCE],
        "lits": ["a computerized tomography of Liver, Liver Tumor"],
    }
    _image, text, _target, _mask = batch_inputs(
        _batch(["kits", "lits", "kits"]), "channels", None, conditioning, torch.device("cpu")
    )
    assert text.shape == (3, 1, 16)
    assert not torch.allclose(text[0], text[1]), "two datasets got the same conditioning (a fixed prompt)"
    torch.testing.assert_close(text[0, 0], synthetic_embedding(KITS_SENTENCE, 16))
    torch.testing.assert_close(text[2], text[0])
    with pytest.raises(ConfigError, match=r"no dataset_sentence conditioning for dataset\(s\) \['chaos'\]"):
        conditioning.for_datasets(["chaos"])


def test_fixed_conditioning_is_one_prompt_for_every_dataset(tmp_path):
    config = _global_config(tmp_path, "fixed", global_prompt="one prompt")
    state, _query, conditioning = _prompt_embeddings(config, None, ["a", "b"], torch.device("cpu"))
    text = conditioning.for_datasets(["kits", "lits"])
    assert state["dataset_prompts"] == {} and state["prompts"] == ["a", "b", "one prompt"]
    torch.testing.assert_close(text[0, 0], synthetic_embedding("one prompt", 16))
    torch.testing.assert_close(text[1], text[0])


def test_dataset_mean_is_the_mean_of_the_organ_sentence_embeddings(tmp_path):
    folder = make_tiny_clip_text_model(tmp_path / "clip")
    encoder = CLIPTextEncoder(TextEncoderSpec(str(folder)))
    sentences = organ_sentences("kits")
    assert sentences[0] == "a computerized tomography of Right Kidney" and len(sentences) == 4
    cache = EmbeddingCache(encoder.identity, encoder.dim)
    cache.build(
        sorted({p for key in ("kits", "lits") for p in organ_sentences(key)}), encoder, progress=False
    )
    cache.save(tmp_path / "cache")
    config = _global_config(tmp_path, "dataset_mean", source="cache", cache_dir=str(tmp_path / "cache"))
    _state, _query, conditioning = _prompt_embeddings(config, None, [], torch.device("cpu"))
    independent = torch.stack([encoder.encode([s])[0] for s in sentences]).mean(0)  # one sentence at a time
    torch.testing.assert_close(conditioning.vectors["kits"], independent, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(conditioning.vectors["lits"], independent)


def test_validation_conditions_each_case_on_its_own_dataset():
    vectors = {"kits": torch.full((4,), 1.0), "lits": torch.full((4,), 2.0)}
    conditioning = GlobalConditioning("dataset_sentence", vectors, {"kits": ["k"], "lits": ["l"]})
    seen: list[float] = []

    class Recorder(torch.nn.Module):
        def forward(self, window, text, class_indices=None):
            seen.extend(text[:, 0, 0].tolist())
            return torch.zeros(window.shape[0], 1, *window.shape[2:])

    def parts_conditioning(n: int, dataset: str):
        return conditioning.for_datasets([dataset] * n), None

    loader = [
        {"image": torch.zeros(1, 1, 8, 8, 8), "label": torch.zeros(1, 1, 8, 8, 8),
         "annotated": torch.ones(1, 1, dtype=torch.bool), "dataset": [key]}
        for key in ("lits", "kits")
    ]  # fmt: skip
    validate(Recorder(), loader, parts_conditioning, 1, (8, 8, 8), 0.0, 1, torch.device("cpu"), nullcontext())
    assert seen == [2.0, 1.0]


def test_bundle_with_several_dataset_keys_needs_one_chosen():
    taxonomy = get_taxonomy("universal32").subset(["liver"])
    model = ModelConfig(architecture="film_v1", mode="global", num_classes=1, feature_size=12)
    prompts = {"kits": [KITS_SENTENCE], "lits": ["a computerized tomography of Liver, Liver Tumor"]}
    config = BundleConfig(name="b", model=model, taxonomy=taxonomy, dataset_prompts=prompts)
    with pytest.raises(BundleError, match="trained with the keys kits, lits: choose one"):
        config.conditioning_prompts()
    assert config.conditioning_prompts("kits") == [KITS_SENTENCE]
    with pytest.raises(BundleError, match="has no dataset key 'chaos'; it was trained with kits, lits"):
        config.conditioning_prompts("chaos")
    chosen = BundleConfig.from_dict({**config.to_dict(), "dataset_key": "lits"})
    assert chosen.conditioning_prompts() == prompts["lits"]
    with pytest.raises(BundleError, match="dataset_key 'chaos' is not a key of dataset_prompts"):
        BundleConfig.from_dict({**config.to_dict(), "dataset_key": "chaos"})
    assert BundleConfig(name="f", model=model, taxonomy=taxonomy).conditioning_prompts() == [
        "A Computed Tomography of abdomen organ"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dataset_sentence", "dataset_mean"])
def test_tiny_global_run_in_each_variant_trains_resumes_and_exports(tmp_path, variant):
    lists = write_phantoms(
        tmp_path / "phantoms", 2, PhantomConfig(shape=(64, 32, 32), spacing=(5.0, 5.0, 5.0)), seed=0,
        progress=False,
    )  # fmt: skip
    raw = {
        "run_dir": str(tmp_path / "run"),
        "structures": ["liver", "spleen"],
        "max_steps": 2,
        "ckpt_every": 1,
        "val_every": 0,
        "threads": 1,
        "tensorboard": False,
        "progress": False,
        "model": {"architecture": "film_v1", "mode": "global", "feature_size": 12},
        "data": {"train_lists": [str(lists)], "val_lists": [str(lists)], "spacing": [5.0, 5.0, 5.0],
                 "roi_size": [64, 32, 32], "num_samples": 1, "num_workers": 0},
        "text": {"source": "synthetic", "dim": 16, "global_conditioning": variant},
        "optim": {"warmup_steps": 1, "lr": 1e-3},
    }  # fmt: skip
    first = train(TrainConfig.from_dict(raw))
    assert first.step == 2 and math.isfinite(first.loss) and first.best_metric >= 0
    state = load_checkpoint(first.checkpoint)
    expected = {"phantom": dataset_prompts("phantom", variant)}
    assert state["text"]["global_conditioning"] == variant and state["text"]["dataset_prompts"] == expected
    resumed = train(TrainConfig.from_dict({**raw, "max_steps": 3}), resume="auto")
    assert resumed.step == 3 and math.isfinite(resumed.loss)
    assert load_checkpoint(resumed.checkpoint)["text"]["dataset_prompts"] == expected

    bundle = load_bundle(export_bundle(resumed.checkpoint, tmp_path / "bundle"))
    assert (
        bundle.config.dataset_prompts == expected
        and bundle.config.conditioning_prompts() == expected["phantom"]
    )
    segmenter = Segmenter(bundle, device="cpu", progress=False)
    text, _indices = segmenter.conditioning(segmenter.queries(""))
    trained = GlobalConditioning.from_text_state(state["text"], "unused").vectors["phantom"]
    torch.testing.assert_close(text[0, 0], trained)  # inference conditions on the key the model learnt
    with pytest.raises(ValueError, match="dataset_key 'kits': the checkpoint's dataset keys are phantom"):
        export_bundle(resumed.checkpoint, tmp_path / "other", dataset_key="kits")
