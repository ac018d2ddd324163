"""Importers: published models (MONAI model-zoo bundles, Universal Model checkpoints) -> our bundles.

Names are imported from their sub-module on first use, so importing this package stays cheap.
"""

from __future__ import annotations

from TextGuidedSegLib._lazy import lazy_getattr

_WHERE = {
    "import_monai_bundle": "monai_bundle",
    "build_bundle_from_weights": "monai_bundle",
    "import_universal_checkpoint": "universal",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_getattr(__name__, _WHERE)
