"""Build ``TextGuidedSegLib/resources/anatomy.json``, the one anatomy vocabulary, from its sources.

Run from the repository root (needs ``../shared/data``)::

    python Testing/tools/build_anatomy.py

Sources, in order of precedence for codes and colours:

1. 3D Slicer's General Anatomy terminology (``slicer_terminology/``) wherever it defines the structure's
   category, type and (for lateral structures) modifier;
2. the curated universal32 entries below (tumours and cysts as Slicer's ``Mass``/``Cyst`` with their host as
   anatomic region, and this project's own additions);
3. TotalSegmentator's SNOMED mapping (``terminology/totalsegmentator_snomed_mapping.csv``).

Colours of lateral structures follow ``TextGuidedSegLib/taxonomy/colors.py``: TotalSegmentator's colour for
each side (Slicer's list gives both sides one colour), and the left side's colour derived by a lightness shift
where a pair's colours are closer than ``MIN_LATERAL_DELTA_E``.

Names come from TotalSegmentator (v1 names of MONAI's wholeBody bundle and v2 names), the CLIP-Driven
Universal Model (universal32), BTCV and the VISTA3D label dictionary; each structure appears once. The file
this writes is the shipped resource: edit synonyms here and re-run, never by hand.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "TextGuidedSegLib" / "resources" / "anatomy.json"
GA_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
TS_CONTEXT = "Segmentation category and type - Total Segmentator"
OUR_CONTEXT = "Segmentation category and type - TextGuidedSeg"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
sys.path.insert(0, str(ROOT))
from TextGuidedSegLib.taxonomy.colors import MIN_LATERAL_DELTA_E, delta_e76, shifted_lightness  # noqa: E402

SIDES = {"right": ("SCT", "24028007", "Right"), "left": ("SCT", "7771000", "Left")}

# TotalSegmentator name -> our class name, where the generic rule (side word first) reads badly or where
# universal32 already names the structure.
RENAME = {
    "small_bowel": "small_intestine",
    "heart_atrium_left": "left_atrium",
    "heart_atrium_right": "right_atrium",
    "heart_ventricle_left": "left_ventricle",
    "heart_ventricle_right": "right_ventricle",
    "atrial_appendage_left": "left_atrial_appendage",
    "heart_myocardium": "myocardium",
    "iliac_vena_left": "left_iliac_vein",
    "iliac_vena_right": "right_iliac_vein",
    "iliac_vena": "iliac_vein",
    "clavicula_left": "left_clavicle",
    "clavicula_right": "right_clavicle",
    "clavicula": "clavicle",
    "vertebrae_lumbar": "lumbar_vertebrae",
    "vertebrae_thoracic": "thoracic_vertebrae",
    "vertebrae_cervical": "cervical_vertebrae",
    "vertebrae_body": "vertebral_bodies",
    "kidney_cyst_left": "left_kidney_cyst",
    "kidney_cyst_right": "right_kidney_cyst",
    "lung_trachea_bronchia": "airway",
    "phalanges_feet": "foot_phalanges",
    "phalanges_hand": "hand_phalanges",
    "body_trunc": "body_trunk",
    "liver_vessels": "hepatic_vessel",
}
DISPLAY = {
    "myocardium": "Myocardium",
    "airway": "Trachea and Bronchi",
    "portal_vein_and_splenic_vein": "Portal Vein and Splenic Vein",
    "lung_vessels": "Lung Vessels",
    "lung_covid_infiltrate": "Lung COVID-19 Infiltrate",
    "vertebral_bodies": "Vertebral Bodies",
}
# Extra names users type (lower case is fine); abbreviations included.
SYNONYMS: dict[str, list[str]] = {
    "liver": ["hepar", "hepatic parenchyma"],
    "spleen": ["lien"],
    "aorta": ["abdominal aorta"],
    "superior_vena_cava": ["SVC"],
    "pulmonary_artery": ["pulmonary trunk", "main pulmonary artery"],
    "pulmonary_vein": ["pulmonary veins"],
    "trachea": ["windpipe"],
    "airway": ["airways", "trachea and bronchi", "tracheobronchial tree"],
    "left_clavicle": ["left collarbone", "left clavicula"],
    "right_clavicle": ["right collarbone", "right clavicula"],
    "clavicle": ["collarbone", "clavicula"],
    "urinary_bladder": ["bladder"],
    "left_atrium": ["LA"],
    "right_atrium": ["RA"],
    "left_ventricle": ["LV"],
    "right_ventricle": ["RV"],
    "left_atrial_appendage": ["LAA"],
    "myocardium": ["heart muscle", "heart myocardium"],
    "left_iliac_vein": ["left iliac vena"],
    "right_iliac_vein": ["right iliac vena"],
    "iliac_vein": ["iliac vena"],
    "left_autochthon": ["left erector spinae", "left deep back muscle"],
    "right_autochthon": ["right erector spinae", "right deep back muscle"],
    "autochthon": ["erector spinae", "deep back muscles", "autochthonous back muscles"],
    "left_hip": ["left hip bone", "left os coxae"],
    "right_hip": ["right hip bone", "right os coxae"],
    "hip": ["hip bones", "os coxae", "pelvic bones"],
    "brain": ["encephalon"],
    "spinal_cord": ["myelon"],
    "thyroid_gland": ["thyroid"],
    "sternum": ["breastbone"],
    "skull": ["cranium"],
    "costal_cartilages": ["costal cartilage", "rib cartilages"],
    "ribs": ["rib cage", "all ribs"],
    "vertebrae": ["spine", "spinal column", "vertebral column", "backbone", "all vertebrae"],
    "lumbar_vertebrae": ["lumbar spine", "L-spine"],
    "thoracic_vertebrae": ["thoracic spine", "T-spine", "dorsal spine"],
    "cervical_vertebrae": ["cervical spine", "C-spine"],
    "heart": ["cardiac"],
    "lung": ["lungs", "both lungs"],
    "kidney_cyst": ["renal cyst", "kidney cysts"],
    "lung_covid_infiltrate": ["covid infiltrate", "covid-19 infiltrate"],
    "intracerebral_hemorrhage": ["intracerebral haemorrhage", "ICH"],
    "pleural_effusion": ["pleural fluid"],
    "pericardial_effusion": ["pericardial fluid"],
    "subcutaneous_fat": ["subcutaneous adipose tissue", "SAT"],
    "torso_fat": ["visceral fat", "visceral adipose tissue", "VAT"],
    "bone_lesion": ["bone lesions", "bone metastasis", "bone metastases", "osseous lesion"],
    "coronary_arteries": ["coronary artery", "coronaries"],
    "brachiocephalic_trunk": ["innominate artery"],
    # adjectives and lay names users type (issue 12); a finding word next to them names a finding of the organ
    "kidney": ["renal"],
    "adrenal_gland": ["adrenal", "adrenal glands", "suprarenal", "suprarenal gland", "suprarenal glands"],
    "gallbladder": ["cholecyst", "gall-bladder"],
    "esophagus": ["gullet", "esophageal", "oesophageal", "food pipe"],
    "stomach": ["gastric"],
    "duodenum": ["duodenal"],
    "colon": ["colonic"],
    "rectum": ["rectal"],
    "prostate": ["prostatic"],
    "inferior_vena_cava": ["inferior caval vein"],
    "femur": ["thighbone", "thigh bone"],
    "scapula": ["shoulder blade"],
    "tibia": ["shinbone", "shin bone"],
    "patella": ["kneecap", "knee cap"],
    "sacrum": ["sacral bone"],
}
# More names, appended after the synonyms above (adjectives of curated universal32 organs and of groups).
EXTRA_SYNONYMS: dict[str, list[str]] = {
    "liver": ["hepatic", "liver parenchyma"],
    "spleen": ["splenic"],
    "pancreas": ["pancreatic"],
    "aorta": ["aortic"],
    "lung": ["pulmonary"],
    "clavicle": ["collar bone"],
}
# Source label names that the generic aliases do not catch (VISTA3D, BTCV spellings and typos).
ALIASES: dict[str, list[str]] = {
    "liver_tumor": ["hepatic tumor"],
    "pancreas_tumor": ["pancreatic tumor"],
    "colon_tumor": ["colon cancer primaries"],
    "left_kidney": ["Left Kideny"],  # BTCV's metadata.json spelling
    "portal_vein_and_splenic_vein": ["Portal and Splenic Veins"],
    "airway": ["airway"],
}
# Structures with parts: a prompt naming one answers with its parts when a model has the parts only.
PARTS: dict[str, list[str]] = {
    "right_lung": ["right_lung_upper_lobe", "right_lung_middle_lobe", "right_lung_lower_lobe"],
    "left_lung": ["left_lung_upper_lobe", "left_lung_lower_lobe"],
    "lung": ["right_lung", "left_lung"],
    "heart": ["myocardium", "left_atrium", "left_ventricle", "right_atrium", "right_ventricle"],
    "ribs": [f"{side}_rib_{i}" for side in ("right", "left") for i in range(1, 13)],
    "cervical_vertebrae": [f"vertebra_c{i}" for i in range(1, 8)],
    "thoracic_vertebrae": [f"vertebra_t{i}" for i in range(1, 13)],
    "lumbar_vertebrae": [f"vertebra_l{i}" for i in range(1, 6)],
    "kidney_cyst": ["right_kidney_cyst", "left_kidney_cyst"],
}
# Groups: names for sets of structures that no model segments as one (no codes).
GROUPS = [
    {"class_name": "vertebrae", "name": "Vertebrae",
     "parts": ["cervical_vertebrae", "thoracic_vertebrae", "lumbar_vertebrae", "vertebra_s1"]},
    {"class_name": "gluteal_muscles", "name": "Gluteal Muscles", "synonyms": ["glutes", "gluteus"],
     "parts": ["gluteus_maximus", "gluteus_medius", "gluteus_minimus"]},
    {"class_name": "heart_chambers", "name": "Heart Chambers", "synonyms": ["cardiac chambers"],
     "parts": ["left_atrium", "left_ventricle", "right_atrium", "right_ventricle"]},
    {"class_name": "lung_lobes", "name": "Lung Lobes", "synonyms": ["lobes of the lung", "pulmonary lobes"],
     "parts": ["right_lung_upper_lobe", "right_lung_middle_lobe", "right_lung_lower_lobe",
               "left_lung_upper_lobe", "left_lung_lower_lobe"]},
    {"class_name": "iliac_vessels", "name": "Iliac Vessels", "parts": ["iliac_artery", "iliac_vein"]},
    {"class_name": "abdominal_organs", "name": "Abdominal Organs",
     "synonyms": ["abdominal viscera", "organs of the abdomen", "upper abdominal organs"],
     "parts": ["liver", "spleen", "pancreas", "kidney", "adrenal_gland", "gallbladder", "stomach", "duodenum",
               "small_intestine", "colon"]},
    {"class_name": "pelvic_organs", "name": "Pelvic Organs",
     "synonyms": ["pelvic viscera", "organs of the pelvis"],
     "parts": ["urinary_bladder", "prostate", "rectum"]},
    {"class_name": "thoracic_organs", "name": "Thoracic Organs",
     "synonyms": ["thoracic viscera", "chest organs", "organs of the chest"],
     "parts": ["lung", "heart", "esophagus", "trachea"]},
]  # fmt: skip
LOBE_ABBREVIATIONS = {
    "right_lung_upper_lobe": ["RUL", "right upper lobe"],
    "right_lung_middle_lobe": ["RML", "right middle lobe", "middle lobe"],
    "right_lung_lower_lobe": ["RLL", "right lower lobe"],
    "left_lung_upper_lobe": ["LUL", "left upper lobe"],
    "left_lung_lower_lobe": ["LLL", "left lower lobe"],
}
ORDINALS = ["1st", "2nd", "3rd"] + [f"{i}th" for i in range(4, 13)]
WORD_ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split()
REGIONS = {"C": "cervical", "T": "thoracic", "L": "lumbar", "S": "sacral"}


def code(scheme: str, value: str, meaning: str) -> dict[str, str]:
    return {"scheme": scheme, "value": value, "meaning": meaning}


def ts_class_name(ts: str) -> str:
    """TotalSegmentator name -> our class name (side word first, vertebrae singular, lower case)."""
    if ts in RENAME:
        return RENAME[ts]
    m = re.fullmatch(r"vertebrae_([CTLS]\d+)", ts)
    if m:
        return f"vertebra_{m.group(1).lower()}"
    words = ts.split("_")
    for side in ("left", "right"):
        if side in words:
            words.remove(side)
            return "_".join([side, *words])
    return ts


def display_name(class_name: str) -> str:
    if class_name in DISPLAY:
        return DISPLAY[class_name]
    m = re.fullmatch(r"vertebra_([ctls])(\d+)", class_name)
    if m:
        return f"{m.group(1).upper()}{m.group(2)} Vertebra"
    return " ".join(w.capitalize() if not w.isdigit() else w for w in class_name.split("_"))


def load_ga() -> dict[tuple[str, str], dict]:
    """(category value, type value) -> Slicer General Anatomy type entry (with its category)."""
    path = SHARED / "slicer_terminology" / "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.term.json"
    data = json.loads(path.read_text())
    out = {}
    for category in data["SegmentationCodes"]["Category"]:
        for entry in category["Type"]:
            out[(category["CodeValue"], entry["CodeValue"])] = {"category": category, "type": entry}
    return out


def ga_terminology(ga: dict, category: str, type_value: str, side: str | None) -> dict | None:
    hit = ga.get((category, type_value))
    if hit is None:
        return None
    cat, typ = hit["category"], hit["type"]
    modifier, color = None, typ.get("recommendedDisplayRGBValue")
    if side is not None:
        mods = {m["CodeValue"]: m for m in typ.get("Modifier", [])}
        mod = mods.get(SIDES[side][1])
        if mod is None:
            return None
        modifier = code(mod["CodingSchemeDesignator"], mod["CodeValue"], mod["CodeMeaning"])
        color = mod["recommendedDisplayRGBValue"]
    elif "Modifier" in typ and not typ.get("recommendedDisplayRGBValue"):
        return None  # Slicer defines only the sided entries
    return {
        "context_name": GA_CONTEXT,
        "category": code(cat["CodingSchemeDesignator"], cat["CodeValue"], cat["CodeMeaning"]),
        "type": code(typ["CodingSchemeDesignator"], typ["CodeValue"], typ["CodeMeaning"]),
        "modifier": modifier,
        "region_context_name": REGION_CONTEXT,
        "region": None,
        "region_modifier": None,
        "color": list(color),
    }


def ts_rows() -> list[dict[str, str]]:
    path = SHARED / "terminology" / "totalsegmentator_snomed_mapping.csv"
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ts_terminology(row: dict[str, str]) -> dict:
    def opt(prefix: str) -> dict | None:
        value = row[f"{prefix}.CodeValue"].strip()
        if not value:
            return None
        return code(row[f"{prefix}.CodingSchemeDesignator"], value, row[f"{prefix}.CodeMeaning"])

    return {
        "context_name": TS_CONTEXT,
        "category": opt("SegmentedPropertyCategoryCodeSequence"),
        "type": opt("SegmentedPropertyTypeCodeSequence"),
        "modifier": opt("SegmentedPropertyTypeModifierCodeSequence"),
        "region_context_name": REGION_CONTEXT,
        "region": opt("AnatomicRegionSequence"),
        "region_modifier": opt("AnatomicRegionModifierSequence"),
        "color": [int(c) for c in row["DicomRGBColor"].split(",")],
    }


def side_of(terminology: dict) -> str | None:
    modifier = terminology.get("modifier")
    if modifier is None:
        return None
    return {"24028007": "right", "7771000": "left"}.get(modifier["value"])


def lateral_colours(entries: dict[str, dict], ts_colours: dict[str, list[int]]) -> list[str]:
    """Give the sides of each lateral pair colours a person tells apart (see ``taxonomy/colors.py``).

    Lateral structures take TotalSegmentator's colour; where a ``right_X``/``left_X`` pair is then closer than
    ``MIN_LATERAL_DELTA_E``, ``left_X`` gets the right side's colour shifted in lightness. Returns the class
    names whose colour was derived.
    """
    for class_name, entry in entries.items():
        if class_name.startswith(("right_", "left_")) and class_name in ts_colours and entry["terminology"]:
            entry["terminology"]["color"] = list(ts_colours[class_name])
    derived = []
    for class_name, entry in sorted(entries.items()):
        left = entries.get("left_" + class_name.removeprefix("right_"))
        if not class_name.startswith("right_") or left is None or not entry["terminology"]:
            continue
        right_colour = entry["terminology"]["color"]
        if delta_e76(right_colour, left["terminology"]["color"]) < MIN_LATERAL_DELTA_E:
            left["terminology"]["color"] = list(shifted_lightness(right_colour))
            derived.append(left["class_name"])
    return derived


def universal32_source() -> dict:
    """The curated universal32 structures as first shipped (full records), from git history."""
    text = subprocess.run(
        ["git", "show", "5a47cdc:TextGuidedSegLib/resources/universal32.json"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(text)


def main() -> None:
    ga = load_ga()
    entries: dict[str, dict] = {}
    ts_colours: dict[str, list[int]] = {}

    # 1. universal32 (curated names, synonyms, lesion coding)
    for s in universal32_source()["structures"]:
        t = s["terminology"]
        entries[s["class_name"]] = {
            "class_name": s["class_name"],
            "name": s["name"],
            "synonyms": list(s["synonyms"]),
            "aliases": [],
            "laterality": s["laterality"],
            "terminology": t,
            "parts": [],
        }

    # 2. TotalSegmentator (v1 + v2 names)
    for row in ts_rows():
        ts = row["Structure"]
        class_name = ts_class_name(ts)
        terminology = ts_terminology(row)
        side = side_of(terminology)
        entry = entries.get(class_name)
        if entry is None:
            entry = entries[class_name] = {
                "class_name": class_name,
                "name": display_name(class_name),
                "synonyms": [],
                "aliases": [],
                "laterality": side,
                "terminology": None,
                "parts": [],
            }
        entry["aliases"].append(ts)
        ts_colours.setdefault(class_name, terminology["color"])
        spaced = ts.replace("_", " ")
        if side is not None:
            spaced = " ".join([side, *[w for w in ts.split("_") if w != side]])
        if spaced.casefold() != entry["name"].casefold():
            entry["aliases"].append(spaced)
        if entry["terminology"] is None or entry["terminology"]["context_name"] == OUR_CONTEXT:
            # Slicer's list first, else TotalSegmentator's mapping
            category, typ = terminology["category"]["value"], terminology["type"]["value"]
            entry["terminology"] = ga_terminology(ga, category, typ, side) or terminology

    # 3. extra entries: bilateral parents and groups of lateral pairs not named by TotalSegmentator
    entries["lung"] = {
        "class_name": "lung", "name": "Lungs", "synonyms": [], "aliases": [], "laterality": None,
        "terminology": None, "parts": [],
    }  # fmt: skip
    entries["bone_lesion"] = {
        "class_name": "bone_lesion", "name": "Bone Lesion", "synonyms": [], "aliases": ["bone lesion"],
        "laterality": None,
        "terminology": {
            "context_name": OUR_CONTEXT,
            "category": code("SCT", "49755003", "Morphologically Altered Structure"),
            "type": code("SCT", "52988006", "Lesion"),
            "modifier": None,
            "region_context_name": REGION_CONTEXT,
            "region": code("SCT", "272673000", "Bone"),
            "region_modifier": None,
            "color": [255, 180, 50],
        },
        "parts": [],
    }  # fmt: skip
    for group in GROUPS:
        entries[group["class_name"]] = {
            "class_name": group["class_name"], "name": group["name"],
            "synonyms": group.get("synonyms", []), "aliases": [], "laterality": None,
            "terminology": None, "parts": list(group["parts"]),
        }  # fmt: skip

    # 4. lateral pairs -> their unsided parent's parts; curated parts, synonyms, aliases
    for entry in list(entries.values()):
        side = entry["laterality"]
        if side is None:
            continue
        parent = entry["class_name"].removeprefix(f"{side}_")
        if parent in entries and entries[parent]["laterality"] is None:
            entries[parent]["parts"].append(entry["class_name"])
    for class_name, parts in PARTS.items():
        entries[class_name]["parts"] = parts
    for class_name, words in [*SYNONYMS.items(), *LOBE_ABBREVIATIONS.items(), *EXTRA_SYNONYMS.items()]:
        for word in words:
            if word not in entries[class_name]["synonyms"]:
                entries[class_name]["synonyms"].append(word)
    for class_name, words in ALIASES.items():
        entries[class_name]["aliases"].extend(words)
    for i in range(1, 13):
        for side in ("right", "left"):
            entries[f"{side}_rib_{i}"]["synonyms"] += [
                f"{side} {ORDINALS[i - 1]} rib",
                f"{side} {WORD_ORDINALS[i - 1]} rib",
            ]
    for class_name, entry in entries.items():
        m = re.fullmatch(r"vertebra_([ctls])(\d+)", class_name)
        if m:
            letter, number = m.group(1).upper(), m.group(2)
            entry["synonyms"] += [f"{letter}{number}", f"{REGIONS[letter]} vertebra {number}"]

    # 5. lateral pairs: colours a person tells apart
    derived = lateral_colours(entries, ts_colours)
    print(f"derived the colour of {len(derived)} left structures: {', '.join(derived)}")

    # 6. the VISTA3D label dictionary must resolve (checked here and by the tests)
    order = sorted(entries.values(), key=lambda e: (e["terminology"] is None, e["class_name"]))
    for entry in order:
        entry["aliases"] = sorted(set(entry["aliases"]) - {entry["class_name"]}, key=str.casefold)
        entry["parts"] = [p for p in dict.fromkeys(entry["parts"])]
        for part in entry["parts"]:
            assert part in entries, (entry["class_name"], part)
    payload = {
        "format_version": 1,
        "name": "anatomy",
        "description": (
            "Every structure the library's models know, once: class_name, display name, laterality, "
            "synonyms (what users type), aliases (label names of published models), parts, and one Slicer "
            "terminology entry (codes and recommended colour). Built by Testing/tools/build_anatomy.py; "
            "lateral structures take TotalSegmentator's colours, the left side shifted in lightness where a "
            "pair's colours are too close (TextGuidedSegLib/taxonomy/colors.py)."
        ),
        "contexts": {
            GA_CONTEXT: "3D Slicer's General Anatomy list (SegmentationCategoryTypeModifier-"
            "SlicerGeneralAnatomy.term.json): used wherever it defines the category, type and modifier.",
            TS_CONTEXT: "TotalSegmentator's SNOMED mapping (SlicerTotalSegmentator's terminology file).",
            OUR_CONTEXT: "This project's additions for structures neither list defines.",
        },
        "structures": [e for e in order if e["terminology"] is not None],
        "groups": [
            {k: e[k] for k in ("class_name", "name", "synonyms", "parts")}
            for e in order
            if e["terminology"] is None
        ],
    }
    OUT.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(payload['structures'])} structures, {len(payload['groups'])} groups")


if __name__ == "__main__":
    main()
