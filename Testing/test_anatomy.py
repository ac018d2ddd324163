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
            if not _in_lateral_pair(entry.class_name):  # lateral pairs: test_lateral_pairs_...
                assert list(t.color) == source["recommendedDisplayRGBValue"], row["Structure"]
            from_ga += 1
        elif t.context_name == TOTALSEGMENTATOR_CONTEXT:
            assert (t.category, t.type, t.modifier) == (category, kind, modifier), row["Structure"]
            assert (t.region, t.region_modifier) == (
                _code(row, "AnatomicRegionSequence"), _code(row, "AnatomicRegionModifierSequence")
            ), row["Structure"]  # fmt: skip
            if not _in_lateral_pair(entry.class_name):
                assert list(t.color) == [int(c) for c in row["DicomRGBColor"].split(",")], row["Structure"]
            from_ts += 1
        else:  # universal32's lesion coding (Slicer's Mass/Cyst with the host as region) takes precedence
            assert t.context_name == SLICER_GENERAL_ANATOMY_CONTEXT and t.region is not None, row["Structure"]
    assert from_ga >= 30 and from_ts >= 100, (from_ga, from_ts)


def _in_lateral_pair(class_name: str) -> bool:
    """True for a sided structure (``right_X`` / ``left_X``): its colour follows the lateral rule
    (``taxonomy/colors.py``), tested by ``test_lateral_colours_are_totalsegmentators_or_derived...``."""
    return class_name.startswith(("right_", "left_"))


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


# -- colours a person can tell apart ----------------------------------------------------------------------


def _shipped_taxonomies() -> dict[str, Taxonomy]:
    """Every taxonomy the package ships: the taxonomy resources, the MONAI translations, the demo bundle."""
    from TextGuidedSegLib.taxonomy import available_taxonomies
    from TextGuidedSegLib.taxonomy.structures import RESOURCES_DIR

    # available_taxonomies also lists anatomy.json (the vocabulary, checked whole below) and datasets.json
    names = [name for name in available_taxonomies() if name not in ("anatomy", "datasets")]
    assert "universal32" in names
    taxonomies = {name: get_taxonomy(name) for name in names}
    configs = [
        *sorted((RESOURCES_DIR / "monai").glob("*.json")),
        RESOURCES_DIR / "demo_bundle" / "config.json",
    ]
    for path in configs:
        taxonomy = Taxonomy.from_dict(json.loads(path.read_text(encoding="utf-8"))["taxonomy"])
        taxonomies[f"{path.parent.name}/{path.name}"] = taxonomy
    vocabulary = get_vocabulary()
    taxonomies["anatomy vocabulary"] = vocabulary_taxonomy(
        "all", [e.class_name for e in vocabulary.structures]
    )
    return taxonomies


def _lateral_pairs(class_names) -> list[tuple[str, str]]:
    names = set(class_names)
    return [(c, "left_" + c.removeprefix("right_")) for c in sorted(names)
            if c.startswith("right_") and "left_" + c.removeprefix("right_") in names]  # fmt: skip


def test_lab_and_delta_e_match_reference_values():
    from TextGuidedSegLib.taxonomy.colors import delta_e76, lab_to_srgb, srgb_to_lab

    # sRGB -> L*a*b* (D65) reference values (Bruce Lindbloom's calculator, sRGB companding)
    for rgb, lab in (
        ((255, 0, 0), (53.2408, 80.0925, 67.2032)),
        ((0, 0, 255), (32.2970, 79.1875, -107.8602)),
        ((128, 128, 128), (53.5850, 0.0, 0.0)),
        ((255, 255, 255), (100.0, 0.0, 0.0)),
    ):
        assert srgb_to_lab(rgb) == pytest.approx(lab, abs=2e-3), rgb
    for rgb in ((34, 102, 136), (221, 130, 101), (0, 0, 0), (1, 254, 77)):
        assert lab_to_srgb(srgb_to_lab(rgb)) == rgb
    assert delta_e76((255, 0, 0), (0, 0, 255)) == pytest.approx(176.314, abs=1e-2)
    assert delta_e76((34, 102, 136), (34, 102, 136)) == 0.0


