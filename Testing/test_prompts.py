"""Prompts mean what the user meant (issue 12): a table of prompts and the structures (or error) each gives,
on the universal32 vocabulary (U) and the 104-structure TotalSegmentator-size vocabulary of the wholebody
bundle (W); radiology-request phrasing is marked R. ``Err`` rows must raise :class:`PromptError` matching the
pattern whether or not free text is allowed, ``Strict`` rows only without free text (with it, the fragment is
one free-text query)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from TextGuidedSegLib.taxonomy import PromptError, Taxonomy, get_taxonomy, parse_prompt, vocabulary_taxonomy
from TextGuidedSegLib.taxonomy.anatomy import get_vocabulary
from TextGuidedSegLib.taxonomy.prompt import explain_prompt
from TextGuidedSegLib.taxonomy.structures import RESOURCES_DIR
from TextGuidedSegLib.taxonomy.vocabulary import STOP_WORDS


@dataclass(frozen=True)
class Err:
    """PromptError with or without free text."""

    pattern: str


@dataclass(frozen=True)
class Strict:
    """PromptError without free text; one free-text query ``free`` with it."""

    pattern: str
    free: str


def wholebody() -> Taxonomy:
    bundles = json.loads((RESOURCES_DIR / "registry.json").read_text())["bundles"]
    names = next(b for b in bundles if b["name"] == "wholebody_ct_highres")["vocabulary"]
    vocabulary = get_vocabulary()
    return vocabulary_taxonomy("wholebody", [vocabulary.resolve_name(n) for n in names])


TAXONOMIES = {"U": get_taxonomy(), "W": wholebody()}
KIDNEYS = ["right_kidney", "left_kidney"]
ADRENALS = ["right_adrenal_gland", "left_adrenal_gland"]
ABDOMEN_U = ["spleen", *KIDNEYS, "gallbladder", "liver", "stomach", "pancreas", *ADRENALS, "duodenum",
             "colon",
             "small_intestine"]  # fmt: skip
TUMOURS_U = [
    "kidney_tumor",
    "liver_tumor",
    "pancreas_tumor",
    "hepatic_vessel_tumor",
    "lung_tumor",
    "colon_tumor",
]
LUMBAR = ["vertebra_l5", "vertebra_l4", "vertebra_l3", "vertebra_l2", "vertebra_l1"]
LEFT_RIBS = [f"left_rib_{i}" for i in range(1, 13)]
RIGHT_LUNG_W = ["right_lung_upper_lobe", "right_lung_middle_lobe", "right_lung_lower_lobe"]
LEFT_LUNG_W = ["left_lung_upper_lobe", "left_lung_lower_lobe"]
HEART = ["myocardium", "left_atrium", "left_ventricle", "right_atrium", "right_ventricle"]
ALL_U = [s.class_name for s in TAXONOMIES["U"]]

# (vocabulary, radiology phrasing, prompt, expected)
CASES = [
    # -- laterality ------------------------------------------------------------------------------------------
    ("U", "", "R kidney", ["right_kidney"]),
    ("U", "", "L kidney", ["left_kidney"]),
    ("U", "", "Rt kidney", ["right_kidney"]),
    ("U", "", "Lt. kidney", ["left_kidney"]),
    ("U", "", "right-sided kidney", ["right_kidney"]),
    ("U", "", "left sided adrenal gland", ["left_adrenal_gland"]),
    ("U", "", "bilateral kidneys", KIDNEYS),
    ("U", "", "kidneys bilaterally", KIDNEYS),
    ("U", "", "both adrenals", ADRENALS),
    ("U", "", "kidney (left)", ["left_kidney"]),
    ("U", "", "kidney, left", ["left_kidney"]),
    ("U", "", "kidney, right-sided", ["right_kidney"]),
    ("U", "", "left and right kidneys", KIDNEYS),
    ("U", "", "right/left adrenal glands", ADRENALS),
    ("U", "", "kidney_left", ["left_kidney"]),
    ("U", "", "KIDNEY RIGHT", ["right_kidney"]),
    ("U", "", "lung on the left side", ["left_lung"]),
    ("U", "", "R lung and L femoral head", ["right_lung", "left_femoral_head"]),
    ("U", "", "contralateral kidney", Err("'contralateral'.*side cannot be guessed")),
    ("U", "", "ipsilateral adrenal", Err("'ipsilateral'.*side cannot be guessed")),
    ("U", "", "the opposite kidney", Err("'opposite'.*side cannot be guessed")),
    ("U", "", "right liver", Strict("Unrecognised words: 'right'", "right liver")),
    ("U", "R", "Please contour the R kidney for dosimetry.", ["right_kidney"]),
    ("U", "R", "Request: segmentation of bilateral adrenal glands.", ADRENALS),
    ("U", "R", "Evaluate left kidney, right kidney.", ["left_kidney", "right_kidney"]),
    ("W", "", "R iliopsoas", ["right_iliopsoas"]),
    ("W", "", "iliopsoas, left", ["left_iliopsoas"]),
    ("W", "", "left ribs", LEFT_RIBS),
    ("W", "", "ribs on the left", LEFT_RIBS),
    ("W", "", "Rt hip and Lt femur", ["right_hip", "left_femur"]),
    ("W", "", "bilateral clavicles", ["left_clavicle", "right_clavicle"]),
    ("W", "", "left lung", LEFT_LUNG_W),
    ("W", "", "contralateral femur", Err("side cannot be guessed")),
    ("W", "R", "Please outline the right-sided gluteus maximus for planning", ["right_gluteus_maximus"]),
    # -- exclusion -------------------------------------------------------------------------------------------
    ("U", "", "kidneys but not the left one", ["right_kidney"]),
    ("U", "", "kidneys except the right one", ["left_kidney"]),
    ("U", "", "both kidneys excluding the left kidney", ["right_kidney"]),
    ("U", "", "all abdominal organs except the liver", [c for c in ABDOMEN_U if c != "liver"]),
    ("U", "", "abdominal organs other than the kidneys", [c for c in ABDOMEN_U if c not in KIDNEYS]),
    ("U", "", "abdominal organs without the bowel", [c for c in ABDOMEN_U if c != "small_intestine"]),
    ("U", "", "abdominal organs except the liver and spleen",
     [c for c in ABDOMEN_U if c not in ("liver", "spleen")]),
    ("U", "", "everything except the tumours",
     [c for c in ALL_U if c not in TUMOURS_U]),
    ("U", "", "everything but the liver", [c for c in ALL_U if c != "liver"]),
    ("U", "", "liver, spleen, but not the spleen", ["liver"]),
    ("U", "", "liver and spleen; not the spleen. pancreas", ["liver", "pancreas"]),
    ("U", "", "kidneys, adrenals apart from the left ones", ["right_kidney", "right_adrenal_gland"]),
    ("U", "", "liver without contrast", ["liver"]),
    ("U", "", "liver except the hilum", Err("cannot exclude 'hilum'")),
    ("U", "", "except the liver", Err("names no structure to segment")),
    ("U", "", "liver but not the liver", Err("names no structure to segment after its exclusions")),
    ("U", "", "pelvic organs except the prostate", ["rectum", "urinary_bladder"]),
    ("U", "R", "Segment all abdominal organs, excluding the gallbladder.",
     [c for c in ABDOMEN_U if c != "gallbladder"]),
    ("U", "R", "Request: abdominal viscera except kidneys and adrenals.",
     ["spleen", "gallbladder", "liver", "stomach", "pancreas", "duodenum", "colon", "small_intestine"]),
    ("U", "R", "Contour both kidneys but not the right one for split-function planning",
     Err("cannot exclude 'right one for split-function'.*Unrecognised words: 'split', 'function'")),
    ("W", "", "all vertebrae except the lumbar spine", [
        *[f"vertebra_t{i}" for i in range(12, 0, -1)], *[f"vertebra_c{i}" for i in range(7, 0, -1)]]),
    ("W", "", "lumbar vertebrae except L5", LUMBAR[1:]),
    ("W", "", "left ribs except the left 12th rib", LEFT_RIBS[:11]),
    ("W", "", "heart without the myocardium", HEART[1:]),
    ("W", "", "lungs but not the left one", RIGHT_LUNG_W),
    ("W", "", "everything other than the face",
     [s.class_name for s in TAXONOMIES["W"] if s.class_name != "face"]),
    ("W", "R", "Please segment the lumbar spine, excluding L1.", LUMBAR[:4]),
    ("W", "R", "Volumetry request: thoracic organs, not the heart.",
     [*LEFT_LUNG_W, *RIGHT_LUNG_W, "esophagus", "trachea"]),
    # -- findings --------------------------------------------------------------------------------------------
    ("U", "", "lesions in the liver", ["liver_tumor"]),
    ("U", "", "liver lesions", ["liver_tumor"]),
    ("U", "", "hepatic metastases", ["liver_tumor"]),
    ("U", "", "mass in the pancreas", ["pancreas_tumor"]),
    ("U", "", "pancreatic mass", ["pancreas_tumor"]),
    ("U", "", "renal cysts", ["kidney_cyst"]),
    ("U", "", "cysts of the kidneys", ["kidney_cyst"]),
    ("U", "", "kidney cyst", ["kidney_cyst"]),
    ("U", "", "renal mass", ["kidney_tumor"]),
    ("U", "", "lung nodules", ["lung_tumor"]),
    ("U", "", "pulmonary nodules", ["lung_tumor"]),
    ("U", "", "nodule in the left lung", Strict("finding of Left Lung", "nodule in the left lung")),
    ("U", "", "colonic carcinoma", ["colon_tumor"]),
    ("U", "", "tumour of the hepatic vessels", ["hepatic_vessel_tumor"]),
    ("U", "", "liver and liver lesions", ["liver", "liver_tumor"]),
    ("U", "", "lesions in the liver and kidneys", ["liver_tumor", "kidney_tumor"]),
    ("U", "", "tumours", TUMOURS_U),
    ("U", "", "cysts", ["kidney_cyst"]),
    ("U", "", "cyst in the spleen", Strict("finding of Spleen, not the organ", "cyst in the spleen")),
    ("U", "", "splenic lesion", Strict("finding of Spleen", "splenic lesion")),
    ("U", "", "hepatic cyst", Strict("finding of Liver", "hepatic cyst")),
    ("U", "", "cyst of the left kidney", Strict("finding of Left Kidney", "cyst of the left kidney")),
    ("U", "", "gastric mass", Strict("finding of Stomach", "gastric mass")),
    ("U", "", "liver, and everything except liver lesions",
     list(dict.fromkeys(c for c in ["liver", *ALL_U] if c != "liver_tumor"))),
    ("U", "R", "Please segment the hepatic lesions for volumetry.", ["liver_tumor"]),
    ("U", "R", "Request: contour the pancreatic mass and adjacent vessels",
     Strict("Unrecognised words: 'adjacent'", "adjacent vessels")),
    ("U", "R", "Evaluate renal masses bilaterally.", ["kidney_tumor"]),
    ("U", "R", "Quantify metastases in the liver; also the spleen.", ["liver_tumor", "spleen"]),
    ("U", "R", "Segment the liver and lesions within the liver", ["liver", "liver_tumor"]),
    ("U", "R", "Indication: pulmonary nodule. Segment the nodule in the right lung.", Strict(
        "Unrecognised words: 'Indication'", "Indication")),
    ("W", "", "lesions in the liver", Strict("finding of Liver", "lesions in the liver")),
    ("W", "", "liver tumour", Strict("'liver tumour' is a structure it cannot segment", "liver tumour")),
    ("W", "", "lung nodules", Strict("finding of", "lung nodules")),
    ("W", "R", "Please segment the hepatic metastases.", Strict("finding of Liver", "hepatic metastases")),
    # -- synonyms, lay names, spelling ----------------------------------------------------------------------
    ("U", "", "hepatic parenchyma", ["liver"]),
    ("U", "", "the hepar", ["liver"]),
    ("U", "", "gullet", ["esophagus"]),
    ("U", "", "oesophagus", ["esophagus"]),
    ("U", "", "cholecyst", ["gallbladder"]),
    ("U", "", "gall-bladder", ["gallbladder"]),
    ("U", "", "renal", KIDNEYS),
    ("U", "", "left renal", ["left_kidney"]),
    ("U", "", "splenic", ["spleen"]),
    ("U", "", "coeliac axis", ["celiac_trunk"]),
    ("U", "", "IVC", ["inferior_vena_cava"]),
    ("U", "", "large bowel and small bowel", ["colon", "small_intestine"]),
    ("U", "", "suprarenals", ADRENALS),
    ("U", "", "pancraes", ["pancreas"]),
    ("U", "", "pancreass", ["pancreas"]),
    ("U", "", "kidnesy", KIDNEYS),
    ("U", "", "esophagas", ["esophagus"]),
    ("U", "", "duodenun", ["duodenum"]),
    ("U", "", "splen", Strict("Did you mean 'spleen'", "splen")),
    ("U", "", "lver", Strict("Did you mean 'liver'", "lver")),
    ("U", "", "windpipe", Strict("'windpipe' is a structure it cannot segment", "windpipe")),
    ("U", "", "prostatic", ["prostate"]),
    ("U", "", "aortic", ["aorta"]),
    ("U", "", "tumor of the liver", ["liver_tumor"]),
    ("U", "", "tumour of the liver", ["liver_tumor"]),
    ("U", "R", "Kindly delineate the gullet and the gastric antrum",
     Strict("Unrecognised words: 'antrum'", "gastric antrum")),
    ("U", "R", "Request: volumetry of the hepatic parenchyma and spleen", ["liver", "spleen"]),
    ("W", "", "windpipe", ["trachea"]),
    ("W", "", "backbone", [*LUMBAR, *[f"vertebra_t{i}" for i in range(12, 0, -1)],
                          *[f"vertebra_c{i}" for i in range(7, 0, -1)]]),
    ("W", "", "collarbones", ["left_clavicle", "right_clavicle"]),
    ("W", "", "collar bone, left", ["left_clavicle"]),
    ("W", "", "shoulder blades", ["left_scapula", "right_scapula"]),
    ("W", "", "thighbones", ["left_femur", "right_femur"]),
    ("W", "", "tracheobronchial tree", Strict("cannot segment", "tracheobronchial tree")),
    ("W", "", "erector spinae", ["left_autochthon", "right_autochthon"]),
    ("W", "", "glutes", ["left_gluteus_maximus", "right_gluteus_maximus", "left_gluteus_medius",
                         "right_gluteus_medius", "left_gluteus_minimus", "right_gluteus_minimus"]),
    ("W", "", "cardiac chambers", HEART[1:]),
    ("W", "", "myocardum", ["myocardium"]),
    ("W", "", "clavicels", ["left_clavicle", "right_clavicle"]),
    ("W", "", "pulmonary artery", ["pulmonary_artery"]),
    ("W", "", "prostate", Strict("'prostate' is a structure it cannot segment", "prostate")),
    ("W", "R", "Segment the L-spine and sacrum for planning.", [*LUMBAR, "sacrum"]),
    ("W", "R", "Please contour the RUL and RML.", ["right_lung_upper_lobe", "right_lung_middle_lobe"]),
    ("W", "R", "Request: T12 and L1 vertebrae, evaluate for fracture",
     Strict("Unrecognised words: 'fracture'", "fracture")),
    # -- no silently dropped words, separators, commands -----------------------------------------------------
    ("U", "", "liver with cirrhosis", Strict("Unrecognised words: 'cirrhosis'", "liver with cirrhosis")),
    ("U", "", "liver, spleen and xyzzy", Strict("could not recognise 'xyzzy'", "xyzzy")),
    ("U", "", "liver or spleen", ["liver", "spleen"]),
    ("U", "", "liver; spleen | pancreas", ["liver", "spleen", "pancreas"]),
    ("U", "", "liver plus spleen", ["liver", "spleen"]),
    ("U", "", "portal vein and splenic vein", ["portal_vein_and_splenic_vein"]),
    ("U", "", "segment the abdominal CT", Err("names no structure to segment")),
    ("U", "", "3 organs", Strict("Unrecognised words: '3'", "3")),
    ("U", "", "big liver", Strict("Unrecognised words: 'big'", "big liver")),
    ("U", "", "liver stones", Strict("Unrecognised words: 'stones'", "liver stones")),
    ("U", "", "the renal artery", Strict("Unrecognised words: 'artery'", "renal artery")),
    ("U", "", "pancreatic duct", Strict("'duct'", "pancreatic duct")),
    ("U", "", "one kidney", Strict("Unrecognised words: 'one'", "one kidney")),
    ("U", "R", "Please segment the liver and spleen in this portal venous phase CT.", ["liver", "spleen"]),
    ("U", "R", "Request: liver and spleen volumetry for pre-operative planning",
     Strict("Unrecognised words: 'pre', 'operative'", "spleen volumetry for pre-operative")),
    ("U", "R", "CT abdomen with contrast: segment liver, kidneys and spleen. Thanks.",
     ["liver", *KIDNEYS, "spleen"]),
    ("U", "R", "Could you outline the gallbladder and the stomach, please?", ["gallbladder", "stomach"]),
    ("U", "R", "Assessment of the urinary bladder and prostate", ["urinary_bladder", "prostate"]),
    ("U", "R", "Segmentation request - aorta, IVC, portal vein.",
     ["aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein"]),
    ("U", "R", "Evaluate the hepatic vasculature and the celiac trunk", ["hepatic_vessel", "celiac_trunk"]),
    ("U", "R", "Measure both femoral heads.", ["left_femoral_head", "right_femoral_head"]),
    ("U", "R", "Please identify the rectum and sigmoid colon",
     Strict("Unrecognised words: 'sigmoid'", "sigmoid colon")),
    ("U", "R", "Segment: duodenum; small bowel; colon", ["duodenum", "small_intestine", "colon"]),
    ("U", "R", "Request: segmentation of the pancreas for volumetry.", ["pancreas"]),
    ("U", "R", "Please delineate the abdominal aorta and IVC on this CT", ["aorta", "inferior_vena_cava"]),
    ("U", "R", "Liver volumetry requested; exclude the gallbladder.", ["liver"]),
    ("U", "R", "Segment the kidneys, except the left kidney (nephrectomy)",
     Err("cannot exclude 'left kidney \\(nephrectomy'")),
    ("U", "R", "Contour the lungs bilaterally for radiotherapy planning",
     Strict("Unrecognised words: 'radiotherapy'",
     "lungs bilaterally for radiotherapy")),
    ("U", "R", "Please segment the liver, excluding liver lesions.", ["liver"]),
    ("W", "", "heart and aorta", [*HEART, "aorta"]),
    ("W", "R", "Request: contour the heart for cardiac dosimetry.", HEART),
    ("W", "R", "Please segment bilateral iliopsoas muscles",
     Strict("Unrecognised words: 'muscles'", "bilateral iliopsoas muscles")),
    ("W", "R", "Evaluate: left humerus; right humerus.", ["left_humerus", "right_humerus"]),
    ("W", "R", "Segmentation of all vertebrae except C1 and C2 requested",
     [*LUMBAR, *[f"vertebra_t{i}" for i in range(12, 0, -1)], *[f"vertebra_c{i}" for i in range(7, 2, -1)]]),
    ("W", "R", "Outline the esophagus and trachea, thanks", ["esophagus", "trachea"]),
    ("W", "", "L1 and T12", ["vertebra_l1", "vertebra_t12"]),
    ("W", "", "right 12th rib", ["right_rib_12"]),
    ("W", "", "brain, face and skull", Strict("'skull' is a structure it cannot segment", "skull")),
    ("W", "", "fatty liver", Strict("Unrecognised words: 'fatty'", "fatty liver")),
    ("W", "R", "Request: segment the iliac vessels bilaterally.",
     ["left_iliac_artery", "right_iliac_artery", "left_iliac_vein", "right_iliac_vein"]),
    ("W", "R", "Please segment the cardiac chambers and the pulmonary artery.",
     [*HEART[1:], "pulmonary_artery"]),
    ("W", "R", "Evaluate the thoracic spine.", [f"vertebra_t{i}" for i in range(12, 0, -1)]),
    ("W", "R", "Contour the urinary bladder, rectum and femoral heads", Strict(
        "'rectum' is a structure it cannot segment", "rectum")),
]  # fmt: skip


def _id(case: tuple) -> str:
    return f"{case[0]}{case[1]}:{case[2]}"


def test_the_table_covers_enough_prompts_and_radiology_phrasing():
    assert len(CASES) >= 150
    assert sum(1 for c in CASES if c[1] == "R") >= len(CASES) / 4
    assert {c[0] for c in CASES} == {"U", "W"}
    assert len({(c[0], c[2]) for c in CASES}) == len(CASES)  # no duplicate rows


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_prompt_table(case):
    vocabulary, _, prompt, expected = case
    taxonomy = TAXONOMIES[vocabulary]
    if isinstance(expected, Err):
        for free in (False, True):
            with pytest.raises(PromptError, match=expected.pattern):
                parse_prompt(prompt, taxonomy, allow_free_text=free)
    elif isinstance(expected, Strict):
        with pytest.raises(PromptError, match=expected.pattern):
            parse_prompt(prompt, taxonomy, allow_free_text=False)
        free_texts = [q.text for q in parse_prompt(prompt, taxonomy) if q.structure is None]
        assert expected.free in free_texts, free_texts
        assert explain_prompt(prompt, taxonomy).guessed
    else:
        strict = [q.class_name for q in parse_prompt(prompt, taxonomy, allow_free_text=False)]
        assert strict == expected
        assert [q.class_name for q in parse_prompt(prompt, taxonomy)] == expected  # free text changes nothing


def test_explain_reports_corrections_findings_and_exclusions():
    parse = explain_prompt("pancraes; lesions in the liver; kidneys but not the left one")
    assert [q.class_name for q in parse.queries] == ["pancreas", "liver_tumor", "right_kidney"]
    assert parse.corrections == (("pancraes", "pancreas"),)
    assert parse.excluded == ("Left Kidney",)
    assert parse.guessed
    assert "'lesions in the liver' read as a finding, not the organ: Liver Tumor" in parse.notes
    exact = explain_prompt("liver and both kidneys")
    assert not exact.guessed and exact.notes == () and exact.free_text == ()


def test_exclusion_of_something_not_named_is_reported():
    parse = explain_prompt("liver without the gallbladder")
    assert [q.class_name for q in parse.queries] == ["liver"]
    assert parse.notes == ("excluded Gallbladder, which the prompt did not include",)


def test_ignorable_words_are_an_explicit_list():
    for word in ("segment", "please", "the", "ct", "abdominal", "scan", "volumetry", "organ", "of", "in"):
        assert word in STOP_WORDS
    for content in ("tumor", "lesion", "cyst", "left", "right", "not", "except", "without", "near", "big"):
        assert content not in STOP_WORDS
