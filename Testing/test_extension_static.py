"""Static checks of the Slicer extension: CMake lists every file, the .ui holds every widget the code uses,
the extension metadata is complete, and nothing heavy or Qt-bound is imported where it must not be."""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import REPO_ROOT

MODULE_FOLDERS = ("TextGuidedSeg", "TextGuidedSegEffect")
PACKAGED_SUFFIXES = {".py", ".ui", ".png", ".svg", ".json", ".csv", ".txt", ".qss", ".nrrd"}
UI_FILE = REPO_ROOT / "TextGuidedSeg" / "Resources" / "UI" / "TextGuidedSeg.ui"
PANEL_FILE = REPO_ROOT / "TextGuidedSeg" / "TextGuidedSeg.py"
PARAMETERS_FILE = REPO_ROOT / "TextGuidedSeg" / "TextGuidedSegLogic" / "parameters.py"
EFFECT_FILE = REPO_ROOT / "TextGuidedSegEffect" / "TextGuidedSegEffectLib" / "SegmentEditorEffect.py"
LOGIC_PACKAGE = REPO_ROOT / "TextGuidedSeg" / "TextGuidedSegLogic"
HEAVY_MODULES = {"torch", "monai", "transformers", "safetensors", "scipy", "nibabel", "SimpleITK", "einops"}
METADATA_FIELDS = (
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
    "EXTENSION_DEPENDS",
)


def cmake_tokens(cmake_file: Path) -> set[str]:
    """The words of a CMakeLists.txt, with ``${MODULE_NAME}`` expanded (comments dropped)."""
    text = "\n".join(line.split("#", 1)[0] for line in cmake_file.read_text().splitlines())
    module_name = re.search(r"set\(\s*MODULE_NAME\s+(\S+?)\s*\)", text)
    if module_name:
        text = text.replace("${MODULE_NAME}", module_name.group(1))
    return set(re.findall(r"[^\s()\"]+", text))


def packaged_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in PACKAGED_SUFFIXES
        and "__pycache__" not in p.parts
        and p.name != "CMakeLists.txt"
    )


def listing_cmake_file(path: Path, module_root: Path) -> Path | None:
    """The nearest CMakeLists.txt above ``path`` (inside the module folder) that lists it, else None."""
    folder = path.parent
    while True:
        cmake = folder / "CMakeLists.txt"
        if cmake.is_file() and path.relative_to(folder).as_posix() in cmake_tokens(cmake):
            return cmake
        if folder == module_root:
            return None
        folder = folder.parent


@pytest.mark.parametrize("module", MODULE_FOLDERS)
def test_every_script_and_resource_is_listed_in_cmake(module):
    root = REPO_ROOT / module
    files = packaged_files(root)
    assert any(p.suffix == ".py" for p in files)
    unlisted = [p.relative_to(REPO_ROOT).as_posix() for p in files if listing_cmake_file(p, root) is None]
    assert unlisted == [], f"add these to {module}'s CMakeLists.txt (they would be missing from the package)"


@pytest.mark.parametrize("module", MODULE_FOLDERS)
def test_every_file_listed_in_cmake_exists(module):
    for cmake in (REPO_ROOT / module).rglob("CMakeLists.txt"):
        for token in cmake_tokens(cmake):
            if Path(token).suffix in PACKAGED_SUFFIXES and "$" not in token:
                assert (cmake.parent / token).is_file(), (
                    f"{cmake.relative_to(REPO_ROOT)} lists missing {token}"
                )


def test_top_level_cmake_has_metadata_modules_and_the_library():
    text = (REPO_ROOT / "CMakeLists.txt").read_text()
    for field in METADATA_FIELDS:
        match = re.search(rf'set\(\s*{field}\s+"((?:[^"\\]|\\.)+)"\s*\)', text)
        assert match and match.group(1).strip(), f"{field} is not set in CMakeLists.txt"
    assert re.search(r'set\(\s*EXTENSION_CATEGORY\s+"Segmentation"', text)
    assert re.search(r'set\(\s*EXTENSION_DEPENDS\s+"[^"]*\bPyTorch\b', text)
    icon = re.search(r'set\(\s*EXTENSION_ICONURL\s+"[^"]*/main/([^"]+)"', text)
    assert icon and (REPO_ROOT / icon.group(1)).is_file(), (
        "EXTENSION_ICONURL must point at a file in the repository"
    )
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    subdirectories = set(re.findall(r"add_subdirectory\(\s*(\S+?)\s*\)", text))
    modules = {
        p.parent.name
        for p in REPO_ROOT.glob("*/CMakeLists.txt")
        if "slicerMacroBuildScriptedModule" in p.read_text()
    }
    assert modules == set(MODULE_FOLDERS) and modules <= subdirectories
    # the library ships with the modules: all of its scripts and resources
    assert "TextGuidedSegLib/*.py" in text and "TextGuidedSegLib/resources/*" in text
    assert re.search(r"ctkMacroCompilePythonScript\(\s*TARGET_NAME TextGuidedSegLib", text)


