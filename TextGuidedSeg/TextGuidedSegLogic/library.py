"""Make ``TextGuidedSegLib`` importable inside Slicer without pip.

In an installed extension the library sits beside the modules in Slicer's ``qt-scripted-modules`` folder,
which is on ``sys.path``. In developer mode (the module folders added as additional module paths) it sits in
the repository root, one level above ``TextGuidedSeg/``: that folder is added to ``sys.path`` here. Nothing
of the library is imported.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

LIBRARY_PACKAGE = "TextGuidedSegLib"


def library_search_folders() -> list[Path]:
    """Folders that may hold ``TextGuidedSegLib/``: beside the module (installed), the source tree's root."""
    package_dir = Path(__file__).resolve().parent  # .../TextGuidedSegLogic
    return [package_dir.parent, package_dir.parent.parent]


def ensure_library_importable() -> Path:
    """Return the folder holding ``TextGuidedSegLib/``, adding it to ``sys.path`` when needed.

    Raises:
        ImportError: the library is neither importable nor beside the module or in its source tree.
    """
    spec = importlib.util.find_spec(LIBRARY_PACKAGE)
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parent.parent
    for folder in library_search_folders():
        if (folder / LIBRARY_PACKAGE / "__init__.py").is_file():
            sys.path.insert(0, str(folder))
            importlib.invalidate_caches()
            logger.info("added %s to sys.path for %s", folder, LIBRARY_PACKAGE)
            return folder
    searched = ", ".join(str(f) for f in library_search_folders())
    raise ImportError(
        f"{LIBRARY_PACKAGE} was not found (searched sys.path, {searched}); reinstall the TextGuidedSeg "
        "extension, or in developer mode add the module folders of a complete source checkout"
    )
