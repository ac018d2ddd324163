"""The anatomy vocabulary: every published model's labels resolve, codes and colours match their sources,
and prompts over the large vocabulary mean the right structures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import shared_path

from TextGuidedSegLib.taxonomy import (
    SLICER_GENERAL_ANATOMY_CONTEXT,
    TOTALSEGMENTATOR_CONTEXT,
    Code,
    PromptError,
    Taxonomy,
    get_taxonomy,
    get_vocabulary,
    parse_prompt,
    resolve_structure_name,
    structure_vocabulary,
    vocabulary_taxonomy,
)

ZOO = ("monai_model_zoo",)
SIDE_CODES = {"24028007", "7771000"}
HEART = ["myocardium", "left_atrium", "left_ventricle", "right_atrium", "right_ventricle"]


def channel_names(bundle: str) -> list[str]:
    """Label names of a MONAI bundle's output channels 1..n (0 is the background)."""
    path = shared_path(*ZOO, bundle, "configs", "metadata.json")
    channels = json.loads(path.read_text())["network_data_format"]["outputs"]["pred"]["channel_def"]
    return [channels[str(i)] for i in range(1, len(channels))]


@pytest.fixture(scope="module")
def wholebody() -> Taxonomy:
    names = channel_names("wholeBody_ct_segmentation")
    return vocabulary_taxonomy("wholebody", [resolve_structure_name(n) for n in names])


def classes(prompt: str, taxonomy: Taxonomy) -> list[str]:
    return [q.class_name for q in parse_prompt(prompt, taxonomy, allow_free_text=False)]


@pytest.mark.parametrize(
    "bundle, count", [("wholeBody_ct_segmentation", 104), ("swin_unetr_btcv_segmentation", 13)]
)
def test_every_wholebody_and_btcv_label_resolves_once(bundle, count):
    names = channel_names(bundle)
    resolved = [resolve_structure_name(n) for n in names]
    assert len(resolved) == count and len(set(resolved)) == count  # one structure per channel, none twice
    vocabulary = get_vocabulary()
    assert all(not vocabulary[c].is_group for c in resolved)


def test_btcv_and_vista3d_spellings_resolve():
    assert resolve_structure_name("Left Kideny") == "left_kidney"  # BTCV metadata.json's typo
    assert resolve_structure_name("IVC") == "inferior_vena_cava"
    assert resolve_structure_name("Portal and Splenic Veins") == "portal_vein_and_splenic_vein"
    labels = json.loads(shared_path(*ZOO, "vista3d", "label_dict.json").read_text())
    resolved = {name: resolve_structure_name(name) for name in labels}
    assert len(resolved) == 124
    assert resolved["left iliac vena"] == "left_iliac_vein" and resolved["hepatic tumor"] == "liver_tumor"
    with pytest.raises(KeyError, match="did you mean 'liver'"):
        resolve_structure_name("livr")


def test_universal32_and_totalsegmentator_names_are_one_structure_each():
    vocabulary = get_vocabulary()
    for name in get_taxonomy("universal32").class_names:
        assert name in vocabulary
    rows = list(csv.DictReader(shared_path("terminology", "totalsegmentator_snomed_mapping.csv").open()))
    assert len(rows) == 170
    resolved = [resolve_structure_name(r["Structure"]) for r in rows]
    assert len(set(resolved)) == 170
    assert resolve_structure_name("small_bowel") == "small_intestine"  # universal32's name wins


def _ga_types(path: Path) -> dict[tuple[str, str], dict]:
    data = json.loads(path.read_text())
    assert data["SegmentationCategoryTypeContextName"] == SLICER_GENERAL_ANATOMY_CONTEXT
    return {
        (c["CodeValue"], t["CodeValue"]): {"category": c, "type": t}
        for c in data["SegmentationCodes"]["Category"]
        for t in c["Type"]
    }


def _code(row: dict, prefix: str) -> Code | None:
    value = row[f"{prefix}.CodeValue"].strip()
    return (
        Code(row[f"{prefix}.CodingSchemeDesignator"], value, row[f"{prefix}.CodeMeaning"]) if value else None
    )