def ui_widgets() -> dict[str, str]:
    """objectName -> class of every widget in the panel's .ui."""
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_ui_is_well_formed_and_declares_its_custom_widgets():
    root = ET.parse(UI_FILE).getroot()
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used = set(ui_widgets().values())
    slicer_classes = {
        c for c in used if c.startswith(("q", "ctk"))
    }  # qMRML..., ctk... (Qt's own start with Q)
    assert slicer_classes <= custom, f"declare {sorted(slicer_classes - custom)} under <customwidgets>"
    for connection in root.iter("connection"):
        assert connection.findtext("receiver") in ui_widgets()


@pytest.mark.parametrize("source", [PANEL_FILE], ids=lambda p: p.name)
def test_ui_holds_every_widget_the_code_looks_up(source):
    names = set(re.findall(r"\bui\.([A-Za-z_]\w*)", source.read_text()))
    assert names, "the panel looks up no widget?"
    missing = sorted(names - set(ui_widgets()))
    assert missing == [], f"{source.name} uses widgets that {UI_FILE.name} does not have: {missing}"


def option_parameters_module():
    """``TextGuidedSegLogic/parameters.py`` loaded on its own (its package imports slicer; it does not)."""
    spec = importlib.util.spec_from_file_location("option_parameters", PARAMETERS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parameter_node_fields() -> set[str]:
    """The panel's parameter node members: its own, and the option members it derives from."""
    tree = ast.parse(PANEL_FILE.read_text())
    wrapper = next(
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "TextGuidedSegParameterNode"
    )
    fields = {node.target.id for node in wrapper.body if isinstance(node, ast.AnnAssign)}
    bases = [ast.unparse(base) for base in wrapper.bases]
    if "option_parameters()" in bases:
        fields |= set(option_parameters_module().option_parameter_names())
    return fields


def test_parameter_node_holds_every_option_under_its_own_name():
    from TextGuidedSegLib.inference.options import SegmentationOptions

    fields = parameter_node_fields()
    assert set(SegmentationOptions.names()) <= fields
    assert {"overlap_from_bundle", "threshold_from_bundle", "sw_batch_size_from_bundle"} <= fields
    assert not {"uncertainty", "probabilityVolumes", "largestComponent", "splitLaterality"} & fields


def test_ui_parameter_names_are_parameter_node_fields():
    fields = parameter_node_fields()
    root = ET.parse(UI_FILE).getroot()
    bound = {
        prop.findtext("string")
        for widget in root.iter("widget")
        for prop in widget.findall("property")
        if prop.get("name") == "SlicerParameterName"
    }
    assert bound and bound <= fields, (
        f"SlicerParameterName values without a parameter: {sorted(bound - fields)}"
    )


def top_level_imports(path: Path) -> set[str]:
    """Modules imported at a file's top level (not inside functions): what importing it pulls in."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path",
    [
        PANEL_FILE,
        REPO_ROOT / "TextGuidedSegEffect" / "TextGuidedSegEffect.py",
        EFFECT_FILE,
        *sorted(LOGIC_PACKAGE.glob("*.py")),
        *sorted((REPO_ROOT / "TextGuidedSeg" / "TextGuidedSegUI").glob("*.py")),
    ],
    ids=lambda p: p.relative_to(REPO_ROOT).as_posix(),
)
def test_nothing_heavy_is_imported_at_module_start_up(path):
    imported = {name.split(".")[0] for name in top_level_imports(path)}
    assert not imported & HEAVY_MODULES, f"import {sorted(imported & HEAVY_MODULES)} inside functions"
    library = {name for name in top_level_imports(path) if name.startswith("TextGuidedSegLib")}
    assert library == set(), f"import the library lazily (after the dependency check): {sorted(library)}"


@pytest.mark.parametrize("path", sorted(LOGIC_PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_the_logic_package_is_qt_free(path):
    text = path.read_text()
    imported = {name.split(".")[0] for name in top_level_imports(path)}
    assert not imported & {"qt", "ctk", "PythonQt"}, path.name
    assert not re.search(r"^\s*(import qt|from qt |import ctk)", text, re.MULTILINE), path.name


def test_effect_name_matches_its_registration_and_tests():
    effect = EFFECT_FILE.read_text()
    assert 'scriptedEffect.name = "Text prompt"' in effect
    assert (
        'EFFECT_NAME = "Text prompt"'
        in (REPO_ROOT / "TextGuidedSegEffect" / "TextGuidedSegEffect.py").read_text()
    )
    assert "saveStateForUndo()" in effect and "modifySegmentByLabelmap(" in effect


def test_registry_json_is_packaged_with_the_library():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["TextGuidedSegLib"]
    assert any(fnmatch.fnmatch("resources/registry.json", pattern) for pattern in patterns)


# -- Extensions Index readiness (issue 11) ------------------------------------------------------------------

#: Keys of the Extensions Index catalog entry schema v1.0.1/v1.0.2 (Slicer/ExtensionsIndex schemas/).
INDEX_KEYS = {
    "$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies", "build_subdirectory",
    "enabled", "tier", "dicom_support_rule",
}  # fmt: skip
#: "First Last (Organisation)", as the Extensions Index asks of EXTENSION_CONTRIBUTORS.
CONTRIBUTOR = re.compile(r"^[A-Z][\w.'-]*(?: [A-Z][\w.'-]*)+ \([^()]+\)$")
SAMPLE_FOLDER = REPO_ROOT / "TextGuidedSeg" / "Resources" / "SampleData"


def cmake_value(field: str) -> str:
    match = re.search(
        rf'set\(\s*{field}\s+"((?:[^"\\]|\\.)+)"\s*\)', (REPO_ROOT / "CMakeLists.txt").read_text()
    )
    assert match, f"{field} is not set in CMakeLists.txt"
    return match.group(1)


def test_extensions_index_entry_follows_the_catalog_schema():
    import json

    entry = json.loads((REPO_ROOT / "TextGuidedSeg.json").read_text())
    assert set(entry) <= INDEX_KEYS, f"keys the schema does not allow: {sorted(set(entry) - INDEX_KEYS)}"
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert re.fullmatch(
        r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
        r"slicer-extension-catalog-entry-schema-v1\.0\.[12]\.json#",
        entry["$schema"],
    )
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["category"] == cmake_value("EXTENSION_CATEGORY")
    assert entry["scm_url"] == cmake_value("EXTENSION_HOMEPAGE")
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5
    assert entry["scm_revision"] and entry.get("build_subdirectory", ".") == "."


def test_contributors_are_first_last_organisation():
    contributors = [c.strip() for c in cmake_value("EXTENSION_CONTRIBUTORS").split(",")]
    assert contributors and all(CONTRIBUTOR.match(c) for c in contributors), contributors
    for module in ("TextGuidedSeg/TextGuidedSeg.py", "TextGuidedSegEffect/TextGuidedSegEffect.py"):
        listed = re.search(r"contributors = \[([^\]]*)\]", (REPO_ROOT / module).read_text()).group(1)
        names = re.findall(r'"([^"]+)"', listed)
        assert names and all(CONTRIBUTOR.match(n) for n in names), (module, names)


def test_cmake_minimum_is_slicer_5_10_template():
    # Slicer 5.10's Utilities/Templates/Extensions/Default/CMakeLists.txt
    first = (REPO_ROOT / "CMakeLists.txt").read_text().splitlines()[0]
    assert first == "cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)"


def test_license_and_screenshot_exist():
    license_text = (REPO_ROOT / "LICENSE.txt").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "Apache-2.0" in (REPO_ROOT / "pyproject.toml").read_text()
    screenshot = re.fullmatch(
        r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(\S+)", cmake_value("EXTENSION_SCREENSHOTURLS")
    )
    assert screenshot, "EXTENSION_SCREENSHOTURLS must be one raw.githubusercontent.com URL on main"
    path = REPO_ROOT / screenshot.group(1)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 640 and height >= 300 and len(data) < 500_000, (width, height, len(data))


def test_sample_data_checksums_match_the_files():
    import hashlib
    import json

    manifest = json.loads((SAMPLE_FOLDER / "SampleData.json").read_text())
    total = 0
    for source in manifest["sources"]:
        assert (SAMPLE_FOLDER / source["thumbnail"]).is_file()
        for entry in source["files"]:
            data = (SAMPLE_FOLDER / entry["fileName"]).read_bytes()
            total += len(data)
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], (
                f"{entry['fileName']} changed: rerun Testing/tools/make_sample_data.py"
            )
            assert entry["loadFileType"] in {"VolumeFile", "SegmentationFile"}
    assert total < 4 * 2**20, f"sample data is {total / 2**20:.1f} MB: keep it to a few MB"
