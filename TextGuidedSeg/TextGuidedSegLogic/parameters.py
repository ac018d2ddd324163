"""The panel's parameter node <-> the library's ``SegmentationOptions``: one name per option, one mapping.

Every ``SegmentationOptions`` field is a parameter of the same name, type and default (``flip_tta``,
``probabilities``, ...), so a new option needs no line here nor in the panel: :func:`option_parameters` makes
the base class of the panel's ``@parameterNodeWrapper`` from the dataclass, ``PERSISTENT_PARAMETERS`` comes
from :func:`option_parameter_names`, and :func:`options_from_parameters` is the one conversion.

A field whose ``None`` means "the bundle's value" (overlap, threshold, sw_batch_size) is stored as a number
plus a ``<name>_from_bundle`` flag, ticked by default and shown as a "bundle's" check box: Slicer's GUI
connectors bind a spin box to a ``float`` or ``int``, not to an ``Optional`` (``QDoubleSpinBox...Connector``
in Slicer's ``Base/Python/slicer/parameterNodeWrapper/guiConnectors.py``). No Qt, and the library's options
module (standard library only) is imported on first call.

Example::

    options = options_from_parameters({"overlap": 0.25, "overlap_from_bundle": False, "flip_tta": True})
    # SegmentationOptions(overlap=0.25, threshold=None, flip_tta=True, ...): threshold is the bundle's
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from TextGuidedSegLib.inference.options import SegmentationOptions

#: Suffix of the flag that says "use the bundle's value" for an option whose ``None`` means that.
FROM_BUNDLE = "_from_bundle"


def option_fields() -> list[tuple[str, type, Any]]:
    """``(parameter name, stored type, default)`` of each option parameter, in field order (a flag after its
    number; the number's default is its type's zero: the panel re-declares the numbers it shows)."""
    import dataclasses

    from TextGuidedSegLib.inference.options import SegmentationOptions

    hints = typing.get_type_hints(SegmentationOptions)
    fields = []
    for field in dataclasses.fields(SegmentationOptions):
        kinds = [t for t in typing.get_args(hints[field.name]) if t is not type(None)]
        if field.default is None and len(kinds) == 1:  # Optional[X]: X plus "from the bundle" flag
            fields.append((field.name, kinds[0], kinds[0]()))
            fields.append((field.name + FROM_BUNDLE, bool, True))
        else:
            fields.append((field.name, hints[field.name], field.default))
    return fields


def option_parameter_names() -> tuple[str, ...]:
    """The parameter names that hold the options (``PERSISTENT_PARAMETERS`` of the panel)."""
    return tuple(name for name, _kind, _default in option_fields())


def option_parameters() -> type:
    """A class to derive the panel's ``@parameterNodeWrapper`` from: one annotated member per option
    parameter, with its default; the panel may re-declare one (a spin box's ``WithinRange`` and start)."""
    fields = option_fields()
    namespace: dict[str, Any] = {name: default for name, _kind, default in fields}
    namespace["__annotations__"] = {name: kind for name, kind, _default in fields}
    namespace["__module__"] = __name__
    namespace["__doc__"] = "SegmentationOptions as parameter node members (TextGuidedSegLogic.parameters)."
    return type("SegmentationOptionParameters", (), namespace)


def options_from_parameters(parameters: Any, **changes: Any) -> SegmentationOptions:
    """The options held by ``parameters``: a parameter node wrapper, any object with the option names as
    attributes, or a mapping (names it lacks keep their defaults); ``changes`` are applied last.

    Raises:
        ValueError: a value the options refuse (the message names the option).
    """
    from TextGuidedSegLib.inference.options import SegmentationOptions

    def value(name: str) -> Any:
        if isinstance(parameters, Mapping):
            return parameters.get(name, missing)
        return getattr(parameters, name, missing)

    missing = object()
    values = {}
    for name in SegmentationOptions.names():
        stored = value(name)
        if value(name + FROM_BUNDLE) is True:
            stored = None
        if stored is not missing:
            values[name] = stored
    return SegmentationOptions().replace(**values, **changes)


def parameters_from_options(options: SegmentationOptions) -> dict[str, Any]:
    """The parameter values that hold ``options`` (the inverse of :func:`options_from_parameters`); an option
    that takes the bundle's value sets only its flag, leaving the number the panel shows as it is."""
    names = set(option_parameter_names())
    values: dict[str, Any] = {}
    for name in options.names():
        stored = getattr(options, name)
        if name + FROM_BUNDLE in names:
            values[name + FROM_BUNDLE] = stored is None
        if stored is not None:
            values[name] = stored
    return values
