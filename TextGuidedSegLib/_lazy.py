"""Lazy package attributes (PEP 562): names a package exports, imported from their sub-module on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from ``package.<where[name]>``.

    Use in a package's ``__init__.py``: ``__getattr__ = lazy_getattr(__name__, {"Segmenter": "segmenter"})``;
    importing the package then stays cheap, and names outside ``where`` raise ``AttributeError``.
    """

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
