"""Tests of the structure taxonomy (universal32 data, Slicer terminology codes) and the prompt parser."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from TextGuidedSegLib.taxonomy import (
    ANATOMIC_REGION_CONTEXT,
    SLICER_GENERAL_ANATOMY_CONTEXT,
    TEXTGUIDEDSEG_CONTEXT,
    TOTALSEGMENTATOR_CONTEXT,
    Code,
    PromptError,
    Structure,
    StructureQuery,
    Taxonomy,
    Terminology,
    get_taxonomy,
    parse_prompt,
    structure_vocabulary,
)
from TextGuidedSegLib.taxonomy.structures import RESOURCES_DIR

SLICER_TERM_FILE = ("slicer_terminology", "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.term.json")

UNIVERSAL32_CLASS_NAMES = [
    "spleen",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "portal_vein_and_splenic_vein",
    "pancreas",
    "right_adrenal_gland",
    "left_adrenal_gland",
    "duodenum",
    "hepatic_vessel",
    "right_lung",
    "left_lung",
    "colon",
    "small_intestine",
    "rectum",
    "urinary_bladder",
    "prostate",
    "left_femoral_head",
    "right_femoral_head",
    "celiac_trunk",
    "kidney_tumor",
    "liver_tumor",
    "pancreas_tumor",
    "hepatic_vessel_tumor",
    "lung_tumor",
    "colon_tumor",
    "kidney_cyst",
]
# The Universal Model's ORGAN_NAME list, with its two misspellings corrected ("Arota", "Celiac Truck").
UNIVERSAL_MODEL_NAMES = [
    "Spleen", "Right Kidney", "Left Kidney", "Gall Bladder", "Esophagus", "Liver", "Stomach", "Aorta",
    "Postcava", "Portal Vein and Splenic Vein", "Pancreas", "Right Adrenal Gland", "Left Adrenal Gland",
    "Duodenum", "Hepatic Vessel", "Right Lung", "Left Lung", "Colon", "Intestine", "Rectum", "Bladder",
    "Prostate", "Left Head of Femur", "Right Head of Femur", "Celiac Trunk", "Kidney Tumor", "Liver Tumor",
    "Pancreas Tumor", "Hepatic Vessel Tumor", "Lung Tumor", "Colon Tumor", "Kidney Cyst",
]  # fmt: skip
# Structures absent from Slicer's General Anatomy list: coded by TotalSegmentator's mapping where it has them,
# else this project's own additions.
FROM_TOTALSEGMENTATOR = {
    "inferior_vena_cava": "64131007",
    "portal_vein_and_splenic_vein": "110765007",
    "hepatic_vessel": "59820001",
}
OUR_ADDITIONS = {
    "rectum": "34402009",
    "left_femoral_head": "2812003",
    "right_femoral_head": "2812003",
    "celiac_trunk": "57850000",
}
LIVER_ENTRY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
)


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return get_taxonomy()


@pytest.fixture(scope="module")
def slicer_anatomy(shared_data: Path) -> dict:
    path = shared_data.joinpath(*SLICER_TERM_FILE)
    if not path.exists():
        pytest.skip(f"{path} is absent (see ../shared/data/README.md)")
    return json.loads(path.read_text(encoding="utf-8"))


def classes(text: str, taxonomy: Taxonomy | None = None, **kwargs) -> list[str | None]:
    return [q.class_name for q in parse_prompt(text, taxonomy, **kwargs)]


# -- the universal32 data ----


def test_universal32_order_label_ids_and_prompts(taxonomy):
    assert taxonomy.name == "universal32"
    assert len(taxonomy) == 32
    assert taxonomy.class_names == UNIVERSAL32_CLASS_NAMES
    assert [s.label_id for s in taxonomy] == list(range(1, 33))
    assert [taxonomy.index(c) for c in UNIVERSAL32_CLASS_NAMES] == list(range(32))
    assert taxonomy.prompts == [f"A computerized tomography of a {n.lower()}" for n in UNIVERSAL_MODEL_NAMES]
    assert taxonomy["inferior_vena_cava"].name == "Inferior Vena Cava"
    assert "postcava" in taxonomy["inferior_vena_cava"].synonyms


def test_every_structure_has_codes_colour_and_consistent_laterality(taxonomy):
    assert len(set(taxonomy.class_names)) == 32
    for s in taxonomy:
        t = s.terminology
        assert len(t.color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in t.color), s.class_name
        assert t.category.scheme == "SCT" and t.type.scheme == "SCT", s.class_name
        assert t.type.value.isdigit() and t.type.meaning, s.class_name
        assert t.context_name in (
            SLICER_GENERAL_ANATOMY_CONTEXT, TEXTGUIDEDSEG_CONTEXT, TOTALSEGMENTATOR_CONTEXT
        ), s.class_name  # fmt: skip
        assert t.region_context_name == ANATOMIC_REGION_CONTEXT
        expected_side = s.class_name.split("_")[0] if s.class_name.startswith(("right_", "left_")) else None
        assert s.laterality == expected_side, s.class_name
        if s.laterality is None:
            assert t.modifier is None, s.class_name
        else:
            assert t.modifier == Code("SCT", {"right": "24028007", "left": "7771000"}[s.laterality],
                                      s.laterality.capitalize()), s.class_name  # fmt: skip
        lesion = s.class_name.endswith(("_tumor", "_cyst"))
        assert (t.category.value == "49755003") == lesion, s.class_name
        assert (t.region is not None) == (lesion or s.class_name == "hepatic_vessel"), s.class_name


def test_lesions_record_their_host_structure(taxonomy):
    regions = {
        s.class_name: s.terminology.region.meaning for s in taxonomy if s.terminology.region is not None
    }
    assert regions == {
        "hepatic_vessel": "Liver",
        "kidney_tumor": "Kidney",
        "liver_tumor": "Liver",
        "pancreas_tumor": "Pancreas",
        "hepatic_vessel_tumor": "Liver",
        "lung_tumor": "Lung",
        "colon_tumor": "Colon",
        "kidney_cyst": "Kidney",
    }
    assert taxonomy["kidney_tumor"].terminology.type == Code("SCT", "4147007", "Mass")
    assert taxonomy["kidney_cyst"].terminology.type == Code("SCT", "367643001", "Cyst")
    assert taxonomy["liver_tumor"].terminology.region == taxonomy["liver"].terminology.type


def test_our_additions_are_marked_and_coded(taxonomy):
    additions = {
        s.class_name: s.terminology.type.value
        for s in taxonomy
        if not s.terminology.from_slicer_general_anatomy
    }
    assert additions == {**FROM_TOTALSEGMENTATOR, **OUR_ADDITIONS}
    for class_name in OUR_ADDITIONS:
        assert taxonomy[class_name].terminology.context_name == TEXTGUIDEDSEG_CONTEXT
        assert taxonomy[class_name].terminology.category == Code("SCT", "123037004", "Anatomical Structure")
    for class_name in FROM_TOTALSEGMENTATOR:
        assert taxonomy[class_name].terminology.context_name == TOTALSEGMENTATOR_CONTEXT


def test_codes_and_colours_match_slicer_general_anatomy(taxonomy, slicer_anatomy):
    assert slicer_anatomy["SegmentationCategoryTypeContextName"] == SLICER_GENERAL_ANATOMY_CONTEXT
    categories = {c["CodeValue"]: c for c in slicer_anatomy["SegmentationCodes"]["Category"]}
    checked = 0
    for s in taxonomy:
        t = s.terminology
        category = categories[t.category.value]
        slicer_types = {ty["CodeValue"]: ty for ty in category["Type"]}
        if not t.from_slicer_general_anatomy:
            assert t.type.value not in slicer_types, f"{s.class_name} is in the Slicer list: use its entry"
            continue
        assert t.category == Code(
            category["CodingSchemeDesignator"], category["CodeValue"], category["CodeMeaning"]
        )
        slicer_type = slicer_types[t.type.value]
        assert t.type == Code(slicer_type["CodingSchemeDesignator"], slicer_type["CodeValue"],
                              slicer_type["CodeMeaning"]), s.class_name  # fmt: skip
        if t.modifier is None:
            assert "Modifier" not in slicer_type or s.laterality is None, s.class_name
            expected_color = slicer_type["recommendedDisplayRGBValue"]
        else:
            modifier = next(m for m in slicer_type["Modifier"] if m["CodeValue"] == t.modifier.value)
            assert t.modifier == Code(modifier["CodingSchemeDesignator"], modifier["CodeValue"],
                                      modifier["CodeMeaning"]), s.class_name  # fmt: skip
            expected_color = modifier["recommendedDisplayRGBValue"]
        if s.laterality is None:  # the sides of a pair get distinct colours (test_anatomy: lateral pairs)
            assert list(t.color) == expected_color, s.class_name
        checked += 1
    assert checked == 32 - len(OUR_ADDITIONS) - len(FROM_TOTALSEGMENTATOR)


def test_slicer_entry_strings(taxonomy):
    assert taxonomy["liver"].terminology.slicer_entry() == LIVER_ENTRY
    right_kidney = taxonomy["right_kidney"].terminology.slicer_entry()
    assert "~SCT^64033007^Kidney~SCT^24028007^Right~" in right_kidney
    assert taxonomy["left_kidney"].terminology.slicer_entry().split("~")[3] == "SCT^7771000^Left"
    assert taxonomy["kidney_tumor"].terminology.slicer_entry() == (
        "Segmentation category and type - 3D Slicer General Anatomy list"
        "~SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass~^^"
        "~Anatomic codes - DICOM master list~SCT^64033007^Kidney~^^"
    )
    assert taxonomy["inferior_vena_cava"].terminology.slicer_entry() == (
        "Segmentation category and type - Total Segmentator~SCT^123037004^Anatomical Structure"
        "~SCT^64131007^Inferior vena cava~^^~Anatomic codes - DICOM master list~^^~^^"
    )
    assert taxonomy["celiac_trunk"].terminology.slicer_entry().startswith(TEXTGUIDEDSEG_CONTEXT + "~")
    for s in taxonomy:
        assert len(s.terminology.slicer_entry().split("~")) == 7


def test_every_name_and_synonym_parses_to_its_own_structure(taxonomy):
    for s in taxonomy:
        for phrase in (s.name, s.class_name, *s.synonyms):
            assert classes(phrase, allow_free_text=False) == [s.class_name], phrase


def test_vocabulary_is_unique_and_parseable(taxonomy):
    vocabulary = structure_vocabulary(taxonomy)
    assert len({v.casefold() for v in vocabulary}) == len(vocabulary)
    for expected in ("Inferior Vena Cava", "IVC", "oesophagus", "kidney", "adrenal gland", "femoral head"):
        assert expected in vocabulary
    for phrase in vocabulary:
        assert parse_prompt(phrase, taxonomy, allow_free_text=False), phrase
    # + kidneys, adrenals, lungs, femoral heads; abdominal, pelvic and thoracic organs
    assert len({tuple(classes(p)) for p in vocabulary}) == 32 + 4 + 3


def test_ambiguous_synonyms_are_rejected(taxonomy):
    spleen = dataclasses.replace(taxonomy["spleen"], synonyms=("IVC",))
    structures = (spleen, *taxonomy.structures[1:])
    with pytest.raises(ValueError, match="ambiguous synonym: 'IVC' names both"):
        Taxonomy("bad", structures)
    right_kidney = dataclasses.replace(taxonomy["right_kidney"], synonyms=("kidney",))
    structures = (taxonomy["spleen"], right_kidney, *taxonomy.structures[2:])
    with pytest.raises(ValueError, match="without a side it also names"):
        Taxonomy("bad", structures)


# -- Taxonomy API ----


def test_lookup_and_errors(taxonomy):
    assert taxonomy["liver"].label_id == 6
    assert taxonomy.by_label_id(6) is taxonomy["liver"]
    assert "liver" in taxonomy and "brain" not in taxonomy
    assert [s.class_name for s in taxonomy][:2] == ["spleen", "right_kidney"]
    with pytest.raises(KeyError, match="did you mean 'right_kidney'"):
        taxonomy["right_kidny"]
    with pytest.raises(KeyError, match="unknown class_name 'brain'"):
        taxonomy.index("brain")
    with pytest.raises(KeyError, match=r"valid: 1\.\.32"):
        taxonomy.by_label_id(33)
    with pytest.raises(KeyError):
        taxonomy.by_label_id(0)


def test_get_taxonomy_is_cached_and_rejects_unknown_names():
    assert get_taxonomy() is get_taxonomy("universal32")
    with pytest.raises(ValueError, match=r"unknown taxonomy 'nope'.*universal32"):
        get_taxonomy("nope")
    with pytest.raises(ValueError, match="invalid taxonomy name"):
        get_taxonomy("../secrets")


def test_subset_keeps_order_and_renumbers(taxonomy):
    small = taxonomy.subset(["liver_tumor", "left_kidney", "liver"])
    assert small.class_names == ["liver_tumor", "left_kidney", "liver"]
    assert [s.label_id for s in small] == [1, 2, 3]
    assert small.index("liver") == 2
    assert small["left_kidney"] == dataclasses.replace(taxonomy["left_kidney"], label_id=2)
    assert small.prompts == [taxonomy[c].prompt for c in small.class_names]
    with pytest.raises(KeyError, match="did you mean 'liver'"):
        taxonomy.subset(["livr"])
    with pytest.raises(ValueError, match="more than once"):
        taxonomy.subset(["liver", "liver"])
    with pytest.raises(ValueError, match="at least one"):
        taxonomy.subset([])


def test_dict_round_trip(taxonomy):
    data = taxonomy.to_dict()
    restored = Taxonomy.from_dict(json.loads(json.dumps(data)))
    assert restored == taxonomy
    assert restored.to_dict() == data
    assert (
        restored["right_kidney"].terminology.slicer_entry()
        == taxonomy["right_kidney"].terminology.slicer_entry()
    )
    small = taxonomy.subset(["kidney_cyst", "spleen"], name="two")
    assert Taxonomy.from_dict(json.loads(json.dumps(small.to_dict()))) == small
    # Full records (older bundles) read back equal; vocabulary structures are written as class names.
    assert Taxonomy.from_dict(full_records(small)) == small
    assert small.to_dict()["structures"] == ["kidney_cyst", "spleen"]
    renamed = dataclasses.replace(taxonomy["liver"], name="My Liver", label_id=1)
    custom = Taxonomy(name="custom", structures=(renamed,))
    assert custom.to_dict()["structures"] == [renamed.to_dict()]
    assert Taxonomy.from_dict(custom.to_dict()) == custom
    # The shipped resource is in canonical form: what to_dict writes.
    raw = json.loads((RESOURCES_DIR / "universal32.json").read_text(encoding="utf-8"))
    assert raw["structures"] == data["structures"]


def full_records(taxonomy: Taxonomy) -> dict:
    """A taxonomy dict with every structure as its full record (the form of older bundles)."""
    return {**taxonomy.to_dict(), "structures": [s.to_dict() for s in taxonomy]}


def test_from_dict_validates(taxonomy):
    data = full_records(taxonomy.subset(["liver", "spleen"]))
    data["structures"][1]["label_id"] = 5
    with pytest.raises(ValueError, match="label ids must be 1..n"):
        Taxonomy.from_dict(data)
    data = full_records(taxonomy.subset(["liver"]))
    data["structures"][0]["terminology"]["color"] = [0, 300, 0]
    with pytest.raises(ValueError, match=r"color must be three integers in \[0, 255\]"):
        Taxonomy.from_dict(data)
    data = full_records(taxonomy.subset(["liver"]))
    del data["structures"][0]["prompt"]
    with pytest.raises(ValueError, match=r"missing keys \['prompt'\]"):
        Taxonomy.from_dict(data)
    data = taxonomy.subset(["liver"]).to_dict()
    data["format_version"] = 99
    with pytest.raises(ValueError, match="newer than this library reads"):
        Taxonomy.from_dict(data)
    with pytest.raises(ValueError, match="'livr' is not a structure of the anatomy vocabulary; did you mean"):
        Taxonomy.from_dict({"name": "x", "structures": ["livr"]})
    with pytest.raises(ValueError, match="is a group of structures"):
        Taxonomy.from_dict({"name": "x", "structures": ["vertebrae"]})
    with pytest.raises(ValueError, match="needs the terminology modifier"):
        dataclasses.replace(taxonomy["right_kidney"], laterality="left")


def test_terminology_and_code_validation():
    with pytest.raises(ValueError, match="separators"):
        Code("SCT", "1^2", "x")
    with pytest.raises(ValueError, match="non-empty"):
        Code("SCT", "", "x")
    liver = Terminology(
        category=Code("SCT", "123037004", "Anatomical Structure"),
        type=Code("SCT", "10200004", "Liver"),
        modifier=None,
        color=[221, 130, 101],
        region=None,
        region_modifier=None,
        context_name=SLICER_GENERAL_ANATOMY_CONTEXT,
    )
    assert liver.color == (221, 130, 101)
    assert liver.slicer_entry() == LIVER_ENTRY
    assert Terminology.from_dict(liver.to_dict()) == liver


# -- parse_prompt ----

PARSE_CASES = [
    ("Segment liver and kidneys from abdominal CT", ["liver", "right_kidney", "left_kidney"]),
    ("both adrenal glands", ["right_adrenal_gland", "left_adrenal_gland"]),
    ("left lung", ["left_lung"]),
    ("spleen, pancreas; gallbladder", ["spleen", "pancreas", "gallbladder"]),
    ("the IVC", ["inferior_vena_cava"]),
    ("LIVER", ["liver"]),
    ("Kidneys", ["right_kidney", "left_kidney"]),
    ("lungs", ["right_lung", "left_lung"]),
    ("adrenals", ["right_adrenal_gland", "left_adrenal_gland"]),
    ("femoral heads", ["left_femoral_head", "right_femoral_head"]),
    ("kidney", ["right_kidney", "left_kidney"]),
    ("liver tumor", ["liver_tumor"]),
    ("liver tumour and the liver", ["liver_tumor", "liver"]),
    ("right kidney and left lung", ["right_kidney", "left_lung"]),
    ("liver & spleen", ["liver", "spleen"]),
    ("liver + spleen", ["liver", "spleen"]),
    ("liver/spleen", ["liver", "spleen"]),
    ("liver\nspleen", ["liver", "spleen"]),
    ("spleen and liver", ["spleen", "liver"]),
    ("Please show me the spleen in this scan.", ["spleen"]),
    ("portal vein and splenic vein", ["portal_vein_and_splenic_vein"]),
    ("portal vein, splenic vein", ["portal_vein_and_splenic_vein"]),
    ("right and left kidneys", ["right_kidney", "left_kidney"]),
    ("left/right adrenal", ["right_adrenal_gland", "left_adrenal_gland"]),
    ("kidney_left", ["left_kidney"]),
    ("kidneys, left lung", ["right_kidney", "left_kidney", "left_lung"]),
    ("kidneys and the right kidney", ["right_kidney", "left_kidney"]),
    ("gall bladder and bladder", ["gallbladder", "urinary_bladder"]),
    ("small bowel, large bowel", ["small_intestine", "colon"]),
    ("coeliac trunk; oesophagus", ["celiac_trunk", "esophagus"]),
    ("heads of femur", ["left_femoral_head", "right_femoral_head"]),
    ("renal cysts and kidney tumours", ["kidney_cyst", "kidney_tumor"]),
    ("right_kidney, hepatic_vessel_tumor", ["right_kidney", "hepatic_vessel_tumor"]),
]


@pytest.mark.parametrize(("prompt", "expected"), PARSE_CASES)
def test_parse_prompt(prompt, expected):
    assert classes(prompt, allow_free_text=False) == expected


def test_queries_carry_typed_text_prompt_and_structure(taxonomy):
    queries = parse_prompt("Segment liver and Kidneys from abdominal CT")
    assert [q.text for q in queries] == ["liver", "Kidneys", "Kidneys"]
    assert queries[1].prompt == "A computerized tomography of a right kidney"
    assert queries[1].structure is taxonomy["right_kidney"]
    assert (queries[2].name, queries[2].class_name) == ("Left Kidney", "left_kidney")
    assert parse_prompt("the IVC")[0].text == "IVC"


def test_free_text_queries():
    (query,) = parse_prompt("Segment the hepatic cyst near the hilum")
    assert query == StructureQuery(
        text="hepatic cyst near the hilum",
        prompt="A computerized tomography of a hepatic cyst near the hilum",
        structure=None,
    )
    assert (query.name, query.class_name) == ("hepatic cyst near the hilum", None)
    mixed = parse_prompt("liver, hepatic cyst in the abdominal CT; spleen")
    assert [q.class_name or q.text for q in mixed] == ["liver", "hepatic cyst", "spleen"]
    assert [q.text for q in parse_prompt("abdominal fat")] == ["abdominal fat"]
    assert len(parse_prompt("pleural effusion, Pleural Effusion")) == 1


def test_unknown_words_are_never_dropped(caplog):
    with pytest.raises(PromptError, match="Unrecognised words: 'cirrhosis'"):
        classes("liver with cirrhosis", allow_free_text=False)
    assert [q.text for q in parse_prompt("liver with cirrhosis")] == ["liver with cirrhosis"]  # free text
    with caplog.at_level(logging.WARNING, logger="TextGuidedSegLib.taxonomy"):
        assert classes("please segment the spleen from this CT") == ["spleen"]
    assert caplog.text == ""


@pytest.mark.parametrize("prompt", ["", "   ", " \n\t "])
def test_empty_prompt_is_an_error(prompt):
    with pytest.raises(PromptError, match="empty prompt"):
        parse_prompt(prompt)


def test_unrecognised_text_in_strict_mode_is_an_error():
    with pytest.raises(PromptError) as excinfo:
        parse_prompt("liver and the hepatic cyst near the hilum", allow_free_text=False)
    message = str(excinfo.value)
    assert message.startswith(
        "could not recognise 'hepatic cyst near the hilum' in the prompt "
        "'liver and the hepatic cyst near the hilum': it is not a structure this model knows, and free text "
        "cannot be used here (only a bundle with a text encoder can encode it). Unrecognised words: 'near', "
        "'hilum'. It knows: Spleen, "
        "Right Kidney, Left Kidney, "
    ), message
    assert message.endswith("."), message
    assert "Inferior Vena Cava" in message
    assert "inferior_vena_cava" not in message and "universal32" not in message  # display names only
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(
        PromptError, match=r"Unrecognised words: 'splen'\. Did you mean 'spleen', 'splenic'\? It knows: "
    ):
        parse_prompt("splen", allow_free_text=False)


def test_prompt_without_anything_to_segment_is_an_error():
    with pytest.raises(PromptError, match="names no structure to segment"):
        parse_prompt("segment the abdominal CT")


def test_parse_with_a_subset_taxonomy(taxonomy):
    small = taxonomy.subset(["liver", "left_kidney"])
    queries = parse_prompt("kidneys and liver", small)
    assert [(q.class_name, q.structure.label_id) for q in queries] == [("left_kidney", 2), ("liver", 1)]
    with pytest.raises(PromptError, match="could not recognise 'right kidney'"):
        parse_prompt("right kidney", small, allow_free_text=False)
    assert [q.text for q in parse_prompt("right kidney", small)] == ["right kidney"]


def test_package_imports_without_torch():
    code = (
        "import sys; import TextGuidedSegLib.taxonomy as t; t.parse_prompt('liver'); "
        "assert 'torch' not in sys.modules, 'taxonomy imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_structure_is_frozen(taxonomy):
    with pytest.raises(dataclasses.FrozenInstanceError):
        taxonomy["liver"].name = "Hepar"
    assert isinstance(taxonomy["liver"], Structure)