def test_codes_and_colours_come_from_slicer_general_anatomy_else_totalsegmentator():
    ga = _ga_types(
        shared_path("slicer_terminology", "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.term.json")
    )
    ts_term = json.loads(
        shared_path("terminology", "SegmentationCategoryTypeModifier-TotalSegmentator.term.json").read_text()
    )
    assert ts_term["SegmentationCategoryTypeContextName"] == TOTALSEGMENTATOR_CONTEXT
    rows = list(csv.DictReader(shared_path("terminology", "totalsegmentator_snomed_mapping.csv").open()))
    vocabulary = get_vocabulary()
    from_ga = from_ts = 0
    for row in rows:
        entry = vocabulary[resolve_structure_name(row["Structure"])]
        t = entry.terminology
        category = _code(row, "SegmentedPropertyCategoryCodeSequence")
        kind = _code(row, "SegmentedPropertyTypeCodeSequence")
        modifier = _code(row, "SegmentedPropertyTypeModifierCodeSequence")
        hit = ga.get((category.value, kind.value))
        ga_modifiers = {m["CodeValue"]: m for m in (hit or {}).get("type", {}).get("Modifier", [])}
        defined_by_ga = hit is not None and (
            (modifier is None and "recommendedDisplayRGBValue" in hit["type"])
            or (modifier is not None and modifier.value in ga_modifiers)
        )
        if defined_by_ga:
            assert t.context_name == SLICER_GENERAL_ANATOMY_CONTEXT, row["Structure"]
            assert t.type == Code("SCT", hit["type"]["CodeValue"], hit["type"]["CodeMeaning"]), row[
                "Structure"
            ]
            source = ga_modifiers[modifier.value] if modifier is not None else hit["type"]
            assert list(t.color) == source["recommendedDisplayRGBValue"], row["Structure"]
            from_ga += 1
        elif t.context_name == TOTALSEGMENTATOR_CONTEXT:
            assert (t.category, t.type, t.modifier) == (category, kind, modifier), row["Structure"]
            assert (t.region, t.region_modifier) == (
                _code(row, "AnatomicRegionSequence"), _code(row, "AnatomicRegionModifierSequence")
            ), row["Structure"]  # fmt: skip
            assert list(t.color) == [int(c) for c in row["DicomRGBColor"].split(",")], row["Structure"]
            from_ts += 1
        else:  # universal32's lesion coding (Slicer's Mass/Cyst with the host as region) takes precedence
            assert t.context_name == SLICER_GENERAL_ANATOMY_CONTEXT and t.region is not None, row["Structure"]
    assert from_ga >= 30 and from_ts >= 100, (from_ga, from_ts)


def test_laterality_follows_the_modifier_and_lateral_pairs_have_a_whole():
    vocabulary = get_vocabulary()
    for entry in vocabulary.structures:
        modifier = entry.terminology.modifier
        lateral = modifier is not None and modifier.value in SIDE_CODES
        assert (entry.laterality is not None) == lateral, entry.class_name
    assert vocabulary["kidney"].parts == ("right_kidney", "left_kidney")
    assert vocabulary.expand("lung", {"right_lung_upper_lobe", "left_lung_lower_lobe", "liver"}) == (
        "right_lung_upper_lobe",
        "left_lung_lower_lobe",
    )
    assert vocabulary.expand("lung", {"right_lung", "left_lung"}) == ("right_lung", "left_lung")
    assert vocabulary.expand("liver", {"spleen"}) == ()


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("lumbar vertebrae", ["vertebra_l5", "vertebra_l4", "vertebra_l3", "vertebra_l2", "vertebra_l1"]),
        ("ribs on the left", [f"left_rib_{i}" for i in range(1, 13)]),
        ("left ribs", [f"left_rib_{i}" for i in range(1, 13)]),
        ("heart and aorta", [*HEART, "aorta"]),
        ("urinary bladder", ["urinary_bladder"]),
        ("iliopsoas", ["left_iliopsoas", "right_iliopsoas"]),
        ("liver and both kidneys", ["liver", "right_kidney", "left_kidney"]),
        ("left lung", ["left_lung_upper_lobe", "left_lung_lower_lobe"]),
        ("RML", ["right_lung_middle_lobe"]),
        ("L1 and T12", ["vertebra_l1", "vertebra_t12"]),
        ("right 12th rib", ["right_rib_12"]),
        ("collarbones", ["left_clavicle", "right_clavicle"]),
        ("IVC", ["inferior_vena_cava"]),
    ],
)  # fmt: skip
def test_prompts_over_the_wholebody_vocabulary(wholebody, prompt, expected):
    assert classes(prompt, wholebody) == expected


def test_a_known_structure_the_model_lacks_is_not_silently_answered(wholebody):
    with pytest.raises(PromptError, match="could not recognise 'prostate'"):
        classes("prostate", wholebody)


def test_completer_grows_to_the_bundles_vocabulary(wholebody):
    vocabulary = structure_vocabulary(wholebody)
    assert len(vocabulary) > 150
    folded = {v.casefold() for v in vocabulary}
    for phrase in ("Left Rib 1", "L1 Vertebra", "Ribs", "Lumbar Vertebrae", "Heart", "Lungs", "Iliopsoas"):
        assert phrase.casefold() in folded
    for phrase in vocabulary:
        assert parse_prompt(phrase, wholebody, allow_free_text=False), phrase


def test_taxonomy_round_trip_is_compact(wholebody):
    data = wholebody.to_dict()
    assert data["structures"][:3] == ["spleen", "right_kidney", "left_kidney"]
    assert Taxonomy.from_dict(json.loads(json.dumps(data))) == wholebody
    with_prompt = vocabulary_taxonomy(
        "x", ["liver"], prompts={"liver": "A computerized tomography of a hepar"}
    )
    assert with_prompt.to_dict()["structures"] == [
        {"class_name": "liver", "prompt": "A computerized tomography of a hepar"}
    ]
    with pytest.raises(ValueError, match="not in the taxonomy"):
        vocabulary_taxonomy("x", ["liver"], prompts={"spleen": "p"})


def test_a_model_with_a_whole_and_its_sides_keeps_both():
    taxonomy = vocabulary_taxonomy("x", ["adrenal_gland", "right_adrenal_gland", "left_adrenal_gland"])
    assert classes("adrenal gland", taxonomy) == ["adrenal_gland"]
    assert classes("left adrenal gland", taxonomy) == ["left_adrenal_gland"]
    everything = [e.class_name for e in get_vocabulary().structures]
    assert len(vocabulary_taxonomy("all", everything)) == 183  # every structure can share one taxonomy