def test_a_derived_side_colour_keeps_the_hue_and_is_far_enough():
    from TextGuidedSegLib.taxonomy.colors import (
        MIN_LATERAL_DELTA_E,
        delta_e76,
        shifted_lightness,
        srgb_to_lab,
    )

    for rgb in ((197, 165, 145), (241, 214, 145), (20, 20, 30), (255, 255, 255), (185, 102, 83)):
        derived = shifted_lightness(rgb)
        assert derived == shifted_lightness(rgb)  # deterministic
        assert delta_e76(rgb, derived) >= MIN_LATERAL_DELTA_E, rgb
        (l0, a0, b0), (l1, a1, b1) = srgb_to_lab(rgb), srgb_to_lab(derived)
        assert (l1 < l0) == (l0 > 50), rgb  # light colours get darker, dark ones lighter
        assert abs(a1 - a0) < 8 and abs(b1 - b0) < 8, (rgb, derived)  # same hue, up to sRGB clipping


def test_lateral_pairs_and_liver_vs_kidneys_differ_in_every_shipped_taxonomy():
    from TextGuidedSegLib.taxonomy.colors import MIN_LATERAL_DELTA_E, delta_e76

    checked = 0
    for name, taxonomy in _shipped_taxonomies().items():
        colour = {s.class_name: s.terminology.color for s in taxonomy}
        pairs = _lateral_pairs(colour)
        pairs += [("liver", k) for k in ("right_kidney", "left_kidney") if "liver" in colour and k in colour]
        for first, second in pairs:
            distance = delta_e76(colour[first], colour[second])
            assert distance >= MIN_LATERAL_DELTA_E, (name, first, second, colour[first], colour[second])
            checked += 1
    assert checked >= 40, checked


def test_lateral_colours_are_totalsegmentators_or_derived_from_the_right_side():
    from TextGuidedSegLib.taxonomy.colors import MIN_LATERAL_DELTA_E, delta_e76, shifted_lightness

    rows = list(csv.DictReader(shared_path("terminology", "totalsegmentator_snomed_mapping.csv").open()))
    ts = {
        resolve_structure_name(r["Structure"]): tuple(int(c) for c in r["DicomRGBColor"].split(","))
        for r in rows
    }
    vocabulary = get_vocabulary()
    colour = {e.class_name: e.terminology.color for e in vocabulary.structures}
    for class_name in colour:
        if (
            class_name.startswith(("right_", "left_"))
            and class_name in ts
            and not class_name.startswith("left_")
        ):
            assert colour[class_name] == ts[class_name], class_name  # TotalSegmentator's shade of each side
    derived = []
    for right, left in _lateral_pairs(colour):
        if right in ts:
            assert colour[right] == ts[right], right
        if right in ts and left in ts and delta_e76(ts[right], ts[left]) >= MIN_LATERAL_DELTA_E:
            assert colour[left] == ts[left], left
        else:
            assert colour[left] == shifted_lightness(colour[right]), left
            derived.append(left)
    assert colour["right_kidney"] == (34, 102, 136) and colour["left_kidney"] == (46, 138, 184)
    assert (
        "left_lung" in derived and "left_lung_upper_lobe" in derived
    )  # one colour in Slicer / too close in TS


def test_sidecar_and_overlay_show_the_kidneys_and_liver_in_distinct_colours():
    import numpy as np

    from TextGuidedSegLib.inference.result import SegmentationResult, segment_infos
    from TextGuidedSegLib.io import Volume
    from TextGuidedSegLib.taxonomy.colors import MIN_LATERAL_DELTA_E, delta_e76
    from TextGuidedSegLib.visualize import render_panels

    taxonomy = _shipped_taxonomies()["demo_bundle/config.json"]
    queries = parse_prompt("liver and both kidneys", taxonomy)
    labels = np.zeros((40, 30, 10), np.uint8)
    labels[2:12, 5:25, 3:7] = 1  # liver on the patient's right (low x in RAS)
    labels[15:22, 8:20, 3:7] = 2
    labels[28:36, 8:20, 3:7] = 3
    volume = Volume(array=np.zeros(labels.shape, np.float32), affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    infos = segment_infos(labels, queries, volume)
    sidecar = SegmentationResult(labels=labels, segments=infos, queries=queries, volume=volume).sidecar()
    colours = {s["name"]: tuple(s["color"]) for s in sidecar["segments"]}
    assert list(colours) == ["Liver", "Right Kidney", "Left Kidney"]
    panel = render_panels(volume.array, labels, volume.affine, infos, centre=(20, 15, 5)).axial
    drawn = {tuple(int(v) for v in pixel) for pixel in panel.reshape(-1, 3)}
    for name, colour in colours.items():
        assert colour in drawn, f"the overlay does not draw {name} in its sidecar colour {colour}"
    names = list(colours)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert delta_e76(colours[first], colours[second]) >= MIN_LATERAL_DELTA_E, (first, second)
