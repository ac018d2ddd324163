"""The seed's dataset prompts: the text that conditions a global-mode model on the dataset a case comes from.

The seed (CLIP-Deep-Driven FiLM) fed every training sample the prompt of its dataset key and tested with the
same key, so the model learns which label set is present. Its two variants (``embeddings_template.pkl`` and
``embeddings_template_mean.pkl``):

- ``dataset_sentence``: one sentence, ``"a computerized tomography of " + ", ".join(organ names)``, the organs
  of the dataset's template in the seed's order (key ``05``: ``"a computerized tomography of Right Kidney,
  Left Kidney, Kidney Tumor, Kidney Cyst"``);
- ``dataset_mean``: the mean of the per-organ sentence embeddings, ``"a computerized tomography of {organ}"``.

Organ names are the seed's (``ORGAN_NAME``) with the spellings its embedding prompts used ("Arota", "Celiac
Truck"). Datasets the seed did not train on (FLARE22, the phantoms, TotalSegmentator) use their own template
(``DatasetSpec.annotated``) in label-id order.
"""

from __future__ import annotations

from .datasets import get_dataset

__all__ = [
    "DATASET_PROMPT_VARIANTS",
    "SEED_DATASET_KEYS",
    "SEED_ORGAN_NAMES",
    "SENTENCE_PREFIX",
    "dataset_organ_ids",
    "dataset_prompts",
    "dataset_sentence",
    "organ_sentences",
]

#: ``text.global_conditioning`` values that condition on the dataset (``fixed`` is the single global prompt).
DATASET_PROMPT_VARIANTS: tuple[str, ...] = ("dataset_sentence", "dataset_mean")
#: The start of every seed dataset prompt.
SENTENCE_PREFIX = "a computerized tomography of "

#: The seed's organ names, label id ``i`` at position ``i - 1``, spelled as in its embedding prompts.
SEED_ORGAN_NAMES: tuple[str, ...] = (
    "Spleen", "Right Kidney", "Left Kidney", "Gall Bladder", "Esophagus", "Liver", "Stomach", "Arota",
    "Postcava", "Portal Vein and Splenic Vein", "Pancreas", "Right Adrenal Gland", "Left Adrenal Gland",
    "Duodenum", "Hepatic Vessel", "Right Lung", "Left Lung", "Colon", "Intestine", "Rectum", "Bladder",
    "Prostate", "Left Head of Femur", "Right Head of Femur", "Celiac Truck", "Kidney Tumor", "Liver Tumor",
    "Pancreas Tumor", "Hepatic Vessel Tumor", "Lung Tumor", "Colon Tumor", "Kidney Cyst",
)  # fmt: skip

#: Our dataset key -> (the seed's key, its ``TEMPLATE`` label ids in the seed's order).
SEED_DATASET_KEYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "btcv": ("01", tuple(range(1, 15))),
    "tcia_pancreas": ("02", (1, 3, 4, 5, 6, 7, 11, 14)),
    "chaos": ("03", (6,)),
    "lits": ("04", (6, 27)),
    "kits": ("05", (2, 3, 26, 32)),
    "word": ("07", (6, 1, 3, 2, 7, 4, 5, 11, 14, 18, 19, 12, 13, 20, 21, 23, 24)),
    "abdomenct1k": ("08", (6, 2, 3, 1, 11)),
    "amos": ("09", (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 21, 22)),
    "ctorg": ("12", (6, 21, 16, 17, 2, 3)),
    "abdomenct12organ": ("13", (6, 2, 3, 1, 11, 8, 9, 7, 4, 5, 12, 13, 25)),
    "msd_task03": ("10_03", (6, 27)),
    "msd_task06": ("10_06", (30,)),
    "msd_task07": ("10_07", (11, 28)),
    "msd_task08": ("10_08", (15, 29)),
    "msd_task09": ("10_09", (1,)),
    "msd_task10": ("10_10", (31,)),
}


def dataset_organ_ids(dataset: str) -> tuple[int, ...]:
    """The label ids a dataset's prompt names: the seed's template for its datasets, else the dataset's own.

    Raises:
        UnknownDatasetError: ``dataset`` is not in ``datasets.json``.
        ValueError: the dataset annotates nothing (it has no prompt).
    """
    if dataset in SEED_DATASET_KEYS:
        return SEED_DATASET_KEYS[dataset][1]
    ids = get_dataset(dataset).annotated
    if not ids:
        raise ValueError(f"dataset {dataset!r} annotates no structure, so it has no dataset prompt")
    return ids


def dataset_sentence(dataset: str) -> str:
    """The seed's dataset sentence: ``"a computerized tomography of Liver, Liver Tumor"`` for ``lits``."""
    return SENTENCE_PREFIX + ", ".join(SEED_ORGAN_NAMES[i - 1] for i in dataset_organ_ids(dataset))


def organ_sentences(dataset: str) -> list[str]:
    """The per-organ sentences whose embeddings the ``dataset_mean`` variant averages, in template order."""
    return [SENTENCE_PREFIX + SEED_ORGAN_NAMES[i - 1] for i in dataset_organ_ids(dataset)]


def dataset_prompts(dataset: str, variant: str) -> list[str]:
    """The prompts whose embeddings, averaged, condition a sample of ``dataset`` (one for the sentence).

    Raises:
        ValueError: ``variant`` is not one of :data:`DATASET_PROMPT_VARIANTS`.
    """
    if variant == "dataset_sentence":
        return [dataset_sentence(dataset)]
    if variant == "dataset_mean":
        return organ_sentences(dataset)
    raise ValueError(f"dataset prompt variant must be one of {DATASET_PROMPT_VARIANTS}, got {variant!r}")
